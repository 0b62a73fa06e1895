"""Feed -> mirror exactness without sockets: the hub's store, its feed pages as JSON, the edge's syncer
state machine and its gallery. The same paths over real HTTPS between processes: test_sync_e2e.py."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from agent.gallery import Gallery, GalleryConfig, NewFace, feed, mirror
from agent.sync.client import HubRefused
from agent.sync.config import SyncConfig
from agent.sync.edge import EdgeSyncer

MODEL = "test-model/f32"
DIM = 32


def _vec(rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


class FeedTransport:
    """Answers the syncer's three GETs from a hub gallery, through a JSON round trip like HTTP would."""

    hub = "https://hub.test"

    def __init__(self, hub: Gallery, granted: list[str]) -> None:
        self.hub_gallery, self.granted, self.calls = hub, granted, 0

    def get(self, path: str, query: dict | None = None) -> dict:
        self.calls += 1
        q = query or {}
        store = self.hub_gallery.store
        try:
            if path == "/v1/sync/groups":
                groups = [g for g in store.list_groups() if g.group_id in self.granted]
                with store.reader() as conn:
                    out = [
                        {"group_id": g.group_id, "head": feed.group_head(conn, g.group_id)} for g in groups
                    ]
                return json.loads(json.dumps({"device_id": "d", "groups": out}))
            gid = path.split("/")[4]
            kw = dict(
                limit=q["limit"], max_bytes=q["max_bytes"], thumbnails=q["thumbnails"], model_id=q["model"]
            )
            if path.endswith("/feed"):
                page = feed.read_feed(store, gid, int(q["after"]), **kw)
            else:
                page = feed.read_snapshot(store, gid, q.get("token"), **kw)
        except feed.ResyncRequired as exc:
            raise HubRefused(410, "resync_required", str(exc), {"error": {"floor": exc.floor}}) from exc
        body = {"group_id": gid, "ops": page.ops, "next": page.next, "more": page.more, "head": page.head}
        if page.cursor is not None:
            body["cursor"] = page.cursor
        return json.loads(json.dumps(body))


def _cfg(**kw) -> SyncConfig:
    base = dict(hub_url="https://hub.test", device_id="door-1", secret_file=Path("/dev/null"), page_ops=7)
    return SyncConfig(**(base | kw))


def _state(g: Gallery, gid: str) -> dict:
    persons = {p.person_id: (p.outer_id, p.user_info) for p in g.list_persons(gid)}
    faces = {}
    for f in g.store.list_faces(gid, limit=10_000):
        faces[f.face_id] = (f.person_id, f.outer_id, f.user_info, g.get_embedding(f.face_id).tobytes())
    return {"persons": persons, "faces": faces}


def _churn(hub: Gallery, gid: str, rng: np.random.Generator, steps: int, names: list[str]) -> None:
    r = random.Random(int(rng.integers(1 << 30)))
    for _ in range(steps):
        roll = r.random()
        persons = hub.list_persons(gid)
        if roll < 0.55 or not persons:
            name = r.choice(names)
            faces = [NewFace(name, _vec(rng), MODEL, quality=0.9, user_info=f"info-{r.randint(0, 3)}")]
            hub.add_faces(gid, faces)
        elif roll < 0.7:
            p = r.choice(persons)
            hub.delete_person(gid, p.outer_id)
        elif roll < 0.85:
            p = r.choice(persons)
            hub.upsert_person(gid, p.outer_id, f"renamed-{r.randint(0, 99)}")
        else:
            faces = hub.store.list_faces(gid, limit=10_000)
            if faces:
                hub.delete_face(r.choice(faces).face_id)


@pytest.fixture()
def pair(tmp_path):
    hub = Gallery(GalleryConfig(path=tmp_path / "hub", save_interval_s=0))
    edge = Gallery(GalleryConfig(path=tmp_path / "edge", save_interval_s=0))
    yield hub, edge
    hub.close()
    edge.close()


def test_edge_mirrors_every_operation_and_searches_the_result(pair):
    hub, edge = pair
    rng = np.random.default_rng(1)
    hub.create_group("staff", group_name="Staff", info="first floor")
    names = [f"p{i}" for i in range(12)]
    syncer = EdgeSyncer(_cfg(), edge, MODEL, FeedTransport(hub, ["staff"]))
    for _ in range(6):
        _churn(hub, "staff", rng, 25, names)
        assert syncer.sync_once()
        assert _state(edge, "staff") == _state(hub, "staff")
    assert edge.get_group("staff").group_name == "Staff"
    assert not syncer.is_stale("staff")
    face = hub.store.list_faces("staff", limit=1)[0]
    hits = edge.search("staff", MODEL, hub.get_embedding(face.face_id)[None, :], 1)[0]
    assert hits[0][0].face_id == face.face_id and hits[0][1] > 0.999


def test_compaction_forces_a_snapshot_that_ends_exactly_like_the_hub(pair):
    hub, edge = pair
    rng = np.random.default_rng(2)
    hub.create_group("staff")
    names = [f"p{i}" for i in range(10)]
    syncer = EdgeSyncer(_cfg(page_ops=5), edge, MODEL, FeedTransport(hub, ["staff"]))
    _churn(hub, "staff", rng, 40, names)
    assert syncer.sync_once()
    _churn(hub, "staff", rng, 60, names)  # the edge is away while the hub compacts its feed
    assert feed.compact(hub.store, keep_ops=1000, keep_s=1e9) == 0
    dropped = feed.compact(hub.store, keep_ops=1000, keep_s=-1)  # everything is "old"
    assert dropped > 0
    assert syncer.sync_once()
    assert _state(edge, "staff") == _state(hub, "staff")
    st = mirror.state(edge.store, "staff")
    assert st is not None and st.snapshot is None and st.generation == 1


def test_a_crash_between_pages_resumes_without_loss_or_duplicates(pair, monkeypatch):
    hub, edge = pair
    rng = np.random.default_rng(3)
    hub.create_group("staff")
    _churn(hub, "staff", rng, 80, [f"p{i}" for i in range(15)])
    transport = FeedTransport(hub, ["staff"])
    calls = {"n": 0}
    real = mirror.apply_page

    def dying(*a, **kw):
        calls["n"] += 1
        if calls["n"] % 3 == 0:
            raise RuntimeError("power cut")  # the transaction never commits
        return real(*a, **kw)

    monkeypatch.setattr(mirror, "apply_page", dying)
    syncer = EdgeSyncer(_cfg(page_ops=4), edge, MODEL, transport)
    for _ in range(200):
        try:
            if syncer.sync_once():
                break
        except RuntimeError:
            continue
    assert _state(edge, "staff") == _state(hub, "staff")


def test_local_writes_to_a_mirrored_group_are_refused_and_local_groups_work(pair):
    hub, edge = pair
    hub.create_group("staff")
    hub.add_faces("staff", [NewFace("alice", _vec(np.random.default_rng(4)), MODEL)])
    EdgeSyncer(_cfg(), edge, MODEL, FeedTransport(hub, ["staff"])).sync_once()
    with pytest.raises(Exception) as info:
        edge.add_faces("staff", [NewFace("bob", _vec(np.random.default_rng(5)), MODEL)])
    assert getattr(info.value, "code", None) == "group_read_only"
    with pytest.raises(Exception) as info:
        edge.delete_person("staff", "alice")
    assert getattr(info.value, "code", None) == "group_read_only"
    edge.create_group("local")
    edge.add_faces("local", [NewFace("carol", _vec(np.random.default_rng(6)), MODEL)])
    assert [p.outer_id for p in edge.list_persons("local")] == ["carol"]


def test_ungranting_a_group_erases_its_mirror(pair):
    hub, edge = pair
    hub.create_group("staff")
    hub.add_faces("staff", [NewFace("alice", _vec(np.random.default_rng(7)), MODEL)])
    transport = FeedTransport(hub, ["staff"])
    syncer = EdgeSyncer(_cfg(), edge, MODEL, transport)
    syncer.sync_once()
    assert edge.list_persons("staff")
    transport.granted = []
    syncer.sync_once()
    assert "staff" not in {g.group_id for g in edge.list_groups()}


def test_staleness_follows_the_last_catch_up(pair):
    hub, edge = pair
    hub.create_group("staff")
    now = [1000.0]
    syncer = EdgeSyncer(_cfg(max_staleness_s=60), edge, MODEL, FeedTransport(hub, ["staff"]))
    assert not syncer.is_stale("staff")  # not mirrored (yet): a local group is never stale
    syncer.sync_once()
    assert not syncer.is_stale("staff")
    syncer._clock = lambda: now[0]  # noqa: SLF001 - the wall clock of a device that lost its hub
    st = mirror.state(edge.store, "staff")
    now[0] = st.caught_up_at + 61
    assert syncer.is_stale("staff")


def test_doctor_reports_each_mirror_and_its_staleness(pair):
    from agent.cli.doctor import check_sync

    hub, edge = pair
    hub.create_group("staff")
    hub.add_faces("staff", [NewFace("alice", _vec(np.random.default_rng(8)), MODEL)])
    assert check_sync(edge.config, 600).status == "WARN"  # nothing mirrored yet
    EdgeSyncer(_cfg(), edge, MODEL, FeedTransport(hub, ["staff"])).sync_once()
    fresh = check_sync(edge.config, 600)
    assert fresh.status == "OK" and "staff: 0 op(s) behind" in fresh.message
    st = mirror.state(edge.store, "staff")
    late = check_sync(edge.config, 600, now=st.caught_up_at + 601)
    assert late.status == "WARN" and "stale (grant no access): staff" in late.message


def test_a_group_deleted_and_created_again_on_the_hub_is_mirrored_anew(pair):
    hub, edge = pair
    rng = np.random.default_rng(9)
    hub.create_group("g")
    hub.add_faces("g", [NewFace("alice", _vec(rng), MODEL)])
    transport = FeedTransport(hub, ["g"])
    syncer = EdgeSyncer(_cfg(), edge, MODEL, transport)
    assert syncer.sync_once()
    hub.delete_group("g")
    hub.create_group("g")
    hub.add_faces("g", [NewFace("bob", _vec(rng), MODEL)])
    for _ in range(3):  # a round that ends caught up must hold the new group, and keep holding it
        assert syncer.sync_once()
        assert _state(edge, "g") == _state(hub, "g")
        assert [p.outer_id for p in edge.list_persons("g")] == ["bob"]
    # a brand-new edge of such a group too
    fresh = Gallery(GalleryConfig(path=edge.config.path.parent / "fresh", save_interval_s=0))
    try:
        assert EdgeSyncer(_cfg(), fresh, MODEL, transport).sync_once()
        assert _state(fresh, "g") == _state(hub, "g")
    finally:
        fresh.close()


def test_faces_that_move_between_groups_and_persons_on_the_hub_follow_on_the_edge(pair):
    hub, edge = pair
    rng = np.random.default_rng(10)
    for gid in ("a", "b"):
        hub.create_group(gid)
    v1, v2 = _vec(rng), _vec(rng)
    f1 = hub.add_faces("b", [NewFace("alice", v1, MODEL)])[0].face_id
    f2 = hub.add_faces("a", [NewFace("carol", v2, MODEL)])[0].face_id
    syncer = EdgeSyncer(_cfg(), edge, MODEL, FeedTransport(hub, ["a", "b"]))
    assert syncer.sync_once()
    hub.delete_face(f1)  # `gallery import` keeps face ids: the face moves from b to a
    hub.add_faces("a", [NewFace("alice", v1, MODEL, face_id=f1)])
    hub.delete_person("a", "carol")  # and carol's face comes back under another person, after a compaction
    hub.add_faces("a", [NewFace("caroline", v2, MODEL, face_id=f2)])
    assert feed.compact(hub.store, keep_ops=1000, keep_s=-1) > 0
    assert syncer.sync_once()
    for gid in ("a", "b"):
        assert _state(edge, gid) == _state(hub, gid)
    idx = edge.index("a", MODEL)
    assert idx is not None and idx.stats()["live"] == 2  # no label of a swept person left searchable


def test_a_hub_id_that_collides_with_a_local_face_is_refused_without_touching_it(pair):
    hub, edge = pair
    rng = np.random.default_rng(11)
    edge.create_group("local")
    mine = edge.add_faces("local", [NewFace("dave", _vec(rng), MODEL)])[0]
    hub.create_group("staff")
    hub.add_faces("staff", [NewFace("eve", _vec(rng), MODEL, face_id=mine.face_id)])
    syncer = EdgeSyncer(_cfg(), edge, MODEL, FeedTransport(hub, ["staff"]))
    assert not syncer.sync_once()
    assert (
        "group_conflict" in syncer.status()["groups"]["staff"]["error"]
        or "already exists" in (syncer.status()["groups"]["staff"]["error"])
    )
    assert edge.get_face(mine.face_id).group_id == "local"
    assert [p.outer_id for p in edge.list_persons("local")] == ["dave"]


def test_a_hub_restored_from_a_backup_resyncs_the_edge(pair, tmp_path):
    hub, edge = pair
    rng = np.random.default_rng(12)
    hub.create_group("staff")
    hub.add_faces("staff", [NewFace(f"p{i}", _vec(rng), MODEL) for i in range(20)])
    transport = FeedTransport(hub, ["staff"])
    syncer = EdgeSyncer(_cfg(), edge, MODEL, transport)
    assert syncer.sync_once()
    older = Gallery(GalleryConfig(path=tmp_path / "restored", save_interval_s=0))  # fewer operations
    try:
        older.create_group("staff")
        older.add_faces("staff", [NewFace("q", _vec(rng), MODEL)])
        transport.hub_gallery = older
        assert syncer.sync_once()
        assert _state(edge, "staff") == _state(older, "staff")
    finally:
        older.close()


def test_variant_reconciliation_leaves_mirrors_to_the_syncer(pair):
    from agent.gallery.variants import Space, reconcile

    hub, edge = pair
    hub.create_group("staff")
    hub.add_faces("staff", [NewFace("alice", _vec(np.random.default_rng(13)), "test-model/f16")])
    EdgeSyncer(_cfg(), edge, "test-model/f16", FeedTransport(hub, ["staff"])).sync_once()
    before = _state(edge, "staff")
    # the device now runs another variant of the model; the mirror has no thumbnails to re-embed from
    reconcile(edge.config, Space(MODEL), lambda thumbs: np.zeros((len(thumbs), DIM), np.float32), "reembed")
    assert _state(edge, "staff") == before  # not refused, not touched: the syncer takes a snapshot


def test_a_group_left_out_of_sync_groups_is_erased(pair):
    hub, edge = pair
    rng = np.random.default_rng(14)
    for gid in ("a", "b"):
        hub.create_group(gid)
        hub.add_faces(gid, [NewFace("p", _vec(rng), MODEL)])
    transport = FeedTransport(hub, ["a", "b"])
    assert EdgeSyncer(_cfg(groups=["a", "b"]), edge, MODEL, transport).sync_once()
    assert EdgeSyncer(_cfg(groups=["a"]), edge, MODEL, transport).sync_once()
    assert {g.group_id for g in edge.list_groups()} == {"a"}
