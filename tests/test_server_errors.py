"""The validating server's answer to its own failures leaves keep-alive connections usable.

Starlette answers an unhandled exception with a 500 and re-raises it (as does a handler
registered for ``Exception``, which is how ``feast serve`` answers its errors); uvicorn then
closes the connection after a response that did not say so, and a keep-alive client's next
request on it is reset or has to reconnect. ``AnswerServerErrors`` turns the exception into the
answer instead. Real uvicorn on a free loopback port, in a thread, one keep-alive session.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, Iterator

import pytest
import requests

from scaletot_features.store.server import AnswerServerErrors


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_app(middleware: bool) -> Any:
    from fastapi import FastAPI
    from feast.errors import FeastError

    class Conflict(FeastError):
        def http_status_code(self) -> int:
            return 409

    app = FastAPI()

    @app.get("/ok")
    async def ok() -> dict:
        return {"ok": True}

    @app.get("/boom")
    async def boom() -> dict:
        raise RuntimeError("the server itself failed")

    @app.get("/feast-error")
    async def feast_error() -> dict:
        raise Conflict("a Feast error with its own status")

    if middleware:
        app.add_middleware(AnswerServerErrors)
    return app


def serve_in_thread(app: Any) -> Iterator[str]:
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def guarded() -> Iterator[str]:
    yield from serve_in_thread(make_app(middleware=True))


@pytest.fixture(scope="module")
def unguarded() -> Iterator[str]:
    yield from serve_in_thread(make_app(middleware=False))


@pytest.fixture
def connects(monkeypatch) -> list[int]:
    """TCP connects made by urllib3 during the test."""
    from urllib3.connection import HTTPConnection

    seen: list[int] = []
    connect = HTTPConnection.connect

    def counting(conn: HTTPConnection) -> None:
        seen.append(1)
        connect(conn)

    monkeypatch.setattr(HTTPConnection, "connect", counting)
    return seen


def test_a_failure_is_a_json_500_and_the_connection_stays(guarded, connects):
    with requests.Session() as s:
        for _ in range(3):
            r = s.get(guarded + "/boom", timeout=10)
            assert r.status_code == 500
            assert r.json()["error"] == "server_error"
            assert "the server itself failed" in r.json()["detail"]
            assert s.get(guarded + "/ok", timeout=10).status_code == 200
    assert len(connects) == 1


def test_a_feast_error_gets_its_own_status(guarded, connects):
    with requests.Session() as s:
        r = s.get(guarded + "/feast-error", timeout=10)
        assert r.status_code == 409 and r.json()["error"] == "feast_error"
        assert s.get(guarded + "/ok", timeout=10).status_code == 200
    assert len(connects) == 1


def test_without_it_the_connection_is_dropped_after_a_500(unguarded, connects):
    """The mechanism behind the resets after ``feast serve``'s error answers."""
    with requests.Session() as s:
        assert s.get(unguarded + "/boom", timeout=10).status_code == 500
        try:
            after: Any = s.get(unguarded + "/ok", timeout=10).status_code
        except requests.ConnectionError as e:  # the request went out on the closing socket
            after = e
    assert isinstance(after, Exception) or len(connects) == 2, (after, len(connects))
