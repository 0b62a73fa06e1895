"""The SQLite outbox on real files: order, durability, bounds and drop counts, pinning, corruption."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agent.errors import TransientError
from agent.publish.config import OutboxConfig
from agent.publish.outbox import Outbox, OutMessage


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def msgs(*names: str, size: int = 10) -> list[OutMessage]:
    return [OutMessage(f"t/{n}", n.encode().ljust(size, b".")) for n in names]


def make(tmp_path: Path, clock: Clock | None = None, **kw) -> Outbox:
    return Outbox(OutboxConfig(path=tmp_path / "o.sqlite3", **kw), clock=clock or Clock())


def test_put_is_committed_before_returning_and_order_is_kept(tmp_path: Path) -> None:
    box = make(tmp_path)
    ids = box.put(msgs("a", "b", "c"))
    # Another connection (as after a crash) sees the rows at once: the transaction is committed.
    with sqlite3.connect(tmp_path / "o.sqlite3") as other:
        assert [r[0] for r in other.execute("SELECT topic FROM outbox ORDER BY id")] == ["t/a", "t/b", "t/c"]
    assert ids == sorted(ids)
    assert [r.topic for r in box.peek(0, 10)] == ["t/a", "t/b", "t/c"]
    assert [r.topic for r in box.peek(ids[0], 1)] == ["t/b"]
    assert box.delete([ids[1], 999_999]) == 1
    assert [r.topic for r in box.peek(0, 10)] == ["t/a", "t/c"]
    assert box.depth() == 2 and box.size_bytes() == 20
    box.close()


def test_ids_keep_growing_across_reopen_even_when_emptied(tmp_path: Path) -> None:
    box = make(tmp_path)
    first = box.put(msgs("a", "b"))
    box.delete(first)
    box.close()
    box = make(tmp_path)
    assert box.depth() == 0
    (later,) = box.put(msgs("c"))
    assert later > max(first)  # AUTOINCREMENT: a restarted agent never re-uses a seq number
    box.close()


def test_max_rows_drops_oldest_and_counts_persistently(tmp_path: Path) -> None:
    box = make(tmp_path, max_rows=10)
    box.put(msgs(*[f"m{i}" for i in range(15)]))
    assert [r.topic for r in box.peek(0, 100)] == [f"t/m{i}" for i in range(5, 15)]
    assert box.drops() == {"max_rows": 5}
    box.close()
    box = make(tmp_path, max_rows=10)
    assert box.drops() == {"max_rows": 5} and box.depth() == 10
    box.close()


def test_max_bytes_drops_oldest(tmp_path: Path) -> None:
    box = make(tmp_path, max_bytes=64 * 1024)
    big = 20 * 1024
    box.put(msgs("a", "b", "c", size=big))
    assert box.drops() == {}
    box.put(msgs("d", size=big))  # 80 KiB > 64 KiB: the oldest goes
    assert [r.topic for r in box.peek(0, 10)] == ["t/b", "t/c", "t/d"]
    assert box.drops() == {"max_bytes": 1} and box.size_bytes() == 3 * big
    box.close()


def test_max_age_prunes_and_counts(tmp_path: Path) -> None:
    clock = Clock()
    box = make(tmp_path, clock, max_age_s=60)
    box.put(msgs("old"))
    clock.now += 30
    box.put(msgs("young"))
    clock.now += 40  # 'old' is 70 s old, 'young' 40 s
    assert box.oldest_age_s() == pytest.approx(70)
    assert box.prune() == 1
    assert [r.topic for r in box.peek(0, 10)] == ["t/young"]
    assert box.drops() == {"max_age": 1}
    box.close()


def test_pinned_rows_are_never_dropped_by_bounds(tmp_path: Path) -> None:
    clock = Clock()
    box = make(tmp_path, clock, max_rows=10, max_age_s=60)
    ids = box.put(msgs(*[f"m{i}" for i in range(10)]))
    box.pin(ids[:3])  # handed to the network layer: it will deliver them
    box.put(msgs("n0", "n1"))
    assert [r.topic for r in box.peek(0, 3)] == ["t/m0", "t/m1", "t/m2"]
    assert {r.topic for r in box.peek(0, 100)}.isdisjoint({"t/m3", "t/m4"})
    clock.now += 120
    assert box.prune() == 7  # everything but the 3 pinned rows expires
    assert box.depth() == 3
    box.unpin(ids[:1])
    assert box.prune() == 1
    assert box.drops() == {"max_rows": 2, "max_age": 8}
    box.close()


def test_corrupt_file_is_moved_aside_and_a_fresh_outbox_starts(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    path.write_bytes(b"this is not an sqlite database" * 100)
    box = make(tmp_path)
    assert box.depth() == 0
    box.put(msgs("a"))
    assert len(list(tmp_path.glob("o.sqlite3.corrupt-*"))) == 1
    box.close()


def test_failed_write_raises_transient_error_and_queues_nothing(tmp_path: Path) -> None:
    box = make(tmp_path)
    box.put(msgs("a"))
    with pytest.raises(TransientError) as err:
        box.put([OutMessage("t/x", b"x"), OutMessage(None, b"y")])  # type: ignore[arg-type]  # NOT NULL
    assert err.value.code == "outbox_write_failed"
    assert [r.topic for r in box.peek(0, 10)] == ["t/a"] and box.depth() == 1
    box.close()
