"""MaxSim of st_runtime's multi-vector kind against a direct computation: chunked over documents, with empty
documents (sentence-transformers' -1e9) and MeanMaxSim; and the per-token rows sink."""

from __future__ import annotations

import numpy as np
import pytest

from st_runtime.kinds import multi_vector as mv


def _direct(queries, documents, mean=False):
    out = np.zeros((len(queries), len(documents)))
    for i, q in enumerate(queries):
        for j, d in enumerate(documents):
            out[i, j] = mv.EMPTY_DOCUMENT_SCORE if not len(d) else (q @ d.T).max(axis=1).sum()
        if mean:
            out[i] /= max(len(q), 1)
    return out


@pytest.mark.parametrize("chunk", [1 << 24, 7, 1])
@pytest.mark.parametrize("mean", [False, True])
def test_maxsim_matches_the_direct_computation(monkeypatch, chunk, mean):
    rng = np.random.default_rng(0)
    queries = [rng.normal(size=(n, 8)).astype(np.float32) for n in (3, 1, 5, 32)]
    documents = [rng.normal(size=(n, 8)).astype(np.float32) for n in (4, 0, 7, 1, 9, 2, 300)]
    monkeypatch.setattr(mv, "MAXSIM_CHUNK_ELEMENTS", chunk)
    got = mv.maxsim(queries, documents, mean)
    assert got.dtype == np.float32 and got.shape == (4, 7)
    np.testing.assert_allclose(got, _direct(queries, documents, mean), rtol=1e-5, atol=1e-4)
    assert (got[:, 1] < -1e7).all()  # the empty document ranks last


def test_maxsim_of_nothing():
    assert mv.maxsim([], [np.ones((2, 3), np.float32)]).shape == (0, 1)
    assert mv.maxsim([np.ones((2, 3), np.float32)], []).shape == (1, 0)


def test_token_rows_keep_each_texts_non_padding_rows():
    rows = mv.TokenRows(3)
    batch = np.zeros((2, 4, 3), np.float32)
    batch[0, :2, -1] = [1, 3]  # a token and an expansion slot, then padding
    batch[1, :3, -1] = [1, 2, 1]
    batch[..., 0] = np.arange(4)
    rows[np.array([2, 0])] = batch
    rows[1:2][np.array([0])] = batch[:1, :1]
    kept = rows.rows()
    assert [r.shape for r in kept] == [(3, 3), (1, 3), (2, 3)]
    assert kept[2][:, -1].tolist() == [1, 3] and kept[0][:, 0].tolist() == [0, 1, 2]
    with pytest.raises(ValueError):
        rows[::2]
