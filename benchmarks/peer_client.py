"""throughput.py's side of the peer worker (benchmarks/peer_worker.py, run by the peer venv's python).

Every request has a timeout; a worker that exits, hangs or answers garbage raises PeerError with the
tail of its stderr (which is kept in a log file, so a chatty export can never block the pipe).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import threading
from pathlib import Path

WORKER = Path(__file__).resolve().parent / "peer_worker.py"


class PeerError(RuntimeError):
    """The peer worker failed a request (alive is False when the worker is gone)."""

    def __init__(self, message: str, alive: bool):
        super().__init__(message)
        self.alive = alive


class PeerWorker:
    def __init__(
        self,
        python: str | os.PathLike,
        log_path: Path,
        start_timeout: float = 300.0,
        script: str | os.PathLike = WORKER,
        args: tuple[str, ...] = (),
    ):
        self.python = str(python)
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - open while the worker lives; close() closes it
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        try:
            self.proc = subprocess.Popen(
                [self.python, "-u", str(script), *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._log,
                env=env,
                text=True,
                bufsize=1,
                cwd=str(Path(script).resolve().parent),
            )
        except OSError as e:
            self._log.close()
            raise PeerError(f"cannot start the peer worker with {self.python}: {e}", alive=False) from e
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.hello = self._read(start_timeout, "start-up")
        if self.hello.get("hello") is None:
            self.kill()
            raise PeerError(
                f"the peer worker's first line is not its greeting: {self.hello}\n{self.stderr_tail()}", alive=False
            )

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stderr_tail(self, lines: int = 40) -> str:
        try:
            self._log.flush()
            text = self.log_path.read_bytes().decode("utf-8", "replace")
        except OSError:
            return "(no stderr log)"
        tail = text.splitlines()[-lines:]
        return f"--- last {len(tail)} lines of the peer worker's stderr ({self.log_path}) ---\n" + "\n".join(tail)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=30)

    def _read(self, timeout: float, what: str) -> dict:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            self.kill()
            raise PeerError(
                f"the peer worker did not answer {what} within {timeout:.0f} s; killed it\n{self.stderr_tail()}",
                alive=False,
            ) from None
        if line is None:
            try:
                rc = self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
                rc = "unknown (closed its stdout, then killed)"
            raise PeerError(f"the peer worker exited (code {rc}) during {what}\n{self.stderr_tail()}", alive=False)
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            self.kill()
            raise PeerError(
                f"the peer worker answered {what} with a line that is not JSON: {line[:300]!r}\n{self.stderr_tail()}",
                alive=False,
            ) from None

    def request(self, msg: dict, timeout: float, what: str | None = None) -> dict:
        what = what or msg.get("cmd", "a request")
        if self.proc.poll() is not None:
            raise PeerError(
                f"the peer worker is gone (code {self.proc.returncode}) before {what}\n{self.stderr_tail()}",
                alive=False,
            )
        try:
            self.proc.stdin.write(json.dumps(msg) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as e:
            self.kill()
            raise PeerError(f"cannot send {what} to the peer worker ({e})\n{self.stderr_tail()}", alive=False) from e
        reply = self._read(timeout, what)
        if not reply.get("ok"):
            raise PeerError(
                f"the peer worker failed {what}: {reply.get('error')}\n{reply.get('traceback', '')}", alive=self.alive()
            )
        return reply

    def close(self) -> None:
        try:
            if self.alive():
                self.request({"cmd": "quit"}, timeout=30)
                self.proc.wait(timeout=30)
        except (PeerError, subprocess.TimeoutExpired):
            pass
        finally:
            self.kill()
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
            self._log.close()

    def __enter__(self) -> PeerWorker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
