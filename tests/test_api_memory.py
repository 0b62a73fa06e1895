"""Decoded request images are bounded by pixels, not by requests (issue 15, item 9): a burst waits for room
or gets the family's busy answer, and every reservation comes back when its pixels are freed."""

from __future__ import annotations

import base64
import gc
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_api_support import native, start

from agent.api.common import PixelBudget
from agent.errors import TransientError

FR = "faces/face_recognition/examples"


def test_the_budget_waits_then_refuses_and_gives_room_back():
    budget = PixelBudget(100, wait_s=0.2)
    first = budget.acquire(60)
    with pytest.raises(TransientError) as refused:
        budget.acquire(60)  # 40 free: waits its 0.2 s, then busy
    assert refused.value.code == "busy" and budget.refused == 1
    done = threading.Event()
    slow = PixelBudget(100, wait_s=30)

    def waiter() -> None:
        slow.acquire(60)
        done.set()

    slow.acquire(60)
    t = threading.Thread(target=waiter)
    t.start()
    slow.release(60)  # the waiter gets the room that came back
    t.join(30)
    assert done.is_set() and slow.free == 40
    budget.release(first)
    assert budget.acquire(500) == 100 and budget.free == 0  # larger than the budget: waits to be alone


@pytest.fixture
def big_jpeg(data_dir: Path) -> str:
    face = cv2.imread(str(data_dir / FR / "obama-720p.jpg"))
    small = np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8)
    canvas = cv2.resize(small, (2048, 2048), interpolation=cv2.INTER_CUBIC)
    canvas[: face.shape[0], : face.shape[1]] = face
    return base64.b64encode(cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, 70])[1]).decode()


def _burst(run, payload, n: int = 12) -> list:
    replies = []

    def one() -> None:
        replies.append(native(run, "POST", "/api/v1/compare", payload))

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(replies) == n
    return replies


@pytest.mark.parametrize("wait_s", [30.0, 0.05])
def test_a_burst_of_large_images_is_bounded_and_leaves_nothing_reserved(tmp_path, big_jpeg, wait_s):
    # Room for one 2048x2048 image at a time. A long wait: everybody waits their turn and gets an answer; a
    # short one: most of the burst gets the family's busy answer instead of memory.
    run = start(tmp_path, decode_pixels=2048 * 2048, engine_wait_s=wait_s, max_handlers=32, engine_queue=32)
    try:
        replies = _burst(run, {"image_a_base64": big_jpeg, "image_b_base64": big_jpeg})
        budget = run.server.ctx.decodes
        statuses = sorted(r.status for r in replies)
        assert budget.waited >= 1, statuses  # the bound was in force: decodes queued for room
        if wait_s > 1:
            assert statuses == [200] * 12
        else:
            assert 429 in statuses and set(statuses) <= {200, 429}, statuses
            assert all(r.json()["error"]["code"] == "busy" for r in replies if r.status == 429)
            assert budget.refused >= 1
        gc.collect()  # nothing else holds a decoded image: every reservation is back
        assert budget.free == budget.total, (budget.free, budget.total)
    finally:
        run.close()
