"""`face-agent doctor`: one line per check of the things an install needs, each with a fix hint.

Every check is a small function returning a `Check` (OK, WARN or FAIL, what was seen, how to fix it), so the
installer, the CLI and the tests run exactly the same code. Every blocking step has a timeout: a camera
driver that hangs in open() or a broker behind a black-holing firewall costs seconds, not the whole run.
Exit code: 0 when everything is OK, 1 when the worst result is a WARN, 2 when anything FAILs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import json
import os
import shutil
import socket
import sqlite3
import stat
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from agent.config import EngineConfig, OnnxRuntimeConfig, OpenVINORuntimeConfig
from agent.errors import AgentError, ModelError
from agent.gallery.config import GalleryConfig
from agent.gates.challenge import ChallengeConfig

Status = Literal["OK", "WARN", "FAIL"]
_RANK = {"OK": 0, "WARN": 1, "FAIL": 2}
_MIN_YEAR = 2025  # no release of this agent predates it: an earlier clock has not been set (no RTC, no NTP)
_MAX_STATE_FILES = 10_000  # the permission walk stops there: a state dir is a handful of files


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    message: str
    fix: str = ""


class DoctorConfig(BaseModel):
    """What `doctor` checks besides the agent config: timeouts, disk thresholds, endpoints given as flags."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout_s: float = Field(3.0, gt=0, le=60, description="TCP connect timeout per broker / hub check.")
    camera_timeout_s: float = Field(5.0, gt=0, le=60, description="How long one camera may take to open.")
    min_free_mb: int = Field(200, ge=1, le=10**7, description="FAIL below this much free space (MiB).")
    warn_free_mb: int = Field(1024, ge=1, le=10**7, description="WARN below this much free space (MiB).")
    broker: str | None = Field(None, description="host:port of the MQTT broker; overrides the config.")
    hub_url: str | None = Field(None, description="URL of the cloud hub / face-group API (TCP check only).")
    check_cameras: bool = Field(True, description="Open the configured / present video devices.")
    check_speed: bool = Field(True, description="Time the embedder's INT8 and FP32 variants on this CPU.")
    speed_budget_s: float = Field(
        1.0, gt=0, le=60, description="Most seconds the INT8 / FP32 timing loop runs (compiling comes first)."
    )


# -- runtimes and models -------------------------------------------------------------------------------------


def _unavailable(entries: Sequence[str]) -> str | None:
    """available_devices() reports a missing runtime as one 'unavailable: ...' entry."""
    return entries[0] if len(entries) == 1 and entries[0].startswith("unavailable") else None


def check_runtimes(devices: dict[str, list[str]], engine: EngineConfig) -> Check:
    """The configured runtime is installed and offers the configured device / providers."""
    seen = "; ".join(f"{rt}: {', '.join(devs) or 'none'}" for rt, devs in devices.items())
    rt = engine.runtime
    if isinstance(rt, OpenVINORuntimeConfig):
        have = devices.get("openvino", [])
        if _unavailable(have):
            return Check(
                "runtimes", "FAIL", seen, "pip install openvino, or set engine.runtime.kind: onnxruntime"
            )
        wanted = rt.device.split(":", 1)[1].split(",") if ":" in rt.device else [rt.device]
        bases = {d.split(".")[0] for d in have}
        missing = [d for d in wanted if d not in ("AUTO", "MULTI", "HETERO") and d.split(".")[0] not in bases]
        if missing:
            return Check(
                "runtimes",
                "FAIL",
                f"OpenVINO device {', '.join(missing)} not found ({seen})",
                "GPU: install intel-opencl-icd and add the user to 'render'; NPU: install the "
                "linux-npu-driver and check /dev/accel/accel0 (docs/platforms.md); or use device: CPU",
            )
        return Check("runtimes", "OK", f"openvino {rt.device} available ({seen})")
    assert isinstance(rt, OnnxRuntimeConfig)
    have = devices.get("onnxruntime", [])
    if _unavailable(have):
        return Check(
            "runtimes", "FAIL", seen, "pip install onnxruntime (onnxruntime-gpu on Jetson, docs/platforms.md)"
        )
    missing = [p for p in rt.providers if p not in have]
    if missing:
        return Check(
            "runtimes",
            "FAIL",
            f"onnxruntime providers {', '.join(missing)} not available ({seen})",
            "CUDA/TensorRT providers need onnxruntime-gpu built for this JetPack (docs/platforms.md); "
            "or list only CPUExecutionProvider",
        )
    return Check("runtimes", "OK", f"onnxruntime {', '.join(rt.providers)} available ({seen})")


def _is_file_problem(exc: ModelError) -> bool:
    # Manifest.info raises ModelError both for a missing/corrupt file ("model file ...") and for a variant
    # the runtime cannot use at all (e.g. an OpenVINO-only variant asked for onnxruntime): only the first
    # is a defect of the install.
    return str(exc).startswith("model file ")


def check_models(models_dir: Path | None) -> Check:
    """Every file listed in the manifest exists and matches its sha256."""
    from agent.inference.manifest import Manifest

    try:
        manifest = Manifest(models_dir)
    except ModelError as exc:
        return Check(
            "models", "FAIL", exc.message, "reinstall (scripts/install.sh copies models/) or fix --models-dir"
        )
    files: set[Path] = set()
    problems: list[str] = []
    for name in manifest.names():
        for variant in manifest.variants(name):
            for runtime in ("openvino", "onnxruntime"):
                try:
                    got = manifest.info(name, variant, runtime, verify=True).files
                except ModelError as exc:
                    if _is_file_problem(exc) and exc.message not in problems:
                        problems.append(exc.message)
                    continue
                files.update(p for p in (got.model, got.weights, got.onnx) if p is not None)
    if problems:
        return Check(
            "models",
            "FAIL",
            f"{len(problems)} bad model file(s): {problems[0]}",
            f"restore {manifest.dir} from the release (rerun scripts/install.sh) or rebuild with "
            "scripts/build_models.py",
        )
    return Check("models", "OK", f"{len(files)} files in {manifest.dir} match their sha256")


def check_engine_models(engine: EngineConfig) -> Check:
    """The detector and embedder the config selects exist for its runtime (and verify)."""
    from agent.inference.manifest import Manifest

    runtime = engine.runtime.kind
    wanted = [(engine.detector.model, "fp32"), (engine.embedder.model, engine.embedder.precision)]
    try:
        manifest = Manifest(engine.models_dir)
        for name, variant in wanted:
            manifest.info(name, variant, runtime, verify=engine.verify_checksums)
    except ModelError as exc:
        return Check(
            "engine-models",
            "FAIL",
            exc.message,
            "choose a model/precision listed by models/manifest.json (e.g. engine.embedder.precision: fp32)",
        )
    ids = ", ".join(f"{n}/{v}" for n, v in wanted)
    return Check("engine-models", "OK", f"{ids} ready for {runtime}")


def check_gallery_variant(engine: EngineConfig, gallery: GalleryConfig) -> Check:
    """The embedding variant the config runs, and whether the gallery's faces are in its space (faces of
    another variant are re-embedded from thumbnails at start, or refuse it: agent/gallery/variants.py)."""
    from agent.gallery.store import DB_FILENAME, GalleryStore
    from agent.gallery.variants import Space, foreign_variants, plan
    from agent.inference.engine import space_info
    from agent.inference.manifest import Manifest

    try:
        info = space_info(Manifest(engine.models_dir), engine, verify=False)
    except ModelError as exc:
        return Check("gallery-variant", "FAIL", exc.message, "see the engine-models check")
    variant = f"{info.model_id} on {engine.runtime.kind}"
    if gallery.database is None and not (gallery.path / DB_FILENAME).exists():
        return Check("gallery-variant", "OK", f"{variant}; no gallery yet at {gallery.path}")
    try:
        store = GalleryStore(gallery)
    except AgentError as exc:  # PostgreSQL unreachable or not migrated: the feed check says which
        return Check("gallery-variant", "FAIL", str(exc), "see the feed check")
    try:
        counts = store.space_counts()
    finally:
        store.close()
    space = Space(info.model_id, info.space_accepts, info.space_hints)
    mine = sum(n for _g, m, n, _t in counts if m == info.model_id)
    others = foreign_variants(counts, space)
    if not others:
        return Check(
            "gallery-variant", "OK", f"{variant}; the gallery's {mine} face(s) of it are in its space"
        )
    said = {
        "accept": "accepted as the same space",
        "reembed": "re-embedded at start",
        "refuse": "refuses the start",
    }
    plans = [plan(space, o, gallery.on_variant_change) for o in others]
    parts = [
        f"{o.faces} face(s) of {o.model_id} ({o.thumbnails} with thumbnails: {said[p]})"
        for o, p in zip(others, plans, strict=True)
    ]
    refused = "refuse" in plans
    fix = (
        "re-enrol those people or delete their faces (face-agent gallery delete), or run the variant "
        "that enrolled them: " + "; ".join(space.hints.get(o.model_id, "?") for o in others)
        if refused
        else "none needed: the next start does it (gallery.on_variant_change: refuse to stop that)"
    )
    return Check(
        "gallery-variant",
        "FAIL" if refused else "WARN",
        f"{variant}; gallery holds {mine} face(s) of it and {'; '.join(parts)}",
        fix,
    )


def check_arm_space(engine: EngineConfig, machine: str | None = None) -> Check:
    """OpenVINO's INT8 kernels on ARM compute another embedding than on x86 (measured under emulation,
    docs/platforms.md): a gallery enrolled on an x86 hub is then searched with probes ~0.01 cosine away."""
    import platform

    arch = machine or platform.machine()
    emb, kind = engine.embedder, engine.runtime.kind
    space = f"{emb.model} {emb.precision} on {kind}, {arch}"
    if arch not in ("aarch64", "arm64") or kind != "openvino" or emb.precision != "int8":
        return Check("arm-space", "OK", f"{space}: the same embeddings as on x86 (measured)")
    return Check(
        "arm-space",
        "WARN",
        f"{space}: OpenVINO runs most INT8 layers in FP32 on ARM; against x86 embeddings of the same faces "
        "cosine 0.990-0.992, pair scores move by up to 0.022, 2 of 200 pairs changed side of FAR 1e-3 "
        "(emulated cortex-a76); fine for a gallery enrolled on this device, not for one synced from x86",
        "for a gallery enrolled on x86: engine.runtime.kind: onnxruntime (same embeddings, measured), or "
        "engine.embedder.precision: fp32",
    )


# -- INT8 vs FP32 speed --------------------------------------------------------------------------------------

_SPEED_RUNS = 30  # single-face inferences per precision, at most
_SPEED_MIN_RUNS = 5  # ... and at least, even when the time budget is spent
_SPEED_FIX = "set engine.embedder.precision: fp32, or use the other runtime (engine.runtime.kind)"


@dataclass(frozen=True)
class PrecisionSpeed:
    """Median milliseconds of one single-face inference per precision, measured in alternation."""

    model: str
    runtime: str
    device: str
    int8_ms: float
    fp32_ms: float
    runs: int


def measure_int8_speed(engine: EngineConfig, budget_s: float, max_runs: int = _SPEED_RUNS) -> PrecisionSpeed:
    """Time the configured embedder's int8 and fp32 variants on the configured runtime, one blank chip
    through the embedder's own preprocessing, runs of the two interleaved so load from other processes hits
    both alike. Raises ModelError / DeviceError when a variant cannot be loaded."""
    import functools
    import statistics
    import time

    import numpy as np

    from agent.inference.embedder import Embedder
    from agent.inference.manifest import Manifest
    from agent.inference.runtime import open_session

    manifest = Manifest(engine.models_dir)
    name, rt = engine.embedder.model, engine.runtime
    runs: dict[str, Callable[[], object]] = {}
    device = ""
    for precision in ("int8", "fp32"):
        info = manifest.info(name, precision, rt.kind, verify=engine.verify_checksums)
        session = open_session(info.files, rt)
        embedder = Embedder(info, session, max_batch=1)
        x = embedder.preprocess([np.full((embedder.size, embedder.size, 3), 127, np.uint8)])
        runs[precision] = functools.partial(session.run, x)
        device = session.device
    for run in runs.values():  # the first inferences pay for kernel selection and memory planning
        run()
        run()
    samples: dict[str, list[float]] = {"int8": [], "fp32": []}
    deadline = time.monotonic() + budget_s
    for i in range(max_runs):
        if i >= _SPEED_MIN_RUNS and time.monotonic() > deadline:
            break
        for precision in ("int8", "fp32") if i % 2 == 0 else ("fp32", "int8"):
            t = time.perf_counter()
            runs[precision]()
            samples[precision].append(time.perf_counter() - t)
    int8_ms, fp32_ms = (1000 * statistics.median(samples[p]) for p in ("int8", "fp32"))
    return PrecisionSpeed(name, rt.kind, device, int8_ms, fp32_ms, len(samples["int8"]))


def judge_int8_speed(
    configured: str, int8_ms: float, fp32_ms: float, cpu_kind: str, where: str = ""
) -> Check:
    """WARN when INT8 is configured and its median is above FP32's: without 8-bit dot-product instructions
    (VNNI, AMX, arm64 dotprod) a runtime can run INT8 slower than FP32, for no accuracy gain."""
    seen = f"{cpu_kind}: INT8 {int8_ms:.2f} ms, FP32 {fp32_ms:.2f} ms median per face{where}"
    if configured == "int8" and int8_ms > fp32_ms:
        return Check("int8-speed", "WARN", f"int8 configured but slower than fp32 on {seen}", _SPEED_FIX)
    note = (
        f"; INT8 would be {fp32_ms / int8_ms:.1f}x faster"
        if configured == "fp32" and 0 < int8_ms < fp32_ms
        else ""
    )
    return Check("int8-speed", "OK", f"{configured} configured; {seen}{note}")


def check_int8_speed(engine: EngineConfig, budget_s: float) -> Check:
    """Whether INT8 pays on this CPU for the configured embedder and runtime (see judge_int8_speed)."""
    from agent.errors import AgentError
    from agent.inference.manifest import Manifest
    from agent.inference.runtime.cpu import cpu_info

    name, runtime = engine.embedder.model, engine.runtime.kind
    try:
        manifest = Manifest(engine.models_dir)
        built = manifest.variants(name)
    except ModelError as exc:
        return Check(
            "int8-speed", "WARN", f"not measured: {exc.message}", "see the models / engine-models checks"
        )
    for precision in ("int8", "fp32"):
        if precision not in built:
            return Check(
                "int8-speed", "OK", f"not measured: {name} has no {precision} variant to compare with"
            )
        try:  # cheap (no hashing): are the files there, and usable by this runtime?
            manifest.info(name, precision, runtime, verify=False)
        except ModelError as exc:
            if _is_file_problem(exc):
                return Check("int8-speed", "WARN", f"not measured: {exc.message}", "see the models check")
            return Check("int8-speed", "OK", f"not measured, nothing to compare: {exc.message}")
    try:
        speed = measure_int8_speed(engine, budget_s)
    except AgentError as exc:  # a corrupt file, or a device / runtime the engine could not use either
        if isinstance(exc, ModelError) and _is_file_problem(exc):
            return Check("int8-speed", "WARN", f"not measured: {exc.message}", "see the models check")
        return Check(
            "int8-speed",
            "FAIL",
            f"{name} int8 / fp32 could not run on {runtime}: {exc.message}",
            "see the runtimes, models and engine-models checks",
        )
    where = f" ({speed.runs} runs each, {name} on {runtime} {speed.device})"
    return judge_int8_speed(engine.embedder.precision, speed.int8_ms, speed.fp32_ms, cpu_info().kind, where)


# -- cameras -------------------------------------------------------------------------------------------------


def _open_video(path: str, timeout_s: float) -> str | None:
    """None when cv2 opens the device within the timeout, else why not. Runs in a daemon thread because
    a wedged V4L2 driver can block open() forever; such a thread is abandoned, not waited for."""
    result: list[str | None] = []

    def probe() -> None:
        try:
            import cv2

            cap = cv2.VideoCapture(path, cv2.CAP_V4L2)
            try:
                result.append(None if cap.isOpened() else "cv2 could not open it")
            finally:
                cap.release()
        except Exception as exc:  # any driver / binding error is the answer, not a crash of doctor
            result.append(f"{type(exc).__name__}: {exc}")

    thread = threading.Thread(target=probe, name=f"doctor-open-{path}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if not result:
        return f"did not open within {timeout_s:g} s"
    return result[0]


def _device_path(source: str) -> str:
    return f"/dev/video{source.strip()}" if source.strip().isdigit() else source


def check_cameras(
    device_sources: Sequence[str] | None, timeout_s: float, pattern: str = "/dev/video*"
) -> Check:
    """Configured device cameras must open; without a config, at least one present device should."""
    if device_sources is not None and not device_sources:
        return Check("cameras", "OK", "no device cameras configured (streams/files only)")
    explicit = device_sources is not None
    paths = [_device_path(s) for s in device_sources] if explicit else sorted(glob.glob(pattern))
    if not paths:
        return Check(
            "cameras",
            "WARN",
            f"no video devices match {pattern}",
            "plug in a USB camera, or enable the CSI camera (Pi: libcamera; Jetson: nvarguscamerasrc source)",
        )
    failed: dict[str, str] = {}
    for path in paths:
        if not os.path.exists(path):
            failed[path] = "missing"
        elif not os.access(path, os.R_OK | os.W_OK):
            failed[path] = "permission denied"
        elif (why := _open_video(path, timeout_s)) is not None:
            failed[path] = why
    opened = [p for p in paths if p not in failed]
    detail = "; ".join(f"{p}: {why}" for p, why in failed.items())
    fix = "add the service user to group 'video' (ls -l /dev/video*), check the cable, dmesg | tail"
    if explicit and failed:
        return Check("cameras", "FAIL", f"configured camera(s) not usable: {detail}", fix)
    if not opened:
        return Check("cameras", "FAIL", f"no video device opens: {detail}", fix)
    # UVC cameras also expose metadata nodes that never open as capture devices: not an error on their own.
    note = f" (not openable: {detail})" if failed else ""
    return Check("cameras", "OK", f"opened {', '.join(opened)}{note}")


def check_liveness(
    camera: str,
    level: str,
    steps: int | None,
    depth: bool,
    required: bool,
    default: bool = True,
    ir: bool = False,
    ir_required: bool = False,
    source_kind: str = "realsense",
) -> Check:
    """What the camera's liveness stops, in words; FAIL when its depth camera's SDK is not installed."""
    import importlib

    from agent.gates.stops import liveness_summary

    summary = liveness_summary(level, steps, depth, required, default, ir, ir_required)
    text = f"camera {camera}: {level}: {summary}"
    if depth:
        sdk, fix = DEPTH_SDKS.get(source_kind, DEPTH_SDKS["realsense"])
        try:
            importlib.import_module(sdk)
        except ImportError:
            return Check("liveness", "FAIL", f"{text}; {sdk} is not installed", fix)
    return Check("liveness", "OK", text)


DEPTH_SDKS = {  # depth camera source kind -> (its Python SDK, how to install it)
    "realsense": (
        "pyrealsense2",
        "pip install pyrealsense2 (Jetson: the vendor's librealsense Python build)",
    ),
    "oak": ("depthai", "pip install depthai"),
}


# -- network -------------------------------------------------------------------------------------------------


def check_tcp(name: str, host: str, port: int, timeout_s: float, fix: str) -> Check:
    """A TCP connection to host:port succeeds within the timeout (no protocol spoken)."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        return Check(name, "FAIL", f"{host}:{port} not reachable: {reason}", fix)
    return Check(name, "OK", f"{host}:{port} reachable")


def parse_host_port(text: str, default_port: int) -> tuple[str, int]:
    """'host', 'host:port' or '[v6]:port'. ValueError on a bad port."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.lstrip(":") or str(default_port)
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, str(default_port)
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"expected host[:port], got {text!r}")
    return host, int(port)


def hub_address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"hub URL must be http(s)://host[:port]/..., got {url!r}")
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


# -- disk, clock, permissions --------------------------------------------------------------------------------


def _existing_parent(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk(state_dir: Path, min_free_mb: int, warn_free_mb: int) -> Check:
    where = _existing_parent(state_dir)
    free_mb = shutil.disk_usage(where).free // (1024 * 1024)
    msg = f"{free_mb} MiB free on the file system of {where}"
    fix = "free space (journalctl --vacuum-size=100M, old recordings), or move state_dir to a larger disk"
    if free_mb < min_free_mb:
        return Check("disk", "FAIL", msg + f" (< {min_free_mb} MiB)", fix)
    if free_mb < warn_free_mb:
        return Check("disk", "WARN", msg + f" (< {warn_free_mb} MiB)", fix)
    return Check("disk", "OK", msg)


def check_clock(now: dt.datetime | None = None) -> Check:
    now = now or dt.datetime.now(dt.timezone.utc)
    text = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    if now.year < _MIN_YEAR:
        return Check(
            "clock",
            "FAIL",
            f"system clock says {text}: not set",
            "enable NTP (timedatectl set-ntp true) and let it sync; boards without an RTC boot in the past",
        )
    return Check("clock", "OK", f"UTC {text}")


def check_state_permissions(state_dir: Path, uid: int | None = None) -> Check:
    """The state dir (gallery embeddings, thumbnails, outbox) is 0700, owned by us, and no file inside is
    group- or world-accessible: biometric data at rest is for the service user only."""
    uid = os.geteuid() if uid is None else uid
    if not state_dir.exists():
        return Check(
            "state-permissions",
            "WARN",
            f"{state_dir} does not exist yet",
            "created on first start (systemd StateDirectory=, mode 0700) or by scripts/install.sh",
        )
    st = state_dir.stat()
    if st.st_uid != uid:
        return Check(
            "state-permissions",
            "FAIL" if uid != 0 else "WARN",
            f"{state_dir} is owned by uid {st.st_uid}, doctor runs as uid {uid}",
            "run doctor as the service user (sudo -u face-agent face-agent doctor ...) or "
            f"chown -R face-agent: {state_dir}",
        )
    loose = [str(state_dir)] if stat.S_IMODE(st.st_mode) != 0o700 else []
    for i, path in enumerate(state_dir.rglob("*")):
        if i >= _MAX_STATE_FILES:
            break
        try:
            mode = path.lstat().st_mode
        except OSError:  # vanished meanwhile (a WAL file being checkpointed)
            continue
        if stat.S_IMODE(mode) & 0o077 and not stat.S_ISLNK(mode):
            loose.append(str(path))
    if loose:
        shown = ", ".join(loose[:3]) + (f" and {len(loose) - 3} more" if len(loose) > 3 else "")
        return Check(
            "state-permissions",
            "FAIL",
            f"group/other can reach biometric state: {shown}",
            f"chmod 0700 {state_dir} && chmod -R go-rwx {state_dir} (the unit's UMask=0077 keeps it so)",
        )
    return Check("state-permissions", "OK", f"{state_dir} is 0700 and private to uid {uid}")


# -- hub feed ------------------------------------------------------------------------------------------------


def check_feed(gallery: GalleryConfig) -> Check:
    """The hub's change feed: size, oldest kept operation, head, floor and devices, read through a read-only
    connection (doctor must not migrate or create a database). The same numbers are face_agent_hub_feed_*
    on `run`'s /metrics; `serve` has no metrics endpoint."""
    from agent.gallery.store import DB_FILENAME

    if gallery.database is not None:
        return _check_feed_postgres(gallery)
    path = gallery.path / DB_FILENAME
    if not path.exists():
        return Check("feed", "WARN", f"no gallery database at {path} yet", "start serve / run once")
    try:
        conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=2.0)
        try:
            n, lo, hi = conn.execute("SELECT COUNT(*), MIN(seq), MAX(seq) FROM feed").fetchone()
            row = conn.execute("SELECT value FROM meta WHERE name = 'feed_floor'").fetchone()
            devices, revoked = conn.execute("SELECT COUNT(*), COUNT(revoked_at) FROM devices").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return Check(
            "feed",
            "FAIL",
            f"cannot read the feed in {path}: {exc}",
            "a gallery of schema 1 gets its feed when serve / run opens it; otherwise check the file",
        )
    low = int(row[0]) if row else 0
    msg = (
        f"{n} operation(s), oldest {int(lo or 0)}, head {max(int(hi or 0), low)}, floor {low}; "
        f"{devices} device(s), {revoked} revoked"
    )
    if devices - revoked == 0:
        return Check("feed", "WARN", msg, "no device can pull yet: face-agent hub devices add ID --group G")
    return Check("feed", "OK", msg)


def _check_feed_postgres(gallery: GalleryConfig) -> Check:
    """hub.database: the connection, the schema version, the feed (as for SQLite) and its lag: sequence
    numbers drawn but not visible to readers (a write in flight now, or rolled back), and the age of the
    newest operation. Read-only; doctor never migrates."""
    import time

    from agent.errors import AgentError
    from agent.gallery.db import PostgresDb, masked
    from agent.gallery.pg_schema import PG_SCHEMA_VERSION

    where = masked(gallery.database or "")
    try:
        db = PostgresDb(gallery.database or "", pool_size=1, timeout_s=min(gallery.busy_timeout_s, 5.0))
    except AgentError as exc:
        return Check("feed", "FAIL", str(exc), "is PostgreSQL running and the URL's user allowed in?")
    try:
        version = db.schema_version()
        if version != PG_SCHEMA_VERSION:
            return Check(
                "feed",
                "FAIL",
                f"{where}: schema {version}, this agent needs {PG_SCHEMA_VERSION}",
                "face-agent hub migrate --config ...",
            )
        n, lo, hi, newest = db.query("SELECT COUNT(*), MIN(seq), MAX(seq), MAX(at) FROM feed")[0]
        row = db.query("SELECT value FROM meta WHERE name = 'feed_floor'")
        devices, revoked = db.query("SELECT COUNT(*), COUNT(revoked_at) FROM devices")[0]
        drawn = db.feed_drawn()
    except AgentError as exc:
        return Check("feed", "FAIL", f"{where}: {exc}", "is PostgreSQL running?")
    finally:
        db.close()
    low = int(row[0][0]) if row else 0
    head = max(int(hi or 0), low)
    age = f"{time.time() - float(newest):.0f} s ago" if newest is not None else "never"
    msg = (
        f"{where} schema {version}: {n} operation(s), oldest {int(lo or 0)}, head {head}, floor {low}; "
        f"lag: {max(0, drawn - head)} sequence number(s) drawn but not visible, newest operation {age}; "
        f"{devices} device(s), {revoked} revoked"
    )
    if devices - revoked == 0:
        return Check("feed", "WARN", msg, "no device can pull yet: face-agent hub devices add ID --group G")
    return Check("feed", "OK", msg)


def check_sync(gallery: GalleryConfig, max_staleness_s: float, now: float | None = None) -> Check:
    """The edge's mirrors: per group how far behind the hub it was at its last pull and how long ago it
    last caught up, read-only from the gallery database (the syncer's own state, agent/gallery/mirror.py)."""
    import time

    from agent.gallery.store import DB_FILENAME

    now = time.time() if now is None else now
    path = gallery.path / DB_FILENAME
    fix = "check the hub (doctor's hub line), the device's credentials, and the log of run / sync"
    if not path.exists():
        return Check("sync", "WARN", f"no gallery database at {path} yet", "run face-agent sync --once")
    try:
        conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=2.0)
        try:
            rows = conn.execute(
                "SELECT group_id, cursor, head, snapshot, caught_up_at FROM sync_state ORDER BY group_id"
            ).fetchall()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return Check("sync", "FAIL", f"cannot read the sync state in {path}: {exc}", fix)
    if not rows:
        return Check("sync", "WARN", "no group mirrored yet", "run face-agent sync --once; " + fix)
    parts, stale = [], []
    for gid, cursor, head, snapshot, caught in rows:
        age = None if caught is None else now - float(caught)
        when = "never caught up" if age is None else f"caught up {age:.0f} s ago"
        parts.append(f"{gid}: {max(0, int(head) - int(cursor))} op(s) behind, {when}")
        if snapshot is not None or age is None or (max_staleness_s and age > max_staleness_s):
            stale.append(gid)
    msg = "; ".join(parts)
    if stale:
        return Check("sync", "WARN", f"{msg}; stale (grant no access): {', '.join(stale)}", fix)
    return Check("sync", "OK", msg)


# -- running everything --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DoctorTargets:
    """What to check, resolved from the agent config and the flags."""

    engine: EngineConfig
    state_dir: Path
    broker: tuple[str, int] | None
    hub: tuple[str, int] | None
    camera_devices: list[str] | None  # None: probe every /dev/video*
    gallery: GalleryConfig | None = None
    hub_feed: bool = False  # the config has a hub: section: report its change feed
    sync_staleness_s: float | None = None  # the config has a sync: section: report the mirrors
    # per camera: (id, liveness level, challenge steps or None, depth configured, depth required,
    # challenge at the measured defaults, infrared configured, infrared required)
    liveness: tuple[tuple[str, str, int | None, bool, bool, bool, bool, bool, str], ...] = ()


def run_checks(
    targets: DoctorTargets,
    cfg: DoctorConfig,
    *,
    devices: Callable[[], dict[str, list[str]]] | None = None,
) -> list[Check]:
    if devices is None:
        from agent.inference.runtime import available_devices as devices
    checks = [
        check_runtimes(devices(), targets.engine),
        check_models(targets.engine.models_dir),
        check_engine_models(targets.engine),
        check_arm_space(targets.engine),
    ]
    if targets.gallery is not None:
        checks.append(check_gallery_variant(targets.engine, targets.gallery))
    if cfg.check_speed:
        checks.append(check_int8_speed(targets.engine, cfg.speed_budget_s))
    if cfg.check_cameras:
        checks.append(check_cameras(targets.camera_devices, cfg.camera_timeout_s))
    if targets.broker is None:
        checks.append(Check("broker", "OK", "no MQTT broker configured (events go to stdout / a file)"))
    else:
        fix = "check publish.mqtt.host/port, that the broker runs (systemctl status mosquitto) and firewalls"
        checks.append(check_tcp("broker", *targets.broker, cfg.timeout_s, fix))
    if targets.hub is not None:
        fix = "check the hub URL, DNS (getent hosts HOST), the uplink and any proxy / firewall"
        checks.append(check_tcp("hub", *targets.hub, cfg.timeout_s, fix))
    if targets.hub_feed and targets.gallery is not None:
        checks.append(check_feed(targets.gallery))
    if targets.sync_staleness_s is not None and targets.gallery is not None:
        checks.append(check_sync(targets.gallery, targets.sync_staleness_s))
    checks += [check_liveness(*cam) for cam in targets.liveness]
    checks.append(check_disk(targets.state_dir, cfg.min_free_mb, cfg.warn_free_mb))
    checks.append(check_clock())
    checks.append(check_state_permissions(targets.state_dir))
    return checks


def exit_code(checks: Sequence[Check]) -> int:
    return max((_RANK[c.status] for c in checks), default=0)


def render_text(checks: Sequence[Check]) -> str:
    width = max((len(c.name) for c in checks), default=0)
    lines = []
    for c in checks:
        line = f"{c.status:<4} {c.name:<{width}}  {c.message}"
        lines.append(line + (f"  -> fix: {c.fix}" if c.fix and c.status != "OK" else ""))
    return "\n".join(lines)


def render_json(checks: Sequence[Check]) -> str:
    code = exit_code(checks)
    worst = next(s for s, r in _RANK.items() if r == code)
    return json.dumps({"status": worst, "exit_code": code, "checks": [asdict(c) for c in checks]}, indent=2)


# -- command line --------------------------------------------------------------------------------------------


def resolve_targets(
    config_path: Path | None,
    environ: dict[str, str],
    cfg: DoctorConfig,
    *,
    state_dir: Path | None = None,
    models_dir: Path | None = None,
) -> tuple[DoctorTargets, Check]:
    """Read the agent config (a broken one is itself a FAIL line; defaults are checked instead)."""
    from agent.config import load_agent_config
    from agent.errors import ConfigError

    try:
        agent_cfg = load_agent_config(config_path, environ)
        config_check = Check(
            "config", "OK", f"{config_path} is valid" if config_path else "built-in defaults"
        )
    except ConfigError as exc:
        agent_cfg = load_agent_config(None, environ)
        config_check = Check(
            "config",
            "FAIL",
            exc.message.replace("\n", " "),
            f"fix the file, then: face-agent run --config {config_path} --validate-config",
        )
    engine = agent_cfg.engine
    if models_dir is not None:
        engine = engine.model_copy(update={"models_dir": models_dir})
    mqtt = agent_cfg.publish.mqtt
    broker = parse_host_port(cfg.broker, 1883) if cfg.broker else (mqtt.host, mqtt.port) if mqtt else None
    devices = [c.source for c in agent_cfg.cameras if c.resolved_kind == "device"] if config_path else None
    hub_url = cfg.hub_url or (agent_cfg.sync.hub_url if agent_cfg.sync is not None else None)
    targets = DoctorTargets(
        engine=engine,
        state_dir=state_dir or agent_cfg.state_dir,
        broker=broker,
        hub=hub_address(hub_url) if hub_url else None,
        hub_feed=agent_cfg.hub is not None,
        sync_staleness_s=agent_cfg.sync.max_staleness_s if agent_cfg.sync is not None else None,
        camera_devices=devices,
        liveness=tuple(
            (
                c.id,
                c.liveness_level or agent_cfg.recognition.liveness_level,
                c.liveness_challenge.steps if c.liveness_challenge is not None else None,
                c.depth is not None,
                c.depth is not None and c.depth.require,
                c.liveness_challenge is None or c.liveness_challenge == ChallengeConfig(),
                c.ir is not None,
                c.ir is not None and c.ir.require,
                c.resolved_kind,
            )
            for c in agent_cfg.cameras
        ),
        # --state-dir moves the gallery with it, as it does for `run` (unless the config names a path).
        gallery=agent_cfg.gallery
        if state_dir is None or agent_cfg.gallery.path != agent_cfg.state_dir / "gallery"
        else agent_cfg.gallery.model_copy(update={"path": state_dir / "gallery"}),
    )
    return targets, config_check


def cmd_doctor(args: argparse.Namespace) -> int:
    from agent.errors import ConfigError

    try:
        cfg = DoctorConfig(
            timeout_s=args.timeout,
            camera_timeout_s=args.camera_timeout,
            min_free_mb=args.min_free_mb,
            broker=args.broker,
            hub_url=args.hub_url,
            check_cameras=not args.no_cameras,
            check_speed=not args.no_speed,
        )
        targets, config_check = resolve_targets(
            args.config, dict(os.environ), cfg, state_dir=args.state_dir, models_dir=args.models_dir
        )
    except ValueError as exc:  # a bad flag (pydantic's ValidationError is a ValueError too)
        raise ConfigError(f"doctor: {exc}") from exc
    checks = [config_check, *run_checks(targets, cfg)]
    print(render_json(checks) if args.json else render_text(checks))
    return exit_code(checks)


def add_parser(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser(
        "doctor", help="check runtimes, models, INT8 speed, cameras, broker, hub, disk, clock, permissions"
    )
    d.add_argument("--config", type=Path, default=None, help="agent YAML config (default: built-in defaults)")
    d.add_argument("--state-dir", type=Path, default=None, help="overrides the config's state_dir")
    d.add_argument("--models-dir", type=Path, default=None, help="overrides engine.models_dir")
    d.add_argument("--broker", default=None, help="MQTT broker host[:port] (overrides publish.mqtt)")
    d.add_argument("--hub-url", default=None, help="cloud hub / face-group API URL to reach over TCP")
    d.add_argument("--timeout", type=float, default=3.0, help="TCP connect timeout, seconds")
    d.add_argument("--camera-timeout", type=float, default=5.0, help="seconds one camera may take to open")
    d.add_argument("--min-free-mb", type=int, default=200, help="FAIL below this much free disk space")
    d.add_argument("--no-cameras", action="store_true", help="skip opening cameras (e.g. while in use)")
    d.add_argument(
        "--no-speed", action="store_true", help="skip timing the embedder's INT8 against its FP32 variant"
    )
    d.add_argument("--json", action="store_true", help="machine-readable output")
    d.set_defaults(func=cmd_doctor)
