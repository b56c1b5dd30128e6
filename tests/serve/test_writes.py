"""st-serve's response writes (st_runtime/serve/writes.py): a response's head goes out with its body."""

from __future__ import annotations

import socket

import pytest

from st_runtime.serve.writes import JOIN_BELOW, HeldHead


class Transport:
    def __init__(self):
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "a write after close"
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str):
        return ("127.0.0.1", 1) if name == "peername" else None


def test_head_and_body_go_in_one_write():
    t = Transport()
    held = HeldHead(t)
    held.write(b"HTTP/1.1 200 OK\r\n\r\n")
    assert t.writes == []
    held.write(b'{"a": 1}')
    held.write(b"more")  # later writes pass through
    assert t.writes == [b'HTTP/1.1 200 OK\r\n\r\n{"a": 1}', b"more"]
    assert held.flush() is t and held.get_extra_info("peername") == ("127.0.0.1", 1)


def test_a_large_body_is_not_copied_and_a_held_head_is_never_lost():
    t = Transport()
    big = b"x" * JOIN_BELOW
    held = HeldHead(t)
    held.write(b"head")
    held.write(big)
    assert t.writes == [b"head", big]
    t2 = Transport()
    held = HeldHead(t2)
    held.write(b"head")
    held.close()  # uvicorn closes after a response with no body write (or after an error): the head goes first
    assert t2.writes == [b"head"] and t2.closed
    t3 = Transport()
    held = HeldHead(t3)
    held.write(b"head")
    t3.close()  # the client left before the body: nothing is written to the closed transport
    assert held.flush() is t3 and t3.writes == []


@pytest.fixture(scope="module")
def bert_server(fixtures_dir, tmp_path_factory):
    from tests.serve.conftest import Server

    server = Server([str(fixtures_dir / "bert" / "export")], tmp_path_factory.mktemp("writes") / "serve.log")
    yield server.wait_ready()
    server.stop()


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_keep_alive_responses_stay_whole(bert_server, method):
    """Three requests on one keep-alive connection, each answered whole (HEAD: a head without a body)."""
    with socket.create_connection(("127.0.0.1", bert_server.port), timeout=10) as s:
        for _ in range(3):
            s.sendall(f"{method} /health HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            data = b""
            while b"\r\n\r\n" not in data:
                data += s.recv(65536)
            head, _, rest = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 "), head
            assert rest == b""
        body = b'{"inputs": ["a b"]}'
        s.sendall(b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        data = b""
        while b"]]" not in data:
            data += s.recv(65536)
        assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"]]")
