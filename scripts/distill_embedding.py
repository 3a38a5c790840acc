"""Distil the static word table `rust/data/wordvec64.bin.gz` that `_core.embed` reads.

    apt-get install wordnet-base            # WordNet 3.0 (Princeton's BSD-style licence)
    python scripts/distill_embedding.py [--wordnet /usr/share/wordnet] [--out PATH]

No model and no benchmark text goes in: the corpus is WordNet itself, one document per
synset (its lemmas, its gloss, the lemmas of its hypernyms two levels up and of its domain,
holonym and derivation links). Words are runs of ASCII letters, lower-cased, as the Rust
featurizer splits them. The 20,000 most frequent words get vectors:

1. window-5 co-occurrence counts within a document, PPMI with context smoothing 0.75;
2. truncated SVD to 64 dimensions (scipy `svds`, random_state 0), vectors U * sqrt(S);
3. each row times its SIF weight a / (a + p(word)), a = 1e-3, p from the same corpus;
4. int8 with one global scale (a prompt's vector is normalised, so the scale cancels).

Measured (README "Routing quality"): a per-model logistic on this embedding, averaged with
the IRT predictor, helped on MMLU subject folds, GSM8K and LLMRouter. Research compared it
with word vectors from an LLM's token embeddings (a little better on MMLU, but a licence
question) and with random vectors (about half of the MMLU gain: part of the signal is bag of
words, not meaning). About 10 s; deterministic on one machine (SVD results may differ in the
last bits across BLAS builds: the committed table is the reference).
"""

from __future__ import annotations

import argparse
import gzip
import re
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import svds

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "rust" / "data" / "wordvec64.bin.gz"
WORD = re.compile(r"[A-Za-z]+")
DIM, WINDOW, SMOOTH, SIF_A = 64, 5, 0.75, 1e-3
# pointers whose targets' lemmas join a synset's document: topic/region/usage domains,
# member/part/substance holonyms, derivationally related forms
RELATED = {";c", ";r", ";u", "#m", "#p", "#s", "+"}


def synsets(wordnet: Path) -> dict[str, tuple[list[str], str, list[tuple[str, str]]]]:
    """offset key -> (lemmas, gloss, [(pointer symbol, target key)]) from data.{pos}."""
    out = {}
    for pos in ("noun", "verb", "adj", "adv"):
        for line in (wordnet / f"data.{pos}").open(encoding="latin-1"):
            if line.startswith("  "):  # the licence header
                continue
            head, _, gloss = line.partition(" | ")
            f = head.split()
            n = int(f[3], 16)
            lemmas = [f[4 + 2 * i].replace("_", " ") for i in range(n)]
            k = 4 + 2 * n
            n_ptr = int(f[k])
            k += 1
            ptrs = []
            for _ in range(n_ptr):
                sym, off, p = f[k], f[k + 1], f[k + 2]
                k += 4
                ptrs.append((sym, ("a" if p == "s" else p) + off))
            out[("a" if f[2] == "s" else f[2]) + f[0]] = (lemmas, gloss.strip(), ptrs)
    return out


def documents(syn: dict[str, tuple[list[str], str, list[tuple[str, str]]]]) -> list[str]:
    docs = []
    for key, (lemmas, gloss, ptrs) in syn.items():
        extra, frontier = [], [key]
        for _ in range(2):  # hypernyms, two levels up
            nxt = [t for s in frontier for sym, t in syn[s][2] if sym in ("@", "@i") and t in syn]
            extra += [" ".join(syn[t][0][:3]) for t in nxt]
            frontier = nxt
        extra += [" ".join(syn[t][0][:3]) for sym, t in ptrs if sym in RELATED and t in syn]
        docs.append(" ".join(lemmas) + " . " + gloss + " . " + " . ".join(extra))
    return docs


def ppmi_svd(docs: list[list[str]], vocab: list[str]) -> np.ndarray:
    index = {w: i for i, w in enumerate(vocab)}
    ids = np.array([index.get(w, -1) for ws in docs for w in ws], np.int64)
    doc = np.array([k for k, ws in enumerate(docs) for _ in ws], np.int64)
    v = len(vocab)
    counts = sp.csr_matrix((v, v), dtype=np.float64)
    for d in range(1, WINDOW + 1):  # unknown words keep their place: distances stay true
        a, b = ids[:-d], ids[d:]
        keep = (doc[:-d] == doc[d:]) & (a >= 0) & (b >= 0)
        x = sp.coo_matrix((np.ones(int(keep.sum())), (a[keep], b[keep])), shape=(v, v)).tocsr()
        counts = counts + x + x.T
    c = counts.tocoo()
    total = c.data.sum()
    rows = np.asarray(counts.sum(axis=1)).ravel()
    cols = np.asarray(counts.sum(axis=0)).ravel() ** SMOOTH
    cols = cols / cols.sum()
    pmi = np.log(c.data / total) - np.log(rows[c.row] / total) - np.log(cols[c.col])
    pos = pmi > 0
    m = sp.csr_matrix((pmi[pos], (c.row[pos], c.col[pos])), shape=(v, v))
    u, s, _ = svds(m, k=DIM, random_state=0)
    order = np.argsort(-s)
    return (u[:, order] * np.sqrt(s[order])[None, :]).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wordnet", type=Path, default=Path("/usr/share/wordnet"))
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--words", type=int, default=20_000)
    a = ap.parse_args()
    if not (a.wordnet / "data.noun").is_file():
        raise SystemExit(f"no WordNet at {a.wordnet}: apt-get install wordnet-base, or --wordnet")
    docs = [[w.lower() for w in WORD.findall(d)] for d in documents(synsets(a.wordnet))]
    freq = Counter(w for ws in docs for w in ws)
    vocab = [w for w, _ in freq.most_common(a.words)]
    vec = ppmi_svd(docs, vocab)
    p = np.array([freq[w] for w in vocab], np.float64) / sum(freq.values())
    table = (SIF_A / (SIF_A + p))[:, None] * vec
    scale = float(np.abs(table).max()) / 127.0
    i8 = np.clip(np.round(table / scale), -127, 127).astype(np.int8)
    raw = b"SFWV" + struct.pack("<III", 1, len(vocab), DIM) + i8.tobytes()
    raw += ("\n".join(vocab) + "\n").encode()
    a.out.write_bytes(gzip.compress(raw, 9, mtime=0))
    print(
        f"{len(docs)} WordNet documents, {sum(freq.values())} words; wrote {len(vocab)} x {DIM}"
        f" int8 to {a.out} ({a.out.stat().st_size / 1e6:.2f} MB)"
    )


if __name__ == "__main__":
    main()
