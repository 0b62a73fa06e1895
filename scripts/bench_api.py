"""Benchmark: 1:N search requests/s over real HTTP (native API, HMAC-signed, keep-alive), with N concurrent
clients in a separate process so they do not share the server's GIL.

    .venv/bin/python scripts/bench_api.py --clients 1,4,16 --seconds 8 --rounds 3 [--before REV]

Prints, per client count, the median over rounds of requests/s, p50 and p99 latency (ms), the server
process's CPU time per request (all threads, from /proc), and the ratio of requests/s to the 1-client run.
Enrols --persons LFW identities (one photo each) first; queries are other
LFW photos of the same people (250x250 JPEG, one face each).

`--before REV` compares with the agent package of a git revision in the same run: `git archive` extracts
that revision's agent/ beside a link to this tree's models/, each version serves from its own process
(the same engine settings and gallery), and the rounds alternate between them, so drift and the load of
other processes fall on both alike. It prints both rows and after/before ratios.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TREE = Path(os.environ.get("BENCH_AGENT_TREE", ROOT))  # --before: the older revision's agent/ is served
sys.path.insert(0, str(TREE))

from agent.api import ApiConfig, ApiServer, build_context, native_header  # noqa: E402
from agent.config import EmbedderConfig, EngineConfig  # noqa: E402
from agent.errors import ModelError  # noqa: E402
from agent.evaluation.datadir import shared_data_dir  # noqa: E402
from agent.gallery import Gallery, GalleryConfig  # noqa: E402
from agent.inference.engine import FaceEngine  # noqa: E402

KEY, SECRET = "bench-key", "bench-secret-0123"
PROVISIONAL = {"1e-3": 0.48, "1e-4": 0.55, "1e-5": 0.62}  # only if the manifest has no thresholds yet


def lfw_people(data: Path, n: int) -> list[tuple[str, Path, Path]]:
    """(name, enrol photo, query photo) for the first n LFW people with at least two photos."""
    out = []
    for person in sorted((data / "lfw-devtrain" / "images").iterdir()):
        photos = sorted(person.glob("*.jpg"))
        if len(photos) >= 2:
            out.append((person.name, photos[0], photos[1]))
        if len(out) == n:
            break
    return out


def client_worker(port: int, bodies: list[bytes], clients: int, seconds: float, out: mp.Queue) -> None:
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds
    path = "/api/v1/groups/bench/search"

    def run(idx: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine, i = [], idx
        while time.monotonic() < stop_at:
            body = bodies[i % len(bodies)]
            i += clients
            auth = native_header(KEY, SECRET, "POST", path, body, uuid.uuid4().hex)
            t0 = time.perf_counter()
            conn.request("POST", path, body, {"Content-Type": "application/json", "Authorization": auth})
            resp = conn.getresponse()
            resp.read()
            if resp.status == 200:
                mine.append(time.perf_counter() - t0)
            else:
                with lock:
                    errors[0] += 1
        conn.close()
        with lock:
            latencies.extend(mine)

    t0 = time.monotonic()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put((latencies, errors[0], time.monotonic() - t0))


def measure(port: int, bodies: list[bytes], clients: int, seconds: float) -> tuple[float, float, float, int]:
    q: mp.Queue = mp.get_context("spawn").Queue()
    proc = mp.get_context("spawn").Process(target=client_worker, args=(port, bodies, clients, seconds, q))
    proc.start()
    lat, errors, elapsed = q.get(timeout=seconds + 120)
    proc.join(30)
    lat.sort()
    p = lambda f: 1000 * lat[min(len(lat) - 1, int(f * len(lat)))] if lat else float("nan")  # noqa: E731
    return len(lat) / elapsed, p(0.50), p(0.99), errors


def serve(args: argparse.Namespace) -> None:
    """Enrol the bench gallery, serve it, print the port on stdout, run until stdin closes."""
    try:
        engine = FaceEngine(EngineConfig())
    except ModelError:
        engine = FaceEngine(EngineConfig(embedder=EmbedderConfig(precision="fp32")))
    people = lfw_people(args.data, args.persons)
    with tempfile.TemporaryDirectory() as tmp:
        secret_file = Path(tmp) / "secret"
        secret_file.write_text(SECRET)
        cfg = ApiConfig(
            port=0,
            credentials=[{"key": KEY, "secret_file": str(secret_file)}],
            engine_concurrency=args.engine_concurrency,
            engine_queue=64,
            max_handlers=max(32, 2 * max(int(c) for c in args.clients.split(","))),
            score_thresholds=None if len(engine.thresholds) >= 3 else PROVISIONAL,
        )
        gallery = Gallery(GalleryConfig(path=Path(tmp) / "gallery", save_interval_s=0))
        ctx = build_context(cfg, engine, gallery)
        gallery.create_group("bench")
        for name, enrol, _ in people:
            try:
                ctx.enrol("bench", name, ctx.load(enrol.read_bytes()))
            except Exception as exc:  # a photo without a detectable face is skipped
                print(f"skip {name}: {exc}", file=sys.stderr)
        server = ApiServer(cfg, ctx).start()
        try:
            persons = len(gallery.list_persons("bench"))
            print(json.dumps({"port": server.port, "model": engine.model_id, "persons": persons}), flush=True)
            sys.stdin.read()
        finally:
            server.stop()
            gallery.close()


def spawn(tree: Path, args: argparse.Namespace) -> tuple[subprocess.Popen, dict]:
    env = dict(os.environ, BENCH_AGENT_TREE=str(tree))
    cmd = [sys.executable, __file__, "--serve", "--data", str(args.data), "--persons", str(args.persons)]
    cmd += ["--engine-concurrency", str(args.engine_concurrency), "--clients", args.clients]
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line:
        raise SystemExit(f"bench server from {tree} did not start (exit {proc.wait()})")
    return proc, json.loads(line)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def export(rev: str, into: Path) -> Path:
    """The agent/ package of `rev` under `into`, with this tree's models/ beside it."""
    cmd = ["git", "-C", str(ROOT), "archive", rev, "agent"]
    archive = subprocess.run(cmd, check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    (into / "models").symlink_to(ROOT / "models")
    return into


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=shared_data_dir(ROOT))
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--persons", type=int, default=100)
    ap.add_argument("--engine-concurrency", type=int, default=2)
    ap.add_argument("--before", metavar="REV", help="also serve the agent package of this git revision")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args)
        return
    people = lfw_people(args.data, args.persons)
    bodies = [
        json.dumps({"image_base64": base64.b64encode(q.read_bytes()).decode()}).encode() for _, _, q in people
    ]
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"this tree": ROOT}
        if args.before:
            trees = {f"before ({args.before})": export(args.before, Path(tmp)), "after (this tree)": ROOT}
        servers = {name: spawn(tree, args) for name, tree in trees.items()}
        try:
            info = next(iter(servers.values()))[1]
            print(
                f"model {info['model']}, {info['persons']} persons, cpus {os.cpu_count()}, "
                f"engine_concurrency {args.engine_concurrency}, {args.rounds} rounds x {args.seconds:.0f} s"
            )
            for _, meta in servers.values():
                measure(meta["port"], bodies, 1, 1.0)  # warm-up
            results: dict[str, dict[int, tuple[float, ...]]] = {n: {} for n in servers}
            for clients in [int(c) for c in args.clients.split(",")]:
                runs: dict[str, list] = {n: [] for n in servers}
                for _ in range(args.rounds):  # alternate: both see the same drift
                    for name, (proc, meta) in servers.items():
                        cpu0 = cpu_seconds(proc.pid)
                        r = measure(meta["port"], bodies, clients, args.seconds)
                        per_request = (cpu_seconds(proc.pid) - cpu0) / max(1.0, r[0] * args.seconds)
                        runs[name].append((*r, 1000 * per_request))
                for name, rs in runs.items():
                    results[name][clients] = (
                        statistics.median(r[0] for r in rs),
                        statistics.median(r[1] for r in rs),
                        statistics.median(r[2] for r in rs),
                        sum(r[3] for r in rs),
                        statistics.median(r[4] for r in rs),
                    )
            report(results)
        finally:
            for proc, _ in servers.values():
                proc.stdin.close()
                proc.wait(60)


def report(results: dict[str, dict[int, tuple[float, ...]]]) -> None:
    names = list(results)
    for name in names:
        base = None
        print(name)
        for clients, (rps, p50, p99, errors, cpu) in results[name].items():
            base = base or rps
            print(
                f"  clients {clients:2d}: {rps:6.1f} req/s (x{rps / base:.2f})  p50 {p50:6.1f} ms  "
                f"p99 {p99:6.1f} ms  server CPU {cpu:5.1f} ms/request  non-200 {errors:.0f}"
            )
    if len(names) == 2:
        before, after = results[names[0]], results[names[1]]
        print("after / before")
        for clients in before:
            b, a = before[clients], after[clients]
            ratios = f"req/s x{a[0] / b[0]:.3f}  p50 x{a[1] / b[1]:.3f}  p99 x{a[2] / b[2]:.3f}"
            ratios += f"  CPU/request x{a[4] / b[4]:.3f}"
            print(f"  clients {clients:2d}: {ratios}")


if __name__ == "__main__":
    main()
