#!/usr/bin/env python3
"""PyTorch scaled_dot_product_attention (flash backend) on the shapes of
bench/kernels/prefill_attention_bench.cc, for the same-run comparison in docs/benchmarks.md.

32 query heads, 8 KV heads (GQA 4), head_dim 128, bf16, causal; batch = 32768 / n for
n in {512, 2048, 8192, 32768}; median of --iters CUDA-event timings after warm-up.
FLOPs = 4 * head_dim * q_heads * n (n + 1) / 2 per prompt (the causal half), as in our bench.
"""
import argparse

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def median_ms(fn, iters):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=20)
    args = ap.parse_args()
    qh, kvh, d = 32, 8, 128
    print("device: %s, torch %s" % (torch.cuda.get_device_name(), torch.__version__))
    print("%6s %7s %10s %9s %8s" % ("batch", "n", "time_us", "TFLOP/s", "backend"))
    for n in (512, 2048, 8192, 32768):
        batch = 32768 // n
        q = torch.randn(batch, qh, n, d, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(batch, kvh, n, d, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(batch, kvh, n, d, device="cuda", dtype=torch.bfloat16)
        flops = 4.0 * d * qh * n * (n + 1) / 2 * batch
        for name, fn in (
            ("flash", lambda: F.scaled_dot_product_attention(
                q, k.repeat_interleave(qh // kvh, 1), v.repeat_interleave(qh // kvh, 1),
                is_causal=True)),
            ("flash-gqa", lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                                 enable_gqa=True)),
        ):
            try:
                with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                    ms = median_ms(fn, args.iters)
                print("%6d %7d %10.1f %9.1f %8s" % (batch, n, ms * 1e3, flops / (ms * 1e-3) / 1e12,
                                                    name), flush=True)
            except RuntimeError as e:
                print("%6d %7d %10s %9s %8s (%s)" % (batch, n, "-", "-", name, str(e)[:60]),
                      flush=True)
        del q, k, v
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
