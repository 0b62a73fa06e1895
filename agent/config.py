"""Strict configuration. Every model forbids unknown keys, bounds its numbers and describes each field.

Each part receives only its own slice (e.g. the engine gets `EngineConfig`), never the whole tree.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.api.config import ApiConfig
from agent.console.config import ConsoleConfig
from agent.errors import ConfigError
from agent.gallery.config import DEFAULT_GROUP, GalleryConfig
from agent.gates.blink import BlinkConfig
from agent.gates.challenge import ChallengeConfig
from agent.gates.depth_config import DepthGateConfig
from agent.gates.ir_config import IrGateConfig
from agent.ops.log import LogConfig
from agent.ops.metrics_config import MetricsConfig
from agent.publish.config import TOPIC_LEVEL_RE, PublishConfig
from agent.sync.config import HubConfig, SyncConfig, place_hub_database


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OpenVINORuntimeConfig(Strict):
    kind: Literal["openvino"] = "openvino"
    device: str = Field(
        "CPU",
        pattern=r"^(CPU|GPU(\.\d+)?|NPU|AUTO|AUTO:[A-Z0-9.,]+|MULTI:[A-Z0-9.,]+|HETERO:[A-Z0-9.,]+)$",
        description="OpenVINO device: CPU, GPU, GPU.1, NPU, AUTO or AUTO:GPU,CPU",
    )
    precision: Literal["f32", "f16", "bf16"] = Field(
        "f32",
        description="INFERENCE_PRECISION_HINT for float layers, always set explicitly (the CPU plugin "
        "defaults to bf16 on CPUs with avx512_bf16); INT8 models keep their quantized layers",
    )
    performance_hint: Literal["LATENCY", "THROUGHPUT"] = Field(
        "LATENCY", description="OpenVINO PERFORMANCE_HINT"
    )
    num_threads: int = Field(0, ge=0, le=256, description="CPU inference threads; 0 lets OpenVINO choose")
    cache_dir: Path | None = Field(
        None, description="compiled-model cache directory (speeds up GPU/NPU start)"
    )


class OnnxRuntimeConfig(Strict):
    kind: Literal["onnxruntime"] = "onnxruntime"
    providers: list[str] = Field(
        default_factory=lambda: ["CPUExecutionProvider"],
        min_length=1,
        description="execution providers in priority order, e.g. [TensorrtExecutionProvider, "
        "CUDAExecutionProvider, CPUExecutionProvider]; each must be available or start-up fails",
    )
    intra_op_threads: int = Field(
        0, ge=0, le=256, description="threads per operator; 0 lets onnxruntime choose"
    )
    graph_optimization: Literal["disabled", "basic", "extended", "all"] = Field(
        "all", description="onnxruntime graph optimisation level"
    )


RuntimeConfig = Annotated[OpenVINORuntimeConfig | OnnxRuntimeConfig, Field(discriminator="kind")]


class DetectorConfig(Strict):
    model: Literal["blazeface-full", "blazeface-short"] = Field(
        "blazeface-full", description="full-range (192 px input, faces up to ~5 m) or short-range (128, ~2 m)"
    )
    score_threshold: float = Field(0.5, ge=0.05, le=0.99, description="minimum detection confidence")
    nms_iou: float = Field(0.3, ge=0.05, le=0.95, description="IoU above which overlapping detections merge")
    min_face_px: int = Field(20, ge=8, le=4096, description="faces with a smaller box side are ignored")


class EmbedderConfig(Strict):
    model: str = Field(
        "dlib-resnet-v1",
        description="embedding model from models/manifest.json: dlib-resnet-v1 (public domain, the "
        "default) or facenet-casia (weights under CASIA-WebFace's research / non-commercial terms)",
    )
    precision: Literal["int8", "fp32"] = Field("int8", description="model variant")
    max_batch: int = Field(8, ge=1, le=64, description="faces per inference call (with flip: 2 images each)")
    flip: bool = Field(
        True,
        description="test-time augmentation: embed each face and its mirror image and average the two; "
        "about 2x the embedding time, more genuine matches at the same false-accept rate (docs/models.md). "
        "Its own embedding space (model id ending in +flip) with its own thresholds: changing it re-embeds "
        "the gallery from its thumbnails at the next start",
    )
    landmarks: Literal["auto", "mesh", "detector"] = Field(
        "auto",
        description="points the face chip is aligned on: 'mesh' (the 468-point face mesh, ~2.4 ms per face; "
        "more genuine matches at the same false-accept rate, docs/models.md), 'detector' (the detector's "
        "keypoints), 'auto' (mesh where the manifest has a calibrated mesh space for this model, precision, "
        "runtime and flip; today dlib-resnet-v1). Its own embedding space (model id ending in +mesh): "
        "changing it re-embeds the gallery from its thumbnails at the next start",
    )


class ImageLimits(Strict):
    max_bytes: int = Field(20_000_000, ge=1_000, le=500_000_000, description="largest encoded image accepted")
    max_pixels: int = Field(40_000_000, ge=10_000, le=400_000_000, description="largest decoded image (w*h)")
    min_side: int = Field(16, ge=1, le=4096, description="smallest width or height accepted")


class EngineConfig(Strict):
    runtime: RuntimeConfig = Field(default_factory=OpenVINORuntimeConfig, description="inference backend")
    detector: DetectorConfig = Field(default_factory=DetectorConfig)
    embedder: EmbedderConfig = Field(default_factory=EmbedderConfig)
    images: ImageLimits = Field(default_factory=ImageLimits)
    models_dir: Path | None = Field(
        None, description="folder with manifest.json; default: the bundled models/"
    )
    verify_checksums: bool = Field(True, description="check every model file's sha256 against the manifest")


def _format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {where}: {err['msg']}")
    return "\n".join(lines)


def parse_model(cls: type[Strict], data: object, source: str = "config") -> Strict:
    """Validate `data` against `cls`, turning pydantic's errors into one readable ConfigError."""
    try:
        return cls.model_validate(data if data is not None else {})
    except ValidationError as exc:
        raise ConfigError(f"{source} is invalid:\n{_format_errors(exc)}") from exc


# ------------------------------------------------------------------------------------------------------------
# Camera agent (`face-agent run`): cameras, recognition and the top-level AgentConfig composing every slice.
# ------------------------------------------------------------------------------------------------------------


SourceKind = Literal["auto", "device", "stream", "file", "folder", "gstreamer", "realsense", "oak"]
DEPTH_KINDS = ("realsense", "oak")  # sources whose SDK registers depth to the colour pixels
_STREAM_RE = re.compile(r"^(rtsps?|rtmp|https?|udp|tcp)://", re.IGNORECASE)


def source_kind(source: str) -> str:
    """Guess the kind of a camera source string: device index/path, stream URL, GStreamer, folder or file."""
    if source.strip().isdigit() or source.startswith("/dev/"):
        return "device"
    if source == "realsense" or source.startswith("realsense:"):  # realsense[:<serial number>]
        return "realsense"
    if source == "oak" or source.startswith("oak:"):  # oak[:<MxID or IP address>]
        return "oak"
    if _STREAM_RE.match(source):
        return "stream"
    if "!" in source:  # GStreamer pipelines are elements joined by '!'
        return "gstreamer"
    return "folder" if Path(source).is_dir() else "file"


class CameraConfig(Strict):
    """One camera (or file, folder, stream): where frames come from and how they are pre-processed."""

    id: str = Field("cam0", description="camera id: MQTT topic level (letters, digits, '_' and '-')")
    source: str = Field(
        "0",
        min_length=1,
        max_length=4096,
        description="device index ('0') or path (/dev/video0), rtsp:// or http:// URL, video file, image "
        "folder, a GStreamer pipeline ending in appsink (e.g. nvarguscamerasrc ! ... ! appsink), or "
        "'realsense' / 'realsense:<serial>' (an Intel RealSense: colour with depth aligned to it), or "
        "'oak' / 'oak:<MxID or IP>' (a Luxonis OAK with stereo depth: the same, through depthai)",
    )
    kind: SourceKind = Field("auto", description="source kind; auto guesses it from `source`")
    realtime: bool = Field(
        True,
        description="files and folders: deliver frames at their native rate (true) or as fast as the "
        "pipeline takes them, none dropped (false)",
    )
    loop: bool = Field(False, description="files and folders: start again at the end instead of finishing")
    folder_fps: float = Field(2.0, gt=0, le=240, description="image folders: images per second when realtime")
    frames_per_image: int = Field(
        1, ge=1, le=1000, description="image folders: deliver each image this many times (a still 'visit')"
    )
    width: int | None = Field(None, ge=16, le=16384, description="devices: requested capture width")
    height: int | None = Field(None, ge=16, le=16384, description="devices: requested capture height")
    max_fps: float = Field(0.0, ge=0, le=240, description="frames per second analysed at most; 0 = no cap")
    roi: tuple[float, float, float, float] | None = Field(
        None, description="region of interest x, y, w, h as fractions 0..1 of the (rotated) frame"
    )
    rotate: Literal[0, 90, 180, 270] = Field(0, description="clockwise rotation applied before the ROI")
    min_face_px: int = Field(40, ge=8, le=4096, description="smaller faces (box side in pixels) are ignored")
    reconnect_min_s: float = Field(0.5, gt=0, le=60, description="first wait before reopening a lost source")
    reconnect_max_s: float = Field(30.0, gt=0, le=3600, description="cap of the doubling reopen wait")
    stall_timeout_s: float = Field(
        10.0, gt=0, le=3600, description="a live source that delivers no frame this long is reopened"
    )
    open_timeout_s: float = Field(10.0, gt=0, le=300, description="timeout of opening a stream or device")
    cooldown_s: float | None = Field(
        None,
        ge=0,
        le=86400,
        description="no second event for the same person on this camera within it; unset: 0 for an image "
        "folder (each photo is its own appearance), recognition.cooldown_s for every other source",
    )
    liveness_level: Literal["NONE", "LOW", "NORMAL", "HIGH"] | None = Field(
        None,
        description="liveness level of this camera (a door: the access policy's required_liveness); "
        "unset: recognition.liveness_level",
    )
    liveness_challenge: ChallengeConfig | None = Field(
        None,
        description="kiosks with a screen: each recognized track gets one random head-movement request, "
        "published on .../cameras/<id>/challenge, and passes HIGH only once it made that movement; needs "
        "liveness level HIGH on this camera (docs/liveness.md); unset: no challenge",
    )

    depth: DepthGateConfig | None = Field(
        None,
        description="depth evidence from a depth camera (source 'realsense'): each face must show a real "
        "face's relief and size; with require (default) access is granted only with it (docs/liveness.md, "
        "Depth evidence); unset: no depth check",
    )

    ir: IrGateConfig | None = Field(
        None,
        description="infrared evidence from a near-infrared camera beside this one (ir.source, with the "
        "pair's ir.registration): each face must be bright and face-shaped in IR, which a phone or "
        "tablet screen is not; with require (default) access is granted only with it (docs/liveness.md, "
        "Infrared evidence); unset: no IR check",
    )

    @field_validator("id")
    @classmethod
    def _topic_safe(cls, value: str) -> str:
        if not TOPIC_LEVEL_RE.match(value):
            raise ValueError("camera id: 1-64 letters, digits, '_' or '-'")
        return value

    @field_validator("roi")
    @classmethod
    def _roi_inside(cls, roi: tuple[float, float, float, float] | None) -> tuple | None:
        if roi is not None:
            x, y, w, h = roi
            if not (0 <= x < 1 and 0 <= y < 1 and 0 < w <= 1 and 0 < h <= 1 and x + w <= 1 and y + h <= 1):
                raise ValueError("roi must be x, y, w, h fractions with the region inside the frame")
        return roi

    @model_validator(mode="after")
    def _backoff(self) -> CameraConfig:
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError("reconnect_min_s must not exceed reconnect_max_s")
        if self.ir is not None and self.depth is not None:
            raise ValueError(f"camera {self.id}: one liveness sensor per camera: depth or ir, not both")
        if self.ir is not None:
            self._check_ir_pair()
        if self.depth is not None and self.resolved_kind not in DEPTH_KINDS:
            raise ValueError(
                f"camera {self.id}: depth needs a depth camera source ('realsense[:<serial>]' or "
                f"'oak[:<device id>]'), not a {self.resolved_kind}"
            )
        return self

    def _check_ir_pair(self) -> None:
        """An IR camera is a device, a video file or an image folder; and both cameras are live (read as
        frames come) or both recordings (paired frame by frame): a mixed pair would pair a camera frame by
        frame with no skew check, or loop a recording behind a live camera."""
        kind = self.resolved_kind
        if kind in DEPTH_KINDS:
            raise ValueError(f"camera {self.id}: ir pairs an infrared camera with an OpenCV colour source")
        ir_kind = source_kind(self.ir.source) if self.ir.kind == "auto" else self.ir.kind
        if ir_kind not in ("device", "file", "folder"):
            raise ValueError(f"camera {self.id}: ir.source must be a device, a video file or an image folder")
        colour_live = kind in ("device", "stream", "gstreamer") or self.realtime
        ir_live = ir_kind == "device" or self.realtime
        if colour_live != ir_live:
            raise ValueError(
                f"camera {self.id}: a camera and a recording cannot be paired (the colour source is "
                f"{'live' if colour_live else 'a recording read unpaced'}, ir.source is "
                f"{'live' if ir_live else 'a recording read unpaced'}); record both or neither"
            )

    @property
    def resolved_kind(self) -> str:
        return source_kind(self.source) if self.kind == "auto" else self.kind


class RecognitionConfig(Strict):
    """Matching, tracking and event rules of the camera loop."""

    group_id: str = Field(
        DEFAULT_GROUP, min_length=1, max_length=1024, description="gallery group matched against"
    )
    create_group: bool = Field(True, description="create the group at start when it does not exist")
    max_stranger_rate: float = Field(
        1e-3,
        ge=1e-5,
        le=0.5,
        description="the chance that one unknown face is named as somebody (open-set FPIR); the score a "
        "match needs follows from it, the model space and the group's current number of faces "
        "(docs/openset.md)",
    )
    min_score: float | None = Field(
        None,
        ge=0,
        le=100,
        description="a fixed per-comparison score instead (70 = FAR 1e-3, 80 = 1e-4, 90 = 1e-5), whatever "
        "the group's size; unset: from max_stranger_rate. Setting both is an error",
    )
    person_rule: Literal["auto", "mean", "max"] = Field(
        "auto",
        description="how a person enrolled with several faces is scored: 'mean' = the cosine to the mean of "
        "their faces, mapped to the one-face scale through the model space's manifest person_curves, with "
        "the stranger rate counted per person (fewer misses for people enrolled with 2 or more photos, "
        "docs/openset.md); 'max' = their best face, counted per face; 'auto' = mean where the manifest "
        "has person_curves for the space and cosine_thresholds are not overridden, else max",
    )
    cosine_thresholds: dict[str, float] | None = Field(
        None,
        description="cosine similarity at FAR 1e-3, 1e-4, 1e-5 (keys '1e-3'...); default: the model "
        "manifest's calibration. Start-up fails when neither gives them.",
    )
    quality_level: Literal["NONE", "LOW", "NORMAL", "HIGH"] = Field(
        "LOW",
        description="faces below this quality level are tracked but never decide (needs agent/gates/quality)",
    )
    liveness_level: Literal["NONE", "LOW", "NORMAL", "HIGH"] = Field(
        "NONE",
        description="liveness level of every camera without its own: NONE does not run the liveness gate; "
        "otherwise each track is checked (about 3.4 ms per face and frame; NORMAL adds the face mesh, "
        "about 4 ms per meshed face, see blink) and a known track gets a follow-up event once it passes "
        "this level (docs/liveness.md)",
    )
    blink: BlinkConfig = Field(
        default_factory=BlinkConfig,
        description="blink cue of the liveness gate (face mesh per tracked face, only on cameras whose level "
        "uses blinks: NORMAL by default; docs/liveness.md)",
    )
    max_faces: int = Field(10, ge=1, le=100, description="largest faces analysed per frame")
    iou_threshold: float = Field(0.3, ge=0.05, le=0.95, description="box overlap that continues a track")
    track_min_similarity: float | None = Field(
        None,
        ge=-1,
        le=1,
        description="cosine to a track's fused embedding a face needs to continue it; null: derived from "
        "the model's FAR 1e-3 cosine (0.35 for FaceNet, 0.90 for the INT8 dlib ResNet)",
    )
    track_timeout_s: float = Field(1.0, gt=0, le=60, description="a track unseen this long has ended")
    max_missed_frames: int = Field(15, ge=1, le=1000, description="a track unseen this many frames has ended")
    unknown_after_frames: int = Field(
        8, ge=1, le=1000, description="usable frames without a confident match before a track is 'unknown'"
    )
    min_track_frames: int = Field(
        3, ge=1, le=1000, description="a track ending with fewer usable frames is noise, not reported"
    )
    fusion_frames: int = Field(5, ge=1, le=50, description="best-quality embeddings fused per track")
    upgrade_unknown: bool = Field(
        True, description="publish a recognized event when a track reported unknown later matches"
    )
    cooldown_s: float = Field(
        10.0, ge=0, le=86400, description="no second event for the same person on the same camera within it"
    )
    workers: int = Field(1, ge=1, le=16, description="recognition threads (cameras are split between them)")
    event_queue_size: int = Field(256, ge=1, le=100_000, description="events waiting for the sink at most")
    snapshot_margin: float = Field(0.25, ge=0, le=2, description="margin around the face in snapshot crops")
    heartbeat_max_age_s: float = Field(
        30.0, gt=0, le=3600, description="a camera or recognition thread silent this long is unhealthy"
    )

    @model_validator(mode="after")
    def _one_threshold_rule(self) -> RecognitionConfig:
        if self.min_score is not None and "max_stranger_rate" in self.model_fields_set:
            raise ValueError(
                "recognition: set max_stranger_rate (a stranger rate, adapted to the group's size) or "
                "min_score (a fixed per-comparison score), not both"
            )
        return self

    @field_validator("cosine_thresholds")
    @classmethod
    def _fars(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value is not None:
            missing = {"1e-3", "1e-4", "1e-5"} - set(value)
            if missing:
                raise ValueError(f"cosine_thresholds lacks {sorted(missing)}")
        return value


def default_state_dir(environ: Mapping[str, str]) -> Path:
    """$STATE_DIRECTORY (systemd StateDirectory=, first entry) or ./state."""
    raw = environ.get("STATE_DIRECTORY", "")
    return Path(raw.split(":")[0]) if raw else Path("state")


class AgentConfig(Strict):
    """The whole `face-agent run` configuration. Every section is optional: no file at all gives a local
    gallery under the state directory, events on stdout and camera 0."""

    state_dir: Path = Field(Path("state"), description="gallery and outbox live here by default")
    engine: EngineConfig = Field(default_factory=EngineConfig, description="detector/embedder/runtime")
    gallery: GalleryConfig = Field(description="local gallery; path defaults to <state_dir>/gallery")
    publish: PublishConfig = Field(default_factory=PublishConfig, description="MQTT or stdout events")
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="/metrics, /healthz, /readyz")
    log: LogConfig = Field(default_factory=LogConfig, description="log level and format")
    cameras: list[CameraConfig] = Field(
        default_factory=lambda: [CameraConfig()], min_length=1, max_length=16, description="camera list"
    )
    recognition: RecognitionConfig = Field(default_factory=RecognitionConfig)
    api: ApiConfig | None = Field(
        None,
        description="HTTP API (native + cloud-compatible endpoints) served by `run` beside the cameras, "
        "sharing their engine and gallery; absent: no API",
    )
    hub: HubConfig | None = Field(
        None, description="serve a change feed of the gallery's groups to devices (needs api); docs/sync.md"
    )
    sync: SyncConfig | None = Field(
        None, description="mirror the groups a hub grants this device into the local gallery; docs/sync.md"
    )
    console: ConsoleConfig = Field(
        default_factory=ConsoleConfig,
        description="web console at /console on the API's port (needs api); off by default; docs/console.md",
    )
    stop_timeout_s: float = Field(10.0, gt=0, le=300, description="bound of a clean shutdown")

    @model_validator(mode="before")
    @classmethod
    def _state_paths(cls, data: object) -> object:
        # The gallery, the outbox and the API's replay store default to the state directory: fill their paths
        # before validation.
        if not isinstance(data, dict):
            return data
        data = dict(data)
        state = Path(data.get("state_dir") or "state")
        gallery = data.get("gallery") or {}
        if isinstance(gallery, dict) and "path" not in gallery:
            data["gallery"] = {**gallery, "path": state / "gallery"}
        data = place_hub_database(data)
        publish = data.get("publish") or {}
        if isinstance(publish, dict):
            outbox = publish.get("outbox") or {}
            if isinstance(outbox, dict) and "path" not in outbox:
                data["publish"] = {**publish, "outbox": {**outbox, "path": state / "outbox.sqlite3"}}
        api = data.get("api")
        if isinstance(api, dict) and "replay_store" not in api:  # used signatures survive a restart
            data["api"] = {**api, "replay_store": state / "api-replay.sqlite3"}
        return data

    @model_validator(mode="after")
    def _hub_needs_api(self) -> AgentConfig:
        if self.hub is not None and self.api is None:
            raise ValueError("hub: serves its feed through the HTTP API; add an api: section")
        if self.console.enabled and self.api is None:
            raise ValueError("console: is served by the HTTP API's server; add an api: section")
        if self.gallery.database is not None and self.sync is not None:
            raise ValueError(
                "sync: an edge mirrors a hub into its own SQLite gallery; a hub on PostgreSQL (hub.database) "
                "cannot also be an edge"
            )
        return self

    @model_validator(mode="after")
    def _unique_cameras(self) -> AgentConfig:
        ids = [c.id for c in self.cameras]
        if len(set(ids)) != len(ids):
            raise ValueError(f"camera ids must be unique, got {ids}")
        for cam in self.cameras:
            level = cam.liveness_level or self.recognition.liveness_level
            # The challenge is a requirement of HIGH only (LivenessThresholds.require_challenge); at a lower
            # level nothing would read its outcome, so the kiosk would ask people to turn for nothing.
            if cam.liveness_challenge is not None and level != "HIGH":
                raise ValueError(
                    f"camera {cam.id}: liveness_challenge needs liveness level HIGH "
                    f"(cameras[].liveness_level or recognition.liveness_level), not {level}"
                )
            for name, gate in (("depth", cam.depth), ("ir", cam.ir)):
                if gate is not None and gate.require and not self.publish.access.enabled:
                    # Sensor evidence is enforced by the access decision; without it nothing is refused.
                    raise ValueError(
                        f"camera {cam.id}: {name}.require needs publish.access.enabled: true (the access "
                        f"decision is where missing or failed {name} evidence denies); or set "
                        f"{name}.require: false to publish the evidence only"
                    )
        return self


def read_yaml_mapping(path: Path) -> dict:
    """The top-level mapping of a YAML config file; any problem is one readable ConfigError."""
    import yaml  # only the CLI path needs it

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def load_agent_config(
    path: Path | None,
    environ: Mapping[str, str] | None = None,
    source: str | None = None,
    state_dir: Path | None = None,
) -> AgentConfig:
    """Read and validate the YAML file (None: built-in defaults). `source` replaces the cameras by one
    camera reading that path/URL/index; `state_dir` replaces the file's. Any problem is one ConfigError."""
    environ = os.environ if environ is None else environ
    data = read_yaml_mapping(path) if path is not None else {}
    if state_dir is not None:
        data["state_dir"] = str(state_dir)
    data.setdefault("state_dir", str(default_state_dir(environ)))
    if source is not None:
        data["cameras"] = [{"id": "cam0", "source": source}]
    return parse_model(AgentConfig, data, str(path) if path else "built-in config")  # type: ignore[return-value]
