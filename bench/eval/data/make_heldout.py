#!/usr/bin/env python3
"""Regenerates bench/eval/data/heldout.txt: the evaluation's committed haystack text.

Reads the held-out split that models/train/prepare_corpus.sh builds (.cache/corpus/heldout.jsonl.gz:
the LAST 5% of each corpus source, cut at a paragraph break, never read by kvc-ref's training) and
keeps the first --bytes-per-source UTF-8 bytes of each source, cut at a paragraph break, so the file
stays small (<= 300 KB) and the evaluation needs no download. Python 3 stdlib only.

  python3 bench/eval/data/make_heldout.py [--corpus .cache/corpus] [--out bench/eval/data/heldout.txt]

Format (read by bench/eval/tasks.cc, LoadHaystackText): header lines starting with '#', then for
each source a line '@@source NAME' followed by its text; the text never contains such a line.
"""
import argparse
import gzip
import json
import os

SOURCES = ["sotu", "moby_dick", "austen", "kjv", "fortunes", "jargon", "python_docs"]


def cut(text, budget):
    """The longest prefix of `text` ending at a paragraph break with at most `budget` bytes."""
    data = text.encode("utf-8")
    if len(data) <= budget:
        return text.rstrip("\n") + "\n"
    prefix = data[:budget].decode("utf-8", "ignore")
    end = prefix.rfind("\n\n")
    if end <= 0:
        raise SystemExit("no paragraph break in the first %d bytes" % budget)
    return prefix[:end] + "\n"


def main():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default=os.path.join(root, ".cache", "corpus"))
    ap.add_argument("--out", default=os.path.join(root, "bench", "eval", "data", "heldout.txt"))
    ap.add_argument("--bytes-per-source", type=int, default=41000)
    a = ap.parse_args()
    texts = {}
    with gzip.open(os.path.join(a.corpus, "heldout.jsonl.gz"), "rt", encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            texts[d["source"]] = d["text"]
    out = ["# kvc evaluation haystacks: held-out text of kvc-ref's corpus (the last 5% of each\n",
           "# source, never used in training), the first ~%d bytes of each source.\n" % a.bytes_per_source,
           "# Regenerate with bench/eval/data/make_heldout.py after models/train/prepare_corpus.sh.\n"]
    for name in SOURCES:
        body = cut(texts[name], a.bytes_per_source)
        if any(l.startswith("@@source") for l in body.split("\n")):
            raise SystemExit("source %s contains a separator line" % name)
        out.append("@@source %s\n" % name)
        out.append(body)
    with open(a.out, "w", encoding="utf-8", newline="\n") as f:
        f.write("".join(out))
    print("wrote %s (%d bytes)" % (a.out, os.path.getsize(a.out)))


if __name__ == "__main__":
    main()
