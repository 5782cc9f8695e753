#!/usr/bin/env python3
"""Extracts character vectors from an R lazy-load database (.rdb/.rdx) without R.

Used by prepare_corpus.sh for r-cran-janeaustenr. Python 3 stdlib only.

Format: the .rdx is a gzip'd R serialization (XDR) of a list whose element "variables" maps
object names to (offset, length) in the .rdb. Each .rdb record is a 4-byte big-endian
uncompressed length followed by a zlib stream holding one serialized object. We parse the R XDR
serialization format (version 2/3) for the types a data package uses and print each character
vector (STRSXP) found, one element per line.

Usage: rdata_extract.py PATH/Rdata OUTDIR   (writes OUTDIR/<name>.txt per object)
"""
import gzip
import os
import struct
import sys
import zlib

NILVALUE, REFSXP, EMPTYENV, BASEENV, GLOBALENV, UNBOUNDVALUE, MISSINGARG, BASENAMESPACE = (
    254, 255, 242, 241, 253, 252, 251, 247)
PACKAGESXP, NAMESPACESXP = 249, 250
ATTRLANGSXP, ATTRLISTSXP, ALTREP = 240, 239, 238


class Reader:
    def __init__(self, data):
        self.d = data
        self.p = 0
        self.refs = []

    def i32(self):
        v = struct.unpack_from(">i", self.d, self.p)[0]
        self.p += 4
        return v

    def raw(self, n):
        v = self.d[self.p:self.p + n]
        self.p += n
        return v

    def header(self):
        fmt = self.raw(2)
        if fmt != b"X\n":
            raise ValueError("only XDR serialization supported, got %r" % fmt)
        version = self.i32()
        self.i32()  # writer R version
        self.i32()  # min reader version
        if version == 3:
            n = self.i32()
            self.raw(n)  # native encoding

    def length(self):
        n = self.i32()
        if n == -1:  # long vector
            hi, lo = self.i32(), self.i32()
            n = (hi << 32) + lo
        return n

    def item(self):
        flags = self.i32()
        t = flags & 0xFF
        has_attr = bool(flags & (1 << 9))
        has_tag = bool(flags & (1 << 10))
        if t in (NILVALUE, EMPTYENV, BASEENV, GLOBALENV, UNBOUNDVALUE, MISSINGARG, BASENAMESPACE):
            return None
        if t == REFSXP:
            idx = flags >> 8
            if idx == 0:
                idx = self.i32()
            return self.refs[idx - 1]
        if t in (PACKAGESXP, NAMESPACESXP):
            self.item()  # STRSXP with the name
            obj = ("env-ref",)
            self.refs.append(obj)
            return obj
        if t == 1:  # SYMSXP
            name = self.item()
            self.refs.append(name)
            return name
        if t == 4:  # ENVSXP
            obj = {}
            self.refs.append(obj)
            self.i32()  # locked
            self.item()  # enclos
            self.item()  # frame
            self.item()  # hashtab
            self.item()  # attrib
            return obj
        if t in (2, 3, 5, 6, 17, ATTRLANGSXP, ATTRLISTSXP):  # pairlist-like
            out = []
            while True:
                attr = self.item() if has_attr else None
                tag = self.item() if has_tag else None
                car = self.item()
                out.append((tag, car))
                flags = self.i32()
                t = flags & 0xFF
                has_attr = bool(flags & (1 << 9))
                has_tag = bool(flags & (1 << 10))
                if t == NILVALUE:
                    return out
                if t not in (2, 3, 5, 6, 17, ATTRLANGSXP, ATTRLISTSXP):
                    self.p -= 4
                    out.append((None, self.item()))
                    return out
        if t == 9:  # CHARSXP
            n = self.i32()
            if n == -1:
                return None
            return self.raw(n).decode("utf-8", "replace")
        if t in (10, 13):  # LGLSXP, INTSXP
            n = self.length()
            v = struct.unpack_from(">%di" % n, self.d, self.p)
            self.p += 4 * n
            res = list(v)
        elif t == 14:  # REALSXP
            n = self.length()
            v = struct.unpack_from(">%dd" % n, self.d, self.p)
            self.p += 8 * n
            res = list(v)
        elif t == 15:  # CPLXSXP
            n = self.length()
            self.p += 16 * n
            res = []
        elif t == 24:  # RAWSXP
            n = self.length()
            res = self.raw(n)
        elif t == 16:  # STRSXP
            n = self.length()
            res = StrVec(self.item() for _ in range(n))
        elif t in (19, 20):  # VECSXP, EXPRSXP
            n = self.length()
            res = [self.item() for _ in range(n)]
        elif t == ALTREP:
            self.item()  # info
            state = self.item()
            self.item()  # attr
            return state
        else:
            raise ValueError("unsupported SEXP type %d at %d" % (t, self.p))
        if has_attr:
            self.item()
        return res


class StrVec(list):
    pass


def unserialize(data):
    r = Reader(data)
    r.header()
    return r.item()


def collect_strings(obj, out):
    if isinstance(obj, StrVec):
        out.append([s if s is not None else "" for s in obj])
    elif isinstance(obj, list):
        for x in obj:
            if isinstance(x, tuple):
                collect_strings(x[1], out)
            else:
                collect_strings(x, out)


def main():
    base, outdir = sys.argv[1], sys.argv[2]
    os.makedirs(outdir, exist_ok=True)
    index = unserialize(gzip.decompress(open(base + ".rdx", "rb").read()))
    # index: VECSXP of (variables, references, compressed); variables is a VECSXP of
    # (offset, length) INTSXP pairs; its names attribute is read separately by index_names().
    rdb = open(base + ".rdb", "rb").read()
    variables = index[0]
    names = index_names(gzip.decompress(open(base + ".rdx", "rb").read()))
    for i, (off, ln) in enumerate(variables):
        rec = rdb[off:off + ln]
        data = zlib.decompress(rec[4:])
        obj = unserialize(data)
        vecs = []
        collect_strings(obj if isinstance(obj, list) else [obj], vecs)
        name = names[i] if i < len(names) else "obj%d" % i
        with open(os.path.join(outdir, name + ".txt"), "w", encoding="utf-8") as f:
            for vec in vecs:
                f.write("\n".join(vec))
                f.write("\n")
        print("%s: %d vectors, %d strings" % (name, len(vecs), sum(len(v) for v in vecs)))


def index_names(data):
    """Returns the names attribute of the first element of the .rdx list (object names)."""
    r = Reader(data)
    r.header()
    flags = r.i32()
    assert flags & 0xFF == 19
    r.length()
    # Parse the first element by hand to keep its attributes.
    flags = r.i32()
    m = r.length()
    for _ in range(m):
        r.item()
    if flags & (1 << 9):
        attrs = r.item()  # pairlist of (tag, value)
        for tag, val in attrs:
            if tag == "names":
                return list(val)
    return []


if __name__ == "__main__":
    main()
