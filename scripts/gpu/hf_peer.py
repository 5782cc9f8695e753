#!/usr/bin/env python3
"""Hugging Face transformers peer of kvc-bench-throughput (runs ON the GPU machine).

The same random-weight model and shapes as the kvc run: LlamaForCausalLM built from a config.json
(bench/throughput/configs/llama-3.1-8b.json), random bf16 weights initialised on the GPU, and
`generate(cache_implementation="static", attn_implementation="sdpa", do_sample=True,
temperature=1.0, top_k=0, top_p=1.0, min_new_tokens = max_new_tokens = output_len)` (ignore_eos)
over random prompts of input_len tokens, at the LARGEST batch whose KV cache fits the same
--kv-cache-memory: batch = floor(kv_cache_memory / (2 * layers * kv_heads * head_dim * 2 bytes *
(input_len + output_len))), capped at --num-prompts. A static cache holds every row at full
length, so that is the batch transformers can run in that memory; the kvc engine's pool of the
same bytes holds the same number of uncompressed requests.

Batches run one after another until --num-prompts prompts are done or --max-seconds passed
(checked between batches, after at least one); throughput = (prompt + output tokens of the
finished batches) / their wall time, after one warm-up batch (4 new tokens) that is not counted.
torch.compile is off unless --compile (transformers compiles static-cache decoding by default:
minutes for an 8B model).

--input-len / --output-len take comma lists: the model is built once and each (input, output)
shape writes ONE JSON line (stdout, and appended to --json): kind "hf-peer", the settings, batch,
prompts_done, seconds, total_tok_s, output_tok_s; on any failure the line carries "error" (the
exception) and the script still exits 0 after writing it (exit 1 only if even that fails).
"""
import argparse
import json
import math
import sys
import time
import traceback


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="bench/throughput/configs/llama-3.1-8b.json")
    ap.add_argument("--kv-cache-memory", default="5GiB", help="bytes, or with KiB/MiB/GiB")
    ap.add_argument("--num-prompts", type=int, default=256)
    ap.add_argument("--input-len", default="500", help="one length or a comma list")
    ap.add_argument("--output-len", default="500", help="one length or a comma list")
    ap.add_argument("--max-seconds", type=float, default=120.0, help="per (input, output) shape")
    ap.add_argument("--batch", type=int, default=0, help="override the KV-derived batch")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--compile", action="store_true", help="let generate() torch.compile")
    ap.add_argument("--json", default="", help="append the JSON lines here")
    args = ap.parse_args()

    shapes = [(int(i), int(o)) for i in args.input_len.split(",")
              for o in args.output_len.split(",")]
    model = None
    model_error = None
    model_info = {}
    try:
        model, model_info = build_model(args)
    except BaseException as e:  # noqa: BLE001 - report anything, still write the lines
        traceback.print_exc()
        model_error = "%s: %s" % (type(e).__name__, str(e)[:2000])
    for input_len, output_len in shapes:
        result = {
            "kind": "hf-peer",
            "config": args.config,
            "num_prompts": args.num_prompts,
            "input_len": input_len,
            "output_len": output_len,
            "kv_cache_memory": args.kv_cache_memory,
            "attn_implementation": "sdpa",
            "cache_implementation": "static",
            "do_sample": True,
            "temperature": args.temperature,
            "compiled": bool(args.compile),
            "prompt": "random token ids (seeded)",
        }
        result.update(model_info)
        if model_error:
            result["error"] = model_error
        else:
            try:
                run(args, model, input_len, output_len, result)
            except BaseException as e:  # noqa: BLE001 - OOM, CUDA errors, KeyboardInterrupt
                traceback.print_exc()
                result["error"] = "%s: %s" % (type(e).__name__, str(e)[:2000])
                try:
                    import torch
                    torch.cuda.empty_cache()
                except BaseException:  # noqa: BLE001
                    pass
        line = json.dumps(result, sort_keys=True)
        print(line, flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(line + "\n")
        if "error" not in result:
            print("hf peer: in %d out %d: batch %d, %d prompts in %.2f s = %.1f tok/s total, "
                  "%.1f tok/s output" % (input_len, output_len, result["batch"],
                                         result["prompts_done"], result["seconds"],
                                         result["total_tok_s"], result["output_tok_s"]),
                  flush=True)


def parse_bytes(text):
    units = {"GiB": 1 << 30, "MiB": 1 << 20, "KiB": 1 << 10, "GB": 10**9, "MB": 10**6, "KB": 10**3}
    for suffix, mult in units.items():
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * mult)
    return int(float(text))


def build_model(args):
    """LlamaForCausalLM from the config, random bf16 weights made on the GPU."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, LlamaConfig

    info = {"torch": torch.__version__, "transformers": transformers.__version__,
            "device": torch.cuda.get_device_name(0)}
    with open(args.config) as f:
        cfg_dict = json.load(f)
    cfg = LlamaConfig(**cfg_dict)
    torch.manual_seed(args.seed)
    t0 = time.time()
    with torch.device("cuda"):
        try:
            model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16,
                                                     attn_implementation="sdpa")
        except TypeError:
            model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.bfloat16,
                                                     attn_implementation="sdpa")
    model = model.to(device="cuda", dtype=torch.bfloat16)
    # Explicit random weights (whatever from_config initialised): N(0, 0.02) matrices, norms 1.
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.02)
            else:
                p.fill_(1.0)
    model.eval()
    torch.cuda.synchronize()
    info["model_create_seconds"] = round(time.time() - t0, 3)
    info["attn_implementation_used"] = getattr(model.config, "_attn_implementation", None)
    eos = cfg_dict.get("eos_token_id", 0)
    model._kvc_pad = eos[0] if isinstance(eos, list) else (eos or 0)
    print("hf peer: %s, torch %s, transformers %s, model built in %.1f s (attention %s)"
          % (info["device"], info["torch"], info["transformers"], info["model_create_seconds"],
             info["attn_implementation_used"]), flush=True)
    return model, info


def run(args, model, input_len, output_len, result):
    import torch

    cfg = model.config
    layers = cfg.num_hidden_layers
    kv_heads = cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_bytes_per_token = 2 * layers * kv_heads * head_dim * 2  # K and V, bf16
    kv_mem = parse_bytes(args.kv_cache_memory)
    seq_len = input_len + output_len
    batch = args.batch or kv_mem // (kv_bytes_per_token * seq_len)
    batch = int(min(batch, args.num_prompts))
    result.update(kv_cache_memory_bytes=kv_mem, kv_bytes_per_token=kv_bytes_per_token,
                  batch_from_kv=int(kv_mem // (kv_bytes_per_token * seq_len)))
    if batch < 1:
        raise ValueError("--kv-cache-memory %d bytes holds no sequence of %d tokens (%d bytes)"
                         % (kv_mem, seq_len, kv_bytes_per_token * seq_len))
    print("hf peer: in %d out %d: batch %d (KV-derived %d, %d B/token) in %s"
          % (input_len, output_len, batch, result["batch_from_kv"], kv_bytes_per_token,
             args.kv_cache_memory), flush=True)

    gen = torch.Generator(device="cuda")
    gen.manual_seed(args.seed)

    def generate(n, new_tokens):
        ids = torch.randint(3, cfg.vocab_size, (n, input_len), device="cuda", generator=gen)
        kw = dict(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                  temperature=args.temperature, top_k=0, top_p=1.0, max_new_tokens=new_tokens,
                  min_new_tokens=new_tokens, cache_implementation="static",
                  pad_token_id=model._kvc_pad)
        if not args.compile:
            kw["disable_compile"] = True
        try:
            out = model.generate(**kw)
        except (TypeError, ValueError) as e:
            if "disable_compile" not in str(e):
                raise
            kw.pop("disable_compile")
            result["disable_compile_unsupported"] = True
            out = model.generate(**kw)
        torch.cuda.synchronize()
        if tuple(out.shape) != (n, input_len + new_tokens):
            raise RuntimeError("generate returned shape %s, expected (%d, %d)"
                               % (tuple(out.shape), n, input_len + new_tokens))
        return out

    # Warm-up at the full batch; halve on OOM (recorded), so the line says what really ran.
    torch.cuda.reset_peak_memory_stats()
    while True:
        try:
            with torch.inference_mode():
                generate(batch, min(4, output_len))
            break
        except torch.cuda.OutOfMemoryError:
            if batch == 1:
                raise
            torch.cuda.empty_cache()
            batch //= 2
            result["oom_fallback"] = True
            print("hf peer: out of memory, batch -> %d" % batch, flush=True)
    result["batch"] = batch

    done = 0
    batches = []
    start = time.time()
    while done < args.num_prompts:
        n = min(batch, args.num_prompts - done)
        b0 = time.time()
        with torch.inference_mode():
            generate(n, output_len)
        batches.append(round(time.time() - b0, 3))
        done += n
        print("hf peer: batch %d of %d rows: %.2f s" % (len(batches), n, batches[-1]), flush=True)
        if time.time() - start > args.max_seconds:
            break
    seconds = time.time() - start
    result.update(
        prompts_done=done,
        complete=done == args.num_prompts,
        batches=len(batches),
        batch_seconds=batches,
        seconds=seconds,
        total_tok_s=done * seq_len / seconds,
        output_tok_s=done * output_len / seconds,
        # What all --num-prompts would take at the measured per-batch time.
        estimated_full_seconds=seconds / len(batches) * math.ceil(args.num_prompts / batch),
        max_memory_allocated_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2),
    )


if __name__ == "__main__":
    try:
        main()
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
        sys.exit(1)
