"""Replays across a restart: a signed request accepted once is refused by the next server on the same state
directory (real servers in sequence, real HTTP, the real SQLite store), and where the store cannot vouch
for the past (none configured, a reboot, an unreadable file) requests signed before the start are refused."""

from __future__ import annotations

import sqlite3
import time
import uuid
from pathlib import Path
from urllib.parse import urlencode

import pytest
from test_api_support import (
    api_config,
    jd_auth,
    jumdata_auth,
    native,
    post_form,
    post_json,
    shared_engine,
    start,
)

from agent.api import build_context
from agent.api.common import ApiError
from agent.api.replay import ReplayCache, boot_id
from agent.config import load_agent_config
from agent.errors import ConfigError
from agent.gallery import Gallery, GalleryConfig

BEFORE_START_MS = 10_000  # well inside the 300 s window, well before the server's start second


def _jd(run, auth: dict[str, str]) -> tuple[int, str]:
    """A cheap signed JD call (no image: business code 1 once authenticated)."""
    reply = post_json(run, "/jdai/faceCompareV1?" + urlencode(auth), {})
    return reply.status, reply.json()["code"]


def _jumdata(run, auth: dict[str, str]) -> str:
    reply = post_form(run, "/face/multi-search", auth)
    assert reply.status == 200 and reply.json()["code"] == 400
    return reply.json()["msg"]


def _native(run, ts_ms: int, nonce: str) -> tuple[int, str]:
    reply = native(run, "GET", "/api/v1/groups", ts_ms=ts_ms, nonce=nonce)
    return reply.status, (reply.json().get("error") or {}).get("code", "")


def test_agent_config_puts_the_store_in_the_state_dir(tmp_path):
    path = tmp_path / "agent.yaml"
    path.write_text(f"state_dir: {tmp_path / 'state'}\napi:\n  port: 0\n")
    assert load_agent_config(path, environ={}).api.replay_store == tmp_path / "state" / "api-replay.sqlite3"
    from agent.cli.serve import load_serve_config

    served = load_serve_config(path, {}, {"state_dir": str(tmp_path / "state")})
    assert served.api.replay_store == tmp_path / "state" / "api-replay.sqlite3"  # `serve` keeps it too


def test_a_signature_used_before_a_restart_is_refused_after_it(tmp_path):
    store = tmp_path / "state" / "api-replay.sqlite3"
    first = start(tmp_path, replay_store=store)
    try:
        # signed after the first start: a new store has no past to vouch for either
        jd, jm, ts, nonce = jd_auth(), jumdata_auth(), int(time.time() * 1000), uuid.uuid4().hex
        assert _jd(first, jd) == (200, "10000")
        assert "already used" not in _jumdata(first, jm)
        assert _native(first, ts, nonce) == (200, "")
    finally:
        first.close()
    second = start(tmp_path, replay_store=store)  # the same state directory, a new server
    try:
        assert _jd(second, jd) == (401, "10004")
        assert "already used" in _jumdata(second, jm)
        assert _native(second, ts, nonce) == (401, "auth_replayed")
        # the same boot: the store vouches for the past, so a request signed before this start but never
        # used is accepted (clients whose clocks lag keep working across a restart)
        assert _jd(second, jd_auth(ts_ms=int(time.time() * 1000) - BEFORE_START_MS)) == (200, "10000")
    finally:
        second.close()


def test_without_a_store_requests_signed_before_the_start_are_refused(tmp_path):
    early = int(time.time() * 1000) - BEFORE_START_MS
    run = start(tmp_path)  # replay_store None: nothing survives, so nothing from before the start passes
    try:
        reply = post_json(run, "/jdai/faceCompareV1?" + urlencode(jd_auth(ts_ms=early)), {})
        assert (reply.status, reply.json()["code"]) == (401, "10003")
        assert "signed before the server started" in reply.json()["msg"]
        assert _native(run, early, uuid.uuid4().hex) == (401, "auth_stale")
        assert "signed before the server started" in _jumdata(run, jumdata_auth(ts_ms=early + 1))
        assert _jd(run, jd_auth()) == (200, "10000")
        assert _native(run, int(time.time() * 1000), uuid.uuid4().hex) == (200, "")
    finally:
        run.close()


def _set_boot_id(store: Path, value: str) -> None:
    with sqlite3.connect(store) as db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'boot_id'", (value,))
    db.close()


@pytest.mark.skipif(boot_id() is None, reason="the kernel gives no boot id here")
def test_after_a_reboot_the_store_cannot_vouch_for_the_past(tmp_path):
    """SQLite with synchronous=NORMAL may lose its last commits on power loss: a store written during another
    boot is not trusted for what was signed before this start. The test stands in for the reboot by
    writing another boot id into the store's own table."""
    store = tmp_path / "api-replay.sqlite3"
    used = jd_auth()
    run = start(tmp_path, replay_store=store)
    try:
        assert _jd(run, used) == (200, "10000")
    finally:
        run.close()
    _set_boot_id(store, "an-earlier-boot")
    never_used = jd_auth(ts_ms=int(time.time() * 1000) - BEFORE_START_MS)
    run = start(tmp_path, replay_store=store)
    try:
        assert _jd(run, used)[1] in ("10003", "10004")
        assert _jd(run, never_used) == (401, "10003")
        assert _jd(run, jd_auth()) == (200, "10000")
    finally:
        run.close()
    # that start recorded this boot: the next restart trusts the store again
    signed_between = jd_auth(ts_ms=int(time.time() * 1000) - BEFORE_START_MS)
    run = start(tmp_path, replay_store=store)
    try:
        assert _jd(run, signed_between) == (200, "10000")
    finally:
        run.close()


def test_an_unreadable_store_is_replaced_and_the_past_refused(tmp_path):
    store = tmp_path / "api-replay.sqlite3"
    store.write_bytes(b"this is not an SQLite database" * 100)
    early = jd_auth(ts_ms=int(time.time() * 1000) - BEFORE_START_MS)
    run = start(tmp_path, replay_store=store)
    try:
        assert _jd(run, early) == (401, "10003")
        fresh = jd_auth()
        assert _jd(run, fresh) == (200, "10000")
        assert _jd(run, fresh) == (401, "10004")
    finally:
        run.close()
    with sqlite3.connect(store) as db:
        assert db.execute("SELECT COUNT(*) FROM seen").fetchone()[0] == 1
    db.close()


@pytest.mark.skipif(boot_id() is None, reason="the kernel gives no boot id here")
def test_the_store_is_bounded_and_pruned_by_age(tmp_path):
    store, window = tmp_path / "replay.sqlite3", 300.0
    first = ReplayCache(100, window, store)
    assert first.not_before > 0  # a new store: what was signed before it opened is refused
    first.close()
    cache = ReplayCache(100, window, store)  # its second opening, same boot: the store vouches
    assert cache.not_before == 0
    now = time.time()
    # Signatures whose window has passed (signed more than `window` ago) are pruned at the next check, so
    # they never fill the store.
    for i in range(300):
        cache.check_and_add(f"aged-{i}", now - window - 1)
    assert len(cache) == 1
    for i in range(100):
        cache.check_and_add(f"live-{i}", now)
    with pytest.raises(ApiError) as full:  # full of live signatures: refused, never let through
        cache.check_and_add("one-more", now)
    assert full.value.code == "busy"
    cache.close()
    with sqlite3.connect(store) as db:
        assert db.execute("SELECT COUNT(*) FROM seen").fetchone()[0] == 100
    db.close()
    reopened = ReplayCache(100, window, store)
    try:
        assert len(reopened) == 100
        with pytest.raises(ApiError) as replay:
            reopened.check_and_add("live-7", now)
        assert replay.value.code == "auth_replayed"
    finally:
        reopened.close()


def test_a_store_that_cannot_be_opened_fails_the_start(tmp_path):
    (tmp_path / "api-replay.sqlite3").mkdir()  # a directory where the file should be
    cfg = api_config(tmp_path / "cfg", replay_store=tmp_path / "api-replay.sqlite3")
    gallery = Gallery(GalleryConfig(path=tmp_path / "gallery", save_interval_s=0))
    try:
        with pytest.raises(ConfigError, match="api.replay_store"):
            build_context(cfg, shared_engine(), gallery)
    finally:
        gallery.close()
