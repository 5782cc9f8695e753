#!/usr/bin/env bash
# ctest `deploy_check` (label unit): validates deploy/ without Docker or a cluster.
# Run from the repository root (ctest does):  tests/unit/deploy/check.sh
#   1. promtool: rules.yml and both scrape configs are valid; tests/unit/deploy/rules_test.yml
#      (every alert fires on its condition and stays quiet beside it, recording rules compute
#      what they claim).
#   2. deploy/generate.py --check: the dashboard and the PrometheusRule are up to date.
#   3. check_deploy.pl: metric and label names against docs/metrics.md, YAML/JSON parse,
#      Kubernetes manifests consistent (labels, ports, probes, flags, --workers list), dashboard
#      structure.
#   4. kubectl kustomize (when kubectl is installed): both kustomizations build.
# Needs promtool (Debian package prometheus, from scripts/install-deps), perl and python3.
set -euo pipefail
cd "${1:-.}"
[ -f deploy/prometheus/rules.yml ] || { echo "check.sh: run from the repository root" >&2; exit 2; }
for tool in promtool perl python3; do
  command -v "$tool" >/dev/null || { echo "check.sh: $tool is required (scripts/install-deps)" >&2; exit 1; }
done
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

step() { echo "== $*"; }

step "promtool check rules"
promtool check rules deploy/prometheus/rules.yml

step "promtool test rules"
promtool test rules tests/unit/deploy/rules_test.yml

step "promtool check config (static targets)"
promtool check config deploy/prometheus/prometheus.yml

step "promtool check config (Kubernetes service discovery)"
# Debian's Prometheus is built without Kubernetes service discovery, so its promtool rejects
# kubernetes_sd_configs. Then check everything else (relabeling included) with the discovery
# block swapped for a static target; the discovery block itself is three lines.
if ! promtool check config deploy/prometheus/prometheus-kubernetes.yml > "$TMP/k8s.out" 2>&1; then
  if grep -q "field kubernetes_sd_configs not found" "$TMP/k8s.out"; then
    cp deploy/prometheus/rules.yml "$TMP/rules.yml"
    perl -0pe 's/kubernetes_sd_configs:\n(\s+)- role: pod\n/static_configs:\n$1- targets:\n$1    - 127.0.0.1:9461\n/' \
      deploy/prometheus/prometheus-kubernetes.yml > "$TMP/prometheus-kubernetes.yml"
    grep -q kubernetes_sd_configs "$TMP/prometheus-kubernetes.yml" && {
      echo "check.sh: could not substitute kubernetes_sd_configs" >&2; exit 1; }
    promtool check config "$TMP/prometheus-kubernetes.yml"
  else
    cat "$TMP/k8s.out" >&2
    exit 1
  fi
else
  cat "$TMP/k8s.out"
fi

step "generated files up to date"
python3 deploy/generate.py --check

step "manifests, dashboard, metric names"
perl tests/unit/deploy/check_deploy.pl

if command -v kubectl >/dev/null; then
  step "kubectl kustomize"
  kubectl kustomize deploy/k8s > "$TMP/base.yaml"
  kubectl kustomize deploy/k8s/monitoring > "$TMP/monitoring.yaml"
  for kind in ConfigMap Service Deployment StatefulSet HorizontalPodAutoscaler PodDisruptionBudget; do
    grep -q "^kind: $kind\$" "$TMP/base.yaml" || { echo "check.sh: kustomize output lacks a $kind" >&2; exit 1; }
  done
  for kind in PodMonitor PrometheusRule; do
    grep -q "^kind: $kind\$" "$TMP/monitoring.yaml" || { echo "check.sh: monitoring output lacks a $kind" >&2; exit 1; }
  done
  # The generated ConfigMaps' hashed names replace the references in the workloads.
  grep -q "name: kvc-router-flags-[a-z0-9]\{10\}$" "$TMP/base.yaml" || {
    echo "check.sh: the router's flags ConfigMap reference was not rewritten" >&2; exit 1; }
  echo "kustomize: OK"
else
  echo "== kubectl not installed: kustomize build not run (check_deploy.pl covered the manifests)"
fi
echo "deploy_check: OK"
