"""Configuration slice of the local gallery: where it lives, HNSW parameters, bounds and timeouts."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# The group `run` matches against, `enroll` fills and JD faceCreate / faceSearch use without a group, unless
# told otherwise. Here, below every package that needs it (agent.config re-exports it).
DEFAULT_GROUP = "default"


class GalleryConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path = Field(
        description="Directory of the gallery: gallery.sqlite3 plus indexes/ (created if missing)."
    )
    database: str | None = Field(
        None,
        max_length=4096,
        pattern=r"^postgres(ql)?://",
        description="PostgreSQL URL of the store (set through hub.database: several hub processes share "
        "it); unset: gallery.sqlite3 under path. indexes/ stay under path either way.",
        repr=False,  # may carry a password
    )
    pool_size: int = Field(
        8, ge=1, le=256, description="PostgreSQL connections this process keeps at most (database set)."
    )
    follow_interval_s: float = Field(
        1.0,
        gt=0,
        le=3600,
        description="With database set: how often this process takes other hub processes' enrolments and "
        "deletions into its search indexes (a search sees them at most this much later).",
    )
    synchronous: Literal["FULL", "NORMAL"] = Field(
        "FULL",
        description="SQLite synchronous mode (WAL journal). FULL fsyncs the WAL on every commit, so an "
        "acknowledged enrolment survives power loss; NORMAL survives a process crash only.",
    )
    busy_timeout_s: float = Field(
        5.0,
        gt=0,
        le=300,
        description="How long SQLite waits for a locked database; on PostgreSQL the connect, pool and lock "
        "timeout.",
    )
    hnsw_m: int = Field(
        32,
        ge=4,
        le=64,
        description="HNSW graph degree M; more = better recall, more memory. 32: recall@1 0.999 and p99 "
        "1.05 ms at 1M x 128-d with ef_search 128 (16 gave 0.978 at ef 256; scripts/bench_gallery.py).",
    )
    ef_construction: int = Field(
        200, ge=16, le=1000, description="HNSW ef at build time; more = better graph, slower enrolment."
    )
    ef_search: int = Field(
        128,
        ge=8,
        le=2000,
        description="HNSW ef at query time (hnswlib raises it to k when k is larger); 128 gave recall@1 "
        ">= 0.999 up to 100k faces in scripts/bench_gallery.py, 64 only 0.976 at 100k x 512-d.",
    )
    initial_capacity: int = Field(
        1024, ge=16, le=10_000_000, description="Slots allocated when an index is created."
    )
    growth_factor: float = Field(
        2.0, ge=1.1, le=8.0, description="Capacity multiplier when an index is full."
    )
    max_elements: int = Field(
        4_000_000,
        ge=16,
        le=100_000_000,
        description="Hard cap on slots per (group, model) index, deleted slots included; beyond it "
        "enrolment fails with code gallery_full.",
    )
    build_threads: int = Field(1, ge=1, le=64, description="Threads hnswlib uses for a bulk (re)build.")
    max_parallel_builds: int = Field(1, ge=1, le=16, description="Index builds allowed to run at once.")
    compact_deleted_ratio: float = Field(
        0.3,
        ge=0.05,
        le=0.95,
        description="Rebuild an index off-thread when this share of its slots holds deleted faces.",
    )
    save_interval_s: float = Field(
        60.0,
        ge=0.0,
        le=86_400,
        description="Seconds between saves of changed indexes to disk; 0 saves only on close(). SQLite is "
        "the source of truth, so a lost index file costs a rebuild, never data.",
    )
    ready_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="How long a search waits for an index that is still being built."
    )
    lock_timeout_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="How long a write waits for the gallery write lock (held during index saves).",
    )
    candidate_factor: int = Field(
        4,
        ge=1,
        le=50,
        description="Faces fetched per requested person, so persons with several enrolled faces still "
        "fill top-k after collapsing faces to persons.",
    )
    max_top_k: int = Field(100, ge=1, le=1000, description="Largest top-k a search may ask for.")
    max_query_faces: int = Field(10, ge=1, le=100, description="Most faces in one M:N search.")
    max_batch: int = Field(1000, ge=1, le=100_000, description="Most faces in one add_faces call.")
    max_thumbnail_bytes: int = Field(
        65_536,
        ge=0,
        le=4_000_000,
        description="Largest stored aligned-face thumbnail; 0 disables thumbnails.",
    )
    on_variant_change: Literal["reembed", "refuse"] = Field(
        "reembed",
        description="Faces enrolled under another variant of the running model (another precision or "
        "runtime file: another embedding space) at start: 'reembed' them from their thumbnails (faces "
        "without one refuse the start), or 'refuse' to start until they are re-enrolled or deleted. "
        "Older ids of the very same file (in the model manifest) are accepted either way, and logged.",
    )
    max_text_chars: int = Field(
        1024, ge=16, le=65_536, description="Longest group name, outerId or user_info accepted."
    )

    @model_validator(mode="after")
    def _capacity_fits(self) -> GalleryConfig:
        if self.initial_capacity > self.max_elements:
            raise ValueError("initial_capacity must not exceed max_elements")
        return self
