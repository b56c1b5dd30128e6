"""st-embed --long-inputs: chunked rows equal encode(long_inputs="chunk"); "error" stops with one line naming the
text's token count; the setting is recorded, so a rerun with another one is refused."""

from __future__ import annotations

import json

import pytest
from helpers import assert_parity

from exporters.battery import long_text

pq = pytest.importorskip("pyarrow.parquet", reason="needs the bulk extra: pip install 'st-runtime[bulk]'")

from st_runtime import SentenceEncoder  # noqa: E402
from st_runtime.bulk import cli  # noqa: E402


def test_st_embed_long_inputs(capsys, fixtures_dir, tmp_path):
    model = fixtures_dir / "bert" / "export"
    texts = ["How big is London", long_text(200), "a", long_text(70)]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    out = tmp_path / "out"
    assert cli.main([str(model), str(source), "-o", str(out), "--long-inputs", "chunk", "--threads", "1", "-q"]) == 0
    col = pq.read_table(out).column("embedding").combine_chunks()
    got = col.flatten().to_numpy(zero_copy_only=False).reshape(len(texts), -1)
    enc = SentenceEncoder(model, threads=1)
    assert_parity(enc.encode(texts, long_inputs="chunk"), got)
    assert json.loads((out / "_st_embed.json").read_text())["long_inputs"] == "chunk"
    capsys.readouterr()
    rc = cli.main([str(model), str(source), "-o", str(tmp_path / "err"), "--long-inputs", "error", "-q"])
    err = capsys.readouterr().err
    n = len(enc.text_tower.tokenize([texts[1]], truncate=False)[0])
    assert rc == 1 and f"has {n} tokens, over the limit of 48 tokens" in err and "Traceback" not in err
    assert cli.main([str(model), str(source), "-o", str(out), "-q"]) != 0  # truncating into a chunked output
