"""st_runtime from another checkout (the base of an A/B), in its own process, for benchmarks that compare this
checkout's st_runtime with an earlier one in the same run.

    python benchmarks/base_worker.py CHECKOUT      (started by benchmarks.base_client.BaseWorker)

Protocol: JSON lines, as benchmarks/peer_worker.py's. The worker first writes {"hello": ..., "versions": ...,
"st_runtime": FILE}; then every request on stdin gets exactly one reply on stdout, {"ok": true, ...} or
{"ok": false, "error": ..., "traceback": ...}.

    {"cmd": "load", "key": KEY, "model": DIR}         (an st_runtime.SentenceEncoder of that export folder)
    {"cmd": "corpus", "path": FILE}                   (a JSON object: workload name -> list of texts)
    {"cmd": "encode", "key": KEY, "workload": NAME}   -> {"seconds": S} (time.perf_counter around encode only)
    {"cmd": "quit"}
"""

from __future__ import annotations

import json
import sys
import time
import traceback

CHECKOUT = sys.argv[1]
sys.path.insert(0, CHECKOUT)


def main() -> int:
    out = sys.stdout
    sys.stdout = sys.stderr  # the protocol has stdout to itself
    import st_runtime

    out.write(json.dumps({"hello": 1, "versions": {}, "st_runtime": st_runtime.__file__}) + "\n")
    out.flush()
    models: dict = {}
    corpus: dict = {}
    for line in sys.stdin:
        msg = json.loads(line)
        try:
            if msg["cmd"] == "quit":
                out.write(json.dumps({"ok": True}) + "\n")
                out.flush()
                return 0
            reply: dict = {"ok": True}
            if msg["cmd"] == "load":
                models[msg["key"]] = st_runtime.SentenceEncoder(msg["model"])
            elif msg["cmd"] == "corpus":
                with open(msg["path"], encoding="utf-8") as f:
                    corpus = json.load(f)
            elif msg["cmd"] == "encode":
                texts = corpus[msg["workload"]]
                start = time.perf_counter()
                models[msg["key"]].encode(texts)
                reply["seconds"] = time.perf_counter() - start
            else:
                raise ValueError(f"unknown command {msg['cmd']!r}")
        except Exception as e:  # reported to the client, which raises it
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        out.write(json.dumps(reply) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
