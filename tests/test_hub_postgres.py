"""A hub on PostgreSQL (issue 14, docs/hub.md): a real server started by the tests (tests/pg_support.py).

The store's own tests run on both engines (tests/test_gallery.py, tests/test_sync_hub.py); here what only
PostgreSQL has: the change feed with concurrent writers (the hazard shown on raw connections, then the
store's write lock closing it), two gallery processes following each other's writes, migrations, doctor,
the shared replay store, and two real `face-agent serve` hub processes hammered with writes while an edge
syncs through a loopback load balancer, PostgreSQL restarted and one hub killed on the way.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from pg_support import migrated_database

from agent.errors import FatalError
from agent.gallery import Gallery, GalleryConfig, GalleryStore, NewFace, feed
from agent.gallery.db import PostgresDb

MODEL = "test-64"
DIM = 64


def vector(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def waiting_on_advisory_lock(url: str) -> int:
    """Sessions of this database waiting for an advisory lock now (pg_locks: granted false)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return int(
            conn.execute(
                "SELECT COUNT(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
                " WHERE l.locktype = 'advisory' AND NOT l.granted AND d.datname = current_database()"
            ).fetchone()[0]
        )


def wait_until(predicate, timeout: float, what: str) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def pg_url(pg_server) -> str:
    return migrated_database(pg_server)


def test_without_the_lock_a_reader_skips_a_late_commit_and_the_store_lock_prevents_it(pg_url, tmp_path):
    import psycopg

    store = GalleryStore(GalleryConfig(path=tmp_path / "g", database=pg_url))
    store.create_group("g")
    head = feed.stats(store).head
    # The hazard, on raw connections: a sequence number drawn first, committed last.
    early = psycopg.connect(pg_url)
    late = psycopg.connect(pg_url)
    try:
        early.execute("INSERT INTO feed (group_id, op, key, at) VALUES ('g', 'person_updated', 'e', 0)")
        late.execute("INSERT INTO feed (group_id, op, key, at) VALUES ('g', 'person_updated', 'l', 0)")
        late.commit()
        page = feed.read_feed(store, "g", head, limit=100, max_bytes=1 << 20)
        seen = [op["seq"] for op in page.ops] or [page.next]
        early.commit()
        after = feed.read_feed(store, "g", page.next, limit=100, max_bytes=1 << 20)
        # The reader moved its cursor past the late commit's number; the early one, committed afterwards
        # with a smaller number, is never delivered to it.
        assert page.next == head + 2 and seen == [head + 2] and after.next == head + 2 and not after.ops
    finally:
        early.close()
        late.close()

    # The store: a writer draws its numbers only after the transaction before it has committed.
    head = feed.stats(store).head
    holding = threading.Event()
    release = threading.Event()
    errors: list[BaseException] = []

    def first() -> None:
        try:
            with store.transaction() as conn:
                conn.execute(
                    "INSERT INTO feed (group_id, op, key, at) VALUES ('g', 'person_updated', '1', 0)"
                )
                holding.set()
                release.wait(30)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    t1 = threading.Thread(target=first)
    t1.start()
    assert holding.wait(30)
    t2 = threading.Thread(target=lambda: store.upsert_person("g", "second"))
    t2.start()
    wait_until(lambda: waiting_on_advisory_lock(pg_url) == 1, 30, "the second writer to wait for the lock")
    assert feed.read_feed(store, "g", head, limit=100, max_bytes=1 << 20).ops == []  # nothing visible yet
    release.set()
    t1.join(30)
    t2.join(30)
    assert not errors
    rows = store.read("SELECT seq, key FROM feed WHERE seq > ? ORDER BY seq", (head,))
    assert [k for _, k in rows][0] == "1" and rows[0][0] < rows[1][0]  # commit order is number order
    store.close()


def test_a_second_process_takes_in_the_first_ones_writes(pg_url, tmp_path):
    rng = np.random.default_rng(1)
    # Both follow only when the test says so: a follower thread of its own would make a.follow() == 0 below
    # true whether or not a skips its own enrolments.
    a = Gallery(
        GalleryConfig(path=tmp_path / "a", database=pg_url, save_interval_s=0, follow_interval_s=3600)
    )
    b = Gallery(
        GalleryConfig(path=tmp_path / "b", database=pg_url, save_interval_s=0, follow_interval_s=3600)
    )
    try:
        a.create_group("g")
        vecs = [vector(rng) for _ in range(20)]
        recs = a.add_faces("g", [NewFace(f"p{i}", v, MODEL) for i, v in enumerate(vecs)])
        assert b.search("g", MODEL, vecs[3], 1) == [[]]  # b has not looked yet
        assert b.follow() == 0  # its first index is built from the database, not followed
        assert b.index("g", MODEL) is not None and b.wait_ready(30)
        assert b.search("g", MODEL, vecs[3], 1)[0][0][0].face_id == recs[3].face_id
        # Enrolments alone are replayed from the feed (read by id); the writer skips its own.
        added = a.add_faces("g", [NewFace(f"new{i}", vector(rng), MODEL) for i in range(3)])
        assert b.follow() == 3 and a.follow() == 0
        for rec in added:
            assert b.search("g", MODEL, a.get_embedding(rec.face_id), 1)[0][0][0].face_id == rec.face_id
        # A deletion makes the follower reconcile the group with the database.
        more = a.add_faces("g", [NewFace("late", vector(rng), MODEL)])
        a.delete_face(recs[3].face_id)
        assert b.follow() == 2
        hits = {f.face_id for f, _ in b.search("g", MODEL, vecs[3], 5)[0]}
        assert recs[3].face_id not in hits
        late = b.search("g", MODEL, a.get_embedding(more[0].face_id), 1)[0][0]
        assert late[0].face_id == more[0].face_id and late[1] > 0.999
        a.delete_group("g")
        b.follow()
        assert b.index("g", MODEL) is None
    finally:
        a.close()
        b.close()


def test_a_restarted_process_takes_in_faces_its_saved_index_file_lacks(pg_url, tmp_path):
    """Another process writes without this one's lock: the file b saves can lack faces the database (and
    so the file's fingerprint) already counts. On restart b must not take the file as fresh."""
    rng = np.random.default_rng(2)
    cfg = {"database": pg_url, "save_interval_s": 0, "follow_interval_s": 3600}
    a = Gallery(GalleryConfig(path=tmp_path / "a", **cfg))
    b = Gallery(GalleryConfig(path=tmp_path / "b", **cfg))
    try:
        a.create_group("g")
        a.add_faces("g", [NewFace(f"p{i}", vector(rng), MODEL) for i in range(5)])
        assert b.follow() == 0 and b.wait_ready(30)  # b builds its index from the database: 5 faces
        late = a.add_faces("g", [NewFace(f"late{i}", vector(rng), MODEL) for i in range(4)])
        b.index("g", MODEL)._dirty = True  # as any write of b's own would leave it
        assert b.index("g", MODEL).save()  # b's file: 5 faces, fingerprint of the database's 9
    finally:
        b.close()
    b2 = Gallery(GalleryConfig(path=tmp_path / "b", **cfg))
    try:
        assert b2.wait_ready(30)
        assert b2.index("g", MODEL).load_status != "fresh"
        for rec in late:
            hit = b2.search("g", MODEL, a.get_embedding(rec.face_id), 1)[0][0]
            assert hit[0].face_id == rec.face_id and hit[1] > 0.999
    finally:
        b2.close()
        a.close()


def test_the_feed_counter_is_what_readers_see_not_what_writers_drew(pg_url, tmp_path):
    """The hub's MQTT announcer polls feed_counter: a number drawn by a transaction still open must not
    count, or the announcer would skip that operation once it commits."""
    from agent.gallery.store import PERSON_UPDATED, _feed_insert

    store = GalleryStore(GalleryConfig(path=tmp_path / "g", database=pg_url))
    holding, release = threading.Event(), threading.Event()
    try:
        store.create_group("g")
        visible = store.db.feed_counter()
        assert visible == store.db.feed_drawn() > 0

        def writer() -> None:
            with store.db.tx() as conn:
                _feed_insert(conn, "g", PERSON_UPDATED, "x")
                holding.set()
                release.wait(30)

        t = threading.Thread(target=writer)
        t.start()
        assert holding.wait(30)
        assert store.db.feed_drawn() == visible + 1 and store.db.feed_counter() == visible
        release.set()
        t.join(30)
        assert store.db.feed_counter() == visible + 1
    finally:
        release.set()
        store.close()


def test_database_urls_are_masked_in_every_form():
    from agent.gallery.db import masked

    assert masked("postgresql://face:s3cret@db:5432/hub") == "postgresql://face:***@db:5432/hub"
    assert "s3cret" not in masked("postgresql://face@db/hub?sslmode=require&password=s3cret")
    assert masked("postgresql://face@db/hub?password=s3cret&x=1").endswith("?password=***&x=1")
    multi = masked("postgresql://face:s3cret@h1:5432,h2:5433/hub?target_session_attrs=read-write")
    assert multi == "postgresql://face:***@h1:5432,h2:5433/hub?target_session_attrs=read-write"
    assert masked("postgresql://face:s3cret@[::1]:5432/hub") == "postgresql://face:***@[::1]:5432/hub"
    assert masked("postgresql://db/hub") == "postgresql://db/hub"


def test_an_unmigrated_database_refuses_the_hub_and_migrate_creates_it(pg_server, tmp_path):
    from sync_support import cli

    from agent.cli.doctor import check_feed

    url = pg_server.new_database()
    gcfg = GalleryConfig(path=tmp_path / "g", database=url)
    with pytest.raises(FatalError, match="face-agent hub migrate"):
        GalleryStore(gcfg)
    check = check_feed(gcfg)
    assert check.status == "FAIL" and "schema 0" in check.message
    cfg = tmp_path / "hub.yaml"
    cfg.write_text(
        json.dumps({"state_dir": str(tmp_path), "hub": {"database": url, "allow_plaintext": True}})
    )
    out = cli("hub", "migrate", "--config", str(cfg))
    assert out.returncode == 0 and "schema 0 -> 1" in out.stdout, out.stderr
    again = cli("hub", "migrate", "--config", str(cfg))
    assert again.returncode == 0 and "schema 1, current" in again.stdout, again.stderr
    added = cli("hub", "devices", "add", "door-1", "--group", "g", "--config", str(cfg))
    assert added.returncode == 0, added.stderr
    check = check_feed(gcfg)
    assert check.status == "OK" and "schema 1" in check.message and "lag: 0" in check.message, check
    down = check_feed(GalleryConfig(path=tmp_path / "g", database="postgresql://face@127.0.0.1:1/x"))
    assert down.status == "FAIL" and "cannot connect" in down.message


def test_an_unreachable_database_is_a_clear_start_error(tmp_path):
    with pytest.raises(FatalError, match=r"cannot connect to the gallery database postgresql://face:\*\*\*@"):
        PostgresDb("postgresql://face:secret@127.0.0.1:1/x", pool_size=1, timeout_s=1)


# -- two real hub processes, an edge behind a load balancer -------------------------------------------------


class Balancer:
    """A loopback load balancer: each request goes to the next upstream that accepts a connection, as an
    operator's would after a health check fails. Forwards method, path, Authorization, body and answer."""

    def __init__(self, upstreams: list[int]) -> None:
        import http.client
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.upstreams = upstreams
        self.served: dict[int, int] = {p: 0 for p in upstreams}
        lock = threading.Lock()
        turn = [0]
        lb = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a) -> None:
                pass

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with lock:
                    start = turn[0] = (turn[0] + 1) % len(lb.upstreams)
                for k in range(len(lb.upstreams)):
                    port = lb.upstreams[(start + k) % len(lb.upstreams)]
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                    try:
                        headers = {
                            h: self.headers[h] for h in ("Authorization", "Content-Type") if self.headers[h]
                        }
                        conn.request(self.command, self.path, body=body or None, headers=headers)
                        resp = conn.getresponse()
                        data = resp.read()
                    except ConnectionError:
                        continue  # refused or reset: the next upstream
                    finally:
                        conn.close()
                    with lock:
                        lb.served[port] += 1
                    self.send_response(resp.status)
                    self.send_header("Content-Type", resp.getheader("Content-Type", "application/json"))
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                self.send_error(502)

            do_GET = do_POST = do_PUT = do_DELETE = _forward  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Writer(threading.Thread):
    """Native API writes on its own persons, each retried (on the other hub) until acknowledged, so what it
    was told is exact: faces acknowledged and not deleted since must be in the database, deleted ones not."""

    def __init__(self, n: int, ports: list[int], images: list[str], ops: int, progress) -> None:
        super().__init__(name=f"writer-{n}")
        self.n, self.ports, self.images, self.ops, self.progress = n, ports, images, ops, progress
        self.rng = np.random.default_rng(100 + n)
        self.faces: dict[str, str] = {}  # face_id -> outer_id, acknowledged and not deleted
        self.deleted: set[str] = set()
        self.info: dict[str, str] = {}  # outer_id -> last acknowledged user_info
        self.retries = 0
        self.statuses: dict[int, int] = {}
        self.error: BaseException | None = None

    def call(self, method: str, path: str, payload=None) -> tuple[int, dict]:
        from sync_support import request
        from test_api_support import KEY, SECRET

        for attempt in range(200):
            port = self.ports[(self.n + attempt) % len(self.ports)]
            try:
                status, body = request(port, method, path, payload, key=KEY, secret=SECRET)
            except OSError:  # a killed hub: connection refused
                self.retries += 1
                continue
            self.statuses[status] = self.statuses.get(status, 0) + 1
            if status in (429, 503):  # the database restarting, the hub busy: retry, elsewhere
                self.retries += 1
                continue
            return status, body
        raise AssertionError(f"{self.name}: {method} {path} never acknowledged")

    def run(self) -> None:
        try:
            for _ in range(self.ops):
                self.step()
                self.progress()
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            self.error = exc

    def step(self) -> None:
        person = f"w{self.n}-p{self.rng.integers(4)}"
        r = self.rng.random()
        base = f"/api/v1/groups/{GROUP}/persons/{person}"
        if r < 0.4:
            image = self.images[int(self.rng.integers(len(self.images)))]
            status, body = self.call("POST", base + "/faces", {"image_base64": image})
            assert status == 201, body
            self.faces[body["face_id"]] = person
        elif r < 0.7:
            info = f"{person} v{self.rng.integers(1 << 30)}"
            status, body = self.call("PUT", base, {"user_info": info})
            assert status in (200, 201), body
            self.info[person] = info
        elif r < 0.92:
            mine = sorted(self.faces)
            if not mine:
                return
            fid = mine[int(self.rng.integers(len(mine)))]
            status, body = self.call("DELETE", f"/api/v1/faces/{fid}")
            assert status == 200 or body.get("error", {}).get("code") == "face_not_found", body
            del self.faces[fid]
            self.deleted.add(fid)
        else:
            status, body = self.call("DELETE", base)
            assert status == 200 or body.get("error", {}).get("code") == "person_not_found", body
            for fid in [f for f, p in self.faces.items() if p == person]:
                del self.faces[fid]
                self.deleted.add(fid)
            self.info.pop(person, None)


GROUP = "staff"


def hub_config(tmp, name: str, port: int, url: str) -> Path:
    from sync_support import write_yaml
    from test_api_support import KEY, SECRET

    (tmp / "app.secret").write_text(SECRET + "\n")
    return write_yaml(
        tmp / f"{name}.yaml",
        {
            "state_dir": tmp / name,
            "api": {
                "host": "127.0.0.1",
                "port": port,
                "credentials": [{"key": KEY, "secret_file": tmp / "app.secret", "apis": ["native"]}],
            },
            "hub": {"database": url, "allow_plaintext": True},
            "gallery": {"follow_interval_s": 0.2},
        },
    )


def database_state(url: str) -> tuple[dict, dict]:
    """(persons outer_id -> user_info, faces face_id -> (outer_id, embedding)) of the group, read directly."""
    import psycopg

    with psycopg.connect(url) as conn:
        persons = dict(
            conn.execute("SELECT outer_id, user_info FROM persons WHERE group_id = %s", (GROUP,)).fetchall()
        )
        faces = {
            fid: (outer, bytes(emb))
            for fid, outer, emb in conn.execute(
                "SELECT f.face_id, p.outer_id, f.embedding FROM faces f JOIN persons p USING (person_id)"
                " WHERE f.group_id = %s",
                (GROUP,),
            ).fetchall()
        }
    return persons, faces


def index_matches_database(gallery: Gallery, url: str, model: str) -> bool:
    """The gallery's search index of the group holds exactly the database's faces (by label)."""
    import psycopg

    idx = gallery.index(GROUP, model)
    if idx is None or not idx.ready:
        return False
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT label FROM faces WHERE group_id = %s AND model_id = %s", (GROUP, model)
        ).fetchall()
    in_db = {int(r[0]) for r in rows}
    in_index = set(idx._index.get_ids_list())  # live and deleted slots: live count == db, db within
    return in_db <= in_index and idx.stats()["live"] == len(in_db)


def edge_state(edge: Gallery) -> tuple[dict, dict]:
    persons = {p.outer_id: p.user_info for p in edge.list_persons(GROUP)}
    faces = {
        f.face_id: (f.outer_id, edge.get_embedding(f.face_id).astype("<f4").tobytes())
        for f in edge.store.list_faces(GROUP, limit=10_000)
    }
    return persons, faces


def test_two_hub_processes_under_concurrent_writes_a_restart_and_a_kill_keep_the_edge_exact(
    pg_server, tmp_path, data_dir
):
    import base64
    import uuid

    from sync_support import Proc, cli, free_port, request, wait_port
    from test_api_support import BIDEN, OBAMA, OBAMA2, shared_engine

    from agent.gallery import mirror
    from agent.sync.client import HubClient
    from agent.sync.config import SyncConfig
    from agent.sync.edge import EdgeSyncer

    url = pg_server.new_database()
    ports = [free_port(), free_port()]
    configs = [hub_config(tmp_path, n, p, url) for n, p in zip(("hub-a", "hub-b"), ports, strict=True)]
    out = cli("hub", "migrate", "--config", str(configs[0]))
    assert out.returncode == 0, out.stderr
    secret_file = tmp_path / "door.secret"
    out = cli(
        "hub",
        "devices",
        "add",
        "door-1",
        "--group",
        GROUP,
        "--secret-file",
        str(secret_file),
        "--config",
        str(configs[1]),
    )
    assert out.returncode == 0, out.stderr
    hubs = [Proc(tmp_path / f"hub-{i}.log", "serve", "--config", str(c)) for i, c in enumerate(configs)]
    lb = None
    edge = None
    # A third process on the database, as a hub's search side: it follows the writes of both hubs through
    # the restart (its pool reconnects) and must end with exactly the database's faces in its index.
    follower = Gallery(GalleryConfig(path=tmp_path / "follower", database=url, save_interval_s=0))
    try:
        for port, proc in zip(ports, hubs, strict=True):
            wait_port(port, proc)
        from test_api_support import KEY, SECRET

        status, body = request(
            ports[0], "POST", "/api/v1/groups", {"group_id": GROUP}, key=KEY, secret=SECRET
        )
        assert status == 201, body

        # One signed device request, accepted by hub A, is a replay at hub B: one used-signature store.
        from agent.api import native_header

        device_secret = secret_file.read_text().strip()
        header = native_header("door-1", device_secret, "GET", "/v1/sync/groups", b"", uuid.uuid4().hex)
        first = request(ports[0], "GET", "/v1/sync/groups", headers={"Authorization": header})
        again = request(ports[1], "GET", "/v1/sync/groups", headers={"Authorization": header})
        assert first[0] == 200 and again[0] == 401 and again[1]["error"]["code"] == "auth_replayed", again

        lb = Balancer(ports)
        sync_cfg = SyncConfig(
            hub_url=f"http://127.0.0.1:{lb.port}",
            allow_plaintext=True,
            device_id="door-1",
            secret_file=secret_file,
            timeout_s=10,
            page_ops=50,
        )
        edge = Gallery(GalleryConfig(path=tmp_path / "edge", save_interval_s=0))
        model = shared_engine().model_id
        syncer = EdgeSyncer(sync_cfg, edge, model, HubClient(sync_cfg, secret_file.read_text().strip()))
        assert syncer.sync_once()
        generation = mirror.state(edge.store, GROUP).generation  # the first snapshot

        images = [base64.b64encode((data_dir / p).read_bytes()).decode() for p in (OBAMA, OBAMA2, BIDEN)]
        done = [0]
        lock = threading.Lock()
        restart_at, kill_at = threading.Event(), threading.Event()
        per_writer, n_writers = 40, 4
        total = per_writer * n_writers

        def progress() -> None:
            with lock:
                done[0] += 1
                if done[0] == total // 3:
                    restart_at.set()
                if done[0] == 2 * total // 3:
                    kill_at.set()

        writers = [Writer(i, ports, images, per_writer, progress) for i in range(n_writers)]
        for w in writers:
            w.start()
        sync_errors: list[str] = []
        stop = threading.Event()

        def edge_loop() -> None:
            while not stop.is_set():
                try:
                    syncer.sync_once()
                except Exception as exc:  # noqa: BLE001 - a hub away: the edge retries, as its loop does
                    sync_errors.append(type(exc).__name__)
                stop.wait(0.1)

        syncing = threading.Thread(target=edge_loop)
        syncing.start()
        assert restart_at.wait(600), "writers stalled before the restart"
        pg_server.restart()
        assert kill_at.wait(600), "writers stalled after the PostgreSQL restart"
        hubs[0].kill9()
        for w in writers:
            w.join(600)
        stop.set()
        syncing.join(120)
        for w in writers:
            assert w.error is None, f"{w.name}: {w.error!r}"

        # The edge catches up through the surviving hub, incrementally (no resync snapshot).
        persons, faces = database_state(url)
        wait_until(
            lambda: syncer.sync_once() and edge_state(edge) == (persons, faces), 120, "the edge to catch up"
        )
        assert mirror.state(edge.store, GROUP).generation == generation
        wait_until(lambda: index_matches_database(follower, url, model), 120, "the follower to catch up")
        for w in writers:
            assert set(w.faces) <= set(faces), f"{w.name} lost acknowledged faces"
            assert not w.deleted & set(faces), f"{w.name}: deleted faces came back"
            for person, info in w.info.items():
                assert persons.get(person) == info, (person, persons.get(person), info)
        retries = sum(w.retries for w in writers)
        statuses = {}
        for w in writers:
            for k, v in w.statuses.items():
                statuses[k] = statuses.get(k, 0) + v
        print(
            f"\n2 hubs on PostgreSQL: {total} writes, {len(faces)} faces and {len(persons)} persons at the "
            f"end; retries {retries}, answers {statuses}; edge sync errors {len(sync_errors)}; "
            f"balancer {lb.served}"
        )
        assert retries > 0, "neither the restart nor the kill was felt: the test proved nothing"
        assert 500 not in statuses
    finally:
        follower.close()
        if lb is not None:
            lb.close()
        if edge is not None:
            edge.close()
        for proc in hubs:
            proc.stop()


def test_erase_on_a_postgresql_hub_deletes_and_rewrites_the_tables(pg_server, pg_url, tmp_path):
    import psycopg

    from agent.cli.erase import erase_person

    marker = b"ERASE-MARKER-" + bytes(range(16))
    cfg = GalleryConfig(path=tmp_path / "g", database=pg_url, save_interval_s=0)
    with Gallery(cfg) as g:
        g.create_group("g")
        rng = np.random.default_rng(3)
        g.add_face("g", "erin", vector(rng), MODEL, thumbnail=marker)
        g.add_face("g", "keep", vector(rng), MODEL, thumbnail=b"other")

    def in_table_files() -> bool:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("CHECKPOINT")  # flush the shared buffers to the table files
            oid = conn.execute("SELECT oid FROM pg_database WHERE datname = current_database()").fetchone()[0]
        files = (pg_server.data / "base" / str(oid)).iterdir()
        return any(marker in f.read_bytes() for f in files if f.is_file())

    assert in_table_files()  # positive control: the thumbnail's bytes are in the database's files
    report = erase_person(cfg, None, "g", "erin")
    assert report.person_found and report.faces == 1 and report.thumbnails == 1
    assert any("face_thumbs" in v for v in report.vacuumed)
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT COUNT(*) FROM persons WHERE outer_id = 'erin'").fetchone()[0] == 0
        assert conn.execute("SELECT COUNT(*) FROM persons WHERE outer_id = 'keep'").fetchone()[0] == 1
    assert not in_table_files()  # VACUUM (FULL) rewrote the tables without it (the WAL is another matter)
    again = erase_person(cfg, None, "g", "erin")
    assert not again.person_found


def test_text_postgresql_cannot_hold_is_bad_input_not_a_server_error(pg_url, tmp_path):
    from agent.errors import InputError

    store = GalleryStore(GalleryConfig(path=tmp_path / "g", database=pg_url))
    try:
        store.create_group("g")
        for bad in ("a\x00b", "a\udc80b"):
            with pytest.raises(InputError) as err:
                store.get_group(bad)
            assert err.value.code == "invalid_text"
            with pytest.raises(InputError):
                store.get_person("g", bad)
            with pytest.raises(InputError):
                store.upsert_person("g", bad)
        # 1024 characters pass the API's limit, but 3 bytes each exceed PostgreSQL's btree key (2704 bytes)
        # (random characters: a repeated one would compress below the limit)
        rng = np.random.default_rng(0)
        long_id = "".join(chr(c) for c in rng.integers(0x4E00, 0x9FFF, 1024))
        with pytest.raises(InputError) as err:
            store.upsert_person("g", long_id)
        assert err.value.code == "value_too_long"
        assert store.get_group("g").group_id == "g"  # the pool's connections are fine afterwards
    finally:
        store.close()
