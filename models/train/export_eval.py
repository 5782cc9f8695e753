#!/usr/bin/env python3
"""Exports kvc-ref in Hugging Face layout, verifies it with transformers, and evaluates it.

1. Writes OUT/config.json (LlamaForCausalLM), OUT/model.safetensors (bf16), OUT/tokenizer.json,
   OUT/generation_config.json through transformers' own save_pretrained.
2. Loads OUT with LlamaForCausalLM.from_pretrained and compares its fp32 logits with the training
   model's (same bf16-rounded weights); greedy generations of both must be identical.
3. Full-cache retrieval accuracy per task at 1k/2k/4k on held-out haystacks (last 5% of each
   source, eval seeds 7_000_000+), held-out and train perplexity, sample generations.
4. Plots the training loss to OUT/loss.png; writes OUT/results.json.
"""
import argparse
import json
import os
import shutil
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tasks  # noqa: E402
from model import Config, KvcLlama, hf_state_dict  # noqa: E402

EVAL_SEED = 7_000_000


def hf_config(cfg):
    from transformers import LlamaConfig
    kw = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
              intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_hidden_layers,
              num_attention_heads=cfg.num_attention_heads,
              num_key_value_heads=cfg.num_key_value_heads, head_dim=cfg.head_dim,
              hidden_act="silu", max_position_embeddings=cfg.max_position_embeddings,
              rms_norm_eps=cfg.rms_norm_eps, initializer_range=cfg.initializer_range,
              attention_bias=False, mlp_bias=False, tie_word_embeddings=True,
              bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id,
              pad_token_id=cfg.pad_token_id, attention_dropout=0.0)
    try:
        return LlamaConfig(**kw, rope_parameters={"rope_type": "default",
                                                  "rope_theta": cfg.rope_theta})
    except TypeError:
        return LlamaConfig(**kw, rope_theta=cfg.rope_theta)


@torch.no_grad()
def greedy(model, ids, max_new, stop_ids=()):
    """Batched greedy decoding without a cache (recomputes the prefix each step)."""
    out = ids
    for _ in range(max_new):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            h = model.hidden(out)[:, -1]
            nxt = model.lm_head(h).float().argmax(-1, keepdim=True)
        out = torch.cat([out, nxt], 1)
    return out[:, ids.shape[1]:]


@torch.no_grad()
def greedy_fp32(model, ids, max_new):
    out = ids
    for _ in range(max_new):
        nxt = model(out)[:, -1].argmax(-1, keepdim=True)
        out = torch.cat([out, nxt], 1)
    return out[:, ids.shape[1]:]


def main():
    t0 = time.time()
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default=".cache/corpus")
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--workdir", default=".cache/kvc-train")
    ap.add_argument("--out", required=True)
    ap.add_argument("--cases", type=int, default=50)
    ap.add_argument("--lengths", default="1024,2048,4096")
    a = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device("cuda")
    tok = Tokenizer.from_file(a.tokenizer)
    ck = torch.load(os.path.join(a.workdir, "ckpt.pt"), map_location="cpu", weights_only=False)
    cfg = Config(**ck["config"])
    model = KvcLlama(cfg)
    model.load_state_dict(ck["model"])
    # Round to the exported bf16 weights, keep computing in fp32.
    model.load_state_dict({k: v.to(torch.bfloat16).float() for k, v in model.state_dict().items()})
    model = model.to(dev).eval()
    res = {"params": model.num_params(), "config": cfg.__dict__,
           "train": {k: ck["state"][k] for k in ("step", "elapsed")}}
    log = ck["state"]["log"]
    if log:
        res["train"]["final_log"] = log[-1]
        last = [r for r in log[-8:]]
        res["train"]["final_loss_avg_last8"] = {
            k: float(np.mean([r[k] for r in last])) for k in ("loss", "lm_loss", "answer_loss")}

    # 1. Export through transformers.
    from transformers import LlamaForCausalLM
    hcfg = hf_config(cfg)
    hf = LlamaForCausalLM(hcfg)
    sd = hf_state_dict(model)
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    print("load into HF: missing", missing, "unexpected", unexpected, flush=True)
    assert not unexpected and all(m == "lm_head.weight" for m in missing), (missing, unexpected)
    hf = hf.to(torch.bfloat16)
    os.makedirs(a.out, exist_ok=True)
    hf.save_pretrained(a.out)
    shutil.copy(a.tokenizer, os.path.join(a.out, "tokenizer.json"))
    cpath = os.path.join(a.out, "config.json")
    conf = json.load(open(cpath))
    conf.setdefault("rope_theta", cfg.rope_theta)  # for readers of the pre-v5 layout
    conf.setdefault("torch_dtype", "bfloat16")
    conf.setdefault("dtype", "bfloat16")
    json.dump(conf, open(cpath, "w"), indent=2, sort_keys=True)
    print("config.json:", json.dumps(conf, sort_keys=True), flush=True)
    res["files"] = {f: os.path.getsize(os.path.join(a.out, f)) for f in sorted(os.listdir(a.out))}
    print("files", res["files"], flush=True)
    del hf

    # 2. Verify with transformers.
    try:
        hf = LlamaForCausalLM.from_pretrained(a.out, dtype=torch.float32)
    except TypeError:
        hf = LlamaForCausalLM.from_pretrained(a.out, torch_dtype=torch.float32)
    hf = hf.to(dev).eval()
    held = tasks.load_split(a.corpus, "heldout")
    hs_train = tasks.Haystack(tok, tasks.load_split(a.corpus, "train"))
    vi = tasks.VocabInfo(tok)
    res["needle_words"] = vi.words.tolist()
    hs_held = tasks.Haystack(tok, held)
    rng = np.random.default_rng(EVAL_SEED - 1)
    bos = tok.token_to_id("<|bos|>")
    ids = torch.tensor(np.stack([np.concatenate([[bos], hs_held.window(rng, 1023, vi)])
                                 for _ in range(2)]), device=dev)
    with torch.no_grad():
        l_mine = model(ids).float()
        l_hf = hf(ids).logits.float()
    diff = (l_mine - l_hf).abs().max().item()
    rel = diff / l_hf.abs().max().item()
    agree = (l_mine.argmax(-1) == l_hf.argmax(-1)).float().mean().item()
    print("logits fp32 max|diff| %.3e (rel %.3e), argmax agreement %.5f" % (diff, rel, agree),
          flush=True)
    res["parity"] = {"max_abs_diff_fp32": diff, "rel": rel, "argmax_agree": agree,
                     "ok": bool(rel < 1e-4)}
    # bf16 parity of the HF model in bf16 against ours under autocast (informative only).
    prompt = tok.encode("Once upon a time").ids
    p = torch.tensor([prompt], device=dev)
    g_mine = greedy_fp32(model, p, 60)[0].tolist()
    g_hf = hf.generate(p, max_new_tokens=60, do_sample=False,
                       pad_token_id=cfg.pad_token_id)[0, len(prompt):].tolist()
    same = len(g_hf) > 0 and g_mine[:len(g_hf)] == g_hf  # HF may stop early at <|eos|>
    res["generation"] = {"prompt": "Once upon a time", "greedy": tok.decode(g_hf),
                         "greedy_ids_equal_hf": same, "hf_len": len(g_hf)}
    print("greedy (HF):", repr(tok.decode(g_hf)), "| equal to ours:", same, flush=True)
    torch.manual_seed(0)
    samples = []
    for prompt_text in ["Once upon a time", "It is a truth universally acknowledged",
                        "Fellow-Citizens of the Senate and House of Representatives:"]:
        p = torch.tensor([tok.encode(prompt_text).ids], device=dev)
        s = hf.generate(p, max_new_tokens=80, do_sample=True, temperature=0.8, top_k=50,
                        pad_token_id=cfg.pad_token_id)[0, p.shape[1]:]
        samples.append({"prompt": prompt_text, "sampled_t0.8_top50": tok.decode(s.tolist())})
        print("sample:", repr(prompt_text + tok.decode(s.tolist())), flush=True)
    res["samples"] = samples

    # 3. Retrieval accuracy (full cache), held-out haystacks.
    lengths = [int(x) for x in a.lengths.split(",")]
    acc = {}
    examples = {}
    reencode_ok = reencode_n = 0
    hf_checks = []
    for ti, task in enumerate(tasks.TASKS):
        acc[task] = {}
        for li, L in enumerate(lengths):
            rng = np.random.default_rng(EVAL_SEED + 1000 * ti + li)
            cases = [tasks.eval_case(tok, hs_held, vi, rng, task, L - 24) for _ in range(a.cases)]
            for ids_np, _ in cases[:5]:
                text = tok.decode(ids_np[1:].tolist(), skip_special_tokens=False)
                reencode_ok += int(tok.encode(text).ids == ids_np.tolist())
                reencode_n += 1
            correct = 0
            bs = max(1, 65536 * 2 // L)
            for s in range(0, len(cases), bs):
                chunk = cases[s:s + bs]
                x = torch.tensor(np.stack([c[0] for c in chunk]), device=dev)
                gen = greedy(model, x, 24).tolist()
                for (ids_np, ans), g in zip(chunk, gen):
                    out = tasks.parse_answer(tok.decode(g))
                    correct += int(out == ans)
                    if (task, L) not in examples:
                        examples[(task, L)] = {"answer": ans, "output": tok.decode(g)}
            acc[task][L] = correct / len(cases)
            print("acc %-14s L=%5d  %.3f" % (task, L, acc[task][L]), flush=True)
            if L == lengths[-1] or li == 0:  # HF (KV cache) on the first 3 cases agrees?
                for ids_np, ans in cases[:3]:
                    x = torch.tensor([ids_np.tolist()], device=dev)
                    g = hf.generate(x, max_new_tokens=24, do_sample=False,
                                    pad_token_id=cfg.pad_token_id)[0, x.shape[1]:].tolist()
                    hf_checks.append(tasks.parse_answer(tok.decode(g)) == ans)
    res["retrieval_accuracy"] = acc
    res["retrieval_examples"] = {"%s@%d" % k: v for k, v in examples.items()}
    res["hf_kv_cache_correct_on_checked"] = [sum(hf_checks), len(hf_checks)]
    res["prompt_reencode_identical"] = [reencode_ok, reencode_n]
    res["mean_accuracy"] = {L: float(np.mean([acc[t][L] for t in acc])) for L in lengths}
    print("mean", res["mean_accuracy"], "hf checks", sum(hf_checks), "/", len(hf_checks),
          "re-encode", reencode_ok, "/", reencode_n, flush=True)
    ex_ids, ex_ans = tasks.eval_case(tok, hs_held, vi, np.random.default_rng(EVAL_SEED - 2),
                                     "niah_single", 1000)
    x = torch.tensor([ex_ids.tolist()], device=dev)
    g = hf.generate(x, max_new_tokens=16, do_sample=False, pad_token_id=cfg.pad_token_id)
    text = tok.decode(ex_ids[1:].tolist())
    res["retrieval_sample"] = {"prompt_tail": text[-300:], "needle_at": text.find("special magic"),
                               "expected": ex_ans,
                               "hf_generated": tok.decode(g[0, x.shape[1]:].tolist())}
    print("retrieval sample:", res["retrieval_sample"], flush=True)

    # Perplexity (held-out vs train) on 1024-token prose windows.
    ppl = {}
    for split, hs in (("heldout", hs_held), ("train", hs_train)):
        per = {}
        for si, name in enumerate(hs.names):
            one = tasks.Haystack.__new__(tasks.Haystack)
            one.names, one.arrays, one.p = [name], [hs.arrays[si]], np.array([1.0])
            r = np.random.default_rng(EVAL_SEED + 77 + si)
            x = torch.tensor(np.stack([np.concatenate([[bos], one.window(r, 1024, vi)])
                                       for _ in range(16)]), device=dev)
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                lg = model(x[:, :-1]).float()
            per[name] = F.cross_entropy(lg.flatten(0, 1), x[:, 1:].flatten()).item()
        per["mean"] = float(np.mean(list(per.values())))
        ppl[split] = {k: {"loss": v, "ppl": float(np.exp(v))} for k, v in per.items()}
        print("loss/ppl", split, {k: round(v, 3) for k, v in per.items()}, flush=True)
    res["prose_loss"] = ppl

    # 4. Loss plot.
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    st = [r["step"] for r in log]
    fig, ax = plt.subplots(1, 2, figsize=(12, 4.5))
    ax[0].plot(st, [r["lm_loss"] for r in log], label="prose/haystack tokens (weight 1)")
    ax[0].plot(st, [r["answer_loss"] for r in log], label="retrieval answer tokens (weight 20)")
    ax[0].plot(st, [r["loss"] for r in log], label="weighted loss", alpha=0.6)
    ax[0].set_yscale("log")
    ax[0].set_xlabel("step")
    ax[0].set_ylabel("cross-entropy (nats)")
    prev = None
    for r in log:
        if r["seq_len"] != prev:
            ax[0].axvline(r["step"], color="grey", lw=0.5)
            ax[0].text(r["step"], ax[0].get_ylim()[1] * 0.8, str(r["seq_len"]), fontsize=7)
            prev = r["seq_len"]
    ax[0].legend(fontsize=8)
    ax[0].set_title("kvc-ref training loss (context length marked)")
    for task in acc:
        ax[1].plot(lengths, [acc[task][L] for L in lengths], marker="o", label=task)
    ax[1].set_xscale("log", base=2)
    ax[1].set_xticks(lengths)
    ax[1].set_xticklabels([str(L) for L in lengths])
    ax[1].set_ylim(-0.02, 1.02)
    ax[1].set_xlabel("context length (tokens)")
    ax[1].set_ylabel("exact-match accuracy (held-out)")
    ax[1].legend(fontsize=8)
    ax[1].set_title("retrieval accuracy, full KV cache")
    fig.tight_layout()
    fig.savefig(os.path.join(a.out, "loss.png"), dpi=110)
    res["eval_seconds"] = time.time() - t0
    json.dump(res, open(os.path.join(a.out, "results.json"), "w"), indent=1, default=str)
    print("done in %.1fs" % (time.time() - t0), flush=True)


if __name__ == "__main__":
    main()
