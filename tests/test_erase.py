"""Complete erasure of one person: real face, real gallery + index, real outbox, then the raw file bytes."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.cli.erase import erase_person
from agent.gallery import Gallery, GalleryConfig
from agent.publish.config import AccessPolicyConfig, OutboxConfig, PublishConfig
from agent.publish.outbox import Outbox
from agent.publish.payloads import RecognitionEvent, event_messages
from agent.publish.topics import Topics
from agent.types import Box

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = "faces/face_recognition/examples"
GROUP = "door"


def _face(engine, path: Path) -> tuple[np.ndarray, bytes, bytes]:
    """(embedding, JPEG thumbnail of the aligned chip, a JPEG crop of the face as the event snapshot)."""
    (emb,) = engine.analyze(path.read_bytes(), max_faces=1, keep_chips=True)
    ok, thumb = cv2.imencode(".jpg", emb.chip, [cv2.IMWRITE_JPEG_QUALITY, 90])
    x, y, w, h = emb.face.box.as_xywh()
    photo = cv2.imread(str(path))
    ok2, snap = cv2.imencode(".jpg", photo[max(0, y) : y + h, max(0, x) : x + w])
    assert ok and ok2
    return emb.vector.astype(np.float32), thumb.tobytes(), snap.tobytes()


def _state_bytes(state: Path) -> bytes:
    """Every byte of every file in the state dir (SQLite files, their -wal/-shm, index files)."""
    return b"".join(p.read_bytes() for p in sorted(state.rglob("*")) if p.is_file())


def _best_cosine(raw: bytes, vec: np.ndarray) -> float:
    """Highest cosine between `vec` and any run of float32 values at any byte offset of `raw`."""
    best = -1.0
    unit = vec / np.linalg.norm(vec)
    for offset in range(4):
        usable = (len(raw) - offset) // 4 * 4
        with np.errstate(all="ignore"):
            floats = np.frombuffer(raw[offset : offset + usable], dtype="<f4").astype(np.float64)
        floats = np.nan_to_num(floats, nan=0.0, posinf=0.0, neginf=0.0)
        if floats.size < vec.size:
            continue
        windows = np.lib.stride_tricks.sliding_window_view(floats, vec.size)
        norms = np.linalg.norm(windows, axis=1)
        with np.errstate(all="ignore"):
            cos = np.where(norms > 0, (windows @ unit) / norms, -1.0)
        best = max(best, float(np.nanmax(cos)))
    return best


def _queue_event(outbox: Outbox, topics: Topics, outer_id: str, snapshot: bytes) -> None:
    cfg = PublishConfig(snapshots=True, access=AccessPolicyConfig(enabled=True))
    event = RecognitionEvent(
        camera_id="front",
        captured_at=1_760_000_000.0,
        box=Box(10, 10, 90, 90),
        model_id="facenet-casia/fp32",
        person_id=outer_id,
        name=outer_id,
        group_id=GROUP,
        score=91.0,
        far_level=5,
    )
    messages, skipped = event_messages(event, topics, cfg, snapshot)
    assert not skipped and len(messages) == 3  # event, snapshot, access decision
    outbox.put(messages)


@pytest.fixture()
def enrolled(tmp_path: Path, data_dir: Path, agent_engine):
    """A state dir with two enrolled persons, their index saved, and queued events for both."""
    state = tmp_path / "state"
    gone, kept = f"erin-{uuid.uuid4().hex}", f"kim-{uuid.uuid4().hex}"
    faces = {
        gone: _face(agent_engine, data_dir / PHOTOS / "biden.jpg"),
        kept: _face(agent_engine, data_dir / PHOTOS / "obama-480p.jpg"),
    }
    cfg = GalleryConfig(path=state / "gallery", save_interval_s=0)
    with Gallery(cfg) as gallery:
        gallery.create_group(group_id=GROUP)
        for outer_id, (vec, thumb, _) in faces.items():
            gallery.add_face(GROUP, outer_id, vec, agent_engine.model_id, thumbnail=thumb)
    outbox = Outbox(OutboxConfig(path=state / "outbox.sqlite3"))
    topics = Topics("face-agent", "dev1")
    for outer_id, (_, _, snapshot) in faces.items():
        _queue_event(outbox, topics, outer_id, snapshot)
    outbox.close()
    return state, cfg, gone, kept, faces


def _traces(faces, outer_id: str) -> dict[str, bytes]:
    vec, thumb, snapshot = faces[outer_id]
    return {
        "outer_id": outer_id.encode(),
        "embedding": vec.astype("<f4").tobytes(),
        "thumbnail": thumb[len(thumb) // 2 : len(thumb) // 2 + 64],
        "snapshot": snapshot[len(snapshot) // 2 : len(snapshot) // 2 + 64],
    }


def test_erase_leaves_no_byte_of_the_person(enrolled, agent_engine) -> None:
    state, cfg, gone, kept, faces = enrolled
    before = _state_bytes(state)
    index_before = _state_bytes(state / "gallery" / "indexes")
    # The checks below could pass vacuously if the traces were never on disk: they must be there first.
    for what, needle in {**_traces(faces, gone), **_traces(faces, kept)}.items():
        assert needle in before, f"{what} not on disk before erasure: the test would prove nothing"

    out = subprocess.run(
        [sys.executable, "-m", "agent", "erase", "--state-dir", str(state), "--group", GROUP,
         "--person", gone, "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["person_found"] and report["faces"] == 1 and report["thumbnails"] == 1
    assert report["outbox_rows"] == 3  # event, its snapshot, the access decision

    after = _state_bytes(state)
    # hnswlib keeps its own (re-normalised, so not bit-identical) copy of the vector; erasure overwrites it
    # and saves the index file again.
    index_after = _state_bytes(state / "gallery" / "indexes")
    assert _best_cosine(index_before, faces[gone][0]) > 0.9999
    # Nothing closer to the erased face than the remaining person's face (dlib embeddings of different
    # people still have cosine ~0.8, so "closer than the other person" is the bar, not a fixed 0.5).
    g, k = faces[gone][0], faces[kept][0]
    other = float(g @ k / (np.linalg.norm(g) * np.linalg.norm(k)))
    assert other < 0.95
    assert _best_cosine(index_after, g) < max(0.5, other) + 0.03
    assert _best_cosine(index_after, faces[kept][0]) > 0.9999
    for what, needle in _traces(faces, gone).items():
        assert needle not in after, f"{what} of the erased person is still in the state files"
    for what, needle in _traces(faces, kept).items():
        assert needle in after, f"{what} of the other person was erased too"
    for wal in state.rglob("*-wal"):
        assert wal.stat().st_size == 0, f"{wal} still holds frames after the TRUNCATE checkpoint"
    for db in (state / "gallery" / "gallery.sqlite3", state / "outbox.sqlite3"):
        # VACUUM leaves no free page behind, whatever secure_delete default this SQLite was built with.
        conn = sqlite3.connect(db)
        try:
            assert conn.execute("PRAGMA freelist_count").fetchone()[0] == 0, f"{db} was not vacuumed"
        finally:
            conn.close()

    with Gallery(cfg) as gallery:
        assert gallery.list_persons(GROUP)[0].outer_id == kept
        assert len(gallery.list_persons(GROUP)) == 1
        vec_gone, vec_kept = faces[gone][0], faces[kept][0]
        hits = gallery.search(GROUP, agent_engine.model_id, np.stack([vec_gone, vec_kept]), k=5)
        assert all(face.outer_id == kept for row in hits for face, _ in row)
        assert hits[1][0][0].outer_id == kept and hits[1][0][1] > 0.99
    outbox = Outbox(OutboxConfig(path=state / "outbox.sqlite3"))
    try:
        rows = outbox.peek(0, 100)
    finally:
        outbox.close()
    assert len(rows) == 3 and all(gone.encode() not in r.payload for r in rows)


def test_erase_is_idempotent_and_handles_an_unknown_person(enrolled) -> None:
    state, cfg, gone, _, _ = enrolled
    outbox = state / "outbox.sqlite3"
    first = erase_person(cfg, outbox, GROUP, gone)
    assert first.person_found and first.faces == 1 and first.outbox_rows == 3
    again = erase_person(cfg, outbox, GROUP, gone)
    assert not again.person_found and again.faces == 0 and again.outbox_rows == 0
    assert "not enrolled" in again.describe()
    # A person in another group with the same outer id is a different person: untouched.
    other_group = erase_person(cfg, outbox, "elsewhere", enrolled[3])
    assert not other_group.person_found and other_group.outbox_rows == 0


def test_erase_refuses_config_and_state_dir_together(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "agent", "erase", "--state-dir", str(tmp_path),
         "--config", str(tmp_path / "x"), "--group", GROUP, "--person", "p"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 78 and "not both" in out.stderr  # EX_CONFIG
