#!/usr/bin/env python3
"""Trains kvc-ref's byte-level BPE tokenizer (HF `tokenizers`) on the training split.

Output: a Hugging Face tokenizer.json with
  - pre-tokenizer ByteLevel(add_prefix_space=False) (GPT-2 split regex), decoder ByteLevel,
  - special tokens <|bos|>=0, <|eos|>=1, <|pad|>=2,
  - a TemplateProcessing post-processor that prepends <|bos|> (single and pair).
Only the training split (.cache/corpus/train.jsonl.gz) is read, never the held-out text.

Usage: train_tokenizer.py --corpus .cache/corpus --vocab 8192 --out DIR
"""
import argparse
import gzip
import json
import os

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

SPECIALS = ["<|bos|>", "<|eos|>", "<|pad|>"]


def paragraphs(corpus_dir):
    with gzip.open(os.path.join(corpus_dir, "train.jsonl.gz"), "rt", encoding="utf-8") as f:
        for line in f:
            text = json.loads(line)["text"]
            chunk = []
            size = 0
            for p in text.split("\n\n"):
                chunk.append(p)
                size += len(p)
                if size > 4000:
                    yield "\n\n".join(chunk) + "\n\n"
                    chunk, size = [], 0
            if chunk:
                yield "\n\n".join(chunk)


def build(corpus_dir, vocab):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, min_frequency=2, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(paragraphs(corpus_dir), trainer=trainer)
    bos = tok.token_to_id("<|bos|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|bos|> $A", pair="<|bos|> $A $B:1", special_tokens=[("<|bos|>", bos)])
    return tok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default=".cache/corpus")
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    tok = build(a.corpus, a.vocab)
    path = os.path.join(a.out, "tokenizer.json")
    tok.save(path)
    for s in ["Once upon a time", "The pass key is 71432.", "VAR QPWXZ = 52301."]:
        enc = tok.encode(s)
        print(repr(s), enc.ids, enc.tokens)
    print("vocab", tok.get_vocab_size(), "->", path)


if __name__ == "__main__":
    main()
