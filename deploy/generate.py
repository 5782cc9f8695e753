#!/usr/bin/env python3
"""Writes the generated files of deploy/ from their single sources.

  deploy/grafana/kvc-capacity.json          <- the panel list below
  deploy/k8s/monitoring/prometheus-rule.yaml <- deploy/prometheus/rules.yml

  python3 deploy/generate.py          # rewrite both
  python3 deploy/generate.py --check  # exit 1 if a committed file differs (tests/unit/deploy)

Python 3 standard library only. Dashboard queries use only metric names from docs/metrics.md
(tests/unit/deploy/check.sh enforces it).
"""

import argparse
import json
import os
import sys

DEPLOY = os.path.dirname(os.path.abspath(__file__))
DASHBOARD_PATH = os.path.join(DEPLOY, "grafana", "kvc-capacity.json")
RULES_PATH = os.path.join(DEPLOY, "prometheus", "rules.yml")
PROMETHEUS_RULE_PATH = os.path.join(DEPLOY, "k8s", "monitoring", "prometheus-rule.yaml")

DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
# Worker-side series are filtered by the dashboard's `instance` variable.
W = 'instance=~"$instance"'


# ---------------------------------------------------------------------------------------------
# Panels
# ---------------------------------------------------------------------------------------------


def target(expr, legend="", instant=False, fmt=None):
    t = {"datasource": DS, "expr": expr, "legendFormat": legend or "__auto"}
    if instant:
        t["instant"] = True
        t["range"] = False
    else:
        t["range"] = True
    if fmt:
        t["format"] = fmt
    return t


def timeseries(title, description, targets, unit="short", w=12, h=8, stack=False, min0=True):
    custom = {
        "drawStyle": "line",
        "lineWidth": 1,
        "fillOpacity": 10,
        "showPoints": "never",
        "spanNulls": False,
    }
    if stack:
        custom["stacking"] = {"mode": "normal", "group": "A"}
    defaults = {"unit": unit, "custom": custom}
    if min0:
        defaults["min"] = 0
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DS,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": targets,
        "_size": (w, h),
    }


def stat(title, description, expr, unit="short", decimals=None, w=4, h=4, thresholds=None):
    defaults = {
        "unit": unit,
        "color": {"mode": "thresholds"},
        "thresholds": {
            "mode": "absolute",
            "steps": thresholds or [{"color": "green", "value": None}],
        },
    }
    if decimals is not None:
        defaults["decimals"] = decimals
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DS,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "justifyMode": "auto",
            "orientation": "auto",
            "textMode": "auto",
        },
        "targets": [target(expr)],
        "_size": (w, h),
    }


def up_timeline(title, description, targets, w=12, h=8):
    return {
        "type": "state-timeline",
        "title": title,
        "description": description,
        "datasource": DS,
        "fieldConfig": {
            "defaults": {
                "color": {"mode": "thresholds"},
                "thresholds": {
                    "mode": "absolute",
                    "steps": [{"color": "red", "value": None}, {"color": "green", "value": 1}],
                },
                "mappings": [
                    {
                        "type": "value",
                        "options": {
                            "0": {"text": "down", "color": "red"},
                            "1": {"text": "up", "color": "green"},
                        },
                    }
                ],
                "custom": {"fillOpacity": 80, "lineWidth": 0},
            },
            "overrides": [],
        },
        "options": {
            "showValue": "never",
            "mergeValues": True,
            "rowHeight": 0.8,
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": False},
            "tooltip": {"mode": "single", "sort": "none"},
        },
        "targets": targets,
        "_size": (w, h),
    }


def info_table(title, description, expr, w=12, h=8):
    return {
        "type": "table",
        "title": title,
        "description": description,
        "datasource": DS,
        "fieldConfig": {"defaults": {}, "overrides": []},
        "options": {"showHeader": True, "cellHeight": "sm"},
        "transformations": [
            {
                "id": "organize",
                "options": {
                    "excludeByName": {"Time": True, "Value": True, "__name__": True},
                    "renameByName": {},
                },
            }
        ],
        "targets": [target(expr, instant=True, fmt="table")],
        "_size": (w, h),
    }


def quantiles(histogram, selector="", by="", qs=(0.5, 0.95, 0.99)):
    """histogram_quantile targets of a histogram family, optionally grouped by a label."""
    grouping = f"{by}, le" if by else "le"
    label = ("{{" + by + "}} ") if by else ""
    sel = "{" + selector + "}" if selector else ""
    return [
        target(
            f"histogram_quantile({q}, sum by ({grouping}) "
            f"(rate({histogram}_bucket{sel}[$__rate_interval])))",
            f"{label}p{int(round(q * 100))}",
        )
        for q in qs
    ]


def row(title):
    return {"type": "row", "title": title, "collapsed": False, "panels": []}


RATIO = (
    f"sum(kvc_kv_kvs_uncompressed{{{W}}}) / (sum(kvc_kv_kvs_held{{{W}}}) > 0)"
    f" or sum(kvc_kv_kvs_held{{{W}}}) * 0 + 1"
)

PANELS = [
    row("Fleet capacity"),
    stat(
        "Effective free KV capacity",
        "Tokens of an average request that still fit in the selected workers' free KV blocks "
        "at the compression ratio each worker currently achieves "
        "(kvc_kv_effective_capacity_tokens, summed). Scale the fleet on this figure.",
        f"sum(kvc_kv_effective_capacity_tokens{{{W}}})",
    ),
    stat(
        "Physical free KV capacity",
        "Tokens that fit uncompressed in the free blocks (kvc_kv_physical_free_tokens, summed).",
        f"sum(kvc_kv_physical_free_tokens{{{W}}})",
    ),
    stat(
        "Compression ratio",
        "KVs an uncompressed cache would hold / KVs held, over the selected workers "
        "(1 while nothing is held).",
        RATIO,
        unit="suffix:x",
        decimals=2,
    ),
    stat(
        "Healthy workers",
        "Workers that at least one router saw answer its last poll (kvc_router_worker_up).",
        "sum(max by (worker) (kvc_router_worker_up))",
        thresholds=[{"color": "red", "value": None}, {"color": "green", "value": 1}],
    ),
    stat(
        "Running requests",
        "Sequences in the selected workers' running batches.",
        f"sum(kvc_worker_running_requests{{{W}}})",
    ),
    stat(
        "Waiting requests",
        "Requests waiting for admission (preempted ones included).",
        f"sum(kvc_worker_waiting_requests{{{W}}})",
        thresholds=[{"color": "green", "value": None}, {"color": "orange", "value": 1}],
    ),
    timeseries(
        "Fleet free KV capacity: effective vs physical",
        "Effective: tokens of an average request that still fit at the current compression "
        "ratio. Physical: tokens that fit uncompressed. The gap is what compression buys.",
        [
            target(f"sum(kvc_kv_effective_capacity_tokens{{{W}}})", "effective"),
            target(f"sum(kvc_kv_physical_free_tokens{{{W}}})", "physical"),
        ],
    ),
    timeseries(
        "Free KV capacity per worker: effective vs physical",
        "Per worker, effective (compression-aware) and physical free capacity in tokens.",
        [
            target(f"kvc_kv_effective_capacity_tokens{{{W}}}", "{{instance}} effective"),
            target(f"kvc_kv_physical_free_tokens{{{W}}}", "{{instance}} physical"),
        ],
    ),
    row("Compression"),
    timeseries(
        "Compression ratio per worker",
        "kvs_uncompressed / kvs_held over each worker's running sequences (1 when none).",
        [target(f"kvc_kv_compression_ratio{{{W}}}", "{{instance}}")],
        unit="suffix:x",
        w=8,
    ),
    timeseries(
        "KVs held vs uncompressed",
        "KVs held (summed over layers and KV heads) and the KVs an uncompressed cache would "
        "hold for the same tokens.",
        [
            target(f"kvc_kv_kvs_held{{{W}}}", "{{instance}} held"),
            target(f"kvc_kv_kvs_uncompressed{{{W}}}", "{{instance}} uncompressed"),
        ],
        w=8,
    ),
    timeseries(
        "KV blocks free / total",
        "Blocks in each worker's pool and how many are free (one block = block_size KVs of one "
        "(sequence, layer, kv_head)).",
        [
            target(f"kvc_kv_blocks_free{{{W}}}", "{{instance}} free"),
            target(f"kvc_kv_blocks{{{W}}}", "{{instance}} total"),
        ],
        w=8,
    ),
    timeseries(
        "KVs evicted and moved per second",
        "KVs evicted by compression and KVs moved into holes by compaction.",
        [
            target(
                f"sum by (instance) (rate(kvc_kv_evicted_kvs_total{{{W}}}[$__rate_interval]))",
                "{{instance}} evicted",
            ),
            target(
                f"sum by (instance) (rate(kvc_kv_moved_kvs_total{{{W}}}[$__rate_interval]))",
                "{{instance}} moved",
            ),
        ],
        unit="ops",
        w=8,
    ),
    timeseries(
        "Compressions and compactions per second",
        "Compressions that freed blocks, by trigger (docs/metrics.md lists the triggers), and "
        "head block lists compacted.",
        [
            target(
                f"sum by (trigger) (rate(kvc_kv_compressions_total{{{W}}}[$__rate_interval]))",
                "compressions {{trigger}}",
            ),
            target(
                f"sum(rate(kvc_kv_compactions_total{{{W}}}[$__rate_interval]))",
                "compactions",
            ),
        ],
        unit="ops",
        w=8,
    ),
    timeseries(
        "KVs held per layer",
        "KVs held per layer over the selected workers: compression gives each layer its own "
        "share of the budget.",
        [target(f"sum by (layer) (kvc_kv_layer_kvs{{{W}}})", "layer {{layer}}")],
        w=8,
    ),
    row("Scheduling"),
    timeseries(
        "Running and waiting requests per worker",
        "Sequences in the running batch and requests waiting for admission.",
        [
            target(f"kvc_worker_running_requests{{{W}}}", "{{instance}} running"),
            target(f"kvc_worker_waiting_requests{{{W}}}", "{{instance}} waiting"),
            target(f"kvc_kv_sequences{{{W}}}", "{{instance}} holding blocks"),
        ],
        w=8,
    ),
    timeseries(
        "Batch size (sequences per step)",
        "Quantiles of sequences per engine step, and the mean.",
        quantiles("kvc_worker_batch_size", W, qs=(0.5, 0.95))
        + [
            target(
                f"sum(rate(kvc_worker_batch_size_sum{{{W}}}[$__rate_interval])) / "
                f"sum(rate(kvc_worker_batch_size_count{{{W}}}[$__rate_interval]))",
                "mean",
            )
        ],
        w=8,
    ),
    timeseries(
        "Engine step time by phase",
        "p50 and p95 of the engine step time; prefill if the step prefilled anything, else "
        "decode.",
        quantiles("kvc_worker_step_seconds", W, by="phase", qs=(0.5, 0.95)),
        unit="s",
        w=8,
    ),
    timeseries(
        "Worker tokens per second",
        "Prompt tokens prefilled (recomputation after preemption included) and tokens "
        "generated.",
        [
            target(
                f"sum by (instance) (rate(kvc_worker_prompt_tokens_total{{{W}}}[$__rate_interval]))",
                "{{instance}} prefilled",
            ),
            target(
                f"sum by (instance) "
                f"(rate(kvc_worker_generated_tokens_total{{{W}}}[$__rate_interval]))",
                "{{instance}} generated",
            ),
        ],
        unit="ops",
        w=8,
    ),
    timeseries(
        "Preemptions per second",
        "Sequences preempted by recompute (engine count and the KV-manager's count).",
        [
            target(
                f"sum by (instance) (rate(kvc_worker_preemptions_total{{{W}}}[$__rate_interval]))",
                "{{instance}} engine",
            ),
            target(
                f"sum by (instance) (rate(kvc_kv_preemptions_total{{{W}}}[$__rate_interval]))",
                "{{instance}} kv-manager",
            ),
        ],
        unit="ops",
        w=8,
    ),
    timeseries(
        "Finished requests by reason",
        "Requests finished per second by reason: length, stop, eos, abort, error.",
        [
            target(
                f"sum by (reason) "
                f"(rate(kvc_worker_requests_finished_total{{{W}}}[$__rate_interval]))",
                "{{reason}}",
            )
        ],
        unit="reqps",
        w=8,
        stack=True,
    ),
    row("Latency and traffic (routers)"),
    timeseries(
        "Time to first token",
        "Arrival at the router to the first streamed token: p50, p95, p99.",
        quantiles("kvc_router_time_to_first_token_seconds"),
        unit="s",
        w=8,
    ),
    timeseries(
        "Inter-token latency",
        "Time between consecutive streamed chunks: p50, p95, p99.",
        quantiles("kvc_router_inter_token_seconds"),
        unit="s",
        w=8,
    ),
    timeseries(
        "End-to-end request duration",
        "Arrival to the final message: p50, p95, p99.",
        quantiles("kvc_router_request_duration_seconds"),
        unit="s",
        w=8,
    ),
    timeseries(
        "Requests per second by status code",
        "Generate requests by final gRPC status code.",
        [
            target(
                "sum by (code) (rate(kvc_router_requests_total[$__rate_interval]))", "{{code}}"
            )
        ],
        unit="reqps",
        w=8,
        stack=True,
    ),
    timeseries(
        "Rejections and retries per second",
        "Requests rejected before routing, by reason, and requests retried on another worker "
        "before their first token.",
        [
            target(
                "sum by (reason) (rate(kvc_router_rejections_total[$__rate_interval]))",
                "rejected {{reason}}",
            ),
            target("sum(rate(kvc_router_retries_total[$__rate_interval]))", "retried"),
        ],
        unit="reqps",
        w=8,
    ),
    timeseries(
        "Router tokens per second",
        "Prompt tokens of routed requests and tokens streamed back to clients.",
        [
            target("sum(rate(kvc_router_prompt_tokens_total[$__rate_interval]))", "prompt"),
            target("sum(rate(kvc_router_generated_tokens_total[$__rate_interval]))", "generated"),
        ],
        unit="ops",
        w=8,
    ),
    timeseries(
        "In-flight requests per worker (routers' view)",
        "Requests in flight on each worker, summed over routers.",
        [target("sum by (worker) (kvc_router_in_flight_requests)", "{{worker}}")],
        w=12,
    ),
    timeseries(
        "Effective free capacity per worker (routers' view)",
        "The effective free KV capacity each worker reported at the routers' last poll: what "
        "routing decisions see.",
        [target("max by (worker) (kvc_router_worker_effective_capacity_tokens)", "{{worker}}")],
        w=12,
    ),
    row("Health"),
    up_timeline(
        "Worker up (routers' view)",
        "1 when at least one router saw the worker answer its last poll.",
        [target("max by (worker) (kvc_router_worker_up)", "{{worker}}")],
    ),
    up_timeline(
        "Scrape targets up",
        "Prometheus' own view of the kvc-router and kvc-worker /metrics endpoints.",
        [target('up{job=~"kvc-router|kvc-worker"}', "{{job}} {{instance}}")],
    ),
    info_table(
        "Workers",
        "Served model and backend of every worker (kvc_worker_info).",
        "kvc_worker_info",
        w=24,
        h=6,
    ),
]


def layout(panels):
    """Assigns ids and gridPos: panels flow left to right in rows 24 units wide."""
    out = []
    x = y = 0
    line_h = 0
    next_id = 1
    for p in panels:
        p = dict(p)
        p["id"] = next_id
        next_id += 1
        if p["type"] == "row":
            if x:
                y += line_h
            p["gridPos"] = {"h": 1, "w": 24, "x": 0, "y": y}
            y += 1
            x = line_h = 0
        else:
            w, h = p.pop("_size")
            if x + w > 24:
                y += line_h
                x = line_h = 0
            p["gridPos"] = {"h": h, "w": w, "x": x, "y": y}
            x += w
            line_h = max(line_h, h)
        out.append(p)
    return out


def dashboard():
    panels = [dict(p) for p in PANELS]
    return {
        "__inputs": [
            {
                "name": "DS_PROMETHEUS",
                "label": "Prometheus",
                "description": "The Prometheus that scrapes kvc-router and kvc-worker.",
                "type": "datasource",
                "pluginId": "prometheus",
                "pluginName": "Prometheus",
            }
        ],
        "__requires": [
            {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.4.0"},
            {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
            {"type": "panel", "id": "timeseries", "name": "Time series", "version": ""},
            {"type": "panel", "id": "stat", "name": "Stat", "version": ""},
            {"type": "panel", "id": "state-timeline", "name": "State timeline", "version": ""},
            {"type": "panel", "id": "table", "name": "Table", "version": ""},
        ],
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "description": "kvc: physical vs effective KV capacity, compression, scheduling, "
        "latency and health of kvc-router and kvc-worker. Generated by deploy/generate.py.",
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [],
        "panels": layout(panels),
        "refresh": "30s",
        "schemaVersion": 39,
        "tags": ["kvc", "llm", "kv-cache"],
        "templating": {
            "list": [
                {
                    # Resolves ${DS_PROMETHEUS} when the file is provisioned (no import dialog
                    # to fill __inputs); on a UI import the input replaces it.
                    "name": "DS_PROMETHEUS",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                    "includeAll": False,
                    "multi": False,
                    "options": [],
                    "refresh": 1,
                    "regex": "",
                    "skipUrlSync": False,
                },
                {
                    "name": "instance",
                    "label": "Worker",
                    "type": "query",
                    "datasource": DS,
                    "definition": "label_values(kvc_worker_info, instance)",
                    "query": {
                        "query": "label_values(kvc_worker_info, instance)",
                        "refId": "PrometheusVariableQueryEditor-VariableQuery",
                    },
                    "current": {},
                    "hide": 0,
                    "includeAll": True,
                    "allValue": ".*",
                    "multi": True,
                    "options": [],
                    "refresh": 2,
                    "regex": "",
                    "skipUrlSync": False,
                    "sort": 1,
                },
            ]
        },
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": "kvc: KV capacity and serving",
        "uid": "kvc-capacity",
        "version": 1,
        "weekStart": "",
    }


def dashboard_text():
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


# ---------------------------------------------------------------------------------------------
# PrometheusRule
# ---------------------------------------------------------------------------------------------

PROMETHEUS_RULE_HEADER = """\
# GENERATED by deploy/generate.py from deploy/prometheus/rules.yml: edit that file, then run
#   python3 deploy/generate.py
# The same recording and alerting rules as a prometheus-operator PrometheusRule.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: kvc
  labels:
    app.kubernetes.io/name: kvc
spec:
"""


def prometheus_rule_text():
    with open(RULES_PATH, encoding="utf-8") as f:
        lines = f.read().splitlines()
    try:
        start = lines.index("groups:")
    except ValueError:
        raise SystemExit(f"{RULES_PATH}: no top-level 'groups:' line")
    body = "".join(("  " + line if line else "") + "\n" for line in lines[start:])
    return PROMETHEUS_RULE_HEADER + body


# ---------------------------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a file is out of date")
    args = parser.parse_args()
    outputs = {DASHBOARD_PATH: dashboard_text(), PROMETHEUS_RULE_PATH: prometheus_rule_text()}
    stale = []
    for path, text in outputs.items():
        current = None
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                current = f.read()
        if current == text:
            continue
        if args.check:
            stale.append(os.path.relpath(path, os.path.dirname(DEPLOY)))
        else:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            print("wrote", os.path.relpath(path, os.path.dirname(DEPLOY)))
    if stale:
        print("out of date (run python3 deploy/generate.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
