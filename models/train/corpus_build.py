#!/usr/bin/env python3
"""Normalizes the unpacked corpus packages into a train / held-out text bundle.

Called by prepare_corpus.sh (Python 3 stdlib only). Reads the unpacked packages under --scratch
and writes --out/train.jsonl.gz and --out/heldout.jsonl.gz: one JSON line per source,
{"source": name, "text": ...}. The held-out part is the LAST --heldout-frac (default 5%) of each
source's characters, cut at a paragraph boundary; nothing of it is used for training (neither
as language-model text nor as retrieval haystacks). A manifest.json lists sizes.
"""
import argparse
import glob
import gzip
import json
import os
import re

BOX = re.compile("[\u2500-\u257f]")


def unwrap(text):
    """Joins hard-wrapped lines inside paragraphs; keeps tables/indented blocks as they are."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        lines = [l.rstrip() for l in para.split("\n") if l.strip()]
        if not lines:
            continue
        indents = [len(l) - len(l.lstrip(" ")) for l in lines]
        base = min(indents)
        lines = [l[base:] for l in lines]
        if any(BOX.search(l) for l in lines) or any(i > base for i in indents[1:]):
            out.append("\n".join(lines))
        else:
            out.append(" ".join(l.strip() for l in lines))
    return "\n\n".join(out)


def clean(text):
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub(r".\x08", "", text)  # overstriking (fortunes)
    text = re.sub(r"[\x00-\x08\x0b-\x1f\x7f]", "", text)
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip() + "\n"


def sotu(root):
    docs = []
    for path in sorted(glob.glob(os.path.join(root, "package/sotu/data/*.txt"))):
        m = re.match(r"(\d{4})_(.*)_[a-z]+$", os.path.basename(path)[:-4])
        year, who = m.group(1), m.group(2).replace("_", " ").title()
        body = open(path, encoding="utf-8").read()
        body = "\n\n".join(re.sub(r"\s+", " ", p).strip() for p in body.split("\n") if p.strip())
        docs.append("State of the Union Address by %s, %s.\n\n%s" % (who, year, body))
    return "\n\n".join(docs)


def moby(root):
    return unwrap(open(os.path.join(root, "package/moby-dick/data/data.txt"), encoding="utf-8").read())


def austen(root):
    order = ["sensesensibility", "prideprejudice", "mansfieldpark", "emma", "northangerabbey",
             "persuasion"]
    return "\n\n".join(unwrap(open(os.path.join(root, "austen", n + ".txt"), encoding="utf-8").read())
                       for n in order)


def kjv(root):
    out, verse = [], None
    for line in open(os.path.join(root, "kjv.txt"), encoding="utf-8"):
        line = line.rstrip("\n")
        m = re.match(r"^  (\d+) (.*)$", line)
        if m:
            if verse:
                out.append(verse)
            verse = m.group(1) + " " + m.group(2).strip()
        elif not line.strip():
            if verse:
                out.append(verse)
                verse = None
        elif line.startswith(" ") or verse is None:
            if verse:
                out.append(verse)
                verse = None
            out.append("\n" + line.strip())  # book/chapter heading
        else:
            verse += " " + line.strip()
    if verse:
        out.append(verse)
    return "\n".join(out).strip()


def fortunes(root):
    d = os.path.join(root, "x/usr/share/games/fortunes")
    entries = []
    for path in sorted(glob.glob(os.path.join(d, "*"))):
        if path.endswith((".dat", ".u8")) or os.path.islink(path) or not os.path.isfile(path):
            continue
        raw = open(path, "rb").read().decode("utf-8", "replace")
        for e in re.split(r"\n%\n", raw):
            e = e.strip("\n")
            if e.strip() and e.strip() != "%":
                entries.append(e)
    return "\n\n".join(entries)


def jargon(root):
    raw = gzip.open(os.path.join(root, "x/usr/share/doc/jargon-text/jargon.txt.gz")).read()
    return unwrap(raw.decode("utf-8", "replace"))


def pydoc(root):
    files = sorted(glob.glob(os.path.join(root, "pd/usr/share/doc/python3.11/html/_sources/**/*.rst.txt"),
                             recursive=True))
    return "\n\n".join(open(f, encoding="utf-8", errors="replace").read() for f in files)


SOURCES = [("sotu", sotu), ("moby_dick", moby), ("austen", austen), ("kjv", kjv),
           ("fortunes", fortunes), ("jargon", jargon), ("python_docs", pydoc)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scratch", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--heldout-frac", type=float, default=0.05)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    manifest = {"heldout_frac": a.heldout_frac, "sources": {}}
    with gzip.open(os.path.join(a.out, "train.jsonl.gz"), "wt", encoding="utf-8", compresslevel=9) as tr, \
         gzip.open(os.path.join(a.out, "heldout.jsonl.gz"), "wt", encoding="utf-8", compresslevel=9) as ho:
        for name, fn in SOURCES:
            text = clean(fn(a.scratch))
            cut = int(len(text) * (1 - a.heldout_frac))
            nl = text.find("\n\n", cut)
            cut = nl + 2 if nl >= 0 else cut
            train, held = text[:cut], text[cut:]
            tr.write(json.dumps({"source": name, "text": train}) + "\n")
            ho.write(json.dumps({"source": name, "text": held}) + "\n")
            manifest["sources"][name] = {"train_chars": len(train), "heldout_chars": len(held)}
            print("%-12s train %9d chars  heldout %8d chars" % (name, len(train), len(held)))
    with open(os.path.join(a.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)


if __name__ == "__main__":
    main()
