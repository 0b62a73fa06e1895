"""The console's security over real sockets: a real agent (cameras on a looping real video, the API server
with the console mounted) and a real HTTP client (http.client), each test from its own loopback address so
the per-IP login limit of one test does not reach another."""

from __future__ import annotations

import json
import re
import socket
import ssl
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from console_support import (
    JD_KEY,
    JD_SECRET,
    KEY,
    LIN_PHOTO,
    PASSWORD,
    ROOT,
    SECRET,
    Client,
    redirect_path,
    start_agent,
    start_console,
)

from agent.console import ConsoleDeps, build_console
from agent.console.config import ConsoleConfig
from agent.console.limits import ANONYMOUS_BODY
from agent.console.passwords import read_hash, verify_password
from agent.console.security import LoginLimiter, loopback_host
from agent.console.status import mask
from agent.errors import ConfigError
from agent.gallery import NewFace
from agent.ops.redact import scrub

WINDOW_S = 4.0  # the login window of the agent under test: short, so "until the window passes" is testable
STALL_S = 2.0  # the API's socket timeout here: a body stalled this long is dropped


@pytest.fixture(scope="module")
def agent(tmp_path_factory, data_dir: Path):
    tmp = tmp_path_factory.mktemp("console-security")
    console = {"login_window_s": WINDOW_S, "max_upload_bytes": 2_000_000}
    app = start_agent(tmp, data_dir, console=console, api={"socket_timeout_s": STALL_S})
    face = app.engine.analyze((data_dir / LIN_PHOTO).read_bytes(), max_faces=1, keep_chips=True)[0]
    import cv2

    thumb = bytes(cv2.imencode(".jpg", face.chip)[1])
    app.gallery.add_faces(
        "door", [NewFace("secret-person", face.vector, app.engine.model_id, 0.9, "badge 7", thumb)]
    )
    # The observer has a frame and a decided face before the tests look for them.
    deadline = time.monotonic() + 60
    while not (app.observer.views() and app.observer.recent()):
        assert time.monotonic() < deadline, "no frame or face from the camera within 60 s"
        time.sleep(0.1)  # polling interval, not synchronisation
    yield app
    app.stop()


def client(agent, n: int, **kw) -> Client:
    return Client(agent.api.port, source_ip=f"127.0.0.{n}", **kw)


def logged_in(agent, n: int) -> Client:
    c = client(agent, n)
    reply = c.login()
    assert reply.status == 303 and c.cookie, reply.text
    return c


def console_routes(agent) -> list[tuple[str, str]]:
    """(method, path) of every console route, read from the mounted app itself, path parameters filled."""
    from starlette.routing import Mount, Route

    mount = next(r for r in agent.api.app.routes if isinstance(r, Mount) and r.path == "/console")
    app = mount.app.app  # the Limits wrapper holds the Starlette app
    face_id = agent.gallery.faces_of_person("door", "secret-person")[0].face_id
    recent = agent.observer.recent()[0].id
    fill = {"{camera}": "door", "{face_id}": face_id, "{face}": str(recent)}
    out = []
    for route in app.routes:
        if isinstance(route, Route):
            path = route.path
            for key, value in fill.items():
                path = path.replace(key, value)
            out.extend((m, "/console" + path) for m in sorted(route.methods - {"HEAD"}))
    return out


PUBLIC = {("GET", "/console/login"), ("POST", "/console/login"), ("GET", "/console/")}


def test_every_page_and_action_needs_a_session(agent) -> None:
    routes = console_routes(agent)
    assert len(routes) >= 20 and ("POST", "/console/people/erase") in routes
    anonymous = client(agent, 10)
    for method, path in routes:
        if (method, path) in PUBLIC:
            continue
        if method == "GET":
            reply = anonymous.get(path)
        else:
            reply = anonymous.post_form(
                path, {"group_id": "door", "outer_id": "secret-person", "confirm": "x"}
            )
        if method == "GET" and not path.endswith((".jpg", ".json")):
            assert reply.status == 303 and redirect_path(reply) == "/console/login", (path, reply.status)
        else:
            assert reply.status == 401, (method, path, reply.status)
        assert (
            b"secret-person" not in reply.body
            and b"badge 7" not in reply.body
            and b"\xff\xd8" not in reply.body
        )
        assert reply.headers["cache-control"] == "no-store"
    assert [p.outer_id for p in agent.gallery.list_persons("door")] == ["secret-person"]
    # The root redirects to the live page, which redirects to the login page.
    assert redirect_path(anonymous.get("/console/")) == "/console/live"
    # A made-up cookie is no session.
    anonymous.cookie = "A" * 43
    assert redirect_path(anonymous.get("/console/people")) == "/console/login"


def test_a_forged_or_missing_csrf_token_changes_nothing(agent) -> None:
    c = logged_in(agent, 11)
    token = c.csrf()
    fields = {"group_id": "door", "outer_id": "secret-person", "user_info": "changed"}
    for forged in ({}, {"csrf": ""}, {"csrf": token[:-1] + ("A" if token[-1] != "A" else "B")}):
        reply = c.post_form("/console/people/info", {**fields, **forged})
        assert reply.status == 403, reply.text
    reply = c.post_form("/console/people/info", fields, headers={"X-CSRF-Token": "forged"})
    assert reply.status == 403
    erase = {"group_id": "door", "outer_id": "secret-person", "confirm": "secret-person", "csrf": "x" * 43}
    assert c.post_form("/console/people/erase", erase).status == 403
    # Another session's token is no good either.
    other = logged_in(agent, 12)
    assert c.post_form("/console/people/info", {**fields, "csrf": other.csrf()}).status == 403
    person = agent.gallery.get_person("door", "secret-person")
    assert person.user_info == "badge 7"
    # The right token works (so the refusals above were about the token).
    assert (
        c.post_form("/console/people/info", {**fields, "user_info": "badge 7", "csrf": token}).status == 303
    )


def test_a_session_used_from_another_origin_is_refused(agent) -> None:
    c = logged_in(agent, 13)
    token = c.csrf()
    fields = {"group_id": "door", "outer_id": "secret-person", "user_info": "evil", "csrf": token}
    for headers in (
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Origin": f"https://127.0.0.1:{agent.api.port}"},  # another scheme is another origin
        {"Origin": "", "Referer": "http://evil.example/console/people"},
    ):
        assert c.post_form("/console/people/info", fields, headers=headers).status == 403, headers
    no_origin = c.request(  # neither Origin nor Referer: refused (a browser always sends one of them)
        "POST",
        "/console/people/info",
        b"group_id=door",
        {"Origin": "", "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert no_origin.status == 403
    assert agent.gallery.get_person("door", "secret-person").user_info == "badge 7"
    # The login form is checked too (login CSRF), before the password is.
    stranger = client(agent, 14, origin="http://evil.example")
    assert stranger.login().status == 403 and stranger.cookie is None
    # Same-origin Referer without Origin is accepted.
    referer = {"Origin": "", "Referer": f"http://127.0.0.1:{agent.api.port}/console/people"}
    assert (
        c.post_form("/console/people/info", {**fields, "user_info": "badge 7"}, headers=referer).status == 303
    )


def test_one_hundred_wrong_passwords_are_rate_limited(agent) -> None:
    """Per IP: 5 attempts per window, then 429 with Retry-After, the right password included, until the
    window has passed. Another IP is not locked out: the refused attempts never reach the global count."""
    guesser = client(agent, 20)
    started = time.monotonic()
    replies = [guesser.login(password=f"wrong-{i:03d}").status for i in range(100)]
    assert time.monotonic() - started < WINDOW_S, "the attempts must fall in one window for this test"
    assert replies[:5] == [401] * 5 and replies[5:] == [429] * 95
    refused = guesser.login()  # the right password, still inside the window
    assert refused.status == 429 and guesser.cookie is None
    assert 1 <= int(refused.headers["retry-after"]) <= WINDOW_S + 1
    assert "secret-person" not in refused.text
    neighbour = client(agent, 21)
    assert neighbour.login().status == 303 and neighbour.cookie
    deadline = time.monotonic() + 3 * WINDOW_S
    while (reply := guesser.login()).status == 429:  # the window passes: the right password works again
        assert time.monotonic() < deadline
        time.sleep(0.2)  # polling interval, not synchronisation
    assert reply.status == 303 and guesser.cookie


def test_the_global_limit_and_bounded_memory_of_the_limiter() -> None:
    now = [0.0]
    limiter = LoginLimiter(per_ip=2, global_limit=3, window_s=10, max_ips=100, clock=lambda: now[0])
    assert [limiter.attempt(f"10.0.0.{i}") for i in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.attempt("10.0.0.99") == pytest.approx(10.0)  # the global limit, for a fresh IP too
    now[0] = 10.5
    assert limiter.attempt("10.0.0.99") == 0.0
    for i in range(10_000):  # a spray of addresses keeps at most max_ips of them
        limiter.attempt(f"10.1.{i // 256}.{i % 256}")
    assert len(limiter._ips) <= 100  # noqa: SLF001 (the bound is the point of this test)


def test_api_key_login(agent) -> None:
    c = client(agent, 30)
    assert c.login(key=KEY, password=SECRET).status == 303 and c.cookie
    assert c.get("/console/people").status == 200
    for key, secret in ((KEY, "wrong-secret"), (JD_KEY, JD_SECRET), ("no-such-key", SECRET), (KEY, "")):
        other = client(agent, 31)
        reply = other.login(key=key, password=secret)
        assert reply.status in (401, 429) and other.cookie is None, (key, reply.status)


def test_logout_ends_the_session_on_the_server(agent) -> None:
    c = logged_in(agent, 32)
    cookie, token = c.cookie, c.csrf()
    assert c.post_form("/console/logout", {"csrf": token}).status == 303
    c.cookie = cookie  # the old cookie, kept by an attacker
    assert redirect_path(c.get("/console/people")) == "/console/login"


def test_cookie_and_security_headers(agent) -> None:
    c = client(agent, 33)
    reply = c.login()
    cookie = reply.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/console" in cookie
    assert "Secure" not in cookie  # plain HTTP here; see the TLS test
    face_id = agent.gallery.faces_of_person("door", "secret-person")[0].face_id
    recent = agent.observer.recent()[0].id
    for path in (
        "/console/live",
        "/console/people",
        "/console/review",
        "/console/status",
        "/console/live/cameras.json",
        "/console/live/door/frame.jpg",
        f"/console/faces/{face_id}/thumb.jpg",
        f"/console/review/{recent}/thumb.jpg",
        "/console/login",
        "/console/static/console.css",
    ):
        reply = (client(agent, 36) if path == "/console/login" else c).get(path)
        assert reply.status == 200, path
        h = reply.headers
        assert h["cache-control"] == "no-store", path
        assert h["x-frame-options"] == "DENY" and h["x-content-type-options"] == "nosniff"
        assert "frame-ancestors 'none'" in h["content-security-policy"]
        assert (
            "script-src 'self'" in h["content-security-policy"]
            and "unsafe-inline" not in h["content-security-policy"]
        )
        if path.endswith(".jpg"):
            assert h["content-type"] == "image/jpeg" and reply.body[:2] == b"\xff\xd8"
    page = c.get("/console/live").text
    assert "<script>" not in page and 'name="viewport"' in page
    assert not re.search(r"https?://(?!127\.0\.0\.1)", page), "the console must not load anything remote"


def test_bad_uploads_get_clear_answers(agent, data_dir: Path) -> None:
    c = logged_in(agent, 34)
    token = c.csrf()
    photo = (data_dir / LIN_PHOTO).read_bytes()
    fields = {"csrf": token, "group_id": "door", "outer_id": "upload-test"}

    def flashes() -> list[str]:
        return re.findall(r'class="flash[^"]*"[^>]*>([^<]*)', c.get("/console/people?group=door").text)

    reply = c.post_multipart(
        "/console/people/add", fields, [("photos", "broken.jpg", b"\xff\xd8 not a jpeg")]
    )
    assert reply.status == 303
    assert any("broken.jpg: refused" in f for f in flashes())
    reply = c.post_multipart(
        "/console/people/add", {**fields, "group_id": "no-such-group"}, [("photos", "a.png", photo)]
    )
    assert reply.status == 303 and any("no-such-group" in f for f in flashes())
    reply = c.post_multipart(
        "/console/people/add", {**fields, "quality": "ULTRA"}, [("photos", "a.png", photo)]
    )
    assert reply.status == 303 and any("ULTRA" in f for f in flashes())
    reply = c.post_multipart("/console/people/add", fields, [])
    assert reply.status == 303 and any("at least one photo" in f for f in flashes())
    big = b"\0" * 2_100_000  # over max_upload_bytes: refused from Content-Length, before it is read
    reply = c.post_multipart("/console/people/add", fields, [("photos", "big.jpg", big)])
    assert reply.status == 413
    too_many = [("photos", f"{i}.png", b"x") for i in range(11)]
    assert c.post_multipart("/console/people/add", fields, too_many).status == 400
    assert "upload-test" not in [p.outer_id for p in agent.gallery.list_persons("door")]
    # Unknown persons and faces are said, not a 500.
    c.post_form("/console/people/info", {"csrf": token, "group_id": "door", "outer_id": "nobody"})
    assert any("nobody" in f for f in flashes())
    assert c.get("/console/faces/not-a-face/thumb.jpg").status == 404
    assert c.get("/console/review/99999999/thumb.jpg").status == 404


def test_status_masks_secrets(agent) -> None:
    c = logged_in(agent, 35)
    text = c.get("/console/status").text
    assert "key.secret" not in text and "jd.secret" not in text and "***" in text
    assert agent.engine.model_id in text
    data = {
        "gallery": {"database": "postgresql://hub:hunter2@db/faces"},
        "publish": {"mqtt": {"password_file": "/x"}},
    }
    masked = json.dumps(mask(data))
    assert "hunter2" not in masked and "/x" not in masked


def test_password_file_is_a_salted_scrypt_hash_0600(tmp_path: Path) -> None:
    def passwd(password: str) -> subprocess.CompletedProcess[str]:
        cmd = [
            sys.executable,
            "-m",
            "agent",
            "console",
            "passwd",
            "--state-dir",
            str(tmp_path),
            "--password-stdin",
        ]
        return subprocess.run(
            cmd, input=password + "\n", capture_output=True, text=True, timeout=60, cwd=ROOT
        )

    assert passwd("short").returncode == 2  # too short: refused, nothing written
    path = tmp_path / "console-password"
    assert not path.exists()
    assert passwd(PASSWORD).returncode == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = read_hash(path)
    assert first is not None and first["algorithm"] == "scrypt" and first["n"] >= 2**14 and first["r"] >= 8
    assert PASSWORD not in path.read_text()
    assert verify_password(first, PASSWORD) and not verify_password(first, PASSWORD + "x")
    assert passwd(PASSWORD).returncode == 0
    second = read_hash(path)
    assert second["salt"] != first["salt"] and second["hash"] != first["hash"]  # a fresh salt each time


def test_loopback_without_login_only_when_configured(agent, agent_engine, tmp_path: Path) -> None:
    # Off (the default, as in the agent above): loopback clients log in like everyone.
    assert redirect_path(client(agent, 40).get("/console/people")) == "/console/login"
    run = start_console(agent_engine, tmp_path, allow_loopback_without_login=True)
    try:
        local = Client(run.port)
        page = local.get("/console/people")
        assert page.status == 200 and "Add a person" in page.text
        # A page of another site reaching 127.0.0.1 through DNS rebinding names its own host: no exemption.
        rebound = Client(run.port, host=f"evil.example:{run.port}")
        assert redirect_path(rebound.get("/console/people")) == "/console/login"
        # ... also a name that merely starts like a loopback address (its owner decides what it resolves to).
        port = run.port
        for host in (f"127.attacker.example:{port}", "127.attacker.example", f"localhost.evil:{port}"):
            reply = Client(run.port, host=host).get("/console/people")
            assert redirect_path(reply) == "/console/login", host
        for host in (f"localhost:{run.port}", f"127.0.0.1:{run.port}", f"[::1]:{run.port}", "127.0.0.1"):
            assert Client(run.port, host=host).get("/console/people").status == 200, host
        # Changes still need the page's CSRF token and this origin.
        fields = {"group_id": "door"}
        assert local.post_form("/console/people/add-group", {"group_id": "g2"}).status == 403
        token = local.csrf()
        assert (
            local.post_form(
                "/console/people/add-group",
                {"group_id": "g2", "csrf": token},
                {"Origin": "http://evil.example"},
            ).status
            == 403
        )
        assert (
            local.post_form("/console/people/add-group", {**fields, "group_id": "g2", "csrf": token}).status
            == 303
        )
        assert "g2" in [g.group_id for g in run.gallery.list_groups()]
    finally:
        run.close()


def test_secure_cookie_over_tls(agent_engine, tmp_path: Path) -> None:
    from test_publish_mqtt import make_certificates

    ca, cert, key = make_certificates(tmp_path / "pki")
    run = start_console(agent_engine, tmp_path, tls=(cert, key))
    try:
        c = Client(run.port, tls=ssl.create_default_context(cafile=str(ca)))
        reply = c.login()
        assert reply.status == 303 and "Secure" in reply.headers["set-cookie"]
        assert c.get("/console/status").status == 200
    finally:
        run.close()


def test_enabled_without_any_login_is_a_start_up_error(agent, tmp_path: Path) -> None:
    api = agent.api.config.model_copy(update={"credentials": []})
    deps = ConsoleDeps(ctx=agent.api.ctx, config=ConsoleConfig(enabled=True), api=api, state_dir=tmp_path)
    with pytest.raises(ConfigError, match="face-agent console passwd"):
        build_console(deps)


def test_a_stalled_body_is_dropped_not_held(agent) -> None:
    """A client that announces a body and stops sending it holds a connection for the socket timeout only."""
    port = agent.api.port
    head = (
        f"POST /console/login HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: http://127.0.0.1:{port}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\npassword="
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10 * STALL_S) as sock:
        sock.sendall(head.encode())
        started = time.monotonic()
        try:
            data = sock.recv(4096)  # returns when the server closes the connection
        except ConnectionResetError:
            data = b""
        assert data == b"" and time.monotonic() - started < 5 * STALL_S
    assert client(agent, 37).get("/console/login").status == 200  # and the server still serves


def test_loopback_host_accepts_only_loopback_literals_and_localhost() -> None:
    good = ["localhost", "localhost:8080", "127.0.0.1", "127.0.0.1:8080", "127.9.9.9:1", "[::1]", "[::1]:80"]
    bad = ["127.attacker.example", "127.attacker.example:80", "127.0.0.1.evil:80", "localhost.evil"]
    bad += ["[::1]x", "[fe80::1]:80", "127.0.0.1:x", "", "evil.example:8080"]
    assert [h for h in good if not loopback_host(h)] == [] and [h for h in bad if loopback_host(h)] == []


def _first_answer(port: int, head: str, timeout: float) -> bytes:
    """Send `head` (a request head announcing a body that never comes) and return the answer's head and body
    (by its Content-Length), or what came before the server closed."""
    got = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head.encode())
        try:
            while True:
                top, sep, rest = got.partition(b"\r\n\r\n")
                length = re.search(rb"(?im)^content-length: *(\d+)", top) if sep else None
                if length and len(rest) >= int(length.group(1)):
                    return got
                data = sock.recv(65536)
                if not data:
                    return got
                got += data
        except (ConnectionResetError, TimeoutError):
            return got


def test_a_body_without_a_session_is_refused_before_it_is_read(agent) -> None:
    """Without a session a POST may carry a login form, not an upload: refused from its Content-Length,
    without waiting for (or buffering) any of it."""
    port = agent.api.port
    head = (
        f"POST /console/login HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: http://127.0.0.1:{port}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000000\r\n\r\n"
    )
    answer = _first_answer(port, head, 10 * STALL_S)  # within the server's body timeout: nothing was read
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"log in first" in answer and b"x-frame-options: DENY" in answer
    # Over the small limit, sent whole: the answer, for an upload too.
    anonymous = client(agent, 50)
    reply = anonymous.post_form("/console/login", {"password": "x" * (ANONYMOUS_BODY + 10)})
    assert reply.status == 413 and reply.headers["x-frame-options"] == "DENY"
    reply = anonymous.post_multipart("/console/people/add", {}, [("photos", "a.jpg", b"\0" * 100_000)])
    assert reply.status == 413
    # With a session the upload limit applies: the same 100 KB reaches the form (and is refused as no photo).
    c = logged_in(agent, 51)
    fields = {"csrf": c.csrf(), "group_id": "door", "outer_id": "body-test"}
    reply = c.post_multipart("/console/people/add", fields, [("photos", "a.jpg", b"\0" * 100_000)])
    assert reply.status == 303
    assert "body-test" not in [p.outer_id for p in agent.gallery.list_persons("door")]
    # A login form is well under the small limit.
    assert client(agent, 52).login().status == 303


def test_a_refused_body_sent_whole_gets_its_answer(agent) -> None:
    """http.client sends the whole body before it reads: the refusal waits for the body, then answers."""
    big = b"\0" * 30_000_000
    c = logged_in(agent, 53)
    reply = c.request("POST", "/console/people/add", big, {"Content-Type": "application/octet-stream"})
    assert reply.status == 413 and b"larger than 2000000" in reply.body
    assert reply.headers["content-security-policy"].startswith("default-src 'none'")
    reply = client(agent, 54).request("POST", "/console/login", big, {"Content-Type": "text/plain"})
    assert reply.status == 413 and reply.headers["x-content-type-options"] == "nosniff"
    assert client(agent, 55).get("/console/login").status == 200


SOURCES = [  # (what the config or an error says, what the console shows)
    (
        "rtspsrc location=rtsp://admin:S3cret@host/x ! appsink",
        "rtspsrc location=rtsp://admin:***@host/x ! appsink",
    ),
    ("http://cam/snapshot.cgi?user=admin&pwd=S3cret", "http://cam/snapshot.cgi?user=***&pwd=***"),
    ("rtsp://admin:p@ss/w0rd@host", "rtsp://admin:***@host"),
    (
        "cannot open stream 'rtsp://admin:pw@10.1.2.3/live'",
        "cannot open stream 'rtsp://admin:***@10.1.2.3/live'",
    ),
    ("postgresql://hub:hunter2@db/faces", "postgresql://hub:***@db/faces"),
    ("rtsp://t0ken-only@cam/x", "rtsp://***@cam/x"),
    (
        "rtspsrc location=rtsp://cam/x user-id=admin user-pw=S3cret ! appsink",
        "rtspsrc location=rtsp://cam/x user-id=*** user-pw=*** ! appsink",
    ),
    ("http://cam/a.mjpg?res=640&api_key=S3cret&fps=5", "http://cam/a.mjpg?res=640&api_key=***&fps=5"),
    ("/dev/video0", "/dev/video0"),
    ("rtsp://cam.local:554/stream1", "rtsp://cam.local:554/stream1"),
]
LEAKS = ("S3cret", "p@ss", "w0rd", "admin:pw", "hunter2", "t0ken")


def test_the_scrubber_masks_credentials_anywhere_in_a_string() -> None:
    for text, shown in SOURCES:
        assert scrub(text) == shown, text


def test_camera_credentials_reach_no_console_page(agent_engine, tmp_path: Path) -> None:
    from agent.recognition.observe import FrameObserver

    run = start_console(agent_engine, tmp_path, observer=FrameObserver())
    sources = [text for text, _ in SOURCES]
    run.deps.config_in_force = lambda: {
        "cameras": [{"id": f"cam{i}", "source": s} for i, s in enumerate(sources)],
        "sync": {"hub_url": "https://edge:S3cret@hub.example/api"},
        "notes": ["rtsp://admin:p@ss/w0rd@host"],
    }
    error = "camera cam0: cannot open stream 'rtsp://admin:pw@10.1.2.3/live?token=S3cret'"
    run.deps.stats = lambda: {"cameras": {"cam0": {"state": "reconnecting", "last_error": error}}}
    try:
        c = Client(run.port)
        assert c.login().status == 303
        status = c.get("/console/status")
        assert status.status == 200 and "rtspsrc location=rtsp://admin:***@host/x" in status.text
        live = c.get("/console/live/cameras.json")
        health = json.loads(live.body)["cameras"]["cam0"]["health"]
        assert (
            health["last_error"]
            == "camera cam0: cannot open stream 'rtsp://admin:***@10.1.2.3/live?token=***'"
        )
        for reply in (status, live, c.get("/console/live")):
            for leak in LEAKS:
                assert leak not in reply.text, (leak, reply.text[:2000])
    finally:
        run.close()


def test_a_stream_that_fails_to_open_is_named_without_its_credentials() -> None:
    from agent.capture.sources import OpenCVSource
    from agent.config import CameraConfig
    from agent.errors import TransientError

    with socket.socket() as free:  # a port nobody listens on: the open is refused at once
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    url = f"rtsp://admin:p@ss/w0rd@127.0.0.1:{port}/x?pwd=S3cret"
    source = OpenCVSource(CameraConfig(id="door", source=url, open_timeout_s=5), "stream")
    with pytest.raises(TransientError) as caught:
        source.open()
    message = str(caught.value)
    assert "cannot open stream" in message and "***" in message
    for leak in LEAKS:
        assert leak not in message, message


def test_a_thumbnail_of_another_type_is_a_download(agent) -> None:
    agent.gallery.create_group(group_id="thumbs")
    try:
        face_id = agent.gallery.faces_of_person("door", "secret-person")[0].face_id
        vector = agent.gallery.get_embedding(face_id)
        svg = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
        faces = [
            NewFace("svg", vector, agent.engine.model_id, 0.9, None, svg, "svg+xml"),
            NewFace("png", vector, agent.engine.model_id, 0.9, None, b"\x89PNG\r\n", "png"),
            NewFace("html", vector, agent.engine.model_id, 0.9, None, b"<html>", "HTML"),
        ]
        ids = [f.face_id for f in agent.gallery.add_faces("thumbs", faces)]
        c = logged_in(agent, 56)
        for face_id in (ids[0], ids[2]):
            reply = c.get(f"/console/faces/{face_id}/thumb.jpg")
            assert reply.status == 200 and reply.headers["content-type"] == "application/octet-stream"
            assert reply.headers["content-disposition"].startswith("attachment")
        assert c.get(f"/console/faces/{ids[1]}/thumb.jpg").headers["content-type"] == "image/png"
    finally:
        agent.gallery.delete_group("thumbs")
