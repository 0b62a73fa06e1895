"""Bulk enrolment (`face-agent enroll`): a folder per person (DIR/<person>/*.jpg) or a CSV (path, outer_id
[, user_info]) into one gallery group.

Per image: read (bounded) -> decode -> detect -> exactly one face (or the largest with `largest_face`) ->
quality gate at `quality_level` -> embed -> aligned chip kept as a JPEG thumbnail (so the face can be
re-embedded for another model) -> added to the gallery in batches of `batch_size`. An image is reported as
enrolled only after its batch is committed (fsynced), so a kill -9 loses no face that was reported.
Re-running over the same images is harmless: a face whose embedding equals one the person already has
(cosine >= `duplicate_cosine`) is reported as a duplicate and not added again.
"""

from __future__ import annotations

import csv
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from agent.config import DEFAULT_GROUP
from agent.errors import AgentError, InputError
from agent.gallery import Gallery, NewFace
from agent.gates.quality import evaluate_quality, measure_quality

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})


class EnrollConfig(BaseModel):
    """One bulk enrolment run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    group_id: str = Field(
        DEFAULT_GROUP, min_length=1, max_length=1024, description="gallery group to enrol into"
    )
    create_group: bool = Field(False, description="create the group when it does not exist")
    quality_level: Literal["NONE", "LOW", "NORMAL", "HIGH"] = Field(
        "NORMAL", description="quality gate level a face must pass (docs/quality.md)"
    )
    largest_face: bool = Field(False, description="take the largest face of an image with several")
    retry_score: float | None = Field(
        0.25,
        ge=0.05,
        le=0.99,
        description="detector score of a second look at an image in which no face was found (as `eval` "
        "does, so enrolment keeps the faces accuracy was measured on); the quality gate still applies; "
        "null: no second look",
    )
    batch_size: int = Field(16, ge=1, le=1000, description="faces per gallery commit (one fsync each)")
    max_batch_wait_s: float = Field(
        1.0,
        gt=0,
        le=60,
        description="commit a partial batch after this long, so acknowledgements stay prompt",
    )
    workers: int = Field(1, ge=1, le=16, description="images decoded/detected/embedded at once")
    duplicate_cosine: float = Field(
        0.9999, ge=0.99, le=1.0, description="cosine at which a face counts as already enrolled"
    )
    duplicate_cache_persons: int = Field(
        256,
        ge=1,
        le=100_000,
        description="persons whose enrolled embeddings are kept for the duplicate check",
    )
    thumbnail_quality: int = Field(85, ge=30, le=100, description="JPEG quality of the aligned thumbnail")
    max_items: int = Field(1_000_000, ge=1, le=100_000_000, description="most images listed in one run")


@dataclass(frozen=True)
class EnrollItem:
    """One image to enrol. `error` marks an input row that is unusable before any image is read."""

    path: Path
    outer_id: str
    user_info: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class Outcome:
    path: str
    outer_id: str
    status: Literal["enrolled", "rejected", "duplicate"]
    reasons: tuple[str, ...] = ()
    detail: str = ""
    face_id: str | None = None
    quality: float | None = None

    def as_json(self) -> dict[str, Any]:
        return {"type": "image", **asdict(self), "reasons": list(self.reasons)}


MAX_REFUSED = 1000  # refused files named in the summary; --json-lines names every one


@dataclass
class EnrollSummary:
    group_id: str
    model_id: str
    quality_level: str
    images: int = 0
    enrolled: int = 0
    rejected: int = 0
    duplicates: int = 0
    reasons: dict[str, int] = field(default_factory=dict)  # rejected images per reason (several may apply)
    persons: dict[str, dict[str, int]] = field(default_factory=dict)  # outer_id -> status -> count
    refused: list[dict[str, Any]] = field(default_factory=list)  # first MAX_REFUSED: path, reasons, detail
    seconds: float = 0.0

    @property
    def faces_per_s(self) -> float:
        return self.enrolled / self.seconds if self.seconds > 0 else 0.0

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def add(self, o: Outcome) -> None:
        self.images += 1
        if o.status == "enrolled":
            self.enrolled += 1
        elif o.status == "duplicate":
            self.duplicates += 1
        else:
            self.rejected += 1
            for reason in o.reasons:
                self.reasons[reason] = self.reasons.get(reason, 0) + 1
            if len(self.refused) < MAX_REFUSED:  # bounded: a million-image run keeps the first ones
                self.refused.append({"path": o.path, "reasons": list(o.reasons), "detail": o.detail})
        if o.outer_id:  # "" = no person (an image outside every person folder)
            per = self.persons.setdefault(o.outer_id, {"enrolled": 0, "rejected": 0, "duplicate": 0})
            per[o.status] += 1

    def as_json(self) -> dict[str, Any]:
        return {
            "type": "summary",
            **asdict(self),
            "faces_per_s": round(self.faces_per_s, 2),
            "images_per_s": round(self.images_per_s, 2),
        }


# -- inputs --------------------------------------------------------------------------------------------------


# Why an item was refused before its image was read (EnrollItem.error -> the outcome's detail).
ITEM_ERRORS = {
    "invalid_row": "path and outer_id are required",
    "no_person_folder": "an image outside every person folder: move it into a folder named after the person",
}


def _is_image(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES


def items_from_folder(root: Path, limit: int = 1_000_000) -> list[EnrollItem]:
    """root/<person>/<image>: the folder name is the outer_id; hidden entries and non-images are skipped.
    Images directly in `root` belong to nobody: they are listed as refused, so the summary names them."""
    if not root.is_dir():
        raise InputError(f"{root} is not a folder", code="enroll_source_not_found")
    items = [EnrollItem(p, "", None, "no_person_folder") for p in sorted(root.iterdir()) if _is_image(p)]
    for person in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for path in sorted(person.iterdir()):
            if _is_image(path):
                items.append(EnrollItem(path, person.name))
                if len(items) > limit:
                    raise InputError(f"{root} holds more than {limit} images", code="too_many_images")
    return items


def items_from_csv(csv_path: Path, limit: int = 1_000_000) -> list[EnrollItem]:
    """CSV with a header: path, outer_id[, user_info]. Relative paths are relative to the CSV's folder."""
    try:
        handle = open(csv_path, newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise InputError(f"cannot read {csv_path}: {exc}", code="enroll_source_not_found") from exc
    items: list[EnrollItem] = []
    with handle:
        reader = csv.DictReader(handle)
        missing = {"path", "outer_id"} - set(reader.fieldnames or ())
        if missing:
            raise InputError(
                f"{csv_path}: header must name the columns path, outer_id[, user_info]; missing "
                f"{', '.join(sorted(missing))}",
                code="invalid_csv",
            )
        try:
            for row in reader:
                items.append(_csv_item(csv_path.parent, row, reader.line_num))
                if len(items) > limit:
                    raise InputError(f"{csv_path} lists more than {limit} images", code="too_many_images")
        except (csv.Error, UnicodeDecodeError) as exc:
            raise InputError(f"{csv_path} is not a valid UTF-8 CSV: {exc}", code="invalid_csv") from exc
    return items


def _csv_item(base: Path, row: dict[str, str | None], line: int) -> EnrollItem:
    raw_path, outer_id = (row.get("path") or "").strip(), (row.get("outer_id") or "").strip()
    info = row.get("user_info")
    if not raw_path or not outer_id:
        return EnrollItem(
            Path(raw_path or f"<line {line}>"), outer_id or f"<line {line}>", None, "invalid_row"
        )
    path = Path(raw_path)
    return EnrollItem(path if path.is_absolute() else base / path, outer_id, info)


def load_items(source: Path, limit: int = 1_000_000) -> list[EnrollItem]:
    if source.is_file() and source.suffix.lower() == ".csv":
        return items_from_csv(source, limit)
    return items_from_folder(source, limit)


# -- the enroller --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Ready:
    """An image that passed every check, waiting for its batch commit."""

    item: EnrollItem
    face: NewFace


class Enroller:
    """Enrols images with one engine into one gallery. Not thread-safe itself; uses `workers` threads."""

    def __init__(self, engine: Any, gallery: Gallery, config: EnrollConfig) -> None:
        self.engine = engine
        self.gallery = gallery
        self.config = config
        self._known: OrderedDict[str, list[np.ndarray]] = OrderedDict()  # LRU: outer_id -> vectors

    def prepare_group(self) -> None:
        try:
            self.gallery.get_group(self.config.group_id)
        except InputError as exc:
            # The default group is the one `run` matches against out of the box (and creates): enrolling
            # into it on a fresh state dir must just work. Other groups need --create-group, so a typo in a
            # group name is an error, not a new empty group.
            wanted = self.config.create_group or self.config.group_id == DEFAULT_GROUP
            if exc.code != "group_not_found" or not wanted:
                if exc.code == "group_not_found":
                    raise InputError(f"{exc.message} (use --create-group)", code=exc.code) from exc
                raise
            self.gallery.create_group(group_id=self.config.group_id)

    def run(
        self,
        items: Iterable[EnrollItem],
        on_outcome: Callable[[Outcome, EnrollSummary], None] | None = None,
    ) -> EnrollSummary:
        """Enrol every item, calling `on_outcome` once per image: rejections at once, enrolments only after
        their batch is committed, so an `enrolled` outcome is a durable face."""
        self.prepare_group()
        cfg = self.config
        summary = EnrollSummary(cfg.group_id, self.engine.model_id, cfg.quality_level)
        report = on_outcome or (lambda o, s: None)
        pending: list[_Ready] = []
        t0 = time.perf_counter()
        first_pending = 0.0

        def emit(o: Outcome) -> None:
            summary.add(o)
            summary.seconds = time.perf_counter() - t0
            report(o, summary)

        def flush() -> None:
            for o in self._commit(pending):
                emit(o)
            pending.clear()

        with ThreadPoolExecutor(cfg.workers, thread_name_prefix="enroll") as pool:
            window: deque[Future] = deque()  # bounded: at most 2 * workers images in flight
            for item in list(items) + [None]:  # type: ignore[list-item]
                if item is not None:
                    window.append(pool.submit(self._analyze, item))
                while window and (item is None or len(window) >= 2 * cfg.workers):
                    result = window.popleft().result()
                    if isinstance(result, Outcome):
                        emit(result)
                        continue
                    dup = self._duplicate(result, pending)
                    if dup is not None:
                        emit(dup)
                        continue
                    if not pending:
                        first_pending = time.monotonic()
                    pending.append(result)
                    if (
                        len(pending) >= cfg.batch_size
                        or time.monotonic() - first_pending > cfg.max_batch_wait_s
                    ):
                        flush()
            flush()
        summary.seconds = time.perf_counter() - t0
        return summary

    # -- per image (worker threads) -----------------------------------------------------------------------

    def _analyze(self, item: EnrollItem) -> Outcome | _Ready:
        def reject(reasons: tuple[str, ...], detail: str) -> Outcome:
            return Outcome(str(item.path), item.outer_id, "rejected", reasons, detail)

        if item.error is not None:
            return reject((item.error,), ITEM_ERRORS.get(item.error, item.error))
        try:
            data = self._read(item.path)
            image = self.engine.load(data)
            faces = self.engine.detect(image)
            if not faces and self.config.retry_score is not None:  # a second, lower-threshold look
                found = self.engine.detector.detect(image.pixels, score_threshold=self.config.retry_score)
                faces = sorted(found, key=lambda f: -(f.box.width * f.box.height))
            if not faces:
                return reject(("no_face",), "no face detected")
            if len(faces) > 1 and not self.config.largest_face:
                return reject(("several_faces",), f"{len(faces)} faces detected (use --largest-face)")
            face = faces[0]
            quality = evaluate_quality(measure_quality(image.pixels, face), self.config.quality_level)
            if quality.reasons:
                return reject(quality.reasons, f"quality below {self.config.quality_level}")
            emb = self.engine.embed(image, [face], keep_chips=True)[0]
        except AgentError as exc:
            return reject((exc.code,), exc.message)
        thumb = self._thumbnail(emb.chip)
        new = NewFace(item.outer_id, emb.vector, emb.model_id, round(quality.score, 4), item.user_info, thumb)
        return _Ready(item, new)

    def _read(self, path: Path) -> bytes:
        limit = self.engine.config.images.max_bytes
        try:
            size = path.stat().st_size
            if size > limit:
                raise InputError(f"file is {size} bytes; the limit is {limit}", code="image_too_large")
            return path.read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read file: {exc.strerror or exc}", code="unreadable_file") from exc

    def _thumbnail(self, chip: np.ndarray | None) -> bytes | None:
        limit = self.gallery.config.max_thumbnail_bytes
        if chip is None or limit == 0:
            return None
        ok, buf = cv2.imencode(".jpg", chip, [cv2.IMWRITE_JPEG_QUALITY, self.config.thumbnail_quality])
        return bytes(buf) if ok and len(buf) <= limit else None

    # -- duplicates and commits (calling thread) ------------------------------------------------------------

    def _vectors_of(self, outer_id: str) -> list[np.ndarray]:
        if outer_id in self._known:
            self._known.move_to_end(outer_id)
            return self._known[outer_id]
        model = self.engine.model_id
        faces = self.gallery.faces_of_person(self.config.group_id, outer_id)
        vectors = [self.gallery.get_embedding(f.face_id) for f in faces if f.model_id == model]
        self._known[outer_id] = vectors
        if len(self._known) > self.config.duplicate_cache_persons:
            self._known.popitem(last=False)
        return vectors

    def _duplicate(self, ready: _Ready, pending: list[_Ready]) -> Outcome | None:
        vec = ready.face.vector
        known = self._vectors_of(ready.item.outer_id)
        known = known + [p.face.vector for p in pending if p.item.outer_id == ready.item.outer_id]
        if known and float(np.max(np.stack(known) @ vec)) >= self.config.duplicate_cosine:
            return Outcome(str(ready.item.path), ready.item.outer_id, "duplicate", (), "already enrolled")
        return None

    def _commit(self, batch: list[_Ready]) -> list[Outcome]:
        """Add the batch in one transaction; if the gallery refuses it, add one by one to find the culprit."""
        if not batch:
            return []
        try:
            records = self.gallery.add_faces(self.config.group_id, [r.face for r in batch])
        except InputError as exc:
            if len(batch) > 1:
                return [o for r in batch for o in self._commit([r])]
            item = batch[0].item
            return [Outcome(str(item.path), item.outer_id, "rejected", (exc.code,), exc.message)]
        out = []
        for ready, rec in zip(batch, records, strict=True):
            if ready.item.outer_id in self._known:
                self._known[ready.item.outer_id].append(ready.face.vector)
            item = ready.item
            out.append(
                Outcome(str(item.path), item.outer_id, "enrolled", (), "", rec.face_id, ready.face.quality)
            )
        return out
