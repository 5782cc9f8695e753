#!/usr/bin/env bash
# The whole kvc-ref recipe. Stages:
#   corpus   (CPU machine, network) download packages, build .cache/corpus/{train,heldout}.jsonl.gz
#   gpu      (GPU machine, no network) tokenizer + training (15 min) + export/verify/eval
#   gpu-1    same, first part: tokenizer + training until ~9 min of wall time, then checkpoint
#   gpu-2    second part: resume (from .cache/kvc-train, or .cache/kvc-train-back carried back),
#            finish training, export to models/kvc-ref, verify with transformers, evaluate
#   smoke    everything at toy scale (30 s of training, 4 eval cases) into .cache/kvc-smoke
#   all      corpus, then gpu (needs a GPU on this machine)
# The GPU machine needs the repo plus .cache/corpus (carried) and, for gpu-2 on a fresh machine,
# .cache/kvc-train-back (ckpt_small.part* and tokenizer.json returned by gpu-1).
set -euo pipefail
T0=$(date +%s)
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
export PYTHONUNBUFFERED=1
TR=models/train
W=${KVC_TRAIN_DIR:-.cache/kvc-train}
DEST=${KVC_REF_OUT:-models/kvc-ref}
TOTAL=${KVC_TRAIN_SECONDS:-900}
stage=${1:-all}
left() { echo $(( $1 - ($(date +%s) - T0) )); }

tokenizer() { python3 $TR/train_tokenizer.py --corpus .cache/corpus --vocab 8192 --out "$1"; }

case "$stage" in
  corpus) $TR/prepare_corpus.sh ;;
  gpu)
    tokenizer $W
    python3 $TR/train.py --tokenizer $W/tokenizer.json --workdir $W --total-seconds "$TOTAL"
    python3 $TR/export_eval.py --tokenizer $W/tokenizer.json --workdir $W --out "$DEST" ;;
  gpu-1)
    tokenizer $W
    python3 $TR/train.py --tokenizer $W/tokenizer.json --workdir $W --total-seconds "$TOTAL" \
      --until-wall "$(left ${KVC_GPU1_WALL:-540})" ;;
  gpu-2)
    if [ ! -f $W/ckpt.pt ]; then
      mkdir -p $W
      cat .cache/kvc-train-back/ckpt_small.part* > $W/ckpt_small.pt
      cp .cache/kvc-train-back/tokenizer.json $W/
    fi
    python3 $TR/train.py --tokenizer $W/tokenizer.json --workdir $W --total-seconds "$TOTAL" \
      --until-wall "$(left ${KVC_GPU2_WALL:-500})"
    python3 $TR/export_eval.py --tokenizer $W/tokenizer.json --workdir $W --out "$DEST" ;;
  smoke)
    S=.cache/kvc-smoke
    rm -rf $S
    tokenizer $S
    python3 $TR/train.py --tokenizer $S/tokenizer.json --workdir $S --total-seconds 40 \
      --stop-after 20 --warmup 20 --log-every 10
    rm $S/ckpt.pt  # exercise the small-checkpoint resume path
    python3 $TR/train.py --tokenizer $S/tokenizer.json --workdir $S --total-seconds 40 \
      --warmup 20 --log-every 10
    python3 $TR/export_eval.py --tokenizer $S/tokenizer.json --workdir $S --out $S/export \
      --cases 4 ;;
  all)
    "$0" corpus
    "$0" gpu ;;
  *) echo "unknown stage $stage" >&2; exit 2 ;;
esac
