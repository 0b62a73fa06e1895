"""Bulk enrolment, gallery export/import/delete and `face-agent serve`, with real images, real SQLite files,
real subprocesses and a real HTTP client."""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from agent.cli.gallery import check_models, delete, export_gallery, import_archive, read_archive
from agent.cli.main import main
from agent.errors import InputError
from agent.gallery import Gallery, GalleryConfig, Matcher, NewFace, ScoreMap
from agent.gallery.enroll import EnrollConfig, Enroller, EnrollItem, items_from_csv, items_from_folder

ROOT = Path(__file__).resolve().parent.parent
LFW = "lfw-devtrain/images"
GROUP = "door"
# person -> enrolled images; the last image of each "known" person is held out as a search probe
KNOWN = {"Ciro_Gomes": 5, "Elizabeth_Dole": 4, "Helen_Clark": 4, "Steve_Nash": 5}


def lfw(data_dir: Path, person: str, n: int) -> Path:
    return data_dir / LFW / person / f"{person}_{n:04d}.jpg"


def probe(data_dir: Path, person: str) -> Path:
    return lfw(data_dir, person, KNOWN[person])


@pytest.fixture(scope="module")
def source(tmp_path_factory, data_dir) -> Path:
    """DIR/<person>/ of links to the shared images, plus a truncated JPEG, a dog photo, group photos,
    a pose failure, a low-confidence face and a text file that is not an image."""
    root = tmp_path_factory.mktemp("enroll") / "people"

    def link(person: str, target: Path, name: str | None = None) -> None:
        (root / person).mkdir(parents=True, exist_ok=True)
        os.symlink(target, root / person / (name or target.name))

    for person, held_out in KNOWN.items():
        for i in range(1, held_out):
            link(person, lfw(data_dir, person, i))
    (root / "Helen_Clark" / "broken.jpg").write_bytes(lfw(data_dir, "Helen_Clark", 1).read_bytes()[:3000])
    (root / "Helen_Clark" / "notes.txt").write_text("not an image")
    link("Clint_Eastwood", lfw(data_dir, "Clint_Eastwood", 1))  # two faces
    link("Clint_Eastwood", lfw(data_dir, "Clint_Eastwood", 2))
    link("Clint_Eastwood", data_dir / "faces/face_recognition/examples/knn_examples/test/obama_and_biden.jpg")
    link("Clint_Eastwood", data_dir / "faces/dlib/examples/faces/dogs.jpg")
    link("Sonia_Gandhi", lfw(data_dir, "Sonia_Gandhi", 4))  # head turned: pose_yaw at NORMAL
    link("Tom_Crean", lfw(data_dir, "Tom_Crean", 1))
    link("Tom_Crean", lfw(data_dir, "Tom_Crean", 3))  # weak detection: low_confidence at NORMAL
    return root


@pytest.fixture(scope="module")
def enrolled(tmp_path_factory, source, agent_engine):
    """The folder enrolled into a fresh gallery: (gallery, summary, outcomes)."""
    gallery = Gallery(GalleryConfig(path=tmp_path_factory.mktemp("g1") / "gallery", save_interval_s=0))
    outcomes = []
    enroller = Enroller(agent_engine, gallery, EnrollConfig(group_id=GROUP, create_group=True, batch_size=4))
    summary = enroller.run(items_from_folder(source), lambda o, s: outcomes.append(o))
    yield gallery, summary, outcomes
    gallery.close()


def matcher(gallery: Gallery, engine, thresholds) -> Matcher:
    return Matcher(gallery, engine.model_id, ScoreMap(thresholds), gallery.config)


def test_folder_enrolment_reports_reasons_and_finds_everyone(
    enrolled, agent_engine, agent_thresholds, data_dir
):
    gallery, summary, outcomes = enrolled
    assert summary.images == 22 and len(outcomes) == 22  # notes.txt is not an image
    assert summary.enrolled == 16 and summary.rejected == 6 and summary.duplicates == 0
    assert summary.reasons == {
        "image_decode_failed": 1,
        "several_faces": 2,
        "no_face": 1,
        "pose_yaw": 1,
        "low_confidence": 1,
    }
    by_path = {Path(o.path).name: o for o in outcomes}
    assert by_path["dogs.jpg"].reasons == ("no_face",)
    assert by_path["obama_and_biden.jpg"].reasons == ("several_faces",)
    assert by_path["broken.jpg"].reasons == ("image_decode_failed",)
    assert summary.persons["Clint_Eastwood"] == {"enrolled": 1, "rejected": 3, "duplicate": 0}
    assert summary.persons["Sonia_Gandhi"] == {"enrolled": 0, "rejected": 1, "duplicate": 0}
    assert summary.faces_per_s > 0 and summary.model_id == agent_engine.model_id

    # every enrolled face is in the gallery with its quality and a decodable aligned thumbnail: the chip the
    # embedder saw (the dlib ResNet's 150x150 dlib-style chip)
    assert agent_engine.embedder.size == 150
    for o in outcomes:
        if o.status == "enrolled":
            face = gallery.get_face(o.face_id)
            assert face.outer_id == o.outer_id and face.quality is not None and face.quality >= 0.5
            fmt, data = gallery.get_thumbnail(o.face_id)
            chip = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            assert fmt == "jpeg" and chip.shape == (150, 150, 3)

    # a held-out photo of each known person finds that person first
    m = matcher(gallery, agent_engine, agent_thresholds)
    for person in KNOWN:
        emb = agent_engine.analyze(probe(data_dir, person).read_bytes(), 1)[0]
        assert m.search(GROUP, emb.vector, top_k=1)[0].outer_id == person


def test_second_run_adds_nothing(enrolled, source, agent_engine):
    gallery, first, _ = enrolled
    before = len(gallery.list_faces(GROUP))
    again = Enroller(agent_engine, gallery, EnrollConfig(group_id=GROUP)).run(items_from_folder(source))
    assert (again.enrolled, again.duplicates, again.rejected) == (0, first.enrolled, first.rejected)
    assert len(gallery.list_faces(GROUP)) == before


def test_largest_face_flag_and_unknown_group(enrolled, source, agent_engine, tmp_path):
    with Gallery(GalleryConfig(path=tmp_path / "g", save_interval_s=0)) as gallery:
        items = [i for i in items_from_folder(source) if i.outer_id == "Clint_Eastwood"]
        with pytest.raises(InputError, match="--create-group"):
            Enroller(agent_engine, gallery, EnrollConfig(group_id="x")).run(items)
        cfg = EnrollConfig(group_id="x", create_group=True, largest_face=True)
        summary = Enroller(agent_engine, gallery, cfg).run(items)
        assert summary.enrolled == 3 and summary.reasons == {"no_face": 1}


def test_csv_input_through_the_cli(tmp_path, data_dir, capsys, agent_engine_config):
    (tmp_path / "img").mkdir()
    os.symlink(lfw(data_dir, "Ciro_Gomes", 1), tmp_path / "img" / "a.jpg")
    rows = [
        "path,outer_id,user_info",
        "img/a.jpg,ciro,Ciro Gomes",  # relative to the CSV's folder
        f"{lfw(data_dir, 'Steve_Nash', 1)},steve,",  # absolute
        "img/missing.jpg,ghost,",
        ",nobody,",
    ]
    (tmp_path / "people.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    assert [i.outer_id for i in items_from_csv(tmp_path / "people.csv")] == [
        "ciro",
        "steve",
        "ghost",
        "nobody",
    ]
    (tmp_path / "bad.csv").write_text("file,name\nx.jpg,y\n")
    with pytest.raises(InputError, match="missing outer_id, path"):
        items_from_csv(tmp_path / "bad.csv")

    argv = ["enroll", str(tmp_path / "people.csv"), "--state-dir", str(tmp_path / "state"), "--group", "csv"]
    argv += ["--create-group", "--json", "--precision", agent_engine_config.embedder.precision]
    assert main(argv) == 1  # some rows were rejected
    summary = json.loads(capsys.readouterr().out)
    assert summary["enrolled"] == 2 and summary["reasons"] == {"unreadable_file": 1, "invalid_row": 1}
    with Gallery(GalleryConfig(path=tmp_path / "state" / "gallery")) as gallery:
        assert gallery.get_person("csv", "ciro").user_info == "Ciro Gomes"
        assert len(gallery.faces_of_person("csv", "steve")) == 1


def _results(gallery: Gallery, m: Matcher, engine, data_dir: Path) -> list:
    out = []
    for person in KNOWN:
        emb = engine.analyze(probe(data_dir, person).read_bytes(), 1)[0]
        out.append([(c.outer_id, round(c.cosine, 5)) for c in m.search(GROUP, emb.vector, top_k=5)])
    return out


def test_export_import_round_trip(enrolled, tmp_path, agent_engine, agent_thresholds, data_dir):
    gallery, summary, _ = enrolled
    gallery.upsert_person(GROUP, "Helen_Clark", "prime minister")
    archive = tmp_path / "door.jsonl.gz"
    assert export_gallery(gallery, archive)["faces"] == summary.enrolled
    with Gallery(GalleryConfig(path=tmp_path / "fresh", save_interval_s=0)) as fresh:
        arc = read_archive(archive)
        check_models(fresh, arc, allow_unknown=False)
        assert import_archive(fresh, arc)["faces_added"] == summary.enrolled
        assert import_archive(fresh, read_archive(archive))["faces_added"] == 0  # idempotent
        assert fresh.get_person(GROUP, "Helen_Clark").user_info == "prime minister"
        want = _results(gallery, matcher(gallery, agent_engine, agent_thresholds), agent_engine, data_dir)
        got = _results(fresh, matcher(fresh, agent_engine, agent_thresholds), agent_engine, data_dir)
        assert got == want and len(want[0]) == 5
        old = {(f.face_id, f.outer_id, gallery.get_thumbnail(f.face_id)) for f in gallery.list_faces(GROUP)}
        # the same face ids: an integrator's records of face ids stay valid after a move to a new device
        new = {(f.face_id, f.outer_id, fresh.get_thumbnail(f.face_id)) for f in fresh.list_faces(GROUP)}
        assert new == old


def test_import_refuses_a_face_id_held_by_another_face(enrolled, tmp_path):
    gallery, _, _ = enrolled
    archive = tmp_path / "a.jsonl.gz"
    export_gallery(gallery, archive)
    arc = read_archive(archive)
    with Gallery(GalleryConfig(path=tmp_path / "other", save_interval_s=0)) as other:
        other.create_group(GROUP, GROUP, "")
        taken = arc.faces[3]
        vec = np.roll(taken["vector"], 1)
        other.add_faces(GROUP, [NewFace("Someone_Else", vec, taken["model_id"], face_id=taken["face_id"])])
        with pytest.raises(InputError, match="nothing was imported") as err:
            import_archive(other, arc)
        assert err.value.code == "face_id_conflict"
        assert [f.outer_id for f in other.list_faces(GROUP)] == ["Someone_Else"]  # nothing half-applied
        with pytest.raises(InputError) as err:  # and the store itself refuses a second face with that id
            other.add_faces(GROUP, [NewFace("Other", vec, taken["model_id"], face_id=taken["face_id"])])
        assert err.value.code == "face_id_conflict"

    def twice(rs):
        faces = [r for r in rs if r["type"] == "face"]
        return [*rs[:-1], faces[0], {**rs[-1], "faces": rs[-1]["faces"] + 1}]

    with pytest.raises(InputError, match="same face_id appears twice"):
        read_archive(_rewrite(archive, tmp_path / "d.jsonl", twice))


def _rewrite(src: Path, dst: Path, change) -> Path:
    with gzip.open(src, "rt", encoding="utf-8") as fh:
        lines = [json.loads(line) for line in fh]
    dst.write_text("".join(json.dumps(r) + "\n" for r in change(lines)), encoding="utf-8")
    return dst


def test_import_refuses_broken_archives(enrolled, tmp_path, agent_engine):
    gallery, _, _ = enrolled
    archive = tmp_path / "a.jsonl.gz"
    export_gallery(gallery, archive)
    truncated = _rewrite(archive, tmp_path / "t.jsonl", lambda rs: rs[:-3])
    with pytest.raises(InputError, match="truncated"):
        read_archive(truncated)

    def rename_model(rs):
        return [{**r, "model_id": "mystery/fp32"} if r["type"] == "face" else r for r in rs]

    unknown = read_archive(_rewrite(archive, tmp_path / "u.jsonl", rename_model))
    with pytest.raises(InputError, match="mystery/fp32") as err:
        check_models(gallery, unknown, allow_unknown=False)
    assert err.value.code == "unknown_model"
    check_models(gallery, unknown, allow_unknown=True)

    def shrink(rs):  # 64 values claimed as dlib-resnet-v1 (128-D in the manifest and in the gallery)
        vec = base64.b64encode(np.full(64, 64**-0.5, "<f4").tobytes()).decode()
        return [{**r, "dim": 64, "embedding": vec} if r["type"] == "face" else r for r in rs]

    assert read_archive(archive).dims == {agent_engine.model_id: 128}  # what the gallery holds
    small = read_archive(_rewrite(archive, tmp_path / "s.jsonl", shrink))
    with pytest.raises(InputError, match="have 64 values, the model manifest says 128") as err:
        check_models(gallery, small, allow_unknown=False)
    assert err.value.code == "embedding_dim_mismatch"


def _slices(data: bytes) -> list[bytes]:
    return [data[i : i + 48] for i in range(600, len(data) - 48, 500)]  # past the shared JPEG header


def _all_bytes(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


def test_delete_erases_rows_thumbnails_and_index_entries(enrolled, tmp_path, capsys):
    gallery, _, _ = enrolled
    archive = tmp_path / "a.jsonl"
    export_gallery(gallery, archive)
    path = tmp_path / "state" / "gallery"
    with Gallery(GalleryConfig(path=path, save_interval_s=0)) as g:
        import_archive(g, read_archive(archive))
        steve = g.faces_of_person(GROUP, "Steve_Nash")
        ciro = g.faces_of_person(GROUP, "Ciro_Gomes")
        # an embedding row fits in one SQLite page; a thumbnail spans overflow pages, so probe slices of it
        secrets = [
            (g.get_embedding(f.face_id).astype("<f4").tobytes()[:64], _slices(g.get_thumbnail(f.face_id)[1]))
            for f in steve + ciro[:1]
        ]
        g.save()
        blob = _all_bytes(path)
        assert all(e in blob and any(t in blob for t in ts) for e, ts in secrets)  # the probe works
        assert delete(g, GROUP, face=ciro[0].face_id) == 1
        assert delete(g, GROUP, person="Steve_Nash") == len(steve) == 4
        remaining = g.faces_of_person(GROUP, "Ciro_Gomes")
        assert [f.face_id for f in remaining] == [f.face_id for f in ciro[1:]]
        hits = g.search(GROUP, remaining[0].model_id, g.get_embedding(remaining[0].face_id), k=20)[0]
        assert {f.outer_id for f, _ in hits}.isdisjoint({"Steve_Nash"})
    blob = _all_bytes(path)
    for emb, thumbs in secrets:  # gone from SQLite, its WAL and the saved index file
        assert emb not in blob and not any(t in blob for t in thumbs)

    state = ["--state-dir", str(tmp_path / "state")]
    assert main(["gallery", "delete", "--group", GROUP, *state]) == 2  # a whole group needs --yes
    assert "--yes" in capsys.readouterr().err
    assert main(["gallery", "delete", "--group", GROUP, "--yes", *state]) == 0
    capsys.readouterr()
    assert main(["gallery", "list", "--json", *state]) == 0
    assert json.loads(capsys.readouterr().out) == {"groups": []}
    assert not list((path / "indexes").glob("*.hnsw"))


def _config(tmp: Path, engine_config, thresholds: dict) -> Path:
    cfg = {
        "state_dir": str(tmp / "state"),
        "engine": {"embedder": {"precision": engine_config.embedder.precision}},
        "api": {
            "host": "127.0.0.1",
            "port": 0,
            "allow_unauthenticated_loopback": True,
            "score_thresholds": {k: thresholds[k] for k in ("1e-3", "1e-4", "1e-5")},
        },
        "cameras": [{"id": "cam0", "source": "0"}],  # a `run` section: ignored by serve
    }
    path = tmp / "agent.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _env() -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "STATE_DIRECTORY")
    }
    return {**env, "PYTHONPATH": str(ROOT)}


def test_serve_answers_http_and_stops_on_sigterm(
    enrolled, tmp_path, agent_engine_config, agent_thresholds, data_dir
):
    gallery, _, _ = enrolled
    archive = tmp_path / "a.jsonl"
    export_gallery(gallery, archive)
    with Gallery(GalleryConfig(path=tmp_path / "state" / "gallery", save_interval_s=0)) as g:
        import_archive(g, read_archive(archive))
    cmd = [
        sys.executable,
        "-m",
        "agent",
        "serve",
        "--config",
        str(_config(tmp_path, agent_engine_config, agent_thresholds)),
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=tmp_path
    )
    try:
        line = proc.stdout.readline()  # printed once the server listens (or EOF if start-up failed)
        assert "listening on http://127.0.0.1:" in line, proc.stderr.read()[-3000:] if not line else line
        port = int(line.rsplit(":", 1)[1])
        body = json.dumps(
            {"image_base64": base64.b64encode(probe(data_dir, "Helen_Clark").read_bytes()).decode()}
        )
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", f"/api/v1/groups/{GROUP}/search", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        answer = json.loads(resp.read())
        conn.close()
        assert resp.status == 200, answer
        assert answer["faces"][0]["candidates"][0]["outer_id"] == "Helen_Clark"
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert time.monotonic() - t0 < 15
        assert "stopped" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def models_without_thresholds(models_dir: Path, dst: Path, model: str) -> Path:
    """A models folder like the shipped one (files linked, not copied) whose manifest has no calibrated FAR
    thresholds for `model`, as a freshly built, not yet calibrated model would."""
    dst.mkdir()
    for sub in models_dir.iterdir():
        if sub.is_dir():
            (dst / sub.name).symlink_to(sub, target_is_directory=True)
    manifest = json.loads((models_dir / "manifest.json").read_text(encoding="utf-8"))
    for variant in manifest["models"][model]["variants"].values():
        variant.pop("thresholds", None)
    (dst / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return dst


def test_serve_without_thresholds_is_a_config_error(tmp_path, models_dir, agent_engine_config):
    from agent.inference.engine import FaceEngine

    emb = agent_engine_config.embedder
    bare = models_without_thresholds(models_dir, tmp_path / "models", emb.model)
    engine_cfg = agent_engine_config.model_copy(update={"models_dir": bare})
    assert FaceEngine(engine_cfg).thresholds == {}  # the premise: this manifest gives the model none
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "engine": {
                    "models_dir": str(bare),
                    "embedder": {"model": emb.model, "precision": emb.precision},
                },
                "state_dir": str(tmp_path / "state"),
                "api": {"port": 0},
            }
        )
    )
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "serve", "--config", str(cfg)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
    )
    assert proc.returncode == 78, proc.stderr
    assert f"API needs FAR thresholds for {emb.model}/{emb.precision}" in proc.stderr, proc.stderr


def test_kill_9_during_bulk_enrolment_loses_no_reported_face(tmp_path, data_dir, agent_engine_config):
    people = sorted(p for p in (data_dir / LFW).iterdir() if p.is_dir())[:400]
    rows = ["path,outer_id"] + [f"{img},{p.name}" for p in people for img in sorted(p.glob("*.jpg"))[:1]]
    (tmp_path / "bulk.csv").write_text("\n".join(rows) + "\n")
    state = tmp_path / "state"
    cmd = [
        sys.executable,
        "-m",
        "agent",
        "enroll",
        str(tmp_path / "bulk.csv"),
        "--state-dir",
        str(state),
        "--create-group",
        "--group",
        "bulk",
        "--json-lines",
        "--batch-size",
        "4",
        "--quality",
        "NONE",
        "--precision",
        agent_engine_config.embedder.precision,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    acked: list[tuple[str, str]] = []
    deadline = time.monotonic() + 60
    try:
        while len(acked) < 24 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            rec = json.loads(line)
            if rec.get("status") == "enrolled":
                acked.append((rec["face_id"], rec["outer_id"]))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(acked) >= 24, proc.stderr.read()[-2000:]
    assert proc.returncode == -signal.SIGKILL  # killed mid-run, not finished
    with Gallery(GalleryConfig(path=state / "gallery", save_interval_s=0)) as g:
        assert g.wait_ready(60)
        assert len(g.list_faces("bulk")) >= len(acked)
        for face_id, outer_id in acked:
            face = g.get_face(face_id)
            assert face.outer_id == outer_id and g.get_thumbnail(face_id) is not None
            (hit, cos), *_ = g.search("bulk", face.model_id, g.get_embedding(face_id), k=1)[0]
            assert hit.face_id == face_id and cos > 0.999


def test_enroll_on_a_fresh_state_dir_creates_the_default_group_only(tmp_path, data_dir):
    """The quick start: `enroll DIR` into a new state dir enrols into the default group, which `run` matches
    against; any other group still needs --create-group (a typo must not make a new empty group)."""
    train = data_dir / "faces/face_recognition/examples/knn_examples/train"

    def enroll(*extra: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "agent", "enroll", str(train), "--state-dir", str(tmp_path / "st")]
        return subprocess.run([*cmd, *extra], capture_output=True, text=True, env=_env(), timeout=300)

    other = enroll("--group", "typo-group")
    assert other.returncode == 2 and "group_not_found" in other.stderr and "--create-group" in other.stderr
    first = enroll()
    assert first.returncode in (0, 1), first.stderr  # 1: some images refused, as the summary says
    # The state it created is the service user's only (umask 077, as under systemd): doctor agrees.
    from agent.cli.doctor import check_state_permissions

    perms = check_state_permissions(tmp_path / "st")
    assert perms.status == "OK", perms.message
    assert (tmp_path / "st" / "gallery" / "gallery.sqlite3").stat().st_mode & 0o777 == 0o600
    with Gallery(GalleryConfig(path=tmp_path / "st" / "gallery")) as g:
        assert [x.group_id for x in g.list_groups()] == ["default"]
        assert len(g.list_persons("default")) == 5


def test_an_image_without_a_face_at_the_threshold_gets_a_second_look(agent_engine, tmp_path, data_dir):
    """As `eval` does: the 11 of 4,038 lfw-devtrain first photos with no face at 0.5 all have one at 0.25."""
    photo = data_dir / "lfw-devtrain/images/Muammar_Gaddafi/Muammar_Gaddafi_0001.jpg"
    items = [EnrollItem(photo, "gaddafi")]
    with Gallery(GalleryConfig(path=tmp_path / "g", save_interval_s=0)) as gallery:
        plain = EnrollConfig(group_id="x", create_group=True, retry_score=None, quality_level="NONE")
        assert Enroller(agent_engine, gallery, plain).run(items).reasons == {"no_face": 1}
        cfg = EnrollConfig(group_id="x", quality_level="NONE")
        assert Enroller(agent_engine, gallery, cfg).run(items).enrolled == 1
