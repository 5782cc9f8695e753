#!/usr/bin/env python3
"""Builds the logits-parity fixtures of kvc: tests/fixtures/models/<name>/.

Runs where PyTorch + transformers + tokenizers + safetensors are installed (the GPU machine; the
work itself runs on the CPU in fp32, so the result does not depend on the GPU). For each of three
small random-weight models it writes, with transformers' own save_pretrained:

  config.json, model.safetensors (+ generation_config.json)   the model
  tokenizer.json                                               a byte-level BPE trained here
  reference.safetensors                                        the reference outputs:
      prompt_<p>.ids            int32 [n]          token ids of prompt p (p = 0, 1, 2)
      prompt_<p>.logits         f32   [n, vocab]   logits of every prompt position (eager, fp32)
      prompt_<p>.greedy_tokens  int32 [32]         greedy continuation (no EOS stop)
      prompt_<p>.greedy_logits  f32   [32, vocab]  logits that chose each greedy token
                                                   (row 0 = last prompt position)

The greedy reference is a plain loop of full forward passes (argmax, no KV cache, EOS ignored);
transformers' generate(do_sample=False) is run too and must agree with it (checked here, reported
in the metadata). Seeds are chosen so that every greedy step has a clear top-1 margin and no EOS
token is generated, so a correct fp32 engine reproduces the tokens exactly.

Usage: PYTHONUNBUFFERED=1 python3 scripts/gpu/make_model_fixtures.py --out DIR
       (writes DIR/<name>/... and DIR/fixtures.tar holding them all)
"""

import argparse
import json
import math
import os
import sys
import tarfile

import torch
import transformers
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (AutoModelForCausalLM, GenerationConfig, LlamaConfig, LlamaForCausalLM,
                          Qwen2Config, Qwen2ForCausalLM)

NUM_GREEDY = 32
PROMPT_LENGTHS = (5, 19, 40)
# A greedy step must win by at least this fraction of the row's max |logit|.
MIN_REL_MARGIN = 2e-3

CORPUS = """\
The quick brown fox jumps over the lazy dog. A paged key-value cache stores the keys and values
of every attention head in fixed-size blocks, and a block table maps each logical slot to a block.
When memory runs short, the server compresses the cache: it scores every cached token by the
attention it received, evicts the least useful ones and moves the survivors into the holes.
Call me Ishmael. Some years ago, never mind how long precisely, having little or no money in my
purse, and nothing particular to interest me on shore, I thought I would sail about a little and
see the watery part of the world. It is a way I have of driving off the spleen and regulating
the circulation. Whenever I find myself growing grim about the mouth; whenever it is a damp,
drizzly November in my soul; then, I account it high time to get to sea as soon as I can.
It is a truth universally acknowledged, that a single man in possession of a good fortune, must
be in want of a wife. However little known the feelings or views of such a man may be on his
first entering a neighbourhood, this truth is so well fixed in the minds of the surrounding
families, that he is considered the rightful property of some one or other of their daughters.
In the beginning God created the heaven and the earth. And the earth was without form, and void;
and darkness was upon the face of the deep. And the Spirit of God moved upon the face of the waters.
def forward(self, hidden_states, position_ids):
    residual = hidden_states
    hidden_states = self.input_layernorm(hidden_states)
    return residual + self.self_attn(hidden_states, position_ids)
Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 128 256 1024 4096 3.14159 2.71828 1e-5 -17 +23.
Punctuation and symbols: ( ) [ ] { } < > = + - * / % & | ^ ~ ! ? ; : , . ' " ` @ # $ \\ _
Unicode: café naïve résumé Zürich Ελληνικά русский 日本語 中文 한국어 emoji 🙂 🚀 ✓ → ∞.
"""


def log(*args):
    print(*args, flush=True)


def train_tokenizer(vocab_size):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=1, show_progress=False,
                                  special_tokens=["<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    lines = CORPUS.splitlines() * 4
    tok.train_from_iterator(lines, trainer=trainer)
    return tok


def make_prompts(tok, vocab_size):
    texts = [
        "Call me Ishmael.",
        "The server compresses the cache when memory runs short, then moves the survivors.",
        "It is a truth universally acknowledged, that a single man in possession of a good "
        "fortune, must be in want of a wife. In the beginning God created the heaven and the "
        "earth, and darkness was upon the face of the deep.",
    ]
    prompts = []
    for text, n in zip(texts, PROMPT_LENGTHS):
        ids = tok.encode(text).ids
        while len(ids) < n:
            ids = ids + tok.encode(" " + text).ids
        ids = ids[:n]
        assert all(0 <= i < vocab_size for i in ids), ids
        prompts.append(ids)
    return prompts


def llama3_inv_freq(head_dim, theta, factor, low, high, old_ctx):
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    low_wavelen = old_ctx / low
    high_wavelen = old_ctx / high
    wavelen = 2 * math.pi / inv
    out = torch.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (old_ctx / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * out / factor + smooth * out
    medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, out)


def reinit_(model, seed):
    """Random weights with O(1) activations (the default init gives near-constant logits)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(0.6 + 0.8 * torch.rand(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            else:  # [out, in] linear weights (lm_head included when untied)
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))


def make_config(spec):
    kind = spec["kind"]
    common = dict(vocab_size=spec["vocab"], hidden_size=spec["hidden"],
                  intermediate_size=spec["intermediate"], num_hidden_layers=spec["layers"],
                  num_attention_heads=spec["heads"], num_key_value_heads=spec["kv_heads"],
                  max_position_embeddings=512, rms_norm_eps=spec["eps"], hidden_act="silu",
                  tie_word_embeddings=spec["tied"], bos_token_id=0, eos_token_id=spec["eos"],
                  pad_token_id=2)
    rope = {"rope_type": "default", "rope_theta": spec["theta"]}
    if spec.get("llama3"):
        rope = {"rope_type": "llama3", "rope_theta": spec["theta"], **spec["llama3"]}
    if kind == "llama":
        extra = dict(attention_bias=spec.get("attention_bias", False),
                     mlp_bias=spec.get("mlp_bias", False), head_dim=spec["hidden"] // spec["heads"])
        cls = LlamaConfig
    else:
        extra = dict(use_sliding_window=False)
        cls = Qwen2Config
    try:
        cfg = cls(**common, **extra, rope_parameters=rope)
    except TypeError as e:  # transformers < 5: rope_theta + rope_scaling
        log("rope_parameters not accepted (%s); using rope_theta/rope_scaling" % e)
        scaling = None if rope["rope_type"] == "default" else {
            k: v for k, v in rope.items() if k != "rope_theta"}
        cfg = cls(**common, **extra, rope_theta=spec["theta"], rope_scaling=scaling)
    return cfg


def logits_of(model, ids):
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids], dtype=torch.long), use_cache=False)
    return out.logits[0].float()


def greedy(model, ids):
    toks, rows = [], []
    cur = list(ids)
    for _ in range(NUM_GREEDY):
        row = logits_of(model, cur)[-1]
        t = int(torch.argmax(row))
        toks.append(t)
        rows.append(row)
        cur.append(t)
    return toks, torch.stack(rows)


def min_rel_margin(rows):
    worst = float("inf")
    for row in rows:
        top = torch.topk(row, 2).values
        worst = min(worst, float((top[0] - top[1]) / row.abs().max()))
    return worst


def run_generate(model, ids, eos):
    cfg = GenerationConfig(max_new_tokens=NUM_GREEDY, do_sample=False, num_beams=1,
                           pad_token_id=2, bos_token_id=0, eos_token_id=eos)
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([ids], dtype=torch.long),
                             attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             generation_config=cfg, output_logits=True,
                             return_dict_in_generate=True)
    toks = out.sequences[0, len(ids):].tolist()
    rows = torch.stack([l[0].float() for l in out.logits])
    return toks, rows


SPECS = [
    # (a) Llama, GQA 4 q heads / 2 kv heads, head_dim 16, llama3 RoPE scaling with a small
    # original context so that all three frequency bands (kept, smoothed, scaled) occur.
    dict(name="llama_gqa_llama3", kind="llama", vocab=384, hidden=64, intermediate=160, layers=3,
         heads=4, kv_heads=2, eps=1e-5, theta=10000.0, tied=False, eos=1,
         llama3=dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                     original_max_position_embeddings=64)),
    # (b) Qwen2: q/k/v bias, no o_proj bias, GQA 2 q heads / 1 kv head, head_dim 32.
    dict(name="qwen2_qkv_bias", kind="qwen2", vocab=400, hidden=64, intermediate=176, layers=2,
         heads=2, kv_heads=1, eps=1e-6, theta=1000000.0, tied=False, eos=[1, 2]),
    # (c) Llama with tied embeddings, MHA, attention_bias (q/k/v/o) and mlp_bias.
    dict(name="llama_tied", kind="llama", vocab=320, hidden=64, intermediate=128, layers=2,
         heads=4, kv_heads=4, eps=1e-5, theta=10000.0, tied=True, eos=1, attention_bias=True,
         mlp_bias=True),
]


def build(spec, out_dir):
    name = spec["name"]
    d = os.path.join(out_dir, name)
    os.makedirs(d, exist_ok=True)
    tok = train_tokenizer(spec["vocab"])
    log("%s: tokenizer vocab %d" % (name, tok.get_vocab_size()))
    tok.save(os.path.join(d, "tokenizer.json"))
    prompts = make_prompts(tok, spec["vocab"])
    eos = spec["eos"] if isinstance(spec["eos"], list) else [spec["eos"]]

    cls = LlamaForCausalLM if spec["kind"] == "llama" else Qwen2ForCausalLM
    chosen = None
    for seed in range(1, 200):
        torch.manual_seed(seed)
        cfg = make_config(spec)
        try:
            model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
        except Exception as e:  # older API
            log("from_config(attn_implementation=eager) failed (%s); plain constructor" % e)
            model = cls(cfg)
        model = model.float().eval()
        reinit_(model, seed)
        tokens = []
        ok = True
        margin = float("inf")
        for ids in prompts:
            toks, rows = greedy(model, ids)
            margin = min(margin, min_rel_margin(rows))
            if any(t in eos for t in toks):
                ok = False
        if ok and margin >= MIN_REL_MARGIN:
            chosen = (seed, model, margin)
            break
        log("%s: seed %d rejected (margin %.2e, eos hit %s)" % (name, seed, margin, not ok))
    assert chosen is not None, name
    seed, model, margin = chosen
    log("%s: seed %d, min top-1 margin %.3e" % (name, seed, margin))
    model.save_pretrained(d)

    # Reload what was saved: the reference comes from the files the C++ engine reads.
    ref = AutoModelForCausalLM.from_pretrained(d, attn_implementation="eager",
                                               dtype=torch.float32).eval()
    log("%s: attn_implementation=%s dtype=%s" % (name, ref.config._attn_implementation,
                                                  next(ref.parameters()).dtype))
    # The reloaded model must compute what the in-memory one did (catches load bugs such as
    # uninitialised non-persistent buffers); if not, keep the in-memory model as the reference.
    reload_diff = float((logits_of(ref, prompts[-1]) - logits_of(model, prompts[-1])).abs().max())
    log("%s: reloaded vs in-memory max |logit diff| %.3e" % (name, reload_diff))
    if not reload_diff < 1e-4:
        log("%s: WARNING reloaded model differs; using the in-memory model" % name)
        ref = model
    if spec.get("llama3"):
        l3 = spec["llama3"]
        want = llama3_inv_freq(spec["hidden"] // spec["heads"], spec["theta"], l3["factor"],
                               l3["low_freq_factor"], l3["high_freq_factor"],
                               l3["original_max_position_embeddings"])
        got = ref.model.rotary_emb.inv_freq.float().cpu()
        log("%s: inv_freq %s" % (name, got.tolist()))
        assert torch.allclose(got, want, rtol=1e-6, atol=0), (got, want)

    tensors = {}
    meta = {"transformers": transformers.__version__, "torch": torch.__version__,
            "seed": str(seed), "min_rel_margin": "%.6e" % margin,
            "num_greedy": str(NUM_GREEDY), "reload_max_abs_diff": "%.3e" % reload_diff}
    gen_max_diff = 0.0
    gen_status = "agrees"
    for p, ids in enumerate(prompts):
        logits = logits_of(ref, ids)
        toks, rows = greedy(ref, ids)
        assert torch.equal(rows[0], logits[-1]) or torch.allclose(rows[0], logits[-1], atol=1e-6)
        try:
            gtoks, grows = run_generate(ref, ids, eos)
            if gtoks != toks:
                gen_status = "DIFFERS"
                log("%s: WARNING generate() tokens %s != greedy loop %s" % (name, gtoks, toks))
            else:
                gen_max_diff = max(gen_max_diff, float((grows - rows).abs().max()))
        except Exception as e:
            import traceback
            traceback.print_exc()
            gen_status = "failed: %s" % e
        tensors["prompt_%d.ids" % p] = torch.tensor(ids, dtype=torch.int32)
        tensors["prompt_%d.logits" % p] = logits.contiguous()
        tensors["prompt_%d.greedy_tokens" % p] = torch.tensor(toks, dtype=torch.int32)
        tensors["prompt_%d.greedy_logits" % p] = rows.contiguous()
        log("%s: prompt %d len %d max|logit| %.3f greedy %s" % (
            name, p, len(ids), float(logits.abs().max()), toks))
    meta["generate_max_abs_diff"] = "%.3e" % gen_max_diff
    meta["generate_vs_greedy_loop"] = gen_status
    log("%s: generate() vs greedy loop: %s; max |logit diff| %.3e" % (name, gen_status,
                                                                      gen_max_diff))
    save_file(tensors, os.path.join(d, "reference.safetensors"), metadata=meta)
    with open(os.path.join(d, "config.json")) as f:
        log("%s: config.json %s" % (name, f.read()))
    log("%s: files %s" % (name, sorted(os.listdir(d))))
    return name


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(min(8, os.cpu_count() or 1))
    log("torch %s transformers %s" % (torch.__version__, transformers.__version__))
    os.makedirs(args.out, exist_ok=True)
    names = []
    failed = []
    for spec in SPECS:
        try:
            names.append(build(spec, args.out))
        except Exception as e:  # keep going: one broken model should not lose the others
            import traceback
            traceback.print_exc()
            failed.append(spec["name"])
    with tarfile.open(os.path.join(args.out, "fixtures.tar"), "w") as tar:
        for n in names:
            tar.add(os.path.join(args.out, n), arcname=n)
    log("built %s; failed %s" % (names, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
