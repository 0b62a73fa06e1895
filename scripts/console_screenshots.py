"""Screenshots of the web console for docs/console.md: each page on a laptop (1280x800) and a phone (390x844).

Runs a real agent on loopback (the Hamilton clip from ../shared/data looped in real time, as the browser test
does), logs in with Debian's Chromium through Playwright, enrols Lin-Manuel Miranda from his photo, waits
until the live view names him and the review page has a cluster of unknown faces, then saves
docs/img/console-<page>-<desktop|phone>.png.

    .venv/bin/python scripts/console_screenshots.py [--out docs/img]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # console_support: the same agent the browser test runs

from console_support import LIN_PHOTO, PASSWORD, start_agent  # noqa: E402

from agent.evaluation.datadir import shared_data_dir  # noqa: E402

WAIT_MS = 60_000
VIEWPORTS = {"desktop": {"width": 1280, "height": 800}, "phone": {"width": 390, "height": 844}}
PAGES = ("live", "people", "review", "status")


def _prepare(page, base: str, data_dir: Path) -> None:
    """Log in, enrol Lin-Manuel, wait until he is named live and a stranger cluster is up for review."""
    from playwright.sync_api import expect

    page.goto(base + "/login")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.goto(base + "/people")
    form = page.locator("#add-person")
    form.locator("input[name=outer_id]").fill("lin-manuel")
    form.locator("input[name=user_info]").fill("badge 7")
    form.locator("input[name=photos]").set_input_files(str(data_dir / LIN_PHOTO))
    form.locator("button[type=submit]").click()
    expect(page.locator(".flash.ok")).to_contain_text("enrolled")
    page.goto(base + "/review")
    page.wait_for_function(
        f"""async () => {{
            const html = await (await fetch("{base}/review")).text();
            const clusters = (html.match(/class="card cluster"/g) || []).length;
            return clusters >= 2 && html.includes("recognised face");
        }}""",
        polling=1000,
        timeout=WAIT_MS,
    )


def _shoot(page, base: str, out: Path, kind: str) -> list[Path]:
    from playwright.sync_api import expect

    saved = []
    for name in PAGES:
        page.goto(f"{base}/{name}")
        if name == "live":
            expect(page.locator(".box.known").first).to_be_visible(timeout=WAIT_MS)
            page.wait_for_function(
                "() => [...document.querySelectorAll('.frame-img')].every(i => i.complete && i.naturalWidth)"
            )
        path = out / f"console-{name}-{kind}.png"
        page.screenshot(path=str(path), full_page=False)
        saved.append(path)
    return saved


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    data_dir = shared_data_dir(ROOT).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        app = start_agent(Path(tmp), data_dir)
        try:
            base = app.api.url + "/console"
            with sync_playwright() as pw:
                browser = pw.chromium.launch(
                    executable_path=args.chromium, headless=True, args=["--no-sandbox"]
                )
                login = browser.new_page(viewport=VIEWPORTS["desktop"])
                login.goto(base + "/login")
                login.screenshot(path=str(args.out / "console-login-desktop.png"))
                desktop = browser.new_page(viewport=VIEWPORTS["desktop"])
                _prepare(desktop, base, data_dir)
                saved = _shoot(desktop, base, args.out, "desktop")
                phone = browser.new_page(viewport=VIEWPORTS["phone"], device_scale_factor=2)
                phone.context.add_cookies(desktop.context.cookies())
                saved += _shoot(phone, base, args.out, "phone")
                browser.close()
        finally:
            app.stop()
    for path in [args.out / "console-login-desktop.png", *saved]:
        print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: {path.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
