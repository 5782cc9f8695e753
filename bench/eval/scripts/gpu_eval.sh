#!/usr/bin/env bash
# The 4k kvc-eval on the GPU machine (docs/quality.md, "4k tokens ... CUDA backend"): run from the
# repository root with the bundle made by
#   /work/shared/scripts/gpu-bundle .gpu/eval build/bin/kvc-eval build/bin/eval_runner_cuda_test
# and carried to the machine. Steps run in order of priority while the deadline allows (a step
# that would not fit its estimate is skipped); outputs go to a work folder that is packed into
# $OUT/eval.tar.gz after every step (the device tool returns at most 8 files), with
# $OUT/steps.log (wall time of every step) beside it.
#
#   bench/eval/scripts/gpu_eval.sh DEADLINE_SECONDS STEP...
# Steps:
#   test            eval_runner_cuda_test (mirror exact on CUDA, agreement with the CPU)
#   tiny            4k, 2 cases/task, kvcompress, kernel 15, mirror verified against the device;
#                   stops the script when it fails
#   nomirror        the same with --slot-cache off (the cost of reading slots without the mirror)
#   kvc_k15 kvc_k7  4k, 100 cases/task, kvcompress x all rates, kernel 15 / 7, in 4 parts of 25
#   all_k15 all_k7  4k, 100 cases/task, the other four policies, kernel 15 / 7, in 4 parts of 25
#   cmp_k15 cmp_k7  4k, cases 0-9, all five policies (to compare with the CPU runs case by case)
set -uo pipefail
deadline=$1; shift
start=$(date +%s)
E=${KVC_EVAL_CMD:-".gpu/eval/run kvc-eval --backend cuda --lengths 4096 --dump-cases --no-plots"}
log=$OUT/steps.log
W=/tmp/kvc-eval-work
rm -rf "$W"; mkdir -p "$W"
left() { echo $(( deadline - ($(date +%s) - start) )); }
step() {  # step NAME ESTIMATE_S CMD...: runs CMD if ESTIMATE_S fits, logs its wall time
  local name=$1 est=$2; shift 2
  local l; l=$(left)
  if (( l < est )); then echo "SKIP $name (needs ~${est}s, ${l}s left)" | tee -a "$log"; return 0; fi
  local t0; t0=$(date +%s%N)
  timeout $(( l - 20 )) "$@" > "$W/$name.log" 2>&1
  local rc=$?
  echo "STEP $name rc=$rc wall_ms=$(( ($(date +%s%N) - t0) / 1000000 ))" | tee -a "$log"
  grep -E "retrieval @|prefill .* fork|FAILED|PASSED|agree|error|rror:" "$W/$name.log" | tail -6
  (cd "$W" && tar czf "$OUT/eval.tar.gz" .)
  return $rc
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$W/gpu.txt" 2>&1
for s in "$@"; do
  case $s in
    # The validation steps stop the script when they fail.
    test) step test 60 .gpu/eval/run eval_runner_cuda_test ;;
    tiny)
      step tiny 30 $E --cases 2 --policies kvcompress --pool-kernel 15 --slot-cache verify \
        --out "$W/tiny" || break ;;
    nomirror) step nomirror 30 $E --cases 2 --policies kvcompress --pool-kernel 15 --slot-cache off --out "$W/nomirror" ;;
    cmp_k15) step cmp_k15 30 $E --cases 10 --pool-kernel 15 --out "$W/cmp_k15" ;;
    cmp_k7) step cmp_k7 30 $E --cases 10 --out "$W/cmp_k7" ;;
    kvc_k15|kvc_k7|all_k15|all_k7)
      k=15; [[ $s == *_k7 ]] && k=7
      pol=kvcompress; [[ $s == all_* ]] && pol=snapkv,pyramidkv,streaming,random
      for off in 0 25 50 75; do
        step ${s}_$off 20 $E --policies $pol --pool-kernel $k --cases 25 --case-offset $off \
          --out "$W/${s}_$off"
      done ;;
    *) echo "unknown step $s" | tee -a "$log" ;;
  esac
done
cat "$W/gpu.txt"; ls -la "$OUT"
