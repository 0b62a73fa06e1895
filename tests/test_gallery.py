"""Gallery: real SQLite files, real hnswlib. Embeddings are synthetic unit vectors clustered per identity."""

from __future__ import annotations

import itertools
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from agent.errors import ConfigError, FatalError, InputError
from agent.gallery import (
    Gallery,
    GalleryConfig,
    Matcher,
    NewFace,
    ScoreMap,
    assign_faces,
    max_weight_matching,
    min_cost_assignment,
)
from agent.gallery.matcher import Candidate
from agent.gallery.store import DB_FILENAME

ROOT = Path(__file__).resolve().parent.parent
MODEL = "facenet-casia/int8"
THRESHOLDS = {"1e-3": 0.41, "1e-4": 0.48, "1e-5": 0.55, "1e-6": 0.61}
NAMES = ["张伟", "Zoë Ångström", "محمد", "🙂 smile", "O'Brien; DROP TABLE persons", "e\u0301te\u0301"]
NAMES.append("x" * 200)


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def identities(n_ids: int, per_id: int, dim: int = 512, noise: float = 0.03, seed: int = 0):
    """Cluster centres plus noisy samples: intra-identity cosine ~0.65 at dim 512, inter ~0 +- 0.05."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((n_ids, dim)))
    samples = unit(centres[:, None, :] + noise * rng.standard_normal((n_ids, per_id, dim)))
    return centres, samples


def config(tmp_path: Path, **kw) -> GalleryConfig:
    kw.setdefault("save_interval_s", 0)
    return GalleryConfig(path=tmp_path / "gallery", **kw)


@pytest.fixture(params=["sqlite", "postgresql"])
def gallery(request, tmp_path):
    """The same tests on both stores: SQLite, and PostgreSQL (a hub's, tests/pg_support.py)."""
    kw = {}
    if request.param == "postgresql":
        from pg_support import migrated_database

        kw["database"] = migrated_database(request.getfixturevalue("pg_server"))
    g = Gallery(config(tmp_path, **kw))
    yield g
    g.close()


def matcher(g: Gallery) -> Matcher:
    return Matcher(g, MODEL, ScoreMap(THRESHOLDS), g.config)


def enrol(g: Gallery, group: str, samples: np.ndarray, names: list[str], faces_per_id: int = 2) -> dict:
    g.create_group(group)
    ids = {}
    for name, vecs in zip(names, samples, strict=False):
        recs = g.add_faces(group, [NewFace(name, v, MODEL, quality=0.9) for v in vecs[:faces_per_id]])
        ids[name] = [r.face_id for r in recs]
    return ids


def db_bytes(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


# -- storage, search, delete -----------------------------------------------------------------------------


def test_add_search_and_unicode_round_trip(gallery):
    _, samples = identities(len(NAMES), 4)
    ids = enrol(gallery, "door", samples, NAMES)
    m = matcher(gallery)
    for i, name in enumerate(NAMES):
        top = m.search("door", samples[i, 3], top_k=3)
        assert top[0].outer_id == name  # exact Unicode round trip, including combining marks
        assert top[0].face_id in ids[name]
        assert top[0].score > 80 > top[1].score
        assert len({c.person_id for c in top}) == len(top)  # persons, not faces
    assert {p.outer_id for p in gallery.list_persons("door")} == set(NAMES)
    page = gallery.list_faces("door", MODEL, offset=2, limit=3)
    assert [f.face_id for f in page] == ids[NAMES[1]] + ids[NAMES[2]][:1]  # enrolment order
    assert gallery.list_faces("door", "other-model") == []
    gallery.upsert_person("door", NAMES[0], user_info="工号 007")
    assert m.search("door", samples[0, 3])[0].user_info == "工号 007"


def test_group_lookup_by_name_and_id(gallery):
    gallery.create_group("g-1", "前台")
    assert gallery.get_group(group_name="前台").group_id == "g-1"
    assert gallery.get_group("g-1", "ignored when id is given").group_name == "前台"
    auto = gallery.create_group(group_name="auto")
    assert len(auto.group_id) == 32 and auto.group_id != "g-1"
    with pytest.raises(InputError) as err:
        gallery.create_group("g-1")
    assert err.value.code == "group_exists"
    with pytest.raises(InputError) as err:
        gallery.get_group("nope")
    assert err.value.code == "group_not_found"


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"outer_id": ""}, "invalid_outer_id"),
        ({"outer_id": "a\x00b"}, "invalid_outer_id"),
        ({"vector": np.ones(512, np.float32)}, "invalid_embedding"),
        ({"vector": np.full(512, np.nan, np.float32)}, "invalid_embedding"),
        ({"vector": unit(np.ones((2, 512)))}, "invalid_embedding"),
        ({"vector": unit(np.ones(128))}, "embedding_dim_mismatch"),
        ({"thumbnail": b"x" * 70_000}, "thumbnail_too_large"),
        ({"group": "missing"}, "group_not_found"),
    ],
)
def test_bad_input_is_refused_and_nothing_is_stored(gallery, kwargs, code):
    gallery.create_group("g")
    gallery.add_face("g", "first", unit(np.ones(512)), MODEL)
    args = {"group": "g", "outer_id": "p", "vector": unit(np.arange(512.0)), "thumbnail": None} | kwargs
    with pytest.raises(InputError) as err:
        gallery.add_face(args["group"], args["outer_id"], args["vector"], MODEL, thumbnail=args["thumbnail"])
    assert err.value.code == code
    assert gallery.store.fingerprint("g", MODEL)[0] == 1


def test_delete_face_and_person_leave_search_and_disk_at_once(gallery):
    _, samples = identities(3, 3)
    gallery.create_group("g")
    marker = b"THUMB-MARKER-" + os.urandom(16)
    alice = gallery.add_faces("g", [NewFace("alice", v, MODEL) for v in samples[0, :2]])
    gallery.add_face("g", "alice", samples[0, 2], MODEL, thumbnail=marker + b"\xff" * 500)
    gallery.add_faces("g", [NewFace(n, samples[i, 0], MODEL) for i, n in [(1, "bob"), (2, "carol")]])
    m = matcher(gallery)
    thumb_face = gallery.faces_of_person("g", "alice")[2].face_id
    assert gallery.get_thumbnail(thumb_face)[1].startswith(marker)
    gallery.save()
    index_file = gallery.index("g", MODEL).file
    stored = gallery.index("g", MODEL)._index.get_items([alice[0].label])[0]  # as hnswlib normalised it
    vec_bytes = np.asarray(stored, "<f4").tobytes()[:64]
    assert vec_bytes in index_file.read_bytes()  # positive control for the scrub check below

    gallery.delete_face(alice[0].face_id)
    hits = gallery.search("g", MODEL, samples[0, 0], k=10)[0]
    assert alice[0].face_id not in {f.face_id for f, _ in hits}
    assert m.search("g", samples[0, 0])[0].outer_id == "alice"  # her other faces still match
    with pytest.raises(InputError) as err:
        gallery.get_face(alice[0].face_id)
    assert err.value.code == "face_not_found"

    assert gallery.delete_person("g", "alice") == 2
    assert "alice" not in {c.outer_id for c in m.search("g", samples[0, 0], top_k=5)}
    assert gallery.get_thumbnail(thumb_face) is None
    if gallery.store.shared:  # PostgreSQL: gone from every row now; from the files once VACUUM reuses pages
        assert gallery.store.read("SELECT COUNT(*) FROM face_thumbs")[0][0] == 0
        assert (
            gallery.store.read(
                "SELECT COUNT(*) FROM faces WHERE person_id IN (SELECT person_id FROM"
                " persons WHERE outer_id = 'alice')"
            )[0][0]
            == 0
        )
    else:
        assert marker not in db_bytes(Path(gallery.store.db_path))  # secure_delete + WAL truncate
    gallery.save()
    assert vec_bytes not in index_file.read_bytes()  # the embedding was scrubbed from the index too
    assert gallery.index("g", MODEL).stats()["live"] == 2


def test_delete_group_removes_everything(gallery):
    _, samples = identities(2, 2)
    enrol(gallery, "g", samples, ["a", "b"])
    gallery.save()
    idx = gallery.index("g", MODEL)
    assert idx.file.exists()
    assert gallery.delete_group("g") == 4
    assert not idx.file.exists() and gallery.index("g", MODEL) is None
    with pytest.raises(InputError):
        gallery.search("g", MODEL, samples[0, 0], k=1)


def test_capacity_grows_and_is_bounded(tmp_path):
    g = Gallery(config(tmp_path, initial_capacity=16, max_elements=64))
    try:
        g.create_group("g")
        vecs = unit(np.random.default_rng(1).standard_normal((70, 512)))
        g.add_faces("g", [NewFace(f"p{i}", v, MODEL) for i, v in enumerate(vecs[:60])])
        assert g.index("g", MODEL).stats()["elements"] == 60
        with pytest.raises(InputError) as err:
            g.add_faces("g", [NewFace(f"q{i}", v, MODEL) for i, v in enumerate(vecs[60:])])
        assert err.value.code == "gallery_full"
        assert g.store.fingerprint("g", MODEL)[0] == 60  # refused before the commit
        for i in (0, 59):
            assert g.search("g", MODEL, vecs[i], k=1)[0][0][0].outer_id == f"p{i}"
    finally:
        g.close()


def test_compaction_rebuilds_after_many_deletes(tmp_path):
    g = Gallery(config(tmp_path, compact_deleted_ratio=0.3))
    try:
        _, samples = identities(20, 1)
        ids = enrol(g, "g", samples, [f"p{i}" for i in range(20)], faces_per_id=1)
        for i in range(7):
            g.delete_face(ids[f"p{i}"][0])
        idx = g.index("g", MODEL)
        assert idx.wait_idle(30)
        assert idx.load_status == "rebuilt (compaction)"
        assert idx.stats() == {"elements": 13, "deleted": 0, "live": 13}
        assert g.search("g", MODEL, samples[12, 0], k=1)[0][0][0].outer_id == "p12"
    finally:
        g.close()


# -- persistence -----------------------------------------------------------------------------------------


def _reopen(tmp_path, **kw) -> Gallery:
    g = Gallery(config(tmp_path, **kw))
    assert g.wait_ready(60)
    return g


def _check_all(g: Gallery, samples: np.ndarray, names: list[str], gone: set[str] = frozenset()):
    m = matcher(g)
    for i, name in enumerate(names):
        top = m.search("g", samples[i, -1], top_k=1)
        assert (top[0].outer_id != name) if name in gone else (top[0].outer_id == name)


def test_reopen_loads_saved_index(tmp_path):
    names = [f"人{i}" for i in range(30)]
    _, samples = identities(30, 3)
    with Gallery(config(tmp_path)) as g:
        enrol(g, "g", samples, names)
    g = _reopen(tmp_path)
    try:
        assert g.index("g", MODEL).load_status == "fresh"
        _check_all(g, samples, names)
    finally:
        g.close()


def _saved_gallery(tmp_path, names, samples) -> tuple[Path, Path]:
    with Gallery(config(tmp_path)) as g:
        enrol(g, "g", samples, names)
        idx = g.index("g", MODEL)
        return idx.file, idx.sidecar


@pytest.mark.parametrize("damage", ["missing", "flip", "truncate", "sidecar_garbage", "params"])
def test_missing_or_corrupt_index_is_rebuilt(tmp_path, damage):
    names = [f"p{i}" for i in range(25)]
    _, samples = identities(25, 3)
    file, sidecar = _saved_gallery(tmp_path, names, samples)
    kw = {}
    if damage == "missing":
        file.unlink()
    elif damage == "flip":
        data = bytearray(file.read_bytes())
        data[len(data) // 2] ^= 0xFF
        file.write_bytes(bytes(data))
    elif damage == "truncate":
        file.write_bytes(file.read_bytes()[:1000])
    elif damage == "sidecar_garbage":
        sidecar.write_text("{not json")
    else:
        kw["hnsw_m"] = 24
    g = _reopen(tmp_path, **kw)
    try:
        assert g.index("g", MODEL).load_status.startswith("built (")
        _check_all(g, samples, names)
        g.save()
    finally:
        g.close()
    g = _reopen(tmp_path, **kw)
    try:
        assert g.index("g", MODEL).load_status == "fresh"
    finally:
        g.close()


def test_stale_index_is_reconciled_with_sqlite(tmp_path):
    names = [f"p{i}" for i in range(25)]
    _, samples = identities(30, 3)
    file, sidecar = _saved_gallery(tmp_path, names, samples)
    old_file, old_sidecar = file.read_bytes(), sidecar.read_bytes()
    with Gallery(config(tmp_path)) as g:  # more writes, then the saved files go back in time
        g.add_faces("g", [NewFace(f"p{i}", samples[i, 0], MODEL) for i in range(25, 30)])
        g.delete_person("g", "p3")
    file.write_bytes(old_file)
    sidecar.write_bytes(old_sidecar)
    g = _reopen(tmp_path)
    try:
        idx = g.index("g", MODEL)
        assert idx.load_status == "reconciled"
        assert idx.stats()["live"] == 29 * 2 - 5  # 25 persons x2 faces, +5 new faces, -p3's 2 faces
        _check_all(g, samples, [f"p{i}" for i in range(30)], gone={"p3"})
    finally:
        g.close()


def test_newer_schema_refuses_to_open(tmp_path):
    with Gallery(config(tmp_path)):
        pass
    conn = sqlite3.connect(tmp_path / "gallery" / DB_FILENAME)
    conn.execute("PRAGMA user_version=99")
    conn.close()
    with pytest.raises(FatalError):
        Gallery(config(tmp_path))


# -- concurrency -----------------------------------------------------------------------------------------


def test_searches_stay_correct_during_rebuild_swaps_and_writes(tmp_path):
    n_ids = 400
    _, samples = identities(n_ids + 50, 3, seed=5)
    g = Gallery(config(tmp_path, build_threads=1))
    try:
        enrol(g, "g", samples[:n_ids], [f"p{i}" for i in range(n_ids)])
        idx = g.index("g", MODEL)
        errors: list[str] = []
        done = threading.Event()
        checked, during_build = [0], [0]

        def reader(seed: int) -> None:
            rng = np.random.default_rng(seed)
            while not done.is_set():
                i = int(rng.integers(n_ids))
                building = idx._builder is not None and idx._builder.is_alive()
                try:
                    hits = g.search("g", MODEL, samples[i, 2], k=3)[0]
                    if not hits or hits[0][0].outer_id != f"p{i}":
                        errors.append(f"p{i} -> {hits[:1]}")
                except Exception as exc:  # noqa: BLE001 - any failure during a swap is the bug under test
                    errors.append(repr(exc))
                checked[0] += 1
                during_build[0] += building

        threads = [threading.Thread(target=reader, args=(s,)) for s in range(3)]
        for t in threads:
            t.start()
        swaps = 0
        for j in range(n_ids, n_ids + 50):  # writes interleaved with four rebuild swaps
            g.add_face("g", f"p{j}", samples[j, 0], MODEL)
            if j % 16 == 0:
                assert idx.wait_idle(30)
                swaps += idx.rebuild("test")
        assert idx.wait_idle(30)
        done.set()
        for t in threads:
            t.join(10)
        assert swaps == 4 and idx.load_status == "rebuilt (test)"
        assert not errors, errors[:5]
        assert checked[0] > 100 and during_build[0] > 20, (checked, during_build)
        for j in range(n_ids, n_ids + 50):  # every write made during the builds is in the swapped index
            assert g.search("g", MODEL, samples[j, 1], k=1)[0][0][0].outer_id == f"p{j}"
        assert idx.stats()["live"] == n_ids * 2 + 50
    finally:
        g.close()


# -- scores and M:N --------------------------------------------------------------------------------------


def test_score_map_hits_anchors_and_is_monotone():
    sm = ScoreMap(THRESHOLDS)
    assert sm.score(0.41) == pytest.approx(70) and sm.score(0.48) == pytest.approx(80)
    assert sm.score(0.55) == pytest.approx(90) and sm.score(0.61) == pytest.approx(95)
    assert sm.score(1.0) == 100 and sm.score(0.0) == 0 and sm.score(-0.5) == 0
    grid = np.linspace(0, 1, 2001)
    assert np.all(np.diff(sm.score(grid)) > 0)
    assert np.allclose(sm.cosine(sm.score(grid)), grid, atol=1e-9)
    assert sm.cosine(80.0) == pytest.approx(0.48)
    assert sm.thresholds() == {"1e-3": 70.0, "1e-4": 80.0, "1e-5": 90.0, "1e-6": 95.0}
    three = ScoreMap({k: THRESHOLDS[k] for k in ("1e-3", "1e-4", "1e-5")})
    assert three.score(0.55) == pytest.approx(90) and "1e-6" not in three.thresholds()
    bad_maps = [
        {"1e-3": 0.4},  # a required FAR is missing
        {"1e-3": 0.5, "1e-4": 0.48, "1e-5": 0.55},  # not increasing
        {"1e-3": 0.4, "1e-4": 0.5, "1e-5": 1.0},  # leaves no room below cosine 1
    ]
    for bad in bad_maps:
        with pytest.raises(ConfigError):
            ScoreMap(bad)


def _brute_force_best(weights: np.ndarray, allowed: np.ndarray) -> float:
    n, m = weights.shape
    best = 0.0
    for cols in itertools.product([None, *range(m)], repeat=n):
        used = [c for c in cols if c is not None]
        forbidden = any(c is not None and not allowed[r, c] for r, c in enumerate(cols))
        if forbidden or len(used) != len(set(used)):
            continue
        best = max(best, sum(weights[r, c] for r, c in enumerate(cols) if c is not None))
    return best


def test_assignment_is_optimal_and_exclusive():
    rng = np.random.default_rng(3)
    for _ in range(150):
        n, m = int(rng.integers(1, 5)), int(rng.integers(1, 6))
        weights = rng.random((n, m))
        allowed = rng.random((n, m)) < 0.7
        cols = max_weight_matching(weights, allowed)
        used = [c for c in cols if c is not None]
        assert len(used) == len(set(used))
        assert all(allowed[r, c] for r, c in enumerate(cols) if c is not None)
        total = sum(weights[r, c] for r, c in enumerate(cols) if c is not None)
        assert total == pytest.approx(_brute_force_best(weights, allowed))
    square = rng.random((8, 8))
    perm = min_cost_assignment(square)
    assert sorted(perm) == list(range(8))
    best = min(sum(square[i, p[i]] for i in range(8)) for p in itertools.permutations(range(8)))
    assert square[np.arange(8), perm].sum() == pytest.approx(best)


def _cand(person: str, score: float) -> Candidate:
    return Candidate(person, person, "", "g", f"f-{person}", 0.0, score)


def test_assign_faces_prefers_global_optimum_over_greedy():
    # Greedy would give A to face 0 (95 > 93) and leave face 1 with nobody above 80.
    per_face = [[_cand("A", 95), _cand("B", 90)], [_cand("A", 93), _cand("C", 70)]]
    out = assign_faces(per_face, max_users=1, min_score=80)
    assert [[c.person_id for c in f] for f in out] == [["B"], ["A"]]
    out = assign_faces(per_face, max_users=3, min_score=0)
    people = [c.person_id for f in out for c in f]
    assert len(people) == len(set(people)) == 3


def test_search_many_never_gives_one_person_to_two_faces(gallery):
    centres, samples = identities(12, 4, seed=9)
    enrol(gallery, "g", samples, [f"p{i}" for i in range(12)], faces_per_id=3)
    m = matcher(gallery)
    rng = np.random.default_rng(4)
    for _ in range(30):
        chosen = rng.choice(12, size=int(rng.integers(2, 8)), replace=False)
        faces = [samples[i, 3] for i in chosen]
        faces[-1] = unit(samples[chosen[0], 3] + 0.02 * rng.standard_normal(512))  # two faces of one person
        out = m.search_many("g", faces, max_users=3, min_score=50)
        people = [c.person_id for f in out for c in f]
        assert len(people) == len(set(people))
        for k, i in enumerate(chosen[1:-1], start=1):
            assert out[k][0].outer_id == f"p{i}"
        twins = [c.outer_id for c in out[0] + out[-1]]  # the two faces of one person: only one gets them
        assert twins.count(f"p{chosen[0]}") == 1
    with pytest.raises(InputError) as err:
        m.search_many("g", [samples[0, 0]] * 11)
    assert err.value.code == "too_many_faces"


def test_compare_scores(gallery):
    _, samples = identities(2, 2)
    m = matcher(gallery)
    same, diff = m.compare(samples[0, 0], samples[0, 1]), m.compare(samples[0, 0], samples[1, 0])
    assert same[1] > 80 > diff[1]
    assert same[1] == pytest.approx(ScoreMap(THRESHOLDS).score(float(samples[0, 0] @ samples[0, 1])))


# -- crash safety ----------------------------------------------------------------------------------------

CRASH_CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    from agent.gallery import Gallery, GalleryConfig
    g = Gallery(GalleryConfig(path=sys.argv[1], save_interval_s=0.05))
    g.create_group("g")
    for i in range(100000):
        v = np.random.default_rng(i).standard_normal(128).astype(np.float32)
        rec = g.add_face("g", f"人{i}", v / np.linalg.norm(v), "dlib/fp32")
        print(i, rec.face_id, flush=True)
    """
)


def test_kill_9_during_bulk_enrolment_loses_no_acknowledged_face(tmp_path):
    path = tmp_path / "gallery"
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASH_CHILD, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    acked: list[tuple[int, str]] = []
    deadline = time.monotonic() + 60
    try:
        while len(acked) < 300 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            i, face_id = line.split()
            acked.append((int(i), face_id))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(acked) >= 300, proc.stderr.read()[-2000:]
    assert (path / "indexes").is_dir() and any((path / "indexes").glob("*.hnsw"))  # saves ran mid-enrolment

    g = Gallery(GalleryConfig(path=path, save_interval_s=0))
    try:
        assert g.wait_ready(60)
        assert g.index("g", "dlib/fp32").ready
        assert g.store.fingerprint("g", "dlib/fp32")[0] >= len(acked)
        for i, face_id in acked:
            v = np.random.default_rng(i).standard_normal(128).astype(np.float32)
            face, cos = g.search("g", "dlib/fp32", v / np.linalg.norm(v), k=1)[0][0]
            assert face.face_id == face_id and face.outer_id == f"人{i}" and cos > 0.999
    finally:
        g.close()
