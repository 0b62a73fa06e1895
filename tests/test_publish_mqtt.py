"""The MQTT publisher against a real Mosquitto started here, observed by a real paho subscriber."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.publish.config import PublishConfig
from agent.publish.mqtt import MqttPublisher
from agent.publish.payloads import RecognitionEvent
from agent.types import Box

ROOT = Path(__file__).resolve().parent.parent
SNAPSHOT = "faces/dlib/examples/johns/John_Salley/000179_02159509.jpg"


# -- broker and subscriber helpers ------------------------------------------------------------------------


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, timeout=300, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "mosquitto"], check=False, timeout=300, env=env)
    found = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if not found:
        pytest.fail("mosquitto is not installed and apt-get could not install it (apt-get install mosquitto)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    """One mosquitto process on 127.0.0.1:port, restartable on the same port with its persistence file."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        passwords: dict[str, str] | None = None,
        tls: tuple[Path, Path, Path] | None = None,  # CA cert, server cert, server key
    ):
        self.workdir = workdir
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        lines = [
            f"listener {self.port} 127.0.0.1",
            "persistence true",
            f"persistence_location {workdir}/",
            f"log_dest file {workdir}/mosquitto.log",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # otherwise mosquitto drops to 'mosquitto' and cannot write workdir
        if passwords:
            pwfile = workdir / "passwd"
            pwfile.touch(mode=0o600)
            for user, password in passwords.items():
                subprocess.run(
                    ["mosquitto_passwd", "-b", str(pwfile), user, password], check=True, timeout=10
                )
            lines += ["allow_anonymous false", f"password_file {pwfile}"]
        else:
            lines.append("allow_anonymous true")
        if tls:
            lines += [f"cafile {tls[0]}", f"certfile {tls[1]}", f"keyfile {tls[2]}"]
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        self.proc = subprocess.Popen([mosquitto_binary(), "-c", str(self.conf)], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not start: {(self.workdir / 'mosquitto.log').read_text()[-2000:]}")

    def stop(self) -> None:
        """SIGTERM: clients see their connection drop; the broker saves its sessions on the way out."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


class Subscriber:
    """A real paho client recording (topic, payload, retain) for everything under `topic`."""

    def __init__(
        self,
        port: int,
        topic: str,
        *,
        client_id: str = "",
        clean: bool = True,
        auth=None,
        ca: Path | None = None,
    ):
        self.topic = topic
        self.messages: list[tuple[str, bytes, bool]] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean)
        if auth:
            self.client.username_pw_set(*auth)
        if ca:
            self.client.tls_set(ca_certs=str(ca))
        self.client.reconnect_delay_set(1, 1)
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("localhost" if ca else "127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        assert self._subscribed.wait(5), "subscriber never got its SUBACK"

    def _on_message(self, _c, _u, msg: paho.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((msg.topic, msg.payload, bool(msg.retain)))
            self._cond.notify_all()

    def wait_for(
        self, predicate: Callable[[list[tuple[str, bytes, bool]]], bool], timeout: float = 10
    ) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self.messages), timeout)

    def on(self, topic: str) -> list[bytes]:
        with self._cond:
            return [p for t, p, _ in self.messages if t == topic]

    def json_on(self, topic: str) -> list[dict]:
        return [json.loads(p) for p in self.on(topic)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    b = Broker(tmp_path_factory.mktemp("mosquitto"))
    b.start()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def auth_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    b = Broker(tmp_path_factory.mktemp("mosquitto-auth"), passwords={"agent": "s3cret pass", "viewer": "v"})
    b.start()
    yield b
    b.stop()


def make_cfg(tmp_path: Path, port: int, **over) -> PublishConfig:
    mqtt = {
        "host": "127.0.0.1",
        "port": port,
        "reconnect_min_s": 1,
        "reconnect_max_s": 1,
        **over.pop("mqtt", {}),
    }
    outbox = {"path": str(tmp_path / "outbox.sqlite3"), **over.pop("outbox", {})}
    return PublishConfig(
        mqtt=mqtt, device_id=over.pop("device_id", "dev" + uuid.uuid4().hex[:8]), outbox=outbox, **over
    )


def event(i: int, camera: str = "door", known: bool = True) -> RecognitionEvent:
    person = (
        {"person_id": f"p{i}", "name": f"Person {i}", "group_id": "staff", "far_level": 5} if known else {}
    )
    return RecognitionEvent(
        camera_id=camera,
        captured_at=1_700_000_000.0 + i,
        box=Box(10, 20, 110, 140),
        model_id="test-model",
        score=91.5 if known else 40.0,
        quality=0.8,
        quality_level="NORMAL",
        liveness=0.95,
        liveness_level="HIGH",
        track_id=i,
        **person,
    )


# -- tests -----------------------------------------------------------------------------------------------


def test_events_arrive_with_topic_and_payload(broker: Broker, tmp_path: Path, data_dir: Path) -> None:
    cfg = make_cfg(
        tmp_path, broker.port, snapshots=True, access={"enabled": True, "allowed_groups": ["staff"]}
    )
    jpeg = (data_dir / SNAPSHOT).read_bytes()
    pub = MqttPublisher(cfg, ["door"])
    topics = pub.topics
    sub = Subscriber(broker.port, f"{topics.base}/#")
    try:
        pub.start()
        assert pub.wait_connected(5)
        pub.publish_event(event(1), snapshot=jpeg)
        pub.publish_event(event(2, known=False))
        assert pub.flush(5)
        assert sub.wait_for(lambda m: len([t for t, _, _ in m if "/access" in t]) == 2)
    finally:
        pub.close(timeout=3)
    recognized = sub.json_on(topics.recognized("door"))
    assert len(recognized) == 1
    rec = recognized[0]
    assert rec["schema"] == "face-agent/recognized/1"
    assert (rec["person_id"], rec["name"], rec["group_id"], rec["far_level"]) == (
        "p1",
        "Person 1",
        "staff",
        5,
    )
    assert rec["score"] == 91.5 and rec["track_id"] == 1 and rec["model_id"] == "test-model"
    assert rec["box"] == {"x": 10, "y": 20, "w": 100, "h": 120}
    assert (
        rec["quality_level"] == "NORMAL" and rec["liveness_level"] == "HIGH" and rec["has_snapshot"] is True
    )
    assert rec["captured_at"] == "2023-11-14T22:13:21.000Z" and rec["published_at"].endswith("Z")
    assert sub.on(topics.snapshot("door")) == [jpeg]
    unknown = sub.json_on(topics.unknown("door"))
    assert [u["schema"] for u in unknown] == ["face-agent/unknown/1"] and unknown[0]["best_score"] == 40.0
    assert "person_id" not in unknown[0]
    access = sub.json_on(topics.access("door"))
    assert [(a["decision"], a["reasons"]) for a in access] == [
        ("granted", []),
        ("denied", ["unknown_person"]),
    ]
    # One ordered stream: event 1, its snapshot, its decision, then event 2 and its decision.
    order = [
        t.rsplit("/", 1)[1] for t, _, _ in sub.messages if "/cameras/" in t and not t.endswith("presence")
    ]
    assert order == ["recognized", "snapshot", "access", "unknown", "access"]
    seqs = [rec["seq"], unknown[0]["seq"]]
    assert seqs[0] < seqs[1]
    assert sub.on(topics.presence("door")) == [b"ON", b"ON"]
    # A clean close marks the agent offline; the broker hands it on to the subscriber after the publisher's
    # PUBACK, so wait for its arrival (seen late once on a loaded machine) instead of reading at once.
    offline = lambda m: [p for tp, p, _ in m if tp == topics.status][-1:] == [b"offline"]  # noqa: E731
    assert sub.wait_for(offline), sub.on(topics.status)
    sub.close()


def test_status_retained_online_and_last_will_after_sigkill(broker: Broker, tmp_path: Path) -> None:
    device = "lwt" + uuid.uuid4().hex[:8]
    script = (
        "import sys, time\n"
        "from agent.publish.config import PublishConfig\n"
        "from agent.publish.mqtt import MqttPublisher\n"
        f"cfg = PublishConfig(mqtt={{'host': '127.0.0.1', 'port': {broker.port}, 'keepalive_s': 5}},\n"
        f"    device_id='{device}', outbox={{'path': r'{tmp_path / 'o.sqlite3'}'}})\n"
        "pub = MqttPublisher(cfg); pub.start()\n"
        "assert pub.wait_connected(10)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env)
    status = f"face-agent/{device}/status"
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        late = Subscriber(broker.port, status)
        assert late.wait_for(lambda m: len(m) >= 1, 5)
        assert late.messages[0][:2] == (status, b"online")  # live or retained: the broker may be mid-way
        retained = Subscriber(broker.port, status)  # the broker has handled 'online' now: it must be retained
        assert retained.wait_for(lambda m: len(m) >= 1, 5)
        assert retained.messages[0] == (status, b"online", True)
        retained.close()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
        assert late.wait_for(lambda m: any(p == b"offline" for _, p, _ in m), 5), late.messages
        late.close()
        fresh = Subscriber(broker.port, status)
        assert fresh.wait_for(lambda m: len(m) >= 1, 5)
        assert fresh.messages[0] == (status, b"offline", True)  # the will was retained
        fresh.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_broker_restart_mid_run_loses_nothing_and_keeps_order(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker")
    broker.start()
    cfg = make_cfg(tmp_path, broker.port, mqtt={"inflight_window": 20})
    pub = MqttPublisher(cfg, ["door"])
    topic = pub.topics.recognized("door")
    # A persistent session: the broker queues for this subscriber across its own restart.
    sub = Subscriber(broker.port, topic, client_id="sub-" + uuid.uuid4().hex[:8], clean=False)
    try:
        pub.start()
        assert pub.wait_connected(5)
        for i in range(100):  # some delivered, some in flight when the broker goes away
            pub.publish_event(event(i))
        broker.stop()
        deadline = time.monotonic() + 30
        while pub.connected and time.monotonic() < deadline:
            time.sleep(0.02)  # polling interval, not synchronisation
        assert not pub.connected
        for i in range(100, 200):  # broker down: these can only live in the outbox
            pub.publish_event(event(i))
        assert pub.stats()["outbox"]["depth"] >= 100
        # The outage lasts until the publisher has tried to reconnect and failed (its first retry comes after
        # reconnect_min_s = 1 s), rather than a fixed second that a loaded machine might end before any retry.
        failures = pub.stats()["counters"].get("connect_failures", 0)
        deadline = time.monotonic() + 30
        while pub.stats()["counters"].get("connect_failures", 0) == failures:
            assert time.monotonic() < deadline, pub.stats()
            time.sleep(0.02)  # polling interval, not synchronisation
        broker.start()
        for i in range(200, 250):
            pub.publish_event(event(i))
        assert sub.wait_for(lambda m: len({json.loads(p)["track_id"] for _, p, _ in m}) == 250, 20)
        assert pub.flush(5)
        stats = pub.stats()
    finally:
        pub.close(timeout=3)
        sub.close()
        broker.stop()
    received = [json.loads(p) for _, p, _ in sub.messages]
    tracks = [r["track_id"] for r in received]
    first_seen: list[int] = []
    for t in tracks:
        if t not in first_seen:
            first_seen.append(t)
    assert first_seen == list(range(250))  # every event, first deliveries in order
    duplicates = len(tracks) - 250
    assert duplicates <= cfg.mqtt.inflight_window * 2  # QoS 1 may repeat only what was in flight
    seqs = [r["seq"] for r in received]
    # Each seq is either new and larger than every earlier one, or a repeat of one already received.
    assert all(seqs[k] > max(seqs[:k]) or seqs[k] in seqs[:k] for k in range(1, len(seqs)))
    assert stats["outbox"]["dropped"] == {} and stats["outbox"]["depth"] == 0
    assert stats["counters"]["disconnects"] >= 1 and stats["counters"]["connects"] >= 2


def test_outbox_bound_drops_oldest_counts_and_survives_restart(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker")
    broker.start()
    cfg = make_cfg(tmp_path, broker.port, outbox={"max_rows": 10})
    topic = f"face-agent/{cfg.device_id}/cameras/door/recognized"
    sub = Subscriber(broker.port, topic, client_id="sub-" + uuid.uuid4().hex[:8], clean=False)
    broker.stop()  # the broker is unreachable for the publisher's whole first life
    pub = MqttPublisher(cfg, ["door"])
    pub.start()
    try:
        for i in range(15):
            pub.publish_event(event(i))
        assert not pub.connected
        stats = pub.stats()
        assert stats["outbox"]["depth"] == 10
        assert stats["outbox"]["dropped"] == {"max_rows": 5}
    finally:
        pub.close(timeout=0.5)  # agent restarts: the 10 rows stay on disk
    broker.start()
    pub2 = MqttPublisher(cfg, ["door"])
    pub2.start()
    try:
        assert sub.wait_for(lambda m: len(m) >= 10, 10)
        assert pub2.flush(5)
        assert pub2.stats()["outbox"]["dropped"] == {"max_rows": 5}  # the count outlives the process
    finally:
        pub2.close(timeout=3)
        sub.close()
        broker.stop()
    assert [json.loads(p)["track_id"] for _, p, _ in sub.messages] == list(range(5, 15))


def test_username_password_from_file_and_credential(
    auth_broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "mqtt.pass"
    secret.write_text("s3cret pass\n")
    secret.chmod(0o600)
    cfg = make_cfg(tmp_path, auth_broker.port, mqtt={"username": "agent", "password_file": str(secret)})
    sub = Subscriber(auth_broker.port, f"face-agent/{cfg.device_id}/#", auth=("viewer", "v"))
    with MqttPublisher(cfg, ["door"]) as pub:
        assert pub.wait_connected(5)
        pub.publish_event(event(7))
        assert pub.flush(5)
    assert sub.wait_for(lambda m: any(t.endswith("/recognized") for t, _, _ in m), 5)
    sub.close()

    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt-password").write_text("s3cret pass")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    cred_cfg = make_cfg(
        tmp_path / "c", auth_broker.port, mqtt={"username": "agent", "password_credential": "mqtt-password"}
    )
    with MqttPublisher(cred_cfg) as pub:
        assert pub.wait_connected(5)

    (creds / "wrong").write_text("nope")
    bad_cfg = make_cfg(
        tmp_path / "w", auth_broker.port, mqtt={"username": "agent", "password_credential": "wrong"}
    )
    with MqttPublisher(bad_cfg) as pub:
        assert not pub.wait_connected(1.5)
        assert "refused" in (pub.stats()["last_error"] or "")
        assert pub.stats()["counters"]["connect_failures"] >= 1


def test_home_assistant_discovery_gallery_and_stats(broker: Broker, tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, broker.port, stats_interval_s=1, home_assistant={"enabled": True})
    dev = cfg.device_id
    pub = MqttPublisher(cfg, ["door", "lobby"], stats_provider=lambda: {"fps": 12.5}, sw_version="1.2.3")
    topics = pub.topics
    pub.publish_gallery_version("v7", persons=3, faces=9)  # before connecting: sent on connect
    pub.start()
    try:
        assert pub.wait_connected(5)
        sub = Subscriber(broker.port, f"homeassistant/+/{dev}/#")
        assert sub.wait_for(lambda m: len(m) == 4, 5), sub.messages  # live or retained
        sub.close()
        sub = Subscriber(broker.port, f"homeassistant/+/{dev}/#")  # now all four must come back retained
        assert sub.wait_for(lambda m: len(m) == 4, 5), sub.messages
        configs = {t: (json.loads(p), r) for t, p, r in sub.messages}
        sub.close()
        stats_sub = Subscriber(broker.port, topics.stats)
        assert stats_sub.wait_for(lambda m: len(m) >= 1, 3)  # periodic, nobody called publish_stats
        stats_sub.close()
        gallery_sub = Subscriber(broker.port, topics.gallery)
        assert gallery_sub.wait_for(lambda m: len(m) >= 1, 3)
        gallery_sub.close()
    finally:
        pub.close(timeout=3)
    sensor, retained = configs[f"homeassistant/sensor/{dev}/door_last_person/config"]
    assert retained
    assert sensor["state_topic"] == topics.recognized("door")
    assert sensor["value_template"] == "{{ value_json.name or value_json.person_id }}"
    assert sensor["availability_topic"] == topics.status and sensor["unique_id"] == f"{dev}_door_last_person"
    binary, _ = configs[f"homeassistant/binary_sensor/{dev}/lobby_face_present/config"]
    assert binary["state_topic"] == topics.presence("lobby") and binary["payload_on"] == "ON"
    assert binary["off_delay"] == 5 and binary["device_class"] == "occupancy"
    devices = {json.dumps(c["device"], sort_keys=True) for c, _ in configs.values()}
    assert len(devices) == 1 and json.loads(devices.pop())["sw_version"] == "1.2.3"
    stats = json.loads(stats_sub.messages[0][1])
    assert stats["schema"] == "face-agent/stats/1" and stats["agent"] == {"fps": 12.5}
    assert stats["connected"] is True and stats["outbox"]["depth"] == 0
    topic, body, retained = gallery_sub.messages[0]
    gallery = json.loads(body)
    assert retained and (gallery["version"], gallery["persons"], gallery["faces"]) == ("v7", 3, 9)
    # Clear the retained discovery configs so the broker does not keep them for the session.
    cleaner = paho.Client(CallbackAPIVersion.VERSION2)
    cleaner.connect("127.0.0.1", broker.port)
    cleaner.loop_start()
    for t in configs:
        cleaner.publish(t, b"", qos=1, retain=True).wait_for_publish(3)
    cleaner.disconnect()
    cleaner.loop_stop()


def outbox_tracks(path: Path) -> list[int]:
    """Track ids of the events still in an outbox file, in queue order (read while its writer runs)."""
    with contextlib.closing(sqlite3.connect(path, timeout=10)) as db:
        return [json.loads(r[0])["track_id"] for r in db.execute("SELECT payload FROM outbox ORDER BY id")]


def test_publisher_killed_with_unacked_events_resends_them_after_restart(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker")
    broker.start()
    cfg = make_cfg(tmp_path, broker.port)
    topic = f"face-agent/{cfg.device_id}/cameras/door/recognized"
    sub = Subscriber(broker.port, topic, client_id="sub-" + uuid.uuid4().hex[:8], clean=False)
    script = (  # an agent producing events steadily until it is killed
        "import sys, time\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from test_publish_mqtt import MqttPublisher, PublishConfig, event\n"
        "cfg = PublishConfig.model_validate_json(sys.argv[2])\n"
        "pub = MqttPublisher(cfg, ['door']); pub.start()\n"
        "assert pub.wait_connected(10)\n"
        "for i in range(100000):\n"
        "    pub.publish_event(event(i))\n"
        "    time.sleep(0.002)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-c", script, str(Path(__file__).parent), cfg.model_dump_json()]
    proc = subprocess.Popen(args, env=env)
    try:
        assert sub.wait_for(lambda m: len(m) >= 30, 30)
        broker.stop()  # mid-stream: some events acknowledged, some in flight, some not yet sent
        seen = max(json.loads(p)["track_id"] for _, p, _ in sub.messages)
        # The agent keeps queueing while the broker is down; wait (on the outbox itself, not a sleep: a loaded
        # machine may run the agent late) until it has queued 20 events the broker never saw, then kill it.
        deadline = time.monotonic() + 60
        while max(outbox_tracks(cfg.outbox.path), default=-1) < seen + 20:
            assert time.monotonic() < deadline and proc.poll() is None, "agent queued nothing offline"
            time.sleep(0.01)  # polling interval, not synchronisation
        os.kill(proc.pid, signal.SIGKILL)  # ...and dies before the broker comes back
        proc.wait(5)
        left = outbox_tracks(cfg.outbox.path)
        # What survived the kill is one unbroken run of events, up to the last one produced, and includes the
        # events produced while the broker was down (never acknowledged). Where the run starts depends on how
        # far the broker had acknowledged, which depends on scheduling, so it is not asserted.
        assert left == list(range(left[0], left[0] + len(left)))
        assert max(left) >= seen + 20
        produced = max(left) + 1
        broker.start()
        with MqttPublisher(cfg, ["door"]) as pub:
            assert sub.wait_for(lambda m: len({json.loads(p)["track_id"] for _, p, _ in m}) == produced, 20)
            assert pub.flush(5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        sub.close()
        broker.stop()
    tracks = [json.loads(p)["track_id"] for _, p, _ in sub.messages]
    assert list(dict.fromkeys(tracks)) == list(range(produced))  # all of them, first deliveries in order
    # Re-sent only what was never acknowledged: at most the publisher's in-flight window, plus what the broker
    # had in flight to the subscriber when it stopped (QoS 1 on that hop too; mosquitto's default
    # max_inflight_messages is 20). Seen once in ~20 runs: 14 duplicates of 110. Resending all would be 110.
    assert len(tracks) - produced <= cfg.mqtt.inflight_window + 20


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30)


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for localhost / 127.0.0.1, made with the openssl CLI."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (
        str(folder / n) for n in ("ca.key", "ca.pem", "srv.key", "srv.csr", "srv.pem")
    )
    ext = folder / "san.ext"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    new_key = ("-newkey", "rsa:2048", "-nodes", "-keyout")
    openssl("req", "-x509", *new_key, ca_key, "-out", ca, "-days", "2", "-subj", "/CN=face-agent test CA")
    openssl("req", *new_key, key, "-out", csr, "-subj", "/CN=localhost")
    sign = ("-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-days", "2", "-extfile", str(ext))
    openssl("x509", "-req", "-in", csr, *sign, "-out", cert)
    return Path(ca), Path(cert), Path(key)


def test_tls_with_a_private_ca(tmp_path: Path) -> None:
    ca, cert, key = make_certificates(tmp_path / "pki")
    broker = Broker(tmp_path / "broker", tls=(ca, cert, key))
    broker.start()
    try:
        cfg = make_cfg(tmp_path, broker.port, mqtt={"host": "localhost", "tls": True, "ca_file": str(ca)})
        sub = Subscriber(broker.port, f"face-agent/{cfg.device_id}/#", ca=ca)
        with MqttPublisher(cfg, ["door"]) as pub:
            assert pub.wait_connected(5)
            pub.publish_event(event(3))
            assert pub.flush(5)
        assert sub.wait_for(lambda m: any(t.endswith("/recognized") for t, _, _ in m), 5)
        sub.close()
        # Without the private CA the broker's certificate is not trusted: no connection, events wait.
        untrusted = make_cfg(tmp_path / "u", broker.port, mqtt={"host": "localhost", "tls": True})
        with MqttPublisher(untrusted, ["door"]) as pub:
            pub.publish_event(event(4))
            assert not pub.wait_connected(1.5)
            stats = pub.stats()
            assert stats["outbox"]["depth"] == 1 and stats["counters"]["connect_failures"] >= 1
            assert "connection failed" in stats["last_error"]
    finally:
        broker.stop()
