"""`face-agent doctor`: real checks on this machine (models, runtimes, sockets, a real Mosquitto, files)."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.cli.doctor import (
    Check,
    check_cameras,
    check_clock,
    check_disk,
    check_engine_models,
    check_int8_speed,
    check_models,
    check_runtimes,
    check_state_permissions,
    check_tcp,
    exit_code,
    hub_address,
    judge_int8_speed,
    parse_host_port,
    render_text,
)
from agent.config import EngineConfig, OnnxRuntimeConfig, OpenVINORuntimeConfig
from agent.inference.runtime import available_devices
from agent.inference.runtime.cpu import cpu_info

ROOT = Path(__file__).resolve().parent.parent


def _doctor(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", "doctor", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture()
def corrupt_models(tmp_path: Path, models_dir: Path) -> tuple[Path, Path]:
    """A copy of models/ (symlinks to the real files) in which one real copy has a flipped byte."""
    copy = tmp_path / "models"
    files = sorted(p for p in models_dir.rglob("*") if p.is_file() and not p.name.endswith(".tmp"))
    victim = min((p for p in files if p.name != "manifest.json"), key=lambda p: p.stat().st_size)
    for src in files:
        dst = copy / src.relative_to(models_dir)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src == victim:
            data = bytearray(src.read_bytes())
            data[len(data) // 2] ^= 0xFF
            dst.write_bytes(bytes(data))
        else:
            dst.symlink_to(src)
    return copy, copy / victim.relative_to(models_dir)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once the socket is closed


# -- models and runtimes --------


def test_real_models_verify(models_dir: Path) -> None:
    result = check_models(models_dir)
    assert result.status == "OK", result
    assert "match their sha256" in result.message


def test_corrupted_model_copy_fails_with_a_fix_hint(corrupt_models: tuple[Path, Path]) -> None:
    copy, victim = corrupt_models
    result = check_models(copy)
    assert result.status == "FAIL"
    assert str(victim) in result.message and "sha256" in result.message
    assert "restore" in result.fix and str(copy) in result.fix


def test_missing_model_file_fails(corrupt_models: tuple[Path, Path]) -> None:
    copy, victim = corrupt_models
    victim.unlink()
    result = check_models(copy)
    assert result.status == "FAIL" and "missing" in result.message


def test_missing_manifest_fails(tmp_path: Path) -> None:
    result = check_models(tmp_path)
    assert result.status == "FAIL" and "manifest" in result.message and result.fix


def test_engine_models_for_a_variant_that_does_not_exist() -> None:
    ok = check_engine_models(EngineConfig.model_validate({"embedder": {"precision": "fp32"}}))
    assert ok.status == "OK", ok
    bad = check_engine_models(EngineConfig.model_validate({"embedder": {"model": "no-such-model"}}))
    assert bad.status == "FAIL" and "no-such-model" in bad.message and "manifest" in bad.fix


def test_openvino_int8_on_arm_warns_that_x86_galleries_drift() -> None:
    from agent.cli.doctor import check_arm_space

    default = EngineConfig()  # OpenVINO, dlib INT8 + flip
    warn = check_arm_space(default, machine="aarch64")
    assert warn.status == "WARN" and "onnxruntime" in warn.fix and "0.022" in warn.message
    assert check_arm_space(default, machine="x86_64").status == "OK"
    ort = EngineConfig(runtime=OnnxRuntimeConfig())
    assert check_arm_space(ort, machine="aarch64").status == "OK"
    fp32 = EngineConfig.model_validate({"embedder": {"precision": "fp32"}})
    assert check_arm_space(fp32, machine="aarch64").status == "OK"


def test_runtimes_on_this_machine() -> None:
    devices = available_devices()
    assert "CPU" in devices["openvino"] and "CPUExecutionProvider" in devices["onnxruntime"]
    assert check_runtimes(devices, EngineConfig()).status == "OK"
    ort_cpu = EngineConfig(runtime=OnnxRuntimeConfig())
    assert check_runtimes(devices, ort_cpu).status == "OK"
    # This machine has neither an Intel NPU nor CUDA: the check must say so, with a hint.
    npu = check_runtimes(devices, EngineConfig(runtime=OpenVINORuntimeConfig(device="NPU")))
    assert npu.status == "FAIL" and "NPU" in npu.message and "npu" in npu.fix.lower()
    cuda = EngineConfig(
        runtime=OnnxRuntimeConfig(providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    )
    result = check_runtimes(devices, cuda)
    assert result.status == "FAIL" and "CUDAExecutionProvider" in result.message and "JetPack" in result.fix


def test_missing_runtime_package_is_a_fail() -> None:
    devices = {"openvino": ["unavailable: openvino not installed"], "onnxruntime": ["CPUExecutionProvider"]}
    result = check_runtimes(devices, EngineConfig())
    assert result.status == "FAIL" and "pip install openvino" in result.fix


# -- INT8 vs FP32 speed --------

_MEDIANS = re.compile(
    r"INT8 (?P<int8>[\d.]+) ms, FP32 (?P<fp32>[\d.]+) ms median per face \((?P<runs>\d+) runs"
)


@pytest.mark.parametrize("runtime", [OpenVINORuntimeConfig(), OnnxRuntimeConfig()], ids=lambda r: r.kind)
def test_int8_speed_on_the_real_models(runtime) -> None:
    """Both variants of the default embedder really run on this CPU; the verdict follows the medians."""
    result = check_int8_speed(EngineConfig(runtime=runtime), budget_s=0.5)
    assert result.name == "int8-speed" and result.status in ("OK", "WARN"), result
    found = _MEDIANS.search(result.message)
    assert found, result.message
    int8_ms, fp32_ms = float(found["int8"]), float(found["fp32"])
    assert 0 < int8_ms < math.inf and 0 < fp32_ms < math.inf
    assert int(found["runs"]) >= 5
    assert cpu_info().kind in result.message and runtime.kind in result.message
    assert result.message.startswith("int8 configured")  # the default precision
    if int8_ms != fp32_ms:  # equal when rounded to 0.01 ms: either verdict is right
        assert (result.status == "WARN") == (int8_ms > fp32_ms)
    assert (result.fix != "") == (result.status == "WARN")


def test_int8_slower_than_fp32_is_a_warning_with_the_fix() -> None:
    slow = judge_int8_speed("int8", 12.5, 10.0, "x86-64 AVX2 (no VNNI)")
    assert slow.status == "WARN"
    assert "12.50 ms" in slow.message and "10.00 ms" in slow.message and "AVX2 (no VNNI)" in slow.message
    assert "embedder.precision: fp32" in slow.fix and "other runtime" in slow.fix
    assert judge_int8_speed("int8", 4.0, 10.0, "x86-64 AVX-512 VNNI").status == "OK"
    assert judge_int8_speed("int8", 10.0, 10.0, "arm64 dotprod").status == "OK"  # not slower
    assert judge_int8_speed("fp32", 12.5, 10.0, "x86-64 AVX2 (no VNNI)").status == "OK"  # fp32 already
    faster = judge_int8_speed("fp32", 5.0, 10.0, "arm64 dotprod")
    assert faster.status == "OK" and "2.0x faster" in faster.message


def test_int8_speed_is_skipped_clearly_without_the_model_files(corrupt_models: tuple[Path, Path]) -> None:
    from agent.inference.manifest import Manifest

    copy, _ = corrupt_models
    cfg = EngineConfig(models_dir=copy)
    int8 = Manifest(copy).info(cfg.embedder.model, "int8", cfg.runtime.kind, verify=False).files.model
    int8.unlink()
    result = check_int8_speed(EngineConfig(models_dir=copy), budget_s=0.5)
    assert result.status == "WARN" and result.message.startswith("not measured")
    assert f"{int8.name} is missing" in result.message and "models check" in result.fix
    int8.symlink_to(copy / "dlib-resnet-v1" / "fp32.onnx")
    corrupt = check_int8_speed(EngineConfig(models_dir=copy), budget_s=0.5)  # present, wrong sha256
    assert corrupt.status == "WARN" and "sha256" in corrupt.message and "models check" in corrupt.fix
    gone = check_int8_speed(EngineConfig(models_dir=copy / "nowhere"), budget_s=0.5)
    assert gone.status == "WARN" and "manifest" in gone.message


# -- network --------


def test_closed_port_fails_the_broker_check_fast() -> None:
    start = time.monotonic()
    result = check_tcp("broker", "127.0.0.1", _closed_port(), 3.0, "start the broker")
    assert time.monotonic() - start < 1.0
    assert result.status == "FAIL" and "not reachable" in result.message and result.fix == "start the broker"


def test_real_mosquitto_passes_the_broker_check(mqtt_broker) -> None:
    result = check_tcp("broker", "127.0.0.1", mqtt_broker.port, 3.0, "")
    assert result == Check("broker", "OK", f"127.0.0.1:{mqtt_broker.port} reachable")


def test_broker_and_hub_from_flags_through_the_cli(mqtt_broker, tmp_path: Path) -> None:
    with socket.socket() as hub:  # a real listening socket stands where the hub would be
        hub.bind(("127.0.0.1", 0))
        hub.listen(1)
        port = hub.getsockname()[1]
        out = _doctor(
            "--json", "--no-cameras", "--state-dir", str(tmp_path),
            "--broker", f"127.0.0.1:{mqtt_broker.port}", "--hub-url", f"http://127.0.0.1:{port}/api",
        )  # fmt: skip
    report = json.loads(out.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["broker"]["status"] == "OK" and checks["hub"]["status"] == "OK"
    assert report["exit_code"] == out.returncode == exit_code([Check(**c) for c in report["checks"]])
    assert set(checks) >= {
        "config",
        "runtimes",
        "models",
        "engine-models",
        "int8-speed",
        "disk",
        "clock",
        "state-permissions",
    }


def test_parse_addresses() -> None:
    assert parse_host_port("broker.lan", 1883) == ("broker.lan", 1883)
    assert parse_host_port("10.0.0.2:8883", 1883) == ("10.0.0.2", 8883)
    assert parse_host_port("[::1]:1884", 1883) == ("::1", 1884)
    assert hub_address("https://hub.example.com/v1") == ("hub.example.com", 443)
    assert hub_address("http://10.1.1.1:8080") == ("10.1.1.1", 8080)
    for bad in ("host:0", "host:99999", "host:x"):
        with pytest.raises(ValueError):
            parse_host_port(bad, 1883)
    with pytest.raises(ValueError):
        hub_address("ftp://x")


def test_bad_broker_flag_is_a_clear_error() -> None:
    out = _doctor("--broker", "host:notaport", "--no-cameras")
    assert out.returncode == 78 and "host[:port]" in out.stderr  # EX_CONFIG, as every config error


# -- cameras, disk, clock, permissions --------


def test_no_video_device_is_a_warning(tmp_path: Path) -> None:
    result = check_cameras(None, 1.0, str(tmp_path / "video*"))
    assert result.status == "WARN" and result.fix


def test_configured_camera_that_cannot_open_fails_within_the_timeout(tmp_path: Path) -> None:
    fake = tmp_path / "video7"
    fake.write_bytes(b"not a v4l2 device")
    start = time.monotonic()
    result = check_cameras([str(fake), "/dev/video-none"], 5.0)
    assert time.monotonic() - start < 6.0
    assert result.status == "FAIL"
    assert str(fake) in result.message and "/dev/video-none: missing" in result.message
    assert "video" in result.fix
    assert check_cameras([], 1.0).status == "OK"  # streams / files only


def test_disk_thresholds(tmp_path: Path) -> None:
    assert check_disk(tmp_path, 1, 2).status == "OK"
    assert check_disk(tmp_path / "not" / "yet", 1, 2).status == "OK"  # measured on the nearest parent
    huge = 10**7
    assert check_disk(tmp_path, 1, huge).status == "WARN"
    failed = check_disk(tmp_path, huge, huge)
    assert failed.status == "FAIL" and "MiB free" in failed.message and failed.fix


def test_clock_sanity() -> None:
    assert check_clock().status == "OK"
    past = check_clock(dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc))
    assert past.status == "FAIL" and "1970" in past.message and "NTP" in past.fix


def test_state_permissions(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert check_state_permissions(state).status == "WARN"  # not created yet
    state.mkdir(mode=0o700)
    state.chmod(0o700)
    (state / "gallery").mkdir(mode=0o700)
    db = state / "gallery" / "gallery.sqlite3"
    db.write_bytes(b"x")
    db.chmod(0o600)
    assert check_state_permissions(state).status == "OK"
    db.chmod(0o644)
    loose = check_state_permissions(state)
    assert loose.status == "FAIL" and str(db) in loose.message and "chmod" in loose.fix
    db.chmod(0o600)
    state.chmod(0o755)
    assert check_state_permissions(state).status == "FAIL"
    state.chmod(0o700)
    other = check_state_permissions(state, uid=os.geteuid() + 12345)
    assert other.status in ("FAIL", "WARN") and "sudo -u face-agent" in other.fix


# -- the command --------


def test_cli_json_with_a_corrupted_models_dir(corrupt_models: tuple[Path, Path], tmp_path: Path) -> None:
    copy, victim = corrupt_models
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    out = _doctor("--json", "--no-cameras", "--models-dir", str(copy), "--state-dir", str(state))
    report = json.loads(out.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert out.returncode == 2 and report["status"] == "FAIL"
    assert checks["models"]["status"] == "FAIL" and "restore" in checks["models"]["fix"]
    assert checks["state-permissions"]["status"] == "OK"
    assert all(set(c) == {"name", "status", "message", "fix"} for c in report["checks"])


def test_cli_text_reports_a_broken_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("engine:\n  no_such_key: 1\n")
    out = _doctor("--config", str(bad), "--no-cameras", "--state-dir", str(tmp_path))
    first = out.stdout.splitlines()[0]
    assert first.startswith("FAIL config") and "no_such_key" in first and "--validate-config" in first
    assert out.returncode == 2
    assert any(line.startswith("OK   models") for line in out.stdout.splitlines())  # defaults still checked


def test_exit_codes_and_text_rendering() -> None:
    ok, warn, fail = Check("a", "OK", "m"), Check("b", "WARN", "m", "do x"), Check("c", "FAIL", "m", "do y")
    assert exit_code([ok]) == 0 and exit_code([ok, warn]) == 1 and exit_code([warn, fail, ok]) == 2
    lines = render_text([ok, warn, fail]).splitlines()
    assert len(lines) == 3 and lines[1].endswith("-> fix: do x") and "fix" not in lines[0]


def test_gallery_variant_check_says_which_space_and_what_start_will_do(tmp_path) -> None:
    """Real manifest, real SQLite gallery: OK when the faces are in the running variant's space, WARN when
    another variant's faces will be re-embedded at start, FAIL when they would refuse it."""
    import numpy as np

    from agent.cli.doctor import check_gallery_variant
    from agent.config import EngineConfig
    from agent.gallery import GalleryConfig, GalleryStore, NewFace
    from agent.inference.engine import space_info
    from agent.inference.manifest import Manifest

    engine = EngineConfig()
    # the default space, flip and mesh alignment included (doctor used to name the plain one)
    running = space_info(Manifest(), engine, verify=False)
    assert running.model_id.endswith("+flip+mesh")
    cfg = GalleryConfig(path=tmp_path / "g")
    assert check_gallery_variant(engine, cfg).status == "OK"  # no gallery yet

    def add(model_id: str, thumb: bytes | None) -> None:
        v = np.ones(128, np.float32) / np.sqrt(128)
        store = GalleryStore(cfg)
        if not store.list_groups():
            store.create_group(group_id="door")
        store.add_faces("door", [NewFace("p", v, model_id, thumbnail=thumb)])
        store.close()

    add(running.model_id, None)
    ok = check_gallery_variant(engine, cfg)
    assert ok.status == "OK" and running.model_id in ok.message and "1 face(s)" in ok.message
    add("dlib-resnet-v1/int8", b"\xff\xd8 a thumbnail")
    warn = check_gallery_variant(engine, cfg)
    assert warn.status == "WARN" and "re-embedded at start" in warn.message
    add("dlib-resnet-v1/int8", None)
    fail = check_gallery_variant(engine, cfg)
    assert fail.status == "FAIL" and "refuses the start" in fail.message
    assert "no file of this agent" in fail.fix


def test_state_dir_flag_moves_the_gallery_it_checks(tmp_path) -> None:
    from agent.cli.doctor import DoctorConfig, resolve_targets

    targets, _ = resolve_targets(None, {}, DoctorConfig(), state_dir=tmp_path / "st")
    assert targets.gallery is not None and targets.gallery.path == tmp_path / "st" / "gallery"
