#!/usr/bin/perl
# Static checks of deploy/ (run from the repository root by check.sh; Perl core modules only).
#
#  1. Every kvc_* name in deploy/ and docs/operations.md is a metric of docs/metrics.md (or a histogram's _bucket,
#     _sum, _count series); every label a rule or dashboard query matches, groups by or prints
#     belongs to a metric of that query (or is a scrape target label); every kvc:* recorded
#     series a query uses is defined in deploy/prometheus/rules.yml.
#  2. Every YAML file parses; every Kubernetes document has apiVersion, kind, metadata.name and
#     no namespace; workloads, Services, probes, PDBs, the HPA and the PodMonitors agree on
#     labels, port names and numbers; the flag files name only flags that the binaries define,
#     and the router's --workers list names exactly the worker StatefulSet's pods.
#  3. Every JSON file parses; the Grafana dashboard uses the ${DS_PROMETHEUS} datasource
#     everywhere, has unique panel ids, non-overlapping panels, and the required panels.
# Prints every problem and exits 1 if there is any.
use strict;
use warnings;
use CPAN::Meta::YAML;
use File::Find;
use JSON::PP;

my @errors;
sub err { push @errors, join('', @_); }

sub slurp {
  my ($path) = @_;
  open(my $fh, '<:raw', $path) or do { err("$path: cannot read: $!"); return ''; };
  local $/;
  my $text = <$fh>;
  close $fh;
  return $text;
}

# ---------------------------------------------------------------------------------------------
# docs/metrics.md: name -> {type, labels}
# ---------------------------------------------------------------------------------------------
my %metrics;
for my $line (split /\n/, slurp('docs/metrics.md')) {
  next unless $line =~ /^\|\s*`(kvc_[a-z0-9_]+)`\s*\|\s*(counter|gauge|histogram)\s*\|([^|]*)\|/;
  my ($name, $type, $labels) = ($1, $2, $3);
  my @labels = ($labels =~ /`([a-zA-Z_][a-zA-Z0-9_]*)`/g);
  $metrics{$name} = { type => $type, labels => { map { $_ => 1 } @labels } };
}
err('docs/metrics.md: found only ', scalar(keys %metrics), ' metrics in its tables (expected 20+)')
  if keys(%metrics) < 20;

# Labels Prometheus (or the operator / kubernetes_sd relabeling in deploy/) attaches to targets.
my %target_labels = map { $_ => 1 } qw(job instance namespace pod container service endpoint);

# The metric family a series name belongs to, or undef.
sub family_of {
  my ($series) = @_;
  return $series if $metrics{$series};
  if ($series =~ /^(.*)_(bucket|sum|count)$/ && $metrics{$1} && $metrics{$1}{type} eq 'histogram') {
    return $1;
  }
  return undef;
}

# ---------------------------------------------------------------------------------------------
# Files of deploy/
# ---------------------------------------------------------------------------------------------
my @deploy_files;
find({ wanted => sub { push @deploy_files, $File::Find::name if -f $_ }, no_chdir => 1 }, 'deploy');
@deploy_files = sort @deploy_files;
err('deploy/: no files found') unless @deploy_files;

# 1a. Every kvc_* token in every file under deploy/ (and in the operations guide, which quotes
# queries) is a known series.
for my $path (@deploy_files, 'docs/operations.md') {
  my $text = slurp($path);
  my %seen;
  while ($text =~ /(?<![A-Za-z0-9_])(kvc_[a-z0-9_]*[a-z0-9])/g) {
    my $series = $1;
    next if $seen{$series}++;
    err("$path: $series is not a metric of docs/metrics.md") unless family_of($series);
  }
}

# ---------------------------------------------------------------------------------------------
# YAML
# ---------------------------------------------------------------------------------------------
my %yaml;    # path -> [documents]
for my $path ((grep { /\.ya?ml$/ } @deploy_files), glob('tests/unit/deploy/*.yml')) {
  my $docs = eval { CPAN::Meta::YAML->read($path) };
  if (!$docs) {
    my $why = $@ || CPAN::Meta::YAML->errstr || 'unknown error';
    $why =~ s/\s+$//;
    err("$path: YAML does not parse: $why");
    next;
  }
  $yaml{$path} = [grep { defined } @$docs];
  err("$path: no YAML document") unless @{ $yaml{$path} };
}

# ---------------------------------------------------------------------------------------------
# Expressions: rules and dashboard queries
# ---------------------------------------------------------------------------------------------
my %recorded;    # kvc:* names defined by rules.yml
my @exprs;       # [where, expr, [extra label references]]
my $rules_path = 'deploy/prometheus/rules.yml';
if (my $rules = $yaml{$rules_path}) {
  for my $group (@{ $rules->[0]{groups} || [] }) {
    for my $rule (@{ $group->{rules} || [] }) {
      my $where = "$rules_path: " . ($rule->{record} || $rule->{alert} || '?');
      $recorded{ $rule->{record} } = 1 if $rule->{record};
      my @refs;
      for my $text (values %{ $rule->{annotations} || {} }) {
        push @refs, ($text =~ /\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)/g);
      }
      push @exprs, [$where, $rule->{expr} // '', \@refs];
    }
  }
  err("$rules_path: no recording rules") unless %recorded;
} else {
  err("$rules_path: missing or unparsable");
}

my $dash_path = 'deploy/grafana/kvc-capacity.json';
my $dash = eval { JSON::PP->new->decode(slurp($dash_path)) };
err("$dash_path: JSON does not parse: $@") unless $dash;
if ($dash) {
  for my $p (@{ $dash->{panels} || [] }) {
    for my $t (@{ $p->{targets} || [] }) {
      my @refs = (($t->{legendFormat} // '') =~ /\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}/g);
      push @exprs, ["$dash_path: panel '" . ($p->{title} // '?') . "'", $t->{expr} // '', \@refs];
    }
  }
  for my $v (@{ $dash->{templating}{list} || [] }) {
    push @exprs, ["$dash_path: variable $v->{name}", $v->{definition}, []] if $v->{definition};
  }
}

for my $e (@exprs) {
  my ($where, $expr, $refs) = @$e;
  if ($expr !~ /\S/) {
    err("$where: empty expression");
    next;
  }
  # Series of the expression and the labels they carry.
  my %allowed = (%target_labels, le => 1);
  my $has_kvc = 0;
  while ($expr =~ /(?<![A-Za-z0-9_:])(kvc_[a-z0-9_]*[a-z0-9])/g) {
    my $family = family_of($1) or next;    # unknown names are reported by 1a
    $has_kvc = 1;
    %allowed = (%allowed, %{ $metrics{$family}{labels} });
  }
  while ($expr =~ /(?<![A-Za-z0-9_:])(kvc:[a-zA-Z0-9_:]+)/g) {
    my $name = $1;
    $has_kvc = 1;
    err("$where: $name is not recorded by $rules_path") unless $recorded{$name};
  }
  err("$where: uses no kvc metric") unless $has_kvc || $expr =~ /\bup\b/;
  # Label matchers of kvc series.
  while ($expr =~ /(?<![A-Za-z0-9_:])(kvc_[a-z0-9_]*[a-z0-9])\s*\{([^}]*)\}/g) {
    my ($series, $matchers) = ($1, $2);
    my $family = family_of($series) or next;
    my %ok = (%target_labels, %{ $metrics{$family}{labels} });
    $ok{le} = 1 if $series =~ /_bucket$/;
    for my $label ($matchers =~ /([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)/g) {
      err("$where: $series has no label '$label'") unless $ok{$label};
    }
  }
  # Grouping and matching clauses, legend and annotation references.
  my @used;
  while ($expr =~ /\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)/g) {
    push @used, grep { length } map { s/^\s+|\s+$//gr } split /,/, $1;
  }
  push @used, @$refs;
  for my $label (@used) {
    err("$where: label '$label' belongs to none of the expression's metrics") unless $allowed{$label};
  }
}

# ---------------------------------------------------------------------------------------------
# Kubernetes manifests
# ---------------------------------------------------------------------------------------------
sub labels_match {    # every selector label is in the pod labels
  my ($selector, $labels) = @_;
  return 0 unless ref $selector eq 'HASH' && %$selector && ref $labels eq 'HASH';
  for my $k (keys %$selector) {
    return 0 unless defined $labels->{$k} && $labels->{$k} eq $selector->{$k};
  }
  return 1;
}

my (%objects, @workloads, @services);
for my $path (sort grep { m{^deploy/k8s/} } keys %yaml) {
  for my $doc (@{ $yaml{$path} }) {
    my $kind = $doc->{kind} // '';
    my $name = ref $doc->{metadata} eq 'HASH' ? $doc->{metadata}{name} : undef;
    err("$path: a document has no apiVersion") unless $doc->{apiVersion};
    err("$path: a document has no kind") unless $kind;
    next if $kind eq 'Kustomization';
    err("$path: $kind has no metadata.name") unless $name;
    next unless $name;
    err("$path: $kind/$name sets a namespace (the manifests are namespace-agnostic)")
      if defined $doc->{metadata}{namespace};
    err("$path: $kind/$name is defined twice") if $objects{"$kind/$name"};
    $objects{"$kind/$name"} = { doc => $doc, path => $path };
    push @workloads, $objects{"$kind/$name"} if $kind eq 'Deployment' || $kind eq 'StatefulSet';
    push @services, $objects{"$kind/$name"} if $kind eq 'Service';
  }
}

for my $kind_name (qw(Deployment/kvc-router StatefulSet/kvc-worker Service/kvc-router
                      Service/kvc-worker HorizontalPodAutoscaler/kvc-router
                      PodDisruptionBudget/kvc-router PodDisruptionBudget/kvc-worker
                      PodMonitor/kvc-router PodMonitor/kvc-worker ServiceMonitor/kvc-router
                      ServiceMonitor/kvc-worker PrometheusRule/kvc)) {
  err("deploy/k8s: $kind_name is missing") unless $objects{$kind_name};
}

# Flags the binaries define (ABSL_FLAG in their main.cc) plus absl's own.
sub defined_flags {
  my ($main) = @_;
  my %flags = map { $_ => 1 } qw(flagfile fromenv tryfromenv undefok);
  my $src = slurp($main);
  $flags{$1} = 1 while $src =~ /ABSL_FLAG\(\s*[^,]+,\s*([a-z0-9_]+)\s*,/g;
  err("$main: no ABSL_FLAG found") if keys(%flags) < 6;
  return \%flags;
}

# A flag file: name -> value. Checks every flag exists.
sub read_flags {
  my ($path, $main) = @_;
  my $known = defined_flags($main);
  my %values;
  for my $line (split /\n/, slurp($path)) {
    next if $line =~ /^\s*(#|$)/;
    if ($line !~ /^--([a-z0-9_]+)=(.*)$/) {
      err("$path: not a --flag=value line: '$line'");
      next;
    }
    err("$path: --$1 is not a flag of $main") unless $known->{$1};
    $values{$1} = $2;
  }
  return \%values;
}

# The generated ConfigMaps: name -> {key -> file}.
my %generated;
my $kust_path = 'deploy/k8s/kustomization.yaml';
for my $kpath (grep { m{^deploy/k8s/(.*/)?kustomization\.yaml$} } keys %yaml) {
  my ($dir) = $kpath =~ m{^(.*)/kustomization\.yaml$};
  my $k = $yaml{$kpath}[0];
  err("$kpath: kind is not Kustomization") unless ($k->{kind} // '') eq 'Kustomization';
  for my $r (@{ $k->{resources} || [] }) {
    err("$kpath: resource $r does not exist") unless -e "$dir/$r";
  }
  for my $g (@{ $k->{configMapGenerator} || [] }) {
    for my $f (@{ $g->{files} || [] }) {
      my ($key, $file) = $f =~ /^(?:([^=]+)=)?(.+)$/;
      $key //= $file =~ s{.*/}{}r;
      err("$kpath: configMapGenerator file $file does not exist") unless -f "$dir/$file";
      $generated{ $g->{name} }{$key} = "$dir/$file";
    }
  }
}
# Every resource file of deploy/k8s/ is listed by a kustomization, except the documented
# alternative servicemonitors.yaml.
for my $path (grep { m{^deploy/k8s/} && !m{/kustomization\.yaml$} } keys %yaml) {
  my ($dir, $file) = $path =~ m{^(.*)/([^/]+)$};
  next if $file eq 'servicemonitors.yaml';
  my $k = $yaml{"$dir/kustomization.yaml"};
  my $listed = $k && grep { $_ eq $file } @{ $k->[0]{resources} || [] };
  err("$path: not listed in $dir/kustomization.yaml") unless $listed;
}

my %flags_of;    # component -> flag values
for my $w (@workloads) {
  my ($doc, $path) = ($w->{doc}, $w->{path});
  my $id = "$path: $doc->{kind}/$doc->{metadata}{name}";
  my $spec = $doc->{spec} || {};
  my $tmpl = $spec->{template} || {};
  my $pod_labels = $tmpl->{metadata}{labels} || {};
  err("$id: spec.selector.matchLabels does not match the pod template's labels")
    unless labels_match($spec->{selector}{matchLabels}, $pod_labels);
  my $component = $pod_labels->{'app.kubernetes.io/component'} // '';
  err("$id: pod label app.kubernetes.io/component must be router or worker")
    unless $component =~ /^(router|worker)$/;
  my @containers = @{ $tmpl->{spec}{containers} || [] };
  err("$id: expected one container") unless @containers == 1;
  my $c = $containers[0] or next;
  my %ports = map { ($_->{name} // '') => $_->{containerPort} } @{ $c->{ports} || [] };
  $w->{ports} = \%ports;
  $w->{labels} = $pod_labels;
  $w->{component} = $component;
  for my $p (qw(grpc metrics)) {
    err("$id: container has no port named $p") unless $ports{$p};
  }
  for my $probe (qw(readinessProbe livenessProbe)) {
    my $pr = $c->{$probe};
    if (!$pr || !$pr->{grpc}) {
      err("$id: $probe is not a gRPC probe");
    } elsif (($pr->{grpc}{port} // '') ne ($ports{grpc} // '')) {
      err("$id: $probe probes port $pr->{grpc}{port}, not the grpc port $ports{grpc}");
    }
  }
  my $ann = $tmpl->{metadata}{annotations} || {};
  err("$id: prometheus.io/scrape annotation is not \"true\"")
    unless ($ann->{'prometheus.io/scrape'} // '') eq 'true';
  err("$id: prometheus.io/port annotation is not the metrics port")
    unless ($ann->{'prometheus.io/port'} // '') eq ($ports{metrics} // 'none');
  err("$id: the container runs as root") unless $tmpl->{spec}{securityContext}{runAsNonRoot};
  # --flagfile from a mounted generated ConfigMap; the flags agree with the ports.
  my ($flagfile) = map { /^--flagfile=(.+)$/ ? $1 : () } @{ $c->{args} || [] };
  if (!$flagfile) {
    err("$id: no --flagfile argument");
    next;
  }
  my ($dir, $key) = $flagfile =~ m{^(.*)/([^/]+)$};
  my ($mount) = grep { ($_->{mountPath} // '') eq $dir } @{ $c->{volumeMounts} || [] };
  my ($volume) = $mount ? grep { $_->{name} eq $mount->{name} } @{ $tmpl->{spec}{volumes} || [] } : ();
  my $cm = $volume && $volume->{configMap} ? $volume->{configMap}{name} : undef;
  if (!$cm || !$generated{$cm} || !$generated{$cm}{$key}) {
    err("$id: --flagfile=$flagfile is not a key of a ConfigMap the kustomization generates");
    next;
  }
  my $main = "$component/main.cc";
  my $flags = read_flags($generated{$cm}{$key}, $main);
  $flags_of{$component} = $flags;
  err("$generated{$cm}{$key}: --port=", $flags->{port} // 'unset', " but the grpc port is $ports{grpc}")
    unless ($flags->{port} // '') eq $ports{grpc};
  err("$generated{$cm}{$key}: --metrics_port=", $flags->{metrics_port} // 'unset',
      " but the metrics port is $ports{metrics}")
    unless ($flags->{metrics_port} // '') eq $ports{metrics};
  err("$generated{$cm}{$key}: --host must be 0.0.0.0 in a pod")
    unless ($flags->{host} // '') eq '0.0.0.0';
}

my $sts = $objects{'StatefulSet/kvc-worker'};
if ($sts) {
  my $spec = $sts->{doc}{spec};
  my $headless = $objects{"Service/$spec->{serviceName}"};
  if (!$headless) {
    err("$sts->{path}: serviceName $spec->{serviceName} is not a Service here");
  } else {
    err("$headless->{path}: Service/$spec->{serviceName} is not headless (clusterIP: None)")
      unless ($headless->{doc}{spec}{clusterIP} // '') eq 'None';
  }
  my $limits = $spec->{template}{spec}{containers}[0]{resources}{limits} || {};
  err("$sts->{path}: the worker does not request nvidia.com/gpu: 1")
    unless ($limits->{'nvidia.com/gpu'} // '') eq '1';
  # The router's --workers list names exactly the StatefulSet's pods.
  my $router_flags = $flags_of{router};
  if ($router_flags && $sts->{ports}) {
    my @want = map { "$sts->{doc}{metadata}{name}-$_.$spec->{serviceName}:$sts->{ports}{grpc}" }
      0 .. ($spec->{replicas} // 1) - 1;
    my $got = $router_flags->{workers} // '';
    err("router flags: --workers=$got, but the worker StatefulSet has pods " . join(',', @want))
      unless $got eq join(',', @want);
  }
}

for my $s (@services) {
  my ($doc, $path) = ($s->{doc}, $s->{path});
  my ($w) = grep { labels_match($doc->{spec}{selector}, $_->{labels}) } @workloads;
  if (!$w) {
    err("$path: Service/$doc->{metadata}{name} selects no workload");
    next;
  }
  for my $p (@{ $doc->{spec}{ports} || [] }) {
    my $target = $p->{targetPort} // $p->{port};
    my $number = $target =~ /^\d+$/ ? $target : $w->{ports}{$target};
    if (!defined $number) {
      err("$path: Service/$doc->{metadata}{name} targets port '$target' that the pods lack");
    } elsif ($number ne $p->{port}) {
      err("$path: Service/$doc->{metadata}{name} port $p->{port} maps to container port $number");
    }
  }
  $s->{workload} = $w;
}

for my $o (values %objects) {
  my ($doc, $path) = ($o->{doc}, $o->{path});
  my $id = "$path: $doc->{kind}/$doc->{metadata}{name}";
  if ($doc->{kind} eq 'PodDisruptionBudget') {
    err("$id: selects no workload")
      unless grep { labels_match($doc->{spec}{selector}{matchLabels}, $_->{labels}) } @workloads;
  } elsif ($doc->{kind} eq 'HorizontalPodAutoscaler') {
    my $ref = $doc->{spec}{scaleTargetRef} || {};
    err("$id: scales $ref->{kind}/$ref->{name}, which is not defined here")
      unless $objects{"$ref->{kind}/$ref->{name}"};
    err("$id: minReplicas > maxReplicas") if $doc->{spec}{minReplicas} > $doc->{spec}{maxReplicas};
  } elsif ($doc->{kind} eq 'PodMonitor' || $doc->{kind} eq 'ServiceMonitor') {
    my $pod = $doc->{kind} eq 'PodMonitor';
    my @candidates = $pod ? @workloads : @services;
    my ($t) = grep {
      labels_match($doc->{spec}{selector}{matchLabels}, $pod ? $_->{labels} : $_->{doc}{metadata}{labels})
    } @candidates;
    if (!$t) {
      err("$id: selects nothing");
      next;
    }
    my $w = $pod ? $t : $t->{workload};
    my @endpoints = @{ $doc->{spec}{ $pod ? 'podMetricsEndpoints' : 'endpoints' } || [] };
    err("$id: no endpoints") unless @endpoints;
    for my $ep (@endpoints) {
      my $port = $ep->{port} // '';
      my $ok = $pod ? $w && $w->{ports}{$port}
                    : grep { ($_->{name} // '') eq $port } @{ $t->{doc}{spec}{ports} || [] };
      err("$id: endpoint port '$port' is not a named port of its target") unless $ok;
      my ($job) = map { ($_->{targetLabel} // '') eq 'job' ? $_->{replacement} : () }
        @{ $ep->{relabelings} || [] };
      my $want = $w ? "kvc-$w->{component}" : '?';
      err("$id: sets job=", $job // 'nothing', "; rules.yml expects $want")
        unless ($job // '') eq $want;
    }
  }
}

# ---------------------------------------------------------------------------------------------
# JSON and the dashboard
# ---------------------------------------------------------------------------------------------
for my $path (grep { /\.json$/ } @deploy_files) {
  eval { JSON::PP->new->decode(slurp($path)); 1 } or err("$path: JSON does not parse: $@");
}

if ($dash) {
  my $ds = '${DS_PROMETHEUS}';
  err("$dash_path: schemaVersion ", $dash->{schemaVersion} // 'unset', ' < 36')
    unless ($dash->{schemaVersion} // 0) >= 36;
  err("$dash_path: no DS_PROMETHEUS input")
    unless grep { ($_->{name} // '') eq 'DS_PROMETHEUS' } @{ $dash->{__inputs} || [] };
  err("$dash_path: no DS_PROMETHEUS datasource variable")
    unless grep { ($_->{name} // '') eq 'DS_PROMETHEUS' && ($_->{type} // '') eq 'datasource' }
      @{ $dash->{templating}{list} || [] };
  my (%ids, @rects);
  my $all_exprs = '';
  for my $p (@{ $dash->{panels} || [] }) {
    my $title = $p->{title} // '?';
    err("$dash_path: panel id $p->{id} is used twice") if $ids{ $p->{id} }++;
    my $g = $p->{gridPos} || {};
    err("$dash_path: panel '$title' is outside the 24-column grid")
      if ($g->{x} // -1) < 0 || ($g->{x} // 0) + ($g->{w} // 0) > 24 || !$g->{h};
    for my $r (@rects) {
      my ($t2, $h) = @$r;
      my $overlap = $g->{x} < $h->{x} + $h->{w} && $h->{x} < $g->{x} + $g->{w} &&
                    $g->{y} < $h->{y} + $h->{h} && $h->{y} < $g->{y} + $g->{h};
      err("$dash_path: panels '$title' and '$t2' overlap") if $overlap;
    }
    push @rects, [$title, $g];
    next if ($p->{type} // '') eq 'row';
    err("$dash_path: panel '$title' has no query") unless @{ $p->{targets} || [] };
    for my $d ($p->{datasource}, map { $_->{datasource} } @{ $p->{targets} || [] }) {
      err("$dash_path: panel '$title' does not use the $ds datasource")
        unless ref $d eq 'HASH' && ($d->{uid} // '') eq $ds;
    }
    $all_exprs .= "$_->{expr}\n" for @{ $p->{targets} || [] };
  }
  # The panels the dashboard exists for.
  for my $m (qw(kvc_kv_effective_capacity_tokens kvc_kv_physical_free_tokens
                kvc_kv_compression_ratio kvc_kv_kvs_held kvc_kv_kvs_uncompressed kvc_kv_blocks_free
                kvc_kv_blocks kvc_worker_running_requests kvc_worker_waiting_requests
                kvc_worker_batch_size_bucket kvc_worker_step_seconds_bucket
                kvc_router_time_to_first_token_seconds_bucket kvc_router_inter_token_seconds_bucket
                kvc_router_request_duration_seconds_bucket kvc_router_requests_total
                kvc_worker_preemptions_total kvc_kv_evicted_kvs_total kvc_kv_compactions_total
                kvc_router_worker_up)) {
    err("$dash_path: no panel queries $m") unless $all_exprs =~ /(?<![A-Za-z0-9_])\Q$m\E(?![A-Za-z0-9_])/;
  }
}

if (@errors) {
  print STDERR "deploy check: $_\n" for @errors;
  printf STDERR "deploy check: %d problem(s)\n", scalar @errors;
  exit 1;
}
printf "deploy check: OK (%d files, %d metrics known, %d expressions, %d Kubernetes objects)\n",
  scalar @deploy_files, scalar keys %metrics, scalar @exprs, scalar keys %objects;
exit 0;
