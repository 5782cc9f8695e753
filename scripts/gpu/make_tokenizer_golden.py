#!/usr/bin/env python3
"""Writes the golden vectors of kvc's tokenizer tests with Hugging Face `tokenizers` (the reference).

Runs where `tokenizers` is installed (the GPU machine: tokenizers 0.23). Needs the real tokenizers in
.cache/tokenizers/{llama3,llama2,qwen3}/tokenizer.json (scripts/fetch-test-data) and reads
tests/fixtures/tokenizers/{strings.jsonl,variants.json}. Writes into --out:

  golden_{llama3,llama2,qwen3}.jsonl  one line per string of strings.jsonl:
      {"text", "ids" (add_special_tokens=False), "ids_special" (True),
       "decoded" (decode(ids, skip_special_tokens=False)),
       "decoded_special" (decode(ids_special, False)), "decoded_skip" (decode(ids_special, True))}
      then lines {"decode_ids": [...], "decoded", "decoded_skip"} for random id sequences.
  golden_variants.jsonl  the same records with a "variant" field, for the variants of
      variants.json and for the tokenizers trained here.
  trained_tokenizers.json  {name: tokenizer.json object} of tokenizers trained here with HF
      (byte-level GPT-2 style as the project's reference model uses, and an SPM-style one).
  perf.json  HF encode speed on a long text (for comparison with kvc's).
  log.txt    what happened.

Usage: PYTHONUNBUFFERED=1 python3 scripts/gpu/make_tokenizer_golden.py --out DIR
Then copy golden_*.jsonl into tests/fixtures/tokenizers/ and split trained_tokenizers.json into
tests/fixtures/tokenizers/trained/<name>.json.
"""
import argparse
import glob
import json
import os
import random
import sys
import time
import traceback
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "tokenizers")
CACHE = os.path.join(ROOT, ".cache", "tokenizers")
BASES = ["llama3", "llama2", "qwen3"]

LOG = []


def log(msg):
    print(msg)
    LOG.append(msg)


def load_strings():
    texts = []
    with open(os.path.join(FIXTURES, "strings.jsonl"), encoding="utf-8") as f:
        for line in f:
            if line.strip():
                texts.append(json.loads(line)["text"])
    return texts


def encode_records(tok, texts, variant=None):
    records = []
    failures = 0
    for text in texts:
        rec = {} if variant is None else {"variant": variant}
        rec["text"] = text
        try:
            ids = tok.encode(text, add_special_tokens=False).ids
            ids_special = tok.encode(text, add_special_tokens=True).ids
            rec["ids"] = ids
            rec["ids_special"] = ids_special
            rec["decoded"] = tok.decode(ids, skip_special_tokens=False)
            rec["decoded_special"] = tok.decode(ids_special, skip_special_tokens=False)
            rec["decoded_skip"] = tok.decode(ids_special, skip_special_tokens=True)
        except Exception as e:  # keep going: one bad string must not lose the rest
            failures += 1
            rec["error"] = repr(e)
        records.append(rec)
    if failures:
        log(f"  {failures} strings failed to encode ({variant})")
    return records


def decode_records(tok, rng, count, variant=None):
    size = tok.get_vocab_size(with_added_tokens=True)
    max_id = max(tok.get_vocab(with_added_tokens=True).values())
    records = []
    for i in range(count):
        n = rng.randint(1, 24)
        ids = [rng.randrange(0, max_id + 1) for _ in range(n)]
        if i % 10 == 9:
            ids.append(max_id + 7)  # an id that is not in the vocabulary: HF skips it
        rec = {} if variant is None else {"variant": variant}
        rec["decode_ids"] = ids
        rec["decoded"] = tok.decode(ids, skip_special_tokens=False)
        rec["decoded_skip"] = tok.decode(ids, skip_special_tokens=True)
        records.append(rec)
    # Byte-fallback and byte-level fragments: partial UTF-8 sequences, split emoji.
    vocab = tok.get_vocab(with_added_tokens=True)
    frag = [vocab[t] for t in ["<0xF0>", "<0x9F>", "<0x98>", "<0x80>", "<0xE4>", "<0xBD>",
                               "<0xA0>", "<0x41>", "<0xFF>"] if t in vocab]
    if len(frag) == 9:
        for seq in ([frag[0], frag[1], frag[2], frag[3]], [frag[0], frag[1]],
                    [frag[4], frag[5], frag[6]], [frag[4], frag[5], frag[7]],
                    [frag[8], frag[7]], [frag[0], frag[1], frag[2]]):
            for extra in ([], [vocab.get("▁the", 0)]):
                ids = seq + extra
                records.append({**({} if variant is None else {"variant": variant}),
                                "decode_ids": ids,
                                "decoded": tok.decode(ids, skip_special_tokens=False),
                                "decoded_skip": tok.decode(ids, skip_special_tokens=True)})
    b2u = bytes_to_unicode()
    byte_level = [vocab[b2u[b]] for b in [0xF0, 0x9F, 0x98, 0x80, 0xE4, 0xBD, 0xA0, 0x41, 0x20]
                  if b2u[b] in vocab]
    if len(byte_level) == 9:
        for seq in ([0, 1, 2, 3], [0, 1], [4, 5, 6], [4, 5, 7], [8, 0, 1, 2, 3, 8]):
            ids = [byte_level[k] for k in seq]
            records.append({**({} if variant is None else {"variant": variant}),
                            "decode_ids": ids,
                            "decoded": tok.decode(ids, skip_special_tokens=False),
                            "decoded_skip": tok.decode(ids, skip_special_tokens=True)})
    return records


def bytes_to_unicode():
    """GPT-2's byte -> printable character table (the ByteLevel alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def write_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    log(f"wrote {path} ({len(records)} records, {os.path.getsize(path)} bytes)")


def training_corpus(texts):
    corpus = list(texts)
    libdir = os.path.dirname(os.__file__)
    files = sorted(glob.glob(os.path.join(libdir, "*.py")))[:120]
    for path in files:
        try:
            with open(path, encoding="utf-8") as f:
                corpus.append(f.read())
        except Exception:
            pass
    log(f"training corpus: {len(corpus)} documents, {sum(len(c) for c in corpus)} chars")
    return corpus


def train_tokenizers(texts):
    from tokenizers import (AddedToken, Tokenizer, decoders, models, normalizers,
                            pre_tokenizers, processors, trainers)
    corpus = training_corpus(texts)
    out = {}

    def bytelevel(prefix):
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=prefix)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=2000, min_frequency=2, show_progress=False,
            special_tokens=["<|endoftext|>", "<|bos|>", "<|pad|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(corpus, trainer=trainer)
        return tok

    # Exactly what the project's reference model uses: no post-processor.
    tok = bytelevel(False)
    out["bytelevel_plain"] = tok
    # The same with a BOS template and added tokens of every flavour.
    tok = Tokenizer.from_str(out["bytelevel_plain"].to_str())
    tok.post_processor = processors.TemplateProcessing(
        single="<|bos|> $A", pair="<|bos|> $A <|bos|> $B:1",
        special_tokens=[("<|bos|>", tok.token_to_id("<|bos|>"))])
    tok.add_special_tokens([AddedToken("<tool>", lstrip=True, rstrip=True, normalized=False),
                            AddedToken("[SEP]", single_word=True, normalized=False)])
    tok.add_tokens([AddedToken("hello world", normalized=True, special=False)])
    out["bytelevel_bos_added"] = tok
    # add_prefix_space=True with a ByteLevel post-processor (GPT-2/RoBERTa style).
    tok = bytelevel(True)
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    out["bytelevel_prefix"] = tok

    # SentencePiece style without byte fallback: unknown characters become a fused <unk>.
    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.BpeTrainer(vocab_size=1200, min_frequency=2, show_progress=False,
                                  special_tokens=["<unk>", "<s>", "</s>"],
                                  limit_alphabet=80)
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> $B:1 </s>:1",
        special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))])
    tok.add_tokens([AddedToken("ﬁx", normalized=True, special=False)])
    out["spm_unk"] = tok
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--decode-cases", type=int, default=150)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    import tokenizers
    from tokenizers import Tokenizer
    log(f"tokenizers {tokenizers.__version__}, python {sys.version.split()[0]}")
    texts = load_strings()
    log(f"{len(texts)} strings")
    perf = {}
    long_text = "\n".join(texts) * 20

    base_json = {}
    for name in BASES:
        try:
            path = os.path.join(CACHE, name, "tokenizer.json")
            with open(path, encoding="utf-8") as f:
                base_json[name] = f.read()
            tok = Tokenizer.from_str(base_json[name])
            records = encode_records(tok, texts)
            records += decode_records(tok, random.Random(1000 + BASES.index(name)),
                                      args.decode_cases)
            write_jsonl(os.path.join(args.out, f"golden_{name}.jsonl"), records)
            t0 = time.perf_counter()
            n = len(tok.encode(long_text, add_special_tokens=False).ids)
            dt = time.perf_counter() - t0
            perf[name] = {"chars": len(long_text), "bytes": len(long_text.encode("utf-8")),
                          "tokens": n, "seconds": dt, "tokens_per_s": n / dt}
            log(f"{name}: HF encode of {len(long_text)} chars -> {n} tokens in {dt:.3f}s")
        except Exception:
            log(f"FAILED {name}:\n{traceback.format_exc()}")

    variant_records = []
    try:
        with open(os.path.join(FIXTURES, "variants.json"), encoding="utf-8") as f:
            variants = json.load(f)
        for vname, spec in variants.items():
            if vname.startswith("_"):
                continue
            try:
                d = json.loads(base_json[spec["base"]])
                d.update(spec["set"])
                tok = Tokenizer.from_str(json.dumps(d))
                variant_records += encode_records(tok, texts, vname)
                variant_records += decode_records(tok, random.Random(zlib.crc32(vname.encode())), 30,
                                                  vname)
                log(f"variant {vname}: ok")
            except Exception:
                log(f"FAILED variant {vname}:\n{traceback.format_exc()}")
    except Exception:
        log(f"FAILED variants:\n{traceback.format_exc()}")

    trained_json = {}
    try:
        trained = train_tokenizers(texts)
        for tname, tok in trained.items():
            try:
                trained_json[tname] = json.loads(tok.to_str())
                # Reload from JSON, as kvc will: the golden is what the serialized file does.
                tok2 = Tokenizer.from_str(tok.to_str())
                variant_records += encode_records(tok2, texts, tname)
                variant_records += decode_records(tok2, random.Random(77), 40, tname)
                log(f"trained {tname}: vocab {tok2.get_vocab_size(True)}")
            except Exception:
                log(f"FAILED trained {tname}:\n{traceback.format_exc()}")
    except Exception:
        log(f"FAILED training:\n{traceback.format_exc()}")
    with open(os.path.join(args.out, "trained_tokenizers.json"), "w", encoding="utf-8") as f:
        json.dump(trained_json, f, ensure_ascii=False)
    write_jsonl(os.path.join(args.out, "golden_variants.jsonl"), variant_records)
    with open(os.path.join(args.out, "perf.json"), "w") as f:
        json.dump(perf, f, indent=1)
    with open(os.path.join(args.out, "log.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(LOG) + "\n")


if __name__ == "__main__":
    main()
