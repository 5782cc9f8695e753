#!/usr/bin/env python3
"""Trains kvc-ref: prose language modelling mixed with synthetic long-context retrieval.

Recipe (see models/kvc-ref/README.md): bf16 autocast, AdamW (lr 1e-3, betas 0.9/0.95, wd 0.05,
200-step warm-up, cosine to 10%), grad clip 1.0, ~64k tokens per step, context curriculum
256 -> 512 -> 1024 -> 2048 -> 4096 (4096 for the last 60% of the time), retrieval answers weighted
x20 in the loss, up to 4 questions per sequence. The schedule is measured in training seconds
(--total-seconds), so the run can be split over several invocations: each one resumes from
WORKDIR/ckpt.pt and stops at --until-wall seconds of its own wall time (or --stop-after training
seconds) and saves a checkpoint. Only the training split is read (text and haystacks).
"""
import argparse
import collections
import json
import math
import multiprocessing as mp
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tasks  # noqa: E402
from model import Config, KvcLlama  # noqa: E402

CURRICULUM = [(0.06, 256), (0.12, 512), (0.22, 1024), (0.40, 2048), (1.01, 4096)]
MIX = {"prose": 0.20, "passkey": 0.08, "niah_single": 0.12, "niah_multikey": 0.20, "kv": 0.20,
       "vartrack": 0.20}
G = {}  # worker globals (inherited through fork)


def seq_len_at(progress):
    for end, t in CURRICULUM:
        if progress < end:
            return t
    return CURRICULUM[-1][1]


def make_batch(seq_len, batch, seed):
    rng = np.random.default_rng(seed)
    names = list(MIX)
    p = np.array([MIX[n] for n in names])
    xs = np.empty((batch, seq_len + 1), dtype=np.int32)
    ws = np.empty((batch, seq_len), dtype=np.float16)
    for i in range(batch):
        task = names[rng.choice(len(names), p=p / p.sum())]
        ids, w = tasks.train_example(G["tok"], G["hs"], G["vi"], rng, task, seq_len)
        xs[i], ws[i] = ids, w
    return xs, ws


def lr_at(step, progress, a):
    if step < a.warmup:
        return a.lr * (step + 1) / a.warmup
    return a.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def main():
    t_start = time.time()
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default=".cache/corpus")
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--workdir", default=".cache/kvc-train")
    ap.add_argument("--total-seconds", type=float, default=900)
    ap.add_argument("--until-wall", type=float, default=1e9, help="stop at this process wall time")
    ap.add_argument("--stop-after", type=float, default=1e9, help="training seconds this run")
    ap.add_argument("--tokens-per-step", type=int, default=65536)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--workers", type=int, default=12)
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--layers", type=int, default=8)
    a = ap.parse_args()
    os.makedirs(a.workdir, exist_ok=True)
    torch.manual_seed(a.seed)
    dev = torch.device("cuda")

    tok = Tokenizer.from_file(a.tokenizer)
    t0 = time.time()
    G["tok"] = tok
    G["hs"] = tasks.Haystack(tok, tasks.load_split(a.corpus, "train"))
    G["vi"] = tasks.VocabInfo(tok)
    ntok = G["hs"].num_tokens()
    print("train tokens per source:", ntok, "total", sum(ntok.values()),
          "(%.1fs)" % (time.time() - t0), "key words:", len(G["vi"].words), flush=True)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # workers are forked after parallel encoding
    pool = mp.get_context("fork").Pool(a.workers)

    cfg = Config(vocab_size=tok.get_vocab_size(), num_hidden_layers=a.layers)
    model = KvcLlama(cfg).to(dev)
    decay = [p for n, p in model.named_parameters() if p.dim() == 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), eps=1e-8, fused=True)
    state = {"step": 0, "elapsed": 0.0, "batches": 0, "log": []}
    ckpt = os.path.join(a.workdir, "ckpt.pt")
    small = os.path.join(a.workdir, "ckpt_small.pt")
    if os.path.exists(ckpt):
        c = torch.load(ckpt, map_location=dev, weights_only=False)
        model.load_state_dict(c["model"])
        opt.load_state_dict(c["opt"])
        state = c["state"]
        print("resumed from", ckpt, "step", state["step"], flush=True)
    elif os.path.exists(small):  # weights + second moments only (carried back between machines)
        c = torch.load(small, map_location=dev, weights_only=False)
        model.load_state_dict(c["model"], strict=False)  # lm_head.weight is tied, left out
        for p, sq in zip(model.parameters(), c["exp_avg_sq"]):
            opt.state[p] = {"step": torch.tensor(float(c["state"]["step"]), device=dev),
                            "exp_avg": torch.zeros_like(p), "exp_avg_sq": sq.float().to(dev)}
        state = c["state"]
        print("resumed (small) from", small, "step", state["step"], flush=True)
    print("params %d (%.2fM), config %s" % (model.num_params(), model.num_params() / 1e6, cfg),
          flush=True)

    pending = collections.deque()

    def submit():
        prog = state["elapsed"] / a.total_seconds
        t = seq_len_at(prog)
        b = max(1, a.tokens_per_step // t)
        seed = a.seed * 1_000_003 + state["batches"]
        state["batches"] += 1
        pending.append(pool.apply_async(make_batch, (t, b, seed)))

    for _ in range(2 * a.workers):
        submit()
    model.train()
    acc = torch.zeros(6, device=dev)  # wsum_loss, wsum, lm_loss, lm_n, ans_loss, ans_n
    acc_correct = torch.zeros(1, device=dev)
    run_train = 0.0
    t_last = time.time()
    last_log_t = time.time()
    wait_s = 0.0
    while True:
        progress = state["elapsed"] / a.total_seconds
        if progress >= 1.0 or time.time() - t_start >= a.until_wall or run_train >= a.stop_after:
            break
        tw = time.time()
        xb, wb = pending.popleft().get()
        wait_s += time.time() - tw
        submit()
        x = torch.from_numpy(xb).to(dev, non_blocking=True).long()
        w = torch.from_numpy(wb).to(dev, non_blocking=True).float()
        inp, tgt = x[:, :-1], x[:, 1:]
        lr = lr_at(state["step"], progress, a)
        for g in opt.param_groups:
            g["lr"] = lr
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(inp)
        ce = F.cross_entropy(logits.float().flatten(0, 1), tgt.flatten(), reduction="none")
        wf = w.flatten()
        loss = (ce * wf).sum() / wf.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        state["step"] += 1
        with torch.no_grad():
            lm = wf == 1
            ans = wf > 1
            acc += torch.stack([(ce * wf).sum(), wf.sum(), (ce * lm).sum(), lm.sum().float(),
                                (ce * ans).sum(), ans.sum().float()])
            if state["step"] % a.log_every == 0:
                pred = logits.flatten(0, 1).argmax(-1)
                acc_correct += ((pred == tgt.flatten()) & ans).sum()
        now = time.time()
        state["elapsed"] += now - t_last
        run_train += now - t_last
        t_last = now
        if state["step"] % a.log_every == 0:
            v = acc.tolist()
            rec = {"step": state["step"], "elapsed": round(state["elapsed"], 2),
                   "seq_len": int(inp.shape[1]), "lr": lr,
                   "loss": v[0] / max(v[1], 1), "lm_loss": v[2] / max(v[3], 1),
                   "answer_loss": v[4] / max(v[5], 1),
                   "answer_tok_acc_last": acc_correct.item() / max(ans.sum().item(), 1),
                   "step_s": (now - last_log_t) / a.log_every, "data_wait_s": wait_s / a.log_every}
            state["log"].append(rec)
            print(json.dumps(rec), flush=True)
            acc.zero_()
            acc_correct.zero_()
            last_log_t = now
            wait_s = 0.0
    pool.terminate()
    print("stopping at step %d, trained %.1fs in total (%.1fs this run), wall %.1fs" %
          (state["step"], state["elapsed"], run_train, time.time() - t_start), flush=True)
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "state": state,
                "config": cfg.__dict__}, ckpt)
    sq = [opt.state[p]["exp_avg_sq"].to(torch.bfloat16).cpu() if p in opt.state else
          torch.zeros_like(p, dtype=torch.bfloat16).cpu() for p in model.parameters()]
    torch.save({"model": {k: v.cpu() for k, v in model.state_dict().items()
                          if k != "lm_head.weight"}, "exp_avg_sq": sq,
                "state": state, "config": cfg.__dict__}, small)
    with open(os.path.join(a.workdir, "train_log.json"), "w") as f:
        json.dump({"log": state["log"], "step": state["step"], "elapsed": state["elapsed"],
                   "total_seconds": a.total_seconds, "curriculum": CURRICULUM, "mix": MIX,
                   "tokens_per_step": a.tokens_per_step, "lr": a.lr, "seed": a.seed,
                   "done": state["elapsed"] >= a.total_seconds}, f)
    print("saved", ckpt, flush=True)


if __name__ == "__main__":
    main()
