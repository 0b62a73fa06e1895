"""Benchmark: gallery sync between a hub process and edges over plain HTTP on loopback (docs/sync.md).

    nice -n 5 .venv/bin/python scripts/bench_sync.py                       # full run: 100k faces, ~17 min
    nice -n 5 .venv/bin/python scripts/bench_sync.py --faces 5000 --seconds 10 --sync-repeats 1  # smoke
    nice -n 5 .venv/bin/python scripts/bench_sync.py --postgres --hubs 2 --edges 200 --rate 20  # issue 14

`--postgres` runs the hubs on a PostgreSQL database (`--database URL`, or a throw-away local cluster made
with Debian's postgresql binaries, as the tests do: tests/pg_support.py) and `--hubs N` starts N hub
processes on it; the simulated edges are spread over them round-robin, the full syncs use the first one,
and hub CPU is the sum over the hub processes (each also printed).

What it measures (after printing the CPU model and core count):

1. Full sync of --faces faces (128-D L2-normalised float32, 5 faces per person, model "bench-model/f32")
   from an empty edge to searchable: `EdgeSyncer.sync_once()` until it returns True, then a search on the edge
   gallery for a few faces' embeddings returns those faces. Run WITHOUT thumbnails (the edge's default
   `thumbnails: auto`, same model, so none are sent) for each --build-threads value (the edge's
   GalleryConfig.build_threads), and WITH thumbnails (`thumbnails: always`; one real 150x150 aligned chip of
   obama-480p.jpg, JPEG q85, about 6.4 KB, stored for every face of a second hub group) with
   --thumbs-build-threads. The time is split by wrapping, inside this script only, HubClient.get (transfer:
   request -> hub reads SQLite and encodes JSON -> body read -> JSON decode on the edge; also split into
   those parts via HubClient._read and HubClient._decode), agent.gallery.mirror.apply_page (SQLite apply,
   one transaction with fsync per page) and HnswIndex.add / remove (index update); "other" is the rest
   (converting ops: base64 and checks, locks, sync-state reads). The hub's own CPU seconds during the sync
   are read from /proc/<hub pid>/stat. Median over --sync-repeats runs, each onto a fresh edge directory.
2. 100 changes on the hub after the edge holds the whole group: 50 faces of new persons added, 30 faces
   deleted, 20 persons' user_info changed, each its own hub transaction (as 100 API calls would be), then
   one sync_once() on the edge and one batched search that must show all of them (added faces found,
   deleted faces gone, new user_info returned). Time from the first write; median over --change-repeats.
3. Hub under load: --edges simulated edges (threads in --load-procs processes, each with its own device id
   and HubClient) poll every --interval s (GET /v1/sync/groups, then the feed while the head is ahead of
   their cursor; they do not decode embeddings or write anything), while this process enrols --rate
   faces/s (one transaction each) into the hub's store, for --seconds. Reported: hub process CPU (utime +
   stime delta / wall over the enrolment window), per-request latency p50/p99 (groups and feed GETs), and
   feed latency = time from a face's commit on the hub (add_faces returned) to a simulated edge holding the
   page with it, over every (edge, face) pair. Polling dominates the latter (uniform 0..interval); the
   per-request latency is the hub's part. The synced edge from (1) also runs its real EdgeSyncer every
   --interval s meanwhile (SQLite + index apply): commit -> applied there, measured when sync_once returns.

The hub runs in a separate process (`bench_sync.py --role hub --state DIR --port P`): Gallery + HubService
(HubConfig(allow_plaintext=True)) + ApiServer(families=[hub.family]) on 127.0.0.1. build_context needs an
engine object for the hub's ApiContext; the hub gets a fake one with only `model_id` (thresholds come from
ApiConfig.score_thresholds), which the /v1/sync feed never touches. The devices are created with
DeviceStore on the hub database before the hub starts; the faces are written by this process with
GalleryStore.add_faces in batches of 1000 after the hub is up (as `face-agent gallery import` from another
process would), before any timing, so the hub does not spend minutes building a search index the feed
never uses.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import logging
import multiprocessing as mp
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.api.config import ApiConfig  # noqa: E402
from agent.api.server import ApiServer, build_context  # noqa: E402
from agent.evaluation.datadir import shared_data_dir  # noqa: E402
from agent.gallery import Gallery, GalleryConfig, GalleryStore, HnswIndex, NewFace, mirror  # noqa: E402
from agent.sync.client import HubClient, HubRefused, HubUnavailable, read_secret  # noqa: E402
from agent.sync.config import HubConfig, SyncConfig  # noqa: E402
from agent.sync.devices import DeviceStore  # noqa: E402
from agent.sync.edge import EdgeSyncer  # noqa: E402
from agent.sync.hub import HubService  # noqa: E402

MODEL = "bench-model/f32"
DIM = 128
FACES_PER_PERSON = 5
PLAIN, THUMBS = "bench-plain", "bench-thumbs"  # hub groups: without / with thumbnails
THRESHOLDS = {"1e-3": 0.48, "1e-4": 0.55, "1e-5": 0.62}  # the hub's ApiContext needs some; never used
FILL_BATCH = 1000
CHIP_SOURCE = "faces/face_recognition/examples/obama-480p.jpg"


# -- machine -------------------------------------------------------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/<pid>/stat."""
    data = Path(f"/proc/{pid}/stat").read_text()
    fields = data[data.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(root_pid: int) -> float:
    """CPU seconds of a process and its children (PostgreSQL's postmaster and its backends): the root's
    utime + stime + cutime + cstime (children that exited) plus the live children's utime + stime."""
    tck = os.sysconf("SC_CLK_TCK")

    def fields(pid: int) -> list[str]:
        data = Path(f"/proc/{pid}/stat").read_text()
        return data[data.rindex(")") + 2 :].split()

    f = fields(root_pid)
    total = sum(int(x) for x in f[11:15]) / tck
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                c = fields(int(entry.name))
                if int(c[1]) == root_pid:
                    total += (int(c[11]) + int(c[12])) / tck
    return total


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values), q))


# -- the hub process -----------------------------------------------------------------------------------------


class _HubEngine:
    """build_context and the API families want an engine (model_id, config.images limits) for the hub's
    ApiContext; nothing under /v1/sync calls it, and it loads no model."""

    def __init__(self) -> None:
        from agent.config import EngineConfig

        self.model_id = MODEL
        self.config = EngineConfig()


def run_hub(state: Path, port: int, database: str | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="hub %(levelname)s %(name)s: %(message)s")
    gallery = Gallery(GalleryConfig(path=state / "gallery", save_interval_s=0, database=database))
    api = ApiConfig(host="127.0.0.1", port=port, score_thresholds=THRESHOLDS)
    hub = HubService(HubConfig(allow_plaintext=True), gallery, api)
    ctx = build_context(api, _HubEngine(), gallery, secrets={})
    server = ApiServer(api, ctx, families=[hub.family]).start()
    hub.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"READY {server.port}", flush=True)
    while not stop.wait(0.5):
        pass
    server.stop()
    hub.stop()
    gallery.close()
    return 0


class HubProcess:
    def __init__(self, state: Path, database: str | None = None) -> None:
        state.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--role", "hub", "--state", str(state)]
        cmd += ["--database", database] if database else []
        self._log = (state / "hub.log").open("wb")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._log, cwd=ROOT)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().strip()
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"hub did not start: {line!r}\n{(state / 'hub.log').read_text()[-3000:]}")
        self.port = int(line.split()[1])
        self.pid = self.proc.pid

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


# -- timing the edge's steps (wrappers installed by this script only) ----------------------------------------


class Split:
    KEYS = ("transfer", "wait", "body", "decode", "sqlite", "index", "index_add", "index_remove")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.t = dict.fromkeys(self.KEYS, 0.0)
        self.requests = 0
        self.bytes = 0

    def add(self, key: str, dt: float) -> None:
        self.t[key] += dt
        if key.startswith("index_"):
            self.t["index"] += dt


SPLIT = Split()


def _timed(key: str, fn):
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            SPLIT.add(key, time.perf_counter() - t0)

    wrapper.__wrapped__ = fn
    return wrapper


def install_timers() -> None:
    real_get, real_read = HubClient.get, HubClient._read

    def get(self, path, query=None):
        SPLIT.requests += 1
        return real_get(self, path, query)

    def read(self, conn, resp, deadline):
        body = real_read(self, conn, resp, deadline)
        SPLIT.bytes += len(body)
        return body

    HubClient.get = _timed("transfer", get)
    HubClient._read = _timed("body", read)
    HubClient._decode = _timed("decode", HubClient._decode)
    mirror.apply_page = _timed("sqlite", mirror.apply_page)
    HnswIndex.add = _timed("index_add", HnswIndex.add)
    HnswIndex.remove = _timed("index_remove", HnswIndex.remove)


# -- set-up --------------------------------------------------------------------------------------------------


def thumbnail_bytes(data: Path) -> bytes:
    """One real aligned face chip (the default engine's 150x150 crop), JPEG q85, as enrolment stores it."""
    import cv2

    from agent.config import EngineConfig
    from agent.inference.engine import FaceEngine

    engine = FaceEngine(EngineConfig())
    face = engine.analyze((data / CHIP_SOURCE).read_bytes(), 1, keep_chips=True)[0]
    ok, buf = cv2.imencode(".jpg", face.chip, [cv2.IMWRITE_JPEG_QUALITY, 85])
    assert ok
    return bytes(buf)


def unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def make_devices(hub_db: Path, state: Path, edges: int, database: str | None) -> dict[str, Path]:
    store = GalleryStore(GalleryConfig(path=hub_db, database=database))
    store.create_group(PLAIN)
    store.create_group(THUMBS)
    devices = DeviceStore(store)
    out = {}
    wanted = [("edge-plain", PLAIN), ("edge-thumbs", THUMBS)] + [
        (f"load-{i:03d}", PLAIN) for i in range(edges)
    ]
    for device, group in wanted:
        path = state / f"{device}.secret"
        path.write_text(devices.add(device, [group]) + "\n")
        out[device] = path
    store.close()
    return out


def fill(store: GalleryStore, group: str, vecs: np.ndarray, thumb: bytes | None) -> list[str]:
    ids: list[str] = []
    for start in range(0, len(vecs), FILL_BATCH):
        batch = [
            NewFace(f"p{i // FACES_PER_PERSON:06d}", vecs[i], MODEL, quality=0.9, thumbnail=thumb)
            for i in range(start, min(start + FILL_BATCH, len(vecs)))
        ]
        ids += [r.face_id for r in store.add_faces(group, batch)]
    return ids


# -- 1. full sync --------------------------------------------------------------------------------------------


def sync_cfg(port: int, device: str, secret: Path, **kw: Any) -> SyncConfig:
    return SyncConfig(
        hub_url=f"http://127.0.0.1:{port}", allow_plaintext=True, device_id=device, secret_file=secret, **kw
    )


def open_edge(path: Path, cfg: SyncConfig, build_threads: int) -> tuple[Gallery, EdgeSyncer]:
    gallery = Gallery(GalleryConfig(path=path, save_interval_s=0, build_threads=build_threads))
    return gallery, EdgeSyncer(cfg, gallery, MODEL, HubClient(cfg, read_secret(cfg, None)))


def top1(gallery: Gallery, group: str, vecs: np.ndarray) -> list[Any]:
    """The best face record (or None) for each query vector, searched in batches."""
    out: list[Any] = []
    for start in range(0, len(vecs), 100):
        for hits in gallery.search(group, MODEL, vecs[start : start + 100], 1):
            out.append(hits[0][0] if hits else None)
    return out


def full_sync(
    hub: HubProcess, edge_dir: Path, cfg: SyncConfig, group: str, bt: int, vecs: np.ndarray, ids: list[str]
) -> tuple[dict, Gallery, EdgeSyncer]:
    shutil.rmtree(edge_dir, ignore_errors=True)
    gallery, syncer = open_edge(edge_dir, cfg, bt)
    probe = [0, len(ids) // 2, len(ids) - 1]
    SPLIT.reset()
    cpu0 = hub.cpu()
    t0 = time.perf_counter()
    rounds = 1
    while not syncer.sync_once():
        rounds += 1
        if rounds > 20:
            raise RuntimeError(f"not caught up after 20 rounds: {syncer.status()}")
    t_sync = time.perf_counter() - t0
    found = top1(gallery, group, vecs[probe])
    total = time.perf_counter() - t0
    hub_cpu = hub.cpu() - cpu0
    assert [f.face_id if f else None for f in found] == [ids[i] for i in probe], "synced faces not searchable"
    sample = np.random.default_rng(0).choice(len(ids), size=min(1000, len(ids)), replace=False)
    hits = top1(gallery, group, vecs[sample])
    recall = float(
        np.mean([h is not None and h.face_id == ids[i] for h, i in zip(hits, sample, strict=True)])
    )
    n_faces = gallery.store.read("SELECT COUNT(*) FROM faces WHERE group_id = ?", (group,))[0][0]
    t = SPLIT.t
    row = {
        "total": total,
        "sync": t_sync,
        "transfer": t["transfer"],
        "wait": t["transfer"] - t["body"] - t["decode"],
        "body": t["body"],
        "decode": t["decode"],
        "sqlite": t["sqlite"],
        "index": t["index"],
        "other": total - t["transfer"] - t["sqlite"] - t["index"],
        "hub_cpu": hub_cpu,
        "requests": SPLIT.requests,
        "mb": SPLIT.bytes / 1e6,
        "faces": n_faces,
        "recall": recall,
        "rounds": rounds,
    }
    return row, gallery, syncer


SYNC_COLS = ("total", "transfer", "wait", "body", "decode", "sqlite", "index", "other", "hub_cpu")


def print_sync_row(label: str, row: dict) -> None:
    cells = " ".join(f"{row[c]:8.2f}" for c in SYNC_COLS)
    print(
        f"{label:<34} {cells} {row['requests']:5d} {row['mb']:8.1f} {row['faces']:7d} {row['recall']:.3f}",
        flush=True,
    )


def sync_header() -> None:
    cols = " ".join(f"{c:>8}" for c in SYNC_COLS)
    print(f"{'case (seconds)':<34} {cols} {'reqs':>5} {'MB':>8} {'faces':>7} recall@1")


def median_row(rows: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


# -- 2. 100 changes ------------------------------------------------------------------------------------------


class Changes:
    def __init__(self, store: GalleryStore, vecs: np.ndarray, ids: list[str], seed: int = 5) -> None:
        self.store, self.vecs, self.ids = store, vecs, ids
        self.rng = np.random.default_rng(seed)
        self.deleted: set[int] = set()
        self.persons = len(vecs) // FACES_PER_PERSON

    def round(self, rep: int, gallery: Gallery, syncer: EdgeSyncer, adds=50, deletes=30, infos=20) -> dict:
        rng = self.rng
        new_vecs = unit_vectors(rng, adds)
        free = [int(p) for p in rng.choice(self.persons, size=infos * 4, replace=False)]
        info_persons = [p for p in free if p * FACES_PER_PERSON not in self.deleted][:infos]
        blocked = {p * FACES_PER_PERSON for p in info_persons} | self.deleted  # faces that check the infos
        pool = [
            i for i in rng.choice(len(self.ids), size=deletes * 4, replace=False) if int(i) not in blocked
        ]
        gone = [int(i) for i in pool[:deletes]]
        self.deleted.update(gone)
        infos_text = {p: f"info-{rep}-{p}" for p in info_persons}

        SPLIT.reset()
        t0 = time.perf_counter()
        added = []
        for i in range(adds):
            added += self.store.add_faces(
                PLAIN, [NewFace(f"new-{rep}-{i:02d}", new_vecs[i], MODEL, quality=0.9)]
            )
        t_adds = time.perf_counter() - t0
        for i in gone:
            self.store.delete_face(self.ids[i])
        t_deletes = time.perf_counter() - t0 - t_adds
        for p, text in infos_text.items():
            self.store.upsert_person(PLAIN, f"p{p:06d}", text)
        t_write = time.perf_counter() - t0
        ok = syncer.sync_once()
        t_sync = time.perf_counter() - t0 - t_write
        checks = np.concatenate(
            [new_vecs, self.vecs[gone], self.vecs[[p * FACES_PER_PERSON for p in info_persons]]]
        )
        hits = top1(gallery, PLAIN, checks)
        total = time.perf_counter() - t0
        want_added = [r.face_id for r in added]
        good = ok and [h.face_id if h else None for h in hits[:adds]] == want_added
        good = good and all(
            h is None or h.face_id != self.ids[i]
            for h, i in zip(hits[adds : adds + deletes], gone, strict=True)
        )
        for h, p in zip(hits[adds + deletes :], info_persons, strict=True):
            good = good and h is not None and h.face_id == self.ids[p * FACES_PER_PERSON]
            good = good and h.user_info == infos_text[p]
        return {
            "total": total,
            "write": t_write,
            "w_adds": t_adds,
            "w_deletes": t_deletes,
            "w_infos": t_write - t_adds - t_deletes,
            "sync": t_sync,
            "search": total - t_write - t_sync,
            "transfer": SPLIT.t["transfer"],
            "sqlite": SPLIT.t["sqlite"],
            "index": SPLIT.t["index"],
            "index_add": SPLIT.t["index_add"],
            "index_remove": SPLIT.t["index_remove"],
            "ok": bool(good),
        }


def change_line(row: dict) -> str:
    return (
        f"total {row['total']:.3f} s = hub writes {row['write']:.3f} (50 adds {row['w_adds']:.3f}, 30 deletes"
        f" {row['w_deletes']:.3f}, 20 infos {row['w_infos']:.3f}) + sync_once {row['sync']:.3f} (transfer "
        f"{row['transfer']:.3f}, sqlite {row['sqlite']:.3f}, index add {row['index_add']:.3f} / remove "
        f"{row['index_remove']:.3f}) + search {row['search']:.3f}"
    )


# -- 3. hub under load ---------------------------------------------------------------------------------------


def load_worker(
    port: int, devices: list[tuple[str, str]], interval: float, ready, go, start_at, stop_at, out
) -> None:
    """Simulated edges: one thread per device, polling groups, then the feed while the head moved."""
    logging.basicConfig(level=logging.ERROR)
    results = {"groups_ms": [], "feed_ms": [], "recv": [], "errors": 0}
    codes: dict[str, int] = {}
    lock = threading.Lock()

    def edge(device: str, secret_path: str) -> None:
        cfg = sync_cfg(port, device, Path(secret_path))
        client = HubClient(cfg, read_secret(cfg, None))
        query = {"limit": cfg.page_ops, "max_bytes": cfg.page_bytes, "thumbnails": "auto", "model": MODEL}
        rng = random.Random(device)
        phase = rng.uniform(0, interval)
        g_ms, f_ms, recv, errors, mine = [], [], [], 0, {}
        try:  # start at the hub's head, as an edge that is in sync; the start-up burst may get 429 busy
            for attempt in range(100):
                try:
                    cursor = client.get("/v1/sync/groups")["groups"][0]["head"]
                    break
                except (HubUnavailable, HubRefused):
                    if attempt == 99:
                        raise
                    time.sleep(rng.uniform(0.05, 0.5))
        finally:
            inited.release()
        go.wait()
        k = 0
        while True:
            due = start_at.value + phase + k * interval
            k += 1
            if due > stop_at.value:
                break
            time.sleep(max(0.0, due - time.time()))
            try:
                t0 = time.perf_counter()
                head = client.get("/v1/sync/groups")["groups"][0]["head"]
                g_ms.append((time.perf_counter() - t0) * 1000)
                while head > cursor:
                    t0 = time.perf_counter()
                    page = client.get(f"/v1/sync/groups/{PLAIN}/feed", {"after": cursor, **query})
                    f_ms.append((time.perf_counter() - t0) * 1000)
                    now = time.time()
                    recv += [(op["face_id"], now) for op in page["ops"] if op["op"] == "face_added"]
                    cursor = page["next"]
                    if not page["more"]:
                        break
            except (HubUnavailable, HubRefused) as exc:
                errors += 1
                mine[exc.code] = mine.get(exc.code, 0) + 1
        with lock:
            results["groups_ms"] += g_ms
            results["feed_ms"] += f_ms
            results["recv"] += recv
            results["errors"] += errors
            for code, count in mine.items():
                codes[code] = codes.get(code, 0) + count

    inited = threading.Semaphore(0)
    threads = [threading.Thread(target=edge, args=d, daemon=True) for d in devices]
    for t in threads:
        t.start()
    for _ in threads:
        inited.acquire()
    ready.put(len(devices))
    for t in threads:
        t.join()
    out.put(results | {"codes": codes})


def hub_load(
    hubs: list[HubProcess],
    store: GalleryStore,
    secrets: dict[str, Path],
    args: argparse.Namespace,
    edge: tuple[Gallery, EdgeSyncer] | None,
) -> dict:
    ctx = mp.get_context("spawn")
    ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    start_at, stop_at = ctx.Value("d", 0.0), ctx.Value("d", 0.0)
    devices = [(f"load-{i:03d}", str(secrets[f"load-{i:03d}"])) for i in range(args.edges)]
    chunks = [devices[i :: args.load_procs] for i in range(args.load_procs)]
    procs = [
        ctx.Process(
            target=load_worker,
            args=(hubs[k % len(hubs)].port, c, args.interval, ready, go, start_at, stop_at, out),
            daemon=True,
        )
        for k, c in enumerate(chunks)
        if c
    ]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=120)
    rng = np.random.default_rng(9)
    vecs = unit_vectors(rng, int(args.rate * args.seconds) + 10)
    commits: dict[str, float] = {}
    applied: dict[str, float] = {}
    begin = time.time() + 1.0
    end = begin + args.seconds
    start_at.value = begin
    stop_at.value = end + 2 * args.interval + 1  # pollers go on a little to fetch the last faces
    go.set()
    stop_edge = threading.Event()

    def real_edge() -> None:
        assert edge is not None
        gallery, syncer = edge
        k = 0
        while not stop_edge.is_set():
            due = begin + 0.37 + k * args.interval
            k += 1
            if stop_edge.wait(max(0.0, due - time.time())):
                break
            try:
                syncer.sync_once()
            except (HubUnavailable, HubRefused):
                continue
            now = time.time()
            pending = [f for f in list(commits) if f not in applied]
            for i in range(0, len(pending), 500):
                part = pending[i : i + 500]
                sql = f"SELECT face_id FROM faces WHERE face_id IN ({','.join('?' * len(part))})"
                for (fid,) in gallery.store.read(sql, part):
                    applied[fid] = now

    edge_thread = threading.Thread(target=real_edge, daemon=True) if edge is not None else None
    if edge_thread is not None:
        edge_thread.start()
    time.sleep(max(0.0, begin - time.time()))
    pg0 = tree_cpu_seconds(args.pg_pid) if args.pg_pid else 0.0
    cpu0, w0 = [h.cpu() for h in hubs], time.monotonic()
    i = 0
    while True:
        due = begin + i / args.rate
        if due >= end:
            break
        time.sleep(max(0.0, due - time.time()))
        rec = store.add_faces(PLAIN, [NewFace(f"load-{i:05d}", vecs[i], MODEL, quality=0.9)])[0]
        commits[rec.face_id] = time.time()
        i += 1
    time.sleep(max(0.0, end - time.time()))
    hub_cpus, wall = [h.cpu() - c for h, c in zip(hubs, cpu0, strict=True)], time.monotonic() - w0
    pg_cpu = tree_cpu_seconds(args.pg_pid) - pg0 if args.pg_pid else float("nan")
    results = [out.get(timeout=args.seconds + 120) for _ in procs]
    for p in procs:
        p.join(30)
    stop_edge.set()
    if edge_thread is not None:
        edge_thread.join(60)
    groups_ms = [x for r in results for x in r["groups_ms"]]
    feed_ms = [x for r in results for x in r["feed_ms"]]
    lat = [(t - commits[f]) * 1000 for r in results for f, t in r["recv"] if f in commits]
    real = [(applied[f] - commits[f]) * 1000 for f in commits if f in applied]
    return {
        "edges": args.edges,
        "seconds": wall,
        "enrolled": len(commits),
        "rate": len(commits) / wall,
        "hub_cpu_pct": 100 * sum(hub_cpus) / wall,
        "hub_cpu_each": [round(100 * c / wall, 1) for c in hub_cpus],
        "pg_cpu_pct": 100 * pg_cpu / wall,
        "requests": len(groups_ms) + len(feed_ms),
        "req_per_s": (len(groups_ms) + len(feed_ms)) / (wall + 2 * args.interval + 1),
        "errors": sum(r["errors"] for r in results),
        "codes": {
            k: sum(r["codes"].get(k, 0) for r in results) for k in {c for r in results for c in r["codes"]}
        },
        "groups_p50": pct(groups_ms, 50),
        "groups_p99": pct(groups_ms, 99),
        "feed_p50": pct(feed_ms, 50),
        "feed_p99": pct(feed_ms, 99),
        "lat_p50": pct(lat, 50),
        "lat_p99": pct(lat, 99),
        "pairs": len(lat),
        "pairs_expected": len(commits) * args.edges,
        "real_p50": pct(real, 50),
        "real_p99": pct(real, 99),
        "real_n": len(real),
    }


# -- main ----------------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--role", choices=["bench", "hub"], default="bench")
    ap.add_argument("--state", type=Path, default=None, help="hub role: its state directory; bench: work dir")
    ap.add_argument("--port", type=int, default=0, help="hub role: port to listen on (0: any free one)")
    ap.add_argument("--data", type=Path, default=shared_data_dir(ROOT))
    ap.add_argument("--faces", type=int, default=100_000)
    ap.add_argument(
        "--build-threads", type=int, nargs="+", default=[1, 2], help="edge build_threads, no thumbs"
    )
    ap.add_argument("--thumbs-build-threads", type=int, default=1)
    ap.add_argument("--sync-repeats", type=int, default=3, help="full syncs per case (median)")
    ap.add_argument("--change-repeats", type=int, default=5)
    ap.add_argument("--edges", type=int, default=50)
    ap.add_argument("--load-procs", type=int, default=2)
    ap.add_argument("--interval", type=float, default=2.0)
    ap.add_argument("--rate", type=float, default=10.0, help="faces enrolled per second during the load")
    ap.add_argument("--seconds", type=float, default=60.0, help="length of the load run")
    ap.add_argument("--skip-thumbs", action="store_true")
    ap.add_argument("--skip-changes", action="store_true")
    ap.add_argument("--skip-load", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--postgres", action="store_true", help="hubs on PostgreSQL (a local throw-away cluster)")
    ap.add_argument("--database", default=None, help="hubs on this PostgreSQL URL (migrated here)")
    ap.add_argument("--hubs", type=int, default=1, help="hub processes (more than 1 needs PostgreSQL)")
    args = ap.parse_args()
    if args.role == "hub":
        return run_hub(args.state, args.port, args.database)
    args.pg_pid = 0  # set when this script runs the cluster: its CPU is reported too
    if args.hubs > 1 and not (args.postgres or args.database):
        ap.error("--hubs > 1 needs --postgres or --database: SQLite hubs do not share a database")

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    print(f"CPU: {cpu_model()}; cores: {os.cpu_count()} (usable {len(os.sched_getaffinity(0))})")
    print(
        f"load average {os.getloadavg()}; Python {platform.python_version()}, numpy {np.__version__}, "
        f"hnswlib {importlib.metadata.version('hnswlib')}"
    )
    n = args.faces - args.faces % FACES_PER_PERSON
    work = args.state or Path(tempfile.mkdtemp(prefix="bench-sync-"))
    work.mkdir(parents=True, exist_ok=True)
    hub_state = work / "hub"
    hub_state.mkdir(exist_ok=True)
    install_timers()
    thumb = None if args.skip_thumbs else thumbnail_bytes(args.data)
    cluster, database = None, args.database
    if args.postgres and database is None:
        sys.path.insert(0, str(ROOT / "tests"))
        from pg_support import start_server

        cluster = start_server()
        database = cluster.new_database()
        args.pg_pid = int((cluster.data / "postmaster.pid").read_text().split()[0])
    if database is not None:
        from agent.gallery.db import PostgresDb
        from agent.gallery.pg_schema import migrate

        db = PostgresDb(database, pool_size=1, timeout_s=10)
        migrate(db)
        db.close()
        print(f"hubs on PostgreSQL ({db.describe()})")
    secrets = make_devices(hub_state / "gallery", work, args.edges, database)
    hubs = [HubProcess(hub_state if k == 0 else work / f"hub-{k}", database) for k in range(args.hubs)]
    hub = hubs[0]
    edge: tuple[Gallery, EdgeSyncer] | None = None
    store: GalleryStore | None = None
    try:
        store = GalleryStore(GalleryConfig(path=hub_state / "gallery", database=database))
        vecs = unit_vectors(np.random.default_rng(1), n)
        t0 = time.perf_counter()
        ids = fill(store, PLAIN, vecs, None)
        tids = [] if thumb is None else fill(store, THUMBS, vecs, thumb)
        print(
            f"hub {hub.pid} on port {hub.port}: {n} faces ({n // FACES_PER_PERSON} persons x "
            f"{FACES_PER_PERSON}) in {PLAIN}"
            + ("" if thumb is None else f" and in {THUMBS} with a {len(thumb)}-byte JPEG thumbnail each")
            + f", filled in {time.perf_counter() - t0:.1f} s (untimed)"
        )

        print(f"\n1. full sync of {n} faces, empty edge -> searchable; median of {args.sync_repeats} run(s)")
        sync_header()
        summary: dict[str, dict] = {}
        cases = [(f"no thumbs, build_threads={bt}", PLAIN, "auto", bt) for bt in args.build_threads]
        if thumb is not None:
            cases.append(
                (
                    f"thumbs, build_threads={args.thumbs_build_threads}",
                    THUMBS,
                    "always",
                    args.thumbs_build_threads,
                )
            )
        keep_plain = len(args.build_threads) - 1  # the last no-thumbs edge stays open for (2) and (3)
        for c, (label, group, mode, bt) in enumerate(cases):
            device = "edge-plain" if group == PLAIN else "edge-thumbs"
            cfg = sync_cfg(hub.port, device, secrets[device], thumbnails=mode)
            rows = []
            for r in range(args.sync_repeats):
                edge_dir = work / f"edge-{c}-{r}"
                row, gallery, syncer = full_sync(
                    hub, edge_dir, cfg, group, bt, vecs, ids if group == PLAIN else tids
                )
                print_sync_row(f"  run {r + 1}: {label}", row)
                if c == keep_plain and r == args.sync_repeats - 1:
                    edge = (gallery, syncer)
                else:
                    gallery.close()
                    shutil.rmtree(edge_dir, ignore_errors=True)
                rows.append(row)
            summary[label] = median_row(rows)
            print_sync_row(f"median: {label}", summary[label])
        print(
            "columns: total = empty -> searchable; transfer = wait (request, hub reads + encodes) + body + "
            "decode (JSON); sqlite = mirror.apply_page; index = HnswIndex.add; other = convert ops, locks; "
            "hub_cpu = hub process CPU s"
        )

        if not args.skip_changes and edge is not None:
            print(
                f"\n2. 100 changes on the hub (50 adds, 30 face deletes, 20 user_info) -> edge search shows "
                f"them; {args.change_repeats} repetitions, one sync_once() each"
            )
            ch = Changes(store, vecs, ids)
            rows = []
            for r in range(args.change_repeats):
                row = ch.round(r, *edge)
                rows.append(row)
                print(f"  run {r + 1}: {change_line(row)}; all reflected: {row['ok']}", flush=True)
            med = {k: statistics.median(x[k] for x in rows) for k in rows[0] if k != "ok"}
            print(f"  median: {change_line(med)}; all reflected in {sum(x['ok'] for x in rows)}/{len(rows)}")

        if not args.skip_load:
            print(
                f"\n3. hub under load: {args.edges} edges polling every {args.interval:g} s in "
                f"{args.load_procs} processes, enrolment {args.rate:g} faces/s, {args.seconds:g} s"
            )
            res = hub_load(hubs, store, secrets, args, edge)
            each = "" if len(hubs) == 1 else f" (per hub process: {res['hub_cpu_each']})"
            if args.pg_pid:
                each += f"; PostgreSQL (all its processes) {res['pg_cpu_pct']:.1f} %"
            print(
                f"  hub CPU {res['hub_cpu_pct']:.1f} % of one core{each} over {res['seconds']:.1f} s; "
                f"enrolled {res['enrolled']} faces ({res['rate']:.2f}/s); {res['requests']} requests "
                f"({res['req_per_s']:.1f}/s), {res['errors']} errors {res['codes'] or ''}"
            )
            print(
                f"  per request: GET groups p50 {res['groups_p50']:.1f} ms p99 {res['groups_p99']:.1f} ms; "
                f"GET feed p50 {res['feed_p50']:.1f} ms p99 {res['feed_p99']:.1f} ms"
            )
            print(
                f"  commit on hub -> simulated edge holds it: p50 {res['lat_p50']:.0f} ms p99 "
                f"{res['lat_p99']:.0f} ms over {res['pairs']}/{res['pairs_expected']} (edge, face) pairs"
            )
            if edge is not None:
                print(
                    f"  commit on hub -> real EdgeSyncer applied it (SQLite + index, {n}-face edge): "
                    f"p50 {res['real_p50']:.0f} ms p99 {res['real_p99']:.0f} ms over {res['real_n']} faces"
                )
    finally:
        if edge is not None:
            edge[0].close()
        if store is not None:
            store.close()
        for h in hubs:
            h.stop()
        if cluster is not None:
            cluster.stop()
            shutil.rmtree(cluster.root, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
