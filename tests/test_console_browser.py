"""The console in a real browser: Debian's headless Chromium driven by Playwright against a real agent on
loopback (the Hamilton clip looped in real time, the API server with the console mounted). Every wait is
on a page condition (Playwright's expect / wait_for), never a fixed sleep."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest
from console_support import LIN_PHOTO, PASSWORD, start_agent

CHROMIUM = "/usr/bin/chromium"
LONG_MS = 45_000  # a pass of the 9.2 s clip on a loaded 2-core machine, with margin

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect


@pytest.fixture(scope="module")
def browser():
    if shutil.which(CHROMIUM) is None:
        pytest.skip(f"Debian's chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    with playwright_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def test_log_in_watch_enrol_review_erase(browser, data_dir: Path, tmp_path: Path) -> None:
    app = start_agent(tmp_path, data_dir)
    try:
        base = app.api.url + "/console"
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        remote: list[str] = []
        page.on("request", lambda r: None if r.url.startswith(app.api.url) else remote.append(r.url))

        # Log in: every page sends an anonymous visitor to the login form first.
        page.goto(base + "/live")
        expect(page).to_have_url(re.compile(r"/console/login$"))
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        expect(page).to_have_url(re.compile(r"/console/live$"))

        # A live frame with a box over a face.
        expect(page.locator(".camera .box").first).to_be_visible(timeout=LONG_MS)
        page.wait_for_function(
            "() => [...document.querySelectorAll('.frame-img')].some(i => i.complete && i.naturalWidth > 0)"
        )
        expect(page.locator(".cam-health").first).to_contain_text("fps")

        # Enrol Lin-Manuel Miranda from an uploaded photo.
        page.goto(base + "/people")
        form = page.locator("#add-person")
        form.locator("input[name=outer_id]").fill("lin-manuel")
        form.locator("input[name=user_info]").fill("badge 7")
        form.locator("input[name=photos]").set_input_files(str(data_dir / LIN_PHOTO))
        form.locator("button[type=submit]").click()
        expect(page.locator(".flash.ok")).to_contain_text("enrolled 1 face")
        card = page.locator('.person[data-person="lin-manuel"]')
        expect(card.locator(".thumbs img")).to_have_count(1)

        # Named on the next pass of the video.
        page.goto(base + "/live")
        expect(page.locator(".box.known", has_text="lin-manuel").first).to_be_visible(timeout=LONG_MS)

        # Assign a cluster of unknown faces (one not like Lin-Manuel, with a face of enrolment quality) to a
        # new person. The page shows what it has when loaded: reload until the camera has seen such a face.
        # The page itself is reloaded until it shows one: a fetch that saw one and a reload after it may
        # disagree (the clusters and their "looks like" hints are recomputed on every request).
        strangers = ".cluster:not([data-closest]):is([data-level=NORMAL], [data-level=HIGH])"
        deadline = time.monotonic() + LONG_MS / 1000
        page.goto(base + "/review")
        while page.locator(strangers).count() == 0:
            assert time.monotonic() < deadline, "no unknown face of enrolment quality reached the review page"
            page.wait_for_function(  # until a fetch of the page shows one, then load the page again
                f"""async () => {{
                    const html = await (await fetch("{base}/review")).text();
                    const doc = new DOMParser().parseFromString(html, "text/html");
                    return doc.querySelector("{strangers}") !== null;
                }}""",
                polling=500,
                timeout=LONG_MS,
            )
            page.reload()
        stranger = page.locator(strangers).first
        stranger.locator("input[name=new_id]").fill("visitor-1")
        stranger.locator("button", has_text="Assign").click()
        expect(page).to_have_url(re.compile(r"/console/review$"))
        expect(page.locator(".flash.ok").first).to_contain_text("enrolled")
        assert app.gallery.faces_of_person("door", "visitor-1")

        # Erase Lin-Manuel: gone from the page, the gallery and the console's recent faces.
        page.goto(base + "/people")
        card = page.locator('.person[data-person="lin-manuel"]')
        card.locator("summary").click()
        card.locator("input[name=confirm]").fill("lin-manuel")
        card.locator("button.danger").click()
        expect(page.locator(".flash.ok")).to_contain_text("erased lin-manuel")
        expect(page.locator('.person[data-person="lin-manuel"]')).to_have_count(0)
        assert "lin-manuel" not in [p.outer_id for p in app.gallery.list_persons("door")]
        assert not [f for f in app.observer.recent() if f.person_id == "lin-manuel"]
        assert remote == [], f"the console fetched from elsewhere: {remote}"

        # A phone-sized screen gets the same pages without horizontal scrolling.
        phone = browser.new_page(viewport={"width": 390, "height": 844})
        phone.context.add_cookies(page.context.cookies())
        for name in ("live", "people", "review", "status"):
            phone.goto(f"{base}/{name}")
            expect(phone.locator("main h1")).to_be_visible()
            assert phone.evaluate("document.documentElement.scrollWidth") <= 390, name
    finally:
        app.stop()
