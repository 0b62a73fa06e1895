"""Overload and oversize answers in each family's own documented shape (issue 15, items 2 and 6), over real
sockets: a connection beyond max_handlers, and a body over the limit sent whole before the answer is read."""

from __future__ import annotations

import http.client
import json
import socket

import pytest
from test_api_support import call, start

BUSY = {  # family path -> (HTTP status, what the body must say)
    "/facepp/v3/search": (403, ("error_message", "CONCURRENCY_LIMIT_EXCEEDED")),
    "/face/multi-search": (200, ("code", 609)),
    "/jdai/faceSearch": (429, ("code", "10020")),
    "/api/v1/search": (429, ("error.code", "busy")),
}


def _field(payload: dict, dotted: str):
    for key in dotted.split("."):
        payload = payload[key]
    return payload


@pytest.fixture
def one_slot(tmp_path):
    run = start(tmp_path, max_handlers=1, socket_timeout_s=30)
    holder = socket.create_connection(("127.0.0.1", run.server.port), timeout=10)
    holder.sendall(b"POST /api/v1/search HTTP/1.1\r\nHost: x\r\n")  # headers never finish: the slot is held
    try:
        yield run
    finally:
        holder.close()
        run.close()


@pytest.mark.parametrize("path", sorted(BUSY))
def test_a_connection_beyond_max_handlers_gets_its_familys_rate_limit_answer(one_slot, path):
    status, (key, value) = BUSY[path]
    reply = call(one_slot, "POST", path, b"{}", {"Content-Type": "application/json"})
    assert reply.status == status, reply.body
    assert _field(reply.json(), key) == value, reply.body
    assert reply.headers.get("retry-after") == "1"
    assert one_slot.server.refused_connections >= 1


def _send_whole_then_read(port: int, path: str, size: int) -> tuple[int, bytes]:
    """What requests and http.client do: the whole body first, the answer after."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", path, body=b"x" * size, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_a_body_over_the_limit_sent_at_once_gets_the_413_not_a_broken_pipe(tmp_path):
    run = start(tmp_path)
    try:
        status, body = _send_whole_then_read(run.server.port, "/api/v1/search", 9_000_000)
        assert status == 413 and json.loads(body)["error"]["code"] == "body_too_large"
        # Face++ documents 2 MB for the whole request, answered as plain text.
        status, body = _send_whole_then_read(run.server.port, "/facepp/v3/search", 2 * 1024 * 1024 + 1)
        assert (status, body) == (413, b"Request Entity Too Large")
        status, body = _send_whole_then_read(run.server.port, "/jdai/faceSearch", 9_000_000)
        assert status == 413 and json.loads(body)["code"] == "10413"
        assert call(run, "GET", "/api/v1/health").status == 200  # and the server goes on
    finally:
        run.close()
