"""Long inputs: retrieval over whole long documents with ``long_inputs="truncate"`` against ``"chunk"`` (at several
``chunk_overlap`` values), and what chunking costs in documents per second.

Documents: the long descriptions (README text) of the installed Python packages' METADATA, whole (markup left in,
duplicates dropped), those of 300 to ``--max-tokens`` tokens; they are the corpus. Questions: for each document
over 600 tokens, one sentence (10 to 40 words, mostly letters, found in no other document) drawn with a fixed seed
from the part that starts after the document's first 300 tokens, i.e. text that all-MiniLM-L6-v2 (256 tokens)
never sees under truncation. The sentence is lightly reworded (lower case, punctuation dropped, every third word
dropped) and stays in its document: the measure is whether the part of a document that holds the answer reaches
its embedding at all. Retrieval: cosine similarity of the query's embedding with every document's; recall@1 and
recall@10 of the document the sentence came from.

    python benchmarks/long_inputs.py /tmp/minilm-export [--overlaps 0 16 32 64] [--threads 2]

The export must be made by an st-export that writes the output before Normalize (chunking pools before it).
"""

from __future__ import annotations

import argparse
import email
import glob
import json
import random
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import machine
from st_runtime import SentenceEncoder

PAST = 300  # questions come from text after this many tokens (the model keeps 256)


def documents(tokenizer, max_tokens: int) -> list[tuple[str, str, int]]:
    """(package, text, tokens) of every distinct METADATA long description of 300..max_tokens tokens."""
    seen, out = set(), []
    pattern = str(Path(sys.prefix) / "lib" / "python*" / "site-packages" / "*.dist-info" / "METADATA")
    for path in sorted(glob.glob(pattern)):
        body = email.message_from_bytes(Path(path).read_bytes()).get_payload()
        if not isinstance(body, str) or body.strip()[:300] in seen:
            continue
        body = body.strip()
        seen.add(body[:300])
        n = len(tokenizer.encode(body).ids)
        if 300 <= n <= max_tokens:
            out.append((Path(path).parent.name.split("-")[0], body, n))
    return out


def reword(sentence: str) -> str:
    words = re.sub(r"[^\w\s]", " ", sentence.lower()).split()
    return " ".join(w for i, w in enumerate(words) if i % 3 != 2)


def questions(tokenizer, docs: list[tuple[str, str, int]], seed: int) -> list[tuple[str, int, str]]:
    """(query, index of its document, the sentence) for each document over 600 tokens that has a usable one."""
    rng = random.Random(seed)
    out = []
    for d, (_name, text, n) in enumerate(docs):
        if n <= 2 * PAST:
            continue
        enc = tokenizer.encode(text)
        start_char = enc.offsets[PAST][0]  # the character where token PAST begins
        candidates = []
        for m in re.finditer(r"[^.!?\n]+[.!?]", text[start_char:]):
            s = " ".join(m.group().split())
            words = s.split()
            letters = sum(c.isalpha() for c in s.replace(" ", ""))
            if not 10 <= len(words) <= 40 or letters < 0.8 * len(s.replace(" ", "")):
                continue
            if any(x in s for x in ("http", "`", "|", "=", ">>>", "::")):
                continue
            if any(s in " ".join(o[1].split()) for j, o in enumerate(docs) if j != d):
                continue
            candidates.append(s)
        if candidates:
            s = rng.choice(candidates)
            out.append((reword(s), d, s))
    return out


def recall(query_emb: np.ndarray, doc_emb: np.ndarray, gold: np.ndarray, k: int) -> float:
    scores = query_emb @ doc_emb.T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float(np.mean([g in row for g, row in zip(gold, top)]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", type=Path, help="all-MiniLM-L6-v2 exported by st-export")
    p.add_argument("--overlaps", type=int, nargs="+", default=[0, 16, 32, 64])
    p.add_argument("--max-tokens", type=int, default=3000, help="longest document kept (tokens)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "long-inputs-minilm.json")
    args = p.parse_args()

    enc = SentenceEncoder(args.model, threads=args.threads)
    tok = enc.text_tower.tokenizer_for(None)
    docs = documents(tok, args.max_tokens)
    qs = questions(tok, docs, args.seed)
    texts = [t for _n, t, _k in docs]
    gold = np.array([d for _q, d, _s in qs])
    query_emb = enc.encode([q for q, _d, _s in qs], normalize_embeddings=True)
    rows = []
    for mode, overlap in [("truncate", None)] + [("chunk", o) for o in args.overlaps]:
        kwargs = {} if overlap is None else {"long_inputs": "chunk", "chunk_overlap": overlap}
        enc.encode(texts[:4], **kwargs)  # warm
        t0 = time.perf_counter()
        doc_emb = enc.encode(texts, normalize_embeddings=True, **kwargs)
        seconds = time.perf_counter() - t0
        windows = None
        if overlap is not None:
            windows = len(enc.kind.prepare(enc, texts, long_inputs="chunk", chunk_overlap=overlap).texts)
        row = {
            "long_inputs": mode,
            "chunk_overlap": overlap,
            "recall@1": recall(query_emb, doc_emb, gold, 1),
            "recall@10": recall(query_emb, doc_emb, gold, 10),
            "seconds": round(seconds, 2),
            "documents_per_s": round(len(texts) / seconds, 2),
            "items_run": windows or len(texts),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "threads": enc.threads,
        "model": str(args.model),
        "documents": len(docs),
        "document_tokens": {"total": int(sum(k for *_x, k in docs)), "max": int(max(k for *_x, k in docs))},
        "questions": len(qs),
        "question_examples": [{"query": q, "sentence": s, "package": docs[d][0]} for q, d, s in qs[:3]],
        "results": rows,
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{len(docs)} documents, {len(qs)} questions -> {args.out}")


if __name__ == "__main__":
    main()
