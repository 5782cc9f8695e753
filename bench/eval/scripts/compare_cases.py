#!/usr/bin/env python3
"""Case-by-case agreement of two kvc-eval runs made with --dump-cases (e.g. CPU vs CUDA backend).

  python3 bench/eval/scripts/compare_cases.py A/results.json B/results.json [--show N]

Over the (task, length, case) records present in both runs and the variants present in both,
prints how many parsed answers are identical, how many each run got right, and the first N
differing answers.
"""
import argparse
import json
import sys


def load(path):
    with open(path) as f:
        j = json.load(f)
    cases = j.get("retrieval", {}).get("cases")
    if cases is None:
        sys.exit(f"{path}: no retrieval.cases (run kvc-eval with --dump-cases)")
    return j.get("device", "?"), {(c["task"], c["length"], c["index"]): c for c in cases}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--show", type=int, default=10)
    args = ap.parse_args()
    dev_a, a = load(args.a)
    dev_b, b = load(args.b)
    keys = sorted(set(a) & set(b))
    if not keys:
        sys.exit("no common cases")
    variants = sorted(set(a[keys[0]]["outputs"]) & set(b[keys[0]]["outputs"]))
    same = right_a = right_b = 0
    diffs = []
    for k in keys:
        for v in variants:
            x, y, ans = a[k]["outputs"][v], b[k]["outputs"][v], a[k]["answer"]
            same += x == y
            right_a += x == ans
            right_b += y == ans
            if x != y:
                diffs.append((k, v, x, y, ans))
    n = len(keys) * len(variants)
    print(f"A: {dev_a}\nB: {dev_b}")
    print(f"{len(keys)} cases x {len(variants)} variants: identical answers {same}/{n} "
          f"({100.0 * same / n:.1f}%); correct A {right_a}, B {right_b}")
    by_task = {}
    for d in diffs:
        by_task[d[0][0]] = by_task.get(d[0][0], 0) + 1
    print("differing answers by task:", by_task)
    for k, v, x, y, ans in diffs[: args.show]:
        print(f"  {k[0]} L={k[1]} #{k[2]} {v}: A {x!r} B {y!r} (answer {ans!r})")


if __name__ == "__main__":
    main()
