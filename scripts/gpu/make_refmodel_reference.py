#!/usr/bin/env python3
"""Reference logits of models/kvc-ref from transformers, for the engine's parity test.

Runs on the GPU machine (transformers 5.17, tokenizers 0.23; CPU fp32 math is enough). Loads
models/kvc-ref with LlamaForCausalLM in fp32, tokenizes three prompts with its tokenizer.json
(HF tokenizers), and writes $OUT/reference.safetensors (copied to tests/fixtures/kvc-ref/):
  prompt_<p>.ids              int32 [n]    token ids (HF's encoding, add_special_tokens=True)
  prompt_<p>.logit_positions  int32 [k]    positions whose logits are stored
  prompt_<p>.logits           f32   [k, V] transformers' logits at those positions
  prompt_<p>.greedy_tokens    int32 [32]   greedy continuation (plain argmax loop, no cache)
  prompt_<p>.greedy_logits    f32   [8, V] logits of the first 8 greedy steps
and the prompt texts in the metadata (prompt_<p>.text).
Usage: python3 scripts/gpu/make_refmodel_reference.py --model models/kvc-ref --out $OUT
"""
import argparse
import os

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer
from transformers import LlamaForCausalLM

NUM_GREEDY = 32
NUM_GREEDY_ROWS = 8


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/kvc-ref")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(8)
    tok = Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))
    model = LlamaForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32,
                                             attn_implementation="eager").eval()
    filler = ("The ship sailed at dawn, and the crew watched the coast fade into the grey mist. "
              "Nobody spoke of the storm that had kept them in port for a week. ")
    prompts = [
        "Once upon a time",
        "It is a truth universally acknowledged, that a single man in possession of a good "
        "fortune, must be in want of a wife.",
        filler * 6 + "The value for key apple is 48213. " + filler * 6 +
        "question : what is the value for key apple ? answer :",
    ]
    tensors, meta = {}, {}
    for p, text in enumerate(prompts):
        ids = tok.encode(text, add_special_tokens=True).ids
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].float()
        n = len(ids)
        positions = list(range(n)) if n <= 24 else list(range(8)) + list(range(n - 8, n))
        cur, toks, rows = list(ids), [], []
        for step in range(NUM_GREEDY):
            with torch.no_grad():
                row = model(input_ids=torch.tensor([cur]), use_cache=False).logits[0, -1].float()
            t = int(torch.argmax(row))
            toks.append(t)
            if step < NUM_GREEDY_ROWS:
                rows.append(row)
            cur.append(t)
        tensors["prompt_%d.ids" % p] = torch.tensor(ids, dtype=torch.int32)
        tensors["prompt_%d.logit_positions" % p] = torch.tensor(positions, dtype=torch.int32)
        tensors["prompt_%d.logits" % p] = logits[positions].contiguous()
        tensors["prompt_%d.greedy_tokens" % p] = torch.tensor(toks, dtype=torch.int32)
        tensors["prompt_%d.greedy_logits" % p] = torch.stack(rows).contiguous()
        meta["prompt_%d.text" % p] = text
        print("prompt %d: %d tokens, greedy %s" % (p, n, tok.decode(toks)), flush=True)
    os.makedirs(args.out, exist_ok=True)
    save_file(tensors, os.path.join(args.out, "reference.safetensors"), metadata=meta)
    print("wrote", os.path.join(args.out, "reference.safetensors"), flush=True)


if __name__ == "__main__":
    main()
