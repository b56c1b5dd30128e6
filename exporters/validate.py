"""End-to-end validation: sentence-transformers (torch) against st_runtime on the same text."""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import ExportError


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    # Two zero vectors are equal; one zero vector against a non-zero one is not.
    both_zero = den == 0
    out = np.where(both_zero, np.where(np.abs(a - b).max(1) == 0, 1.0, 0.0), num / np.where(both_zero, 1, den))
    return out


def _show(item: Any) -> str:
    """A short printable form of a battery item (text, [text, pair] or image)."""
    if isinstance(item, str):
        return item[:80]
    if isinstance(item, (tuple, list)):
        return " | ".join(_show(x)[:40] for x in item)
    size = getattr(item, "size", None)
    return f"<{type(item).__name__} {getattr(item, 'mode', '')} {size if size is not None else ''}>"


def reference_outputs(model, sentences: list[Any]) -> np.ndarray:
    """sentence-transformers' embeddings of the battery; its own failure (a text past the model's positions)
    becomes an ExportError that says what to do, not a traceback."""
    try:
        return np.asarray(model.encode(sentences, batch_size=8, convert_to_numpy=True), dtype=np.float32)
    except Exception as exc:
        raise ExportError(
            f"sentence-transformers itself fails on the validation battery ({type(exc).__name__}: "
            f"{str(exc)[:300]}), so the export cannot be checked against it. If a long text runs "
            "past the model's positions, set max_seq_length in the model's sentence_bert_config.json; "
            "otherwise please report this with the model name."
        ) from exc


# texts a battery item keeps company with in the batch-company check: short ones, so that the item sets the batch
# width and its neighbours change its padding and (per-tensor int8) its activation ranges
_SHORT_COMPANY = ["a", "ok", "short text", "two words", "hello there", "yes", "the cat sat", "no"]


def batch_company(run, sentences: list[Any], alone: np.ndarray, together: np.ndarray) -> dict[str, Any]:
    """How much an item's output moves with the other items of its batch: ``alone`` (every item at batch size 1)
    against ``together`` (all items in one batch, the longest among them) and against ``run`` of each group of four
    items in one batch with eight short texts. ``run(texts, batch_size)`` gives the rows; images keep no
    company of texts (their runs are the first two only)."""
    diffs = [np.abs(together.astype(np.float64) - alone).max(axis=1)] if len(alone) else []
    if all(isinstance(s, (str, tuple)) for s in sentences):
        pairs_only = all(isinstance(s, tuple) for s in sentences)  # a cross-encoder's (query, document) pairs
        company: list[Any] = [(t, t) for t in _SHORT_COMPANY] if pairs_only else list(_SHORT_COMPANY)
        rows = []
        for start in range(0, len(sentences), 4):
            group = list(sentences[start : start + 4])
            rows.append(run(group + company, len(group) + len(company))[: len(group)])
        if rows:
            diffs.append(np.abs(np.concatenate(rows).astype(np.float64) - alone).max(axis=1))
    worst = np.max(diffs, axis=0) if diffs else np.zeros(0)
    return {
        "max_abs_diff": float(worst.max()) if len(worst) else 0.0,
        "bitwise_identical": bool(not len(worst) or worst.max() == 0),
        "worst_index": int(worst.argmax()) if len(worst) else None,
    }


def validate(
    ref: np.ndarray,
    encoder,
    gate: float,
    items: list[tuple[str, Any]],
    mean_gate: float | None = None,
    company_gate: float | None = None,
    measure_company: bool = True,
) -> dict[str, Any]:
    """Compare sentence-transformers' outputs ``ref`` on the battery ``items`` (reference_outputs) with
    ``encoder.encode`` (st_runtime).

    st_runtime runs the whole battery at batch size 1 (every item alone) and at one batch holding
    all items (mixed lengths, maximal padding). Every item of every run must reach ``gate``;
    failures are collected, not raised one at a time. The batch-company check (``batch_company``) is recorded,
    and with ``company_gate`` no item may move by more than that with its batch company.
    """
    tags = [t for t, _ in items]
    sentences = [s for _, s in items]
    runs = {
        "batch_1": encoder.encode(sentences, batch_size=1),
        f"batch_{len(sentences)}": encoder.encode(sentences, batch_size=len(sentences)),
    }
    failures = []
    all_cos = []
    max_abs = 0.0
    for run, got in runs.items():
        if got.shape != ref.shape:
            failures.append({"run": run, "error": f"shape {got.shape} != sentence-transformers {ref.shape}"})
            continue
        cos = cosines(ref, got)
        all_cos.append(cos)
        max_abs = max(max_abs, float(np.abs(ref - got).max()))
        for i in np.flatnonzero(~(cos >= gate)):
            failures.append(
                {"run": run, "index": int(i), "tag": tags[i], "text": _show(sentences[i]), "cosine": float(cos[i])}
            )
    cos_all = np.concatenate(all_cos) if all_cos else np.array([np.nan])
    if mean_gate is not None and not float(np.mean(cos_all)) >= mean_gate:
        failures.append({"run": "all", "error": f"mean cosine {float(np.mean(cos_all)):.6f} below {mean_gate}"})
    company = None
    if measure_company:  # not again for a second output of the same graph runs
        alone, together = runs["batch_1"], runs[f"batch_{len(sentences)}"]
        company = batch_company(lambda t, bs: encoder.encode(t, batch_size=bs), sentences, alone, together)
        failures += _company_failures(company, company_gate, tags, sentences)
    report: dict[str, Any] = {
        "gate_min_cosine": gate,
        "gate_mean_cosine": mean_gate,
        "items": len(sentences),
        "runs": sorted(runs),
        "tags": sorted(set(tags)),
        "min_cosine": float(np.min(cos_all)),
        "mean_cosine": float(np.mean(cos_all)),
        "max_abs_diff": max_abs,
        "passed": not failures,
        "failures": failures,
    }
    if company is not None:
        report["batch_company"] = {**company, "gate_max_abs_diff": company_gate}
    report["summary"] = (
        f"{len(sentences)} items x {len(runs)} batchings: min cosine {report['min_cosine']:.7f}, "
        f"mean {report['mean_cosine']:.7f}, max |diff| {max_abs:.2e} (gate: min {gate}"
        + (f", mean {mean_gate})" if mean_gate is not None else ")")
        + (f"; batch company moves an item by {company['max_abs_diff']:.1e}" if company is not None else "")
    )
    return report


def _company_failures(company: dict[str, Any], gate: float | None, tags: list[str], sentences: list[Any]) -> list:
    if gate is None or company["max_abs_diff"] <= gate:
        return []
    i = company["worst_index"]
    return [
        {
            "run": "batch_company",
            "index": i,
            "tag": tags[i],
            "text": _show(sentences[i]),
            "diff": company["max_abs_diff"],
            "error": f"its output moves by {company['max_abs_diff']:.2e} with its batch company (gate {gate})",
        }
    ]


def reference_unnormalized(model, sentences: list[Any]) -> np.ndarray:
    """sentence-transformers' embeddings of the battery before the model's last module (its final Normalize):
    the same encode with that module passed over."""
    import torch

    class PassThrough(torch.nn.Module):
        def forward(self, features):
            return features

    key = list(model._modules)[-1]
    last = model._modules[key]
    model._modules[key] = PassThrough()
    try:
        return reference_outputs(model, sentences)
    finally:
        model._modules[key] = last


class _Unnormalized:
    """An encoder whose ``encode`` gives the sentence embedding before the final Normalize."""

    def __init__(self, encoder):
        self.encoder = encoder

    def encode(self, sentences, batch_size):
        return self.encoder.encode(sentences, batch_size=batch_size, output_value="sentence_embedding_unnormalized")


def validate_unnormalized(
    report: dict[str, Any], ref: np.ndarray, encoder, gate: float, items: list[tuple[str, Any]], mean_gate
) -> None:
    """Check the graph's output before the final Normalize against ``ref`` (reference_unnormalized) as ``validate``
    checks the main one, and each vector's length within ``10 * (1 - gate)`` of the reference's (relative; cosine
    alone does not see a scale); the result goes into ``report["unnormalized"]``, and a failure fails ``report``."""
    sub = validate(ref, _Unnormalized(encoder), gate, items, mean_gate=mean_gate, measure_company=False)
    got = _Unnormalized(encoder).encode([s for _, s in items], batch_size=len(items))
    ref_norm = np.linalg.norm(ref.astype(np.float64), axis=1)
    got_norm = np.linalg.norm(got.astype(np.float64), axis=1)
    rel = float(np.max(np.abs(got_norm - ref_norm) / np.maximum(ref_norm, 1e-12))) if len(ref) else 0.0
    limit = 10 * (1 - gate) + 1e-6
    if not rel <= limit:
        error = f"vector length differs by {rel:.2e} (relative; gate {limit:.1e})"
        sub["failures"].append({"run": "norms", "error": error})
        sub["passed"] = False
    sub["max_norm_rel_diff"] = rel
    report["unnormalized"] = {k: v for k, v in sub.items() if k != "failures"} | {"failures": sub["failures"][:20]}
    if not sub["passed"]:
        report["passed"] = False
        report["failures"] += [{**f, "output": "unnormalized"} for f in sub["failures"]]
    report["summary"] += f"; before Normalize: {sub['summary'].split(' (gate')[0]}, length within {rel:.1e}"


def reference_scores(model, pairs: list[Any]) -> np.ndarray:
    """A CrossEncoder's logits on the battery, [n, num_labels] (the activation is applied when comparing)."""
    import torch

    try:
        out = model.predict(pairs, batch_size=8, activation_fn=torch.nn.Identity(), convert_to_numpy=True)
    except Exception as exc:
        raise ExportError(
            f"sentence-transformers' CrossEncoder itself fails on the validation battery ({type(exc).__name__}: "
            f"{str(exc)[:300]}), so the export cannot be checked against it; please report this with the model name."
        ) from exc
    out = np.asarray(out, dtype=np.float32)
    return out.reshape(len(pairs), -1)


def validate_scores(
    ref_logits: np.ndarray,
    cross_encoder,
    max_abs: float,
    items: list[tuple[str, Any]],
    activation,
    top_k: int = 10,
    tie: float | None = None,
    company_gate: float | None = None,
) -> dict[str, Any]:
    """Compare a CrossEncoder's logits ``ref_logits`` (reference_scores) with st_runtime's, after the model's
    ``activation``: every score within ``max_abs`` at batch size 1 and in one batch of all items, and the
    ranking of each query's documents (the "rerank" items, query-major) identical in its first ``top_k``: only two
    documents whose reference scores are within ``tie`` (default ``max_abs``, the resolution the scores are promised
    at) may swap. Irrelevant documents' scores crowd near the activation's floor, where such ties are common."""
    tie = max_abs if tie is None else tie
    tags = [t for t, _ in items]
    pairs = [s for _, s in items]
    ref = activation(ref_logits)
    runs = {
        "batch_1": activation(cross_encoder.logits(pairs, batch_size=1)),
        f"batch_{len(pairs)}": activation(cross_encoder.logits(pairs, batch_size=len(pairs))),
    }
    failures: list[dict[str, Any]] = []
    worst = 0.0
    ranking_identical = True
    for run, got in runs.items():
        if got.shape != ref.shape:
            failures.append({"run": run, "error": f"shape {got.shape} != sentence-transformers {ref.shape}"})
            continue
        diff = np.abs(got.astype(np.float64) - ref).max(axis=1)
        worst = max(worst, float(diff.max()))
        for i in np.flatnonzero(~(diff <= max_abs)):
            failures.append(
                {"run": run, "index": int(i), "tag": tags[i], "text": _show(pairs[i]), "diff": float(diff[i])}
            )
        rankings = _ranking_failures(items, ref, got, top_k, tie, run)
        ranking_identical = ranking_identical and not rankings
        failures += rankings
    logits = {"batch_1": cross_encoder.logits(pairs, batch_size=1)}
    logits["all"] = cross_encoder.logits(pairs, batch_size=len(pairs))
    company = batch_company(lambda t, bs: cross_encoder.logits(t, batch_size=bs), pairs, *logits.values())
    failures += _company_failures(company, company_gate, tags, pairs)
    report = {
        "gate_max_abs_diff": max_abs,
        "items": len(pairs),
        "runs": sorted(runs),
        "tags": sorted(set(tags)),
        "max_abs_diff": worst,
        "ranking_identical": ranking_identical,
        "batch_company": {**company, "gate_max_abs_diff": company_gate},
        "passed": not failures,
        "failures": failures,
    }
    report["summary"] = (
        f"{len(pairs)} pairs x {len(runs)} batchings: max |score diff| {worst:.2e} after the activation, ranking "
        f"{'identical' if ranking_identical else 'DIFFERENT'} (gate: {max_abs}, identical top-{top_k})"
    )
    return report


def _ranking_failures(
    items: list[tuple[str, Any]], ref: np.ndarray, got: np.ndarray, top_k: int, tie: float, run: str
) -> list[dict[str, Any]]:
    """Each query of the "rerank" items (query-major) whose first ``top_k`` documents by ``got`` are not those by
    ``ref`` in the same order, as a failure of ``run``; two documents whose reference scores are within ``tie``
    may swap places (a tie, not a change)."""
    groups: dict[str, list[int]] = {}
    for i, (tag, pair) in enumerate(items):
        if tag == "rerank":
            groups.setdefault(pair[0], []).append(i)
    failures = []
    for query, idx in groups.items():
        scores = ref[idx, 0]
        want = np.argsort(-scores, kind="stable")[:top_k]
        have = np.argsort(-got[idx, 0], kind="stable")[:top_k]
        if any(a != b and abs(scores[a] - scores[b]) > tie for a, b in zip(want, have)):
            failures.append({"run": run, "error": f"ranking for {query!r} differs: {have.tolist()} vs {want.tolist()}"})
    return failures


def reference_sparse(model, sentences: list[Any]) -> np.ndarray:
    """A SparseEncoder's embeddings of the battery as dense rows [n, vocabulary], at the model's own
    max_active_dims (what its users get)."""
    try:
        out = model.encode(sentences, batch_size=8, convert_to_tensor=True, convert_to_sparse_tensor=False)
    except Exception as exc:
        raise ExportError(
            f"sentence-transformers' SparseEncoder itself fails on the validation battery ({type(exc).__name__}: "
            f"{str(exc)[:300]}), so the export cannot be checked against it; please report this with the model name."
        ) from exc
    return np.asarray(out.cpu().numpy(), dtype=np.float32)


def validate_sparse(ref: np.ndarray, encoder, max_abs: float, items: list[tuple[str, Any]]) -> dict[str, Any]:
    """Compare a SparseEncoder's rows ``ref`` (reference_sparse) with st_runtime's sparse embeddings at batch size 1
    and in one batch of all items: every weight within ``max_abs`` (relative to the weight where it is above 1,
    as summed weights are), and the same active set. An entry active on one side only is a mismatch unless its
    weight is itself within the tolerance (a logit within rounding of zero, which relu keeps or drops)."""
    tags = [t for t, _ in items]
    sentences = [s for _, s in items]
    runs = {
        "batch_1": encoder.to_dense(encoder.encode(sentences, batch_size=1)),
        f"batch_{len(sentences)}": encoder.to_dense(encoder.encode(sentences, batch_size=len(sentences))),
    }
    failures: list[dict[str, Any]] = []
    worst = 0.0
    mismatches = 0
    for run, got in runs.items():
        if got.shape != ref.shape:
            failures.append({"run": run, "error": f"shape {got.shape} != sentence-transformers {ref.shape}"})
            continue
        tol = max_abs * np.maximum(1.0, np.abs(ref))
        diff = np.abs(got.astype(np.float64) - ref)
        worst = max(worst, float((diff / np.maximum(1.0, np.abs(ref))).max()))
        one_sided = (got != 0) != (ref != 0)
        mismatches += int(one_sided.sum())
        bad = (diff > tol) | (one_sided & (np.maximum(np.abs(got), np.abs(ref)) > tol))
        for i in np.flatnonzero(bad.any(axis=1)):
            failures.append(
                {
                    "run": run,
                    "index": int(i),
                    "tag": tags[i],
                    "text": _show(sentences[i]),
                    "diff": float(diff[i].max()),
                    "active_set_differs": bool(one_sided[i].any()),
                }
            )
    report = {
        "gate_max_abs_diff": max_abs,
        "items": len(sentences),
        "runs": sorted(runs),
        "tags": sorted(set(tags)),
        "max_abs_diff": worst,
        "active_set_mismatches": mismatches,
        "mean_active_dims": float(np.count_nonzero(ref, axis=1).mean()) if len(ref) else 0.0,
        "passed": not failures,
        "failures": failures,
    }
    report["summary"] = (
        f"{len(sentences)} texts x {len(runs)} batchings: max weight diff {worst:.2e}, {mismatches} one-sided "
        f"entries (all within the gate unless failed), {report['mean_active_dims']:.0f} active dims on average "
        f"(gate: {max_abs}, same active set)"
    )
    return report
