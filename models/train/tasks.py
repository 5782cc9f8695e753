"""Synthetic long-context retrieval tasks over prose haystacks (training and evaluation).

Families (prompt texts are what an evaluator must reproduce; see models/kvc-ref/README.md):
  passkey         needle " The pass key is 12345. Remember it. 12345 is the pass key."
                  question "What is the pass key?"                         answer "12345"
  niah_single     needle " One of the special magic numbers for apple is: 1234567."
                  question "What is the special magic number for apple?"  answer "1234567"
  niah_multikey   2..16 such needles with distinct keys; up to 4 questions
  kv              needles " The value for key 3fa0c2d1 is 9b1e07aa."; up to 4 questions
                  question "What is the value for key 3fa0c2d1?"          answer "9b1e07aa"
  vartrack        chains " VAR ABCDE = 12345." ... " VAR FGHIJ = VAR ABCDE." (1..3 chains)
                  question "Which variables are assigned the value 12345?" answer "ABCDE FGHIJ"
A sequence is: <|bos|> haystack-with-needles "\n\nQuestion: Q\nAnswer: A.\n" (one block per
question). Needles go between sentences (token boundaries where the next token begins with a space
or newline), so that the whole text tokenizes to the same ids as the concatenated pieces.
Training uses only the training split as haystack and seeds from train.py; evaluation uses the
held-out split (last 5% of each source) and its own seeds.
"""
import gzip
import json
import os
import re

import numpy as np

TASKS = ["passkey", "niah_single", "niah_multikey", "kv", "vartrack"]
UPPER = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
HEX = np.array(list("0123456789abcdef"))

# Sampling weights of the prose sources (by default proportional-ish, literature up-weighted).
SOURCE_WEIGHTS = {"sotu": 0.22, "moby_dick": 0.08, "austen": 0.20, "kjv": 0.12,
                  "fortunes": 0.10, "jargon": 0.08, "python_docs": 0.20}


def load_split(corpus_dir, split):
    out = {}
    with gzip.open(os.path.join(corpus_dir, split + ".jsonl.gz"), "rt", encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            out[d["source"]] = d["text"]
    return out


class VocabInfo:
    """Per-token properties used to place needles. Needle keys (niah) are the vocabulary's
    single-token lower-case words of 4-10 letters after a space ("\u0120[a-z]{4,10}"), word pieces
    included (e.g. "appre"); kvc-ref was trained and evaluated with this list (results.json
    "needle_words")."""

    def __init__(self, tok):
        v = tok.get_vocab_size()
        toks = [tok.id_to_token(i) or "" for i in range(v)]
        self.space_start = np.array([t[:1] in ("\u0120", "\u010a") for t in toks])
        self.sent_end = np.array([t[-1:] in (".", "!", "?", "\u010a", '"') for t in toks])
        self.blank = np.array([t != "" and set(t) <= {"\u0120", "\u010a", "\u0109"} for t in toks])
        words = [t[1:] for t in toks if re.fullmatch("\u0120[a-z]{4,10}", t)]
        self.words = np.array(sorted(words))


class Haystack:
    """Token arrays of one split's sources; windows start at a word boundary."""

    def __init__(self, tok, texts, weights=None):
        self.names, self.arrays = [], []
        for name, text in texts.items():
            # Cut between the two newlines of a paragraph break followed by text, where the
            # pieces tokenize exactly like the whole ("\n" | "\nWord").
            chunks, last = [], 0
            for m in re.finditer(r"\n\n(?=\S)", text):
                if m.start() + 1 - last >= 20000:
                    chunks.append(text[last:m.start() + 1])
                    last = m.start() + 1
            chunks.append(text[last:])
            encs = tok.encode_batch(chunks, add_special_tokens=False)
            arr = np.concatenate([np.asarray(e.ids, dtype=np.uint16) for e in encs])
            self.names.append(name)
            self.arrays.append(arr)
        w = np.array([(weights or SOURCE_WEIGHTS).get(n, 0.05) for n in self.names], dtype=np.float64)
        self.p = w / w.sum()

    def num_tokens(self):
        return {n: int(len(a)) for n, a in zip(self.names, self.arrays)}

    def window(self, rng, n, vi):
        """n tokens from a random source, starting at a word, not ending on whitespace."""
        for _ in range(16):
            arr = self.arrays[rng.choice(len(self.arrays), p=self.p)]
            start = int(rng.integers(0, max(1, len(arr) - n - 64)))
            ok = np.nonzero(vi.space_start[arr[start:start + 64]])[0]
            if len(ok):
                start += int(ok[0])
            w = arr[start:start + n]
            if len(w) == n and not vi.blank[w[-1]]:
                break
        return w.astype(np.int64)


def _num(rng, digits):
    return str(int(rng.integers(10 ** (digits - 1), 10 ** digits)))


def _hex(rng, n=8):
    return "".join(rng.choice(HEX, n))


def _var(rng):
    return "".join(rng.choice(UPPER, 5))


def spec(task, rng, seq_len, vi):
    """Returns (needles: list[str] in insertion order, qa: list[(question, answer)], ordered)."""
    if task == "passkey":
        n = _num(rng, 5)
        return [" The pass key is %s. Remember it. %s is the pass key." % (n, n)], \
            [("What is the pass key?", n)], False
    if task in ("niah_single", "niah_multikey"):
        kmax = 1 if task == "niah_single" else int(np.clip(seq_len // 160, 2, 16))
        k = 1 if kmax == 1 else int(rng.integers(2, kmax + 1))
        words = rng.choice(vi.words, k, replace=False)
        vals = [_num(rng, 7) for _ in range(k)]
        needles = [" One of the special magic numbers for %s is: %s." % (w, v)
                   for w, v in zip(words, vals)]
        qa = [("What is the special magic number for %s?" % w, v) for w, v in zip(words, vals)]
        order = rng.permutation(k)[:4]
        return needles, [qa[i] for i in order], False
    if task == "kv":
        kmax = int(np.clip(seq_len // 96, 2, 32))
        k = int(rng.integers(2, kmax + 1))
        keys = [_hex(rng) for _ in range(k)]
        vals = [_hex(rng) for _ in range(k)]
        needles = [" The value for key %s is %s." % (a, b) for a, b in zip(keys, vals)]
        qa = [("What is the value for key %s?" % a, b) for a, b in zip(keys, vals)]
        order = rng.permutation(k)[:4]
        return needles, [qa[i] for i in order], False
    if task == "vartrack":
        nchains = int(rng.integers(1, int(np.clip(seq_len // 512, 1, 3)) + 1))
        chains, names = [], set()
        for _ in range(nchains):
            hops = int(rng.integers(1, 5 if seq_len >= 512 else 3))
            vs = []
            while len(vs) < hops + 1:
                v = _var(rng)
                if v not in names:
                    names.add(v)
                    vs.append(v)
            chains.append((_num(rng, 5), vs))
        # Interleave chains, keeping each chain's statements in order.
        stmts = [[" VAR %s = %s." % (vs[0], val)] +
                 [" VAR %s = VAR %s." % (vs[i], vs[i - 1]) for i in range(1, len(vs))]
                 for val, vs in chains]
        seq = np.concatenate([np.full(len(s), i) for i, s in enumerate(stmts)])
        rng.shuffle(seq)
        pos = [0] * len(stmts)
        needles = []
        for i in seq:
            needles.append(stmts[i][pos[i]])
            pos[i] += 1
        qa = [("Which variables are assigned the value %s?" % val, " ".join(vs)) for val, vs in chains]
        order = rng.permutation(len(qa))
        return needles, [qa[i] for i in order], True
    raise ValueError(task)


def _insert(rng, hay, needle_ids, vi, ordered):
    n = len(hay)
    cand = np.nonzero(vi.space_start[hay[1:]] & vi.sent_end[hay[:-1]])[0] + 1
    if len(cand) < len(needle_ids):
        cand = np.nonzero(vi.space_start[hay[1:]])[0] + 1
    if len(cand) < len(needle_ids):
        cand = np.arange(1, n)
    pos = np.sort(rng.choice(cand, len(needle_ids), replace=len(cand) < len(needle_ids)))
    if not ordered:
        needle_ids = [needle_ids[i] for i in rng.permutation(len(needle_ids))]
    parts, prev = [], 0
    for p, nid in zip(pos, needle_ids):
        parts.append(hay[prev:p])
        parts.append(np.asarray(nid, dtype=np.int64))
        prev = p
    parts.append(hay[prev:])
    return np.concatenate(parts)


def tail_text(qa, with_answers):
    """Question/answer blocks; returns text and the character spans of the answers."""
    text, spans = "\n\n", []
    for i, (q, a) in enumerate(qa):
        text += "Question: %s\nAnswer:" % q
        if not with_answers:
            break
        s = len(text)
        text += " %s." % a
        spans.append((s, len(text)))
        text += "\n"
    return text, spans


def train_example(tok, hs, vi, rng, task, seq_len, answer_weight=20.0):
    """seq_len+1 token ids (input ids[:-1], targets ids[1:]) and a weight per target."""
    total = seq_len + 1
    bos = tok.token_to_id("<|bos|>")
    if task == "prose":
        ids = np.concatenate([[bos], hs.window(rng, total - 1, vi)])
        ids = np.pad(ids, (0, total - len(ids)), constant_values=tok.token_to_id("<|eos|>"))
        return ids, np.ones(total - 1, dtype=np.float32)
    needles, qa, ordered = spec(task, rng, seq_len, vi)
    text, spans = tail_text(qa, True)
    enc = tok.encode(text, add_special_tokens=False)
    tail = np.asarray(enc.ids, dtype=np.int64)
    wt = np.ones(len(tail), dtype=np.float32)
    for j, (s, e) in enumerate(enc.offsets):
        if any(s < ae and e > as_ for as_, ae in spans):
            wt[j] = answer_weight
    needle_ids = [tok.encode(n, add_special_tokens=False).ids for n in needles]
    hay_len = total - 1 - len(tail) - sum(len(x) for x in needle_ids)
    if hay_len < 16:
        return train_example(tok, hs, vi, rng, "prose", seq_len)
    body = _insert(rng, hs.window(rng, hay_len, vi), needle_ids, vi, ordered)
    ids = np.concatenate([[bos], body, tail])
    w = np.concatenate([np.ones(1 + len(body), dtype=np.float32), wt])
    pad = total - len(ids)
    if pad > 0:  # only if a source is shorter than the window
        ids = np.concatenate([ids, np.full(pad, tok.token_to_id("<|eos|>"))])
        w = np.concatenate([w, np.zeros(pad, dtype=np.float32)])
    return ids[:total], w[1:total]


def eval_case(tok, hs, vi, rng, task, prompt_len):
    """A prompt of exactly prompt_len ids ending in 'Answer:' and the expected answer string."""
    bos = tok.token_to_id("<|bos|>")
    needles, qa, ordered = spec(task, rng, prompt_len, vi)
    text, _ = tail_text(qa, False)
    tail = tok.encode(text, add_special_tokens=False).ids
    needle_ids = [tok.encode(n, add_special_tokens=False).ids for n in needles]
    hay_len = prompt_len - 1 - len(tail) - sum(len(x) for x in needle_ids)
    hay = hs.window(rng, hay_len, vi)
    while len(hay) != hay_len:
        hay = hs.window(rng, hay_len, vi)
    body = _insert(rng, hay, needle_ids, vi, ordered)
    ids = np.concatenate([[bos], body, np.asarray(tail, dtype=np.int64)])
    return ids, qa[0][1]


def parse_answer(text):
    """Cuts a generated continuation at the first '.' or newline."""
    return re.split(r"[.\n]", text, maxsplit=1)[0].strip()
