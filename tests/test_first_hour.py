"""What a new user meets in the first hour (issue 15): the README's Try-it, the run summary, a broker that is
down or refuses the login, two agents on one state dir, a taken port, Ctrl-C in eval, serve without
credentials. Real subprocesses, a real Mosquitto, real photos."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from test_app_run import child_env, run_cli
from test_publish_mqtt import Broker, free_port

KNN = "faces/face_recognition/examples/knn_examples"
# The README's Try-it photos: who is in each test photo (7 faces in 5 files).
TRY_IT = {
    "alex_lacamoire1.jpg": ["alex_lacamoire"],
    "johnsnow_test1.jpg": ["kit_harington"],
    "kit_with_rose.jpg": ["kit_harington", "rose_leslie"],
    "obama1.jpg": ["obama"],
    "obama_and_biden.jpg": ["biden", "obama"],
}


class Lines:
    """Reads a child's stream on a thread; `wait_for` blocks until a line matches (or the deadline)."""

    def __init__(self, stream) -> None:
        self.seen: list[str] = []
        self._q: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream) -> None:
        for line in stream:
            self._q.put(line)
        self._q.put(None)

    def wait_for(self, pattern: str, timeout: float = 120) -> str:
        regex = re.compile(pattern)
        while True:
            line = self._q.get(timeout=timeout)
            if line is None:
                raise AssertionError(f"stream ended before {pattern!r}:\n{''.join(self.seen)[-3000:]}")
            self.seen.append(line)
            if regex.search(line):
                return line

    def rest(self, timeout: float = 60) -> str:
        while (line := self._q.get(timeout=timeout)) is not None:
            self.seen.append(line)
        return "".join(self.seen)


def spawn(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "agent", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def try_it_state(tmp_path_factory, data_dir: Path) -> Path:
    """The README's first step: `enroll` the train folder into a fresh state dir."""
    state = tmp_path_factory.mktemp("try-it") / "state"
    proc = run_cli("enroll", str(data_dir / KNN / "train"), "--state-dir", str(state))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return state


def events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if "/cameras/" in line]


def test_try_it_names_every_face_of_every_photo_with_its_file_and_sums_up(try_it_state, data_dir, tmp_path):
    proc = run_cli("run", "--source", str(data_dir / KNN / "test"), "--state-dir", str(try_it_state))
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen: dict[str, list[str]] = {}
    for ev in events(proc.stdout):
        payload = ev["payload"]
        assert ev["topic"].endswith("/recognized"), payload
        assert payload["source"]["frame"] == 0  # each photo is delivered once (frames_per_image 1)
        seen.setdefault(payload["source"]["file"], []).append(payload["person_id"])
    # A folder of photos has no cooldown: a person in two photos is two appearances (7 faces, 7 events).
    assert {k: sorted(v) for k, v in seen.items()} == TRY_IT
    assert "stopping: every source finished" in proc.stderr
    summary = re.search(
        r"summary: cam0: (\d+) frames, (\d+) faces, (\d+) recognized, (\d+) unknown; "
        r"events (\d+) published, (\d+) dropped",
        proc.stderr,
    )
    assert summary is not None, proc.stderr[-2000:]
    assert [int(x) for x in summary.groups()] == [5, 7, 7, 0, 7, 0]


def test_enroll_names_refused_files_and_images_outside_person_folders(data_dir, tmp_path):
    folder = tmp_path / "people"
    (folder / "obama").mkdir(parents=True)
    (folder / "obama" / "obama.jpg").symlink_to(data_dir / KNN / "train" / "obama" / "obama.jpg")
    (folder / "obama" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (folder / "group-photo.jpg").symlink_to(data_dir / KNN / "test" / "obama_and_biden.jpg")
    proc = run_cli("enroll", str(folder), "--state-dir", str(tmp_path / "state"))
    assert proc.returncode == 1, proc.stdout + proc.stderr  # 1: some images were refused
    out = proc.stdout
    assert "enrolled         1" in out and "rejected         2" in out, out
    refused = out.split("refused files:")[1]
    assert re.search(r"group-photo\.jpg: no_person_folder \(an image outside every person folder", refused)
    assert re.search(r"obama/broken\.jpg: image_decode_failed", refused), refused


def broker_config(path: Path, state: Path, port: int, **mqtt) -> Path:
    cfg = {
        "state_dir": str(state),
        "metrics": {"enabled": False},
        "log": {"format": "text"},
        "publish": {
            "device_id": "door",
            "mqtt": {"host": "127.0.0.1", "port": port, **mqtt},
            "outbox": {"path": str(path.parent / "outbox.sqlite3")},  # each test its own outbox
        },
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_dead_broker_is_logged_and_nothing_is_lost_once_it_is_back(try_it_state, data_dir, tmp_path):
    port = free_port()  # nothing listens here yet
    cfg = broker_config(tmp_path / "agent.yaml", try_it_state, port, reconnect_min_s=1, reconnect_max_s=1)
    source = str(data_dir / KNN / "test")
    down = run_cli("run", "--config", str(cfg), "--source", source)
    assert down.returncode == 0, down.stderr[-3000:]
    failures = [
        line for line in down.stderr.splitlines() if f"MQTT connection failed to 127.0.0.1:{port}" in line
    ]
    # Several attempts ran (0.1-0.5 s apart for seconds), but a minute's worth is one line.
    assert len(failures) == 1 and "WARNING" in failures[0], down.stderr[-3000:]
    assert re.search(r"7 event\(s\) not acknowledged by the broker stay in the outbox", down.stderr)
    assert "7 left in the outbox" in down.stderr  # the summary says it too

    broker = Broker(tmp_path / "broker", port=port)
    broker.start()
    topic = "face-agent/door/cameras/+/recognized"
    watch = ["mosquitto_sub", "-p", str(port), "-q", "1", "-c", "-i", "door-watcher", "-t", topic]
    try:  # the way docs/mqtt.md tells users to watch: a persistent session keeps what arrives meanwhile
        subprocess.run([*watch, "-E"], check=True, timeout=30)  # -E: subscribe, then exit
        up = run_cli("run", "--config", str(cfg), "--source", source)
        assert up.returncode == 0, up.stderr[-3000:]
        assert re.search(rf"MQTT connected to 127\.0\.0\.1:{port}", up.stderr)
        assert "outbox empty: every event was acknowledged" in up.stderr
        out = subprocess.run(
            [*watch, "-v", "-C", "14", "-W", "60"], capture_output=True, text=True, timeout=90
        )
        got = [json.loads(line.split(" ", 1)[1]) for line in out.stdout.splitlines()]
    finally:
        broker.stop()
    # The 7 events of the run without a broker, then the 7 of the second run, in order.
    assert len(got) == 14
    files = [(p["source"]["file"], p["person_id"]) for p in got]
    assert files[:7] == files[7:] and sorted({f for f, _ in files[:7]}) == sorted(TRY_IT)
    assert [p["seq"] for p in got] == sorted(p["seq"] for p in got)


def test_a_refused_login_is_an_error_in_the_log(try_it_state, data_dir, tmp_path):
    broker = Broker(tmp_path / "broker", passwords={"agent": "right"})
    broker.start()
    try:
        secret = tmp_path / "pw"
        secret.write_text("wrong\n")
        cfg = broker_config(
            tmp_path / "agent.yaml", try_it_state, broker.port, username="agent", password_file=str(secret)
        )
        proc = run_cli("run", "--config", str(cfg), "--source", str(data_dir / KNN / "test"))
    finally:
        broker.stop()
    assert proc.returncode == 0, proc.stderr[-3000:]
    refused = [line for line in proc.stderr.splitlines() if "refused the login" in line]
    assert len(refused) == 1 and refused[0].split()[2] == "ERROR", proc.stderr[-3000:]
    assert "publish.mqtt.username" in refused[0]
    assert "7 left in the outbox" in proc.stderr


def test_two_agents_on_one_state_dir_and_a_taken_metrics_port(try_it_state, data_dir, tmp_path):
    folder = tmp_path / "cam.yaml"
    folder.write_text(
        yaml.safe_dump(
            {
                "state_dir": str(try_it_state),
                "metrics": {"port": 0},
                "log": {"format": "text"},
                "cameras": [{"id": "loop", "source": str(data_dir / KNN / "test"), "loop": True}],
            }
        )
    )
    first = spawn("run", "--config", str(folder), cwd=tmp_path)
    try:
        log = Lines(first.stderr)
        Lines(first.stdout)  # drained, so the events of the looping folder never fill the pipe
        log.wait_for(r"face-agent \S+ running")
        second = run_cli("run", "--config", str(folder))
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"another face-agent run uses {try_it_state}, pid {first.pid}" in second.stderr
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=60) == 0
        assert "stopping: SIGTERM received" in log.rest()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = tmp_path / "port.yaml"
        cfg.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "s2"), "metrics": {"port": port}}))
        proc = run_cli("run", "--config", str(cfg), "--source", str(data_dir / KNN / "test"))
    assert proc.returncode == 2 and f"cannot serve metrics on 127.0.0.1:{port}" in proc.stderr
    assert "set metrics.port to a free port" in proc.stderr


def test_eval_shows_progress_and_stops_cleanly_on_ctrl_c(data_dir, tmp_path):
    proc = spawn(
        "eval",
        "--data",
        str(data_dir / "lfw-devtrain"),
        "--models",
        "dlib-resnet-v1",
        "--precisions",
        "int8",
        "--runtimes",
        "openvino",
        "--cache",
        str(tmp_path / "cache"),
        "--out",
        str(tmp_path / "out"),
        cwd=tmp_path,
    )
    try:
        err = Lines(proc.stderr)
        err.wait_for(r"^  1/\d+ images, \d+/s, \d+ s left")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
        rest = err.rest()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "face-agent: interrupted" in rest and "Traceback" not in rest


def test_serve_without_any_credentials_warns_at_start(tmp_path):
    proc = spawn("serve", "--state-dir", str(tmp_path / "state"), "--port", "0", cwd=tmp_path)
    try:
        Lines(proc.stdout).wait_for("listening on")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "no API credentials" in err and "--allow-unauthenticated-loopback" in err


def test_detect_explains_itself():
    proc = run_cli("detect", "--help", timeout=60)
    assert proc.returncode == 0
    for text in ("--max-faces", "at most this many faces", "image files", "keypoints", "--detector"):
        assert text in proc.stdout, proc.stdout


def test_run_state_dir_flag_overrides_the_file(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("state_dir: /nonexistent/from-file\n")
    from agent.config import load_agent_config

    loaded = load_agent_config(cfg, {}, state_dir=tmp_path / "flag")
    assert loaded.gallery.path == tmp_path / "flag" / "gallery"
    assert loaded.publish.outbox.path == tmp_path / "flag" / "outbox.sqlite3"
    assert os.path.basename(str(loaded.state_dir)) == "flag"
