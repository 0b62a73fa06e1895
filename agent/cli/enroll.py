"""Terminal side of `face-agent enroll`: progress on stderr, JSON lines or a summary table on stdout."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, TextIO

from agent.gallery.enroll import EnrollSummary, Outcome


class Progress:
    """A plain-text progress bar when `stream` is a terminal (redrawn at most every `tty_interval_s`),
    otherwise one line every `line_interval_s`, so logs of a long batch job stay readable."""

    def __init__(
        self, total: int, stream: TextIO, *, tty_interval_s: float = 0.1, line_interval_s: float = 5.0
    ) -> None:
        self.total = total
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.interval = tty_interval_s if self.tty else line_interval_s
        self._last = 0.0
        self.lines = 0

    def update(self, summary: EnrollSummary, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self._last < self.interval:
            return
        self._last = now
        text = self._text(summary)
        if self.tty:
            self.stream.write("\r" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
        self.lines += 1

    def _text(self, s: EnrollSummary) -> str:
        total = max(self.total, 1)
        counts = f"{s.images}/{self.total} images, {s.enrolled} enrolled, {s.rejected} rejected"
        if s.duplicates:
            counts += f", {s.duplicates} duplicates"
        rate = f"{s.faces_per_s:.1f} faces/s"
        if not self.tty:
            return f"enroll: {counts}, {rate}"
        width = 30
        done = int(width * s.images / total)
        return f"[{'#' * done}{'.' * (width - done)}] {100 * s.images // total:3d}% {counts}, {rate}"


_SHOWN_REFUSED = 50  # refused files listed in the human summary


def summary_table(s: EnrollSummary) -> str:
    """Human-readable summary: totals, rejections by reason, per-person counts, speed."""
    lines = [
        f"group {s.group_id!r}, model {s.model_id}, quality level {s.quality_level}",
        f"images     {s.images:>7}",
        f"enrolled   {s.enrolled:>7}",
        f"rejected   {s.rejected:>7}",
        f"duplicates {s.duplicates:>7}  (already enrolled, not added again)",
    ]
    if s.reasons:
        lines.append("")
        lines.append("rejected by reason (an image failing several quality checks counts under each):")
        for reason, n in sorted(s.reasons.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"  {reason:<24} {n:>7}")
    if s.refused:
        lines.append("")
        lines.append("refused files:")
        for r in s.refused[:_SHOWN_REFUSED]:
            lines.append(f"  {r['path']}: {', '.join(r['reasons'])} ({r['detail']})")
        more = s.rejected - min(len(s.refused), _SHOWN_REFUSED)
        if more > 0:
            lines.append(f"  ... and {more} more (--json-lines lists every image)")
    if s.persons:
        width = max(12, *(len(p) for p in s.persons))
        lines.append("")
        lines.append(f"  {'person':<{width}} {'enrolled':>8} {'rejected':>8} {'duplicate':>9}")
        for person, c in sorted(s.persons.items()):
            lines.append(f"  {person:<{width}} {c['enrolled']:>8} {c['rejected']:>8} {c['duplicate']:>9}")
    lines.append("")
    lines.append(f"{s.seconds:.1f} s: {s.faces_per_s:.2f} enrolled faces/s, {s.images_per_s:.2f} images/s")
    return "\n".join(lines)


def enroll_main(args: Any) -> int:
    """`face-agent enroll SOURCE`. Exit 0 when every image was enrolled or was a duplicate, 1 when some
    were rejected (the summary says why), 2 on an error that stopped the run."""
    from agent.cli.serve import engine_overrides, load_serve_config
    from agent.gallery.enroll import EnrollConfig, Enroller, load_items
    from agent.gallery.variants import open_gallery
    from agent.inference.engine import FaceEngine

    cfg = load_serve_config(args.config, os.environ, {"state_dir": args.state_dir, **engine_overrides(args)})
    enroll_cfg = EnrollConfig(
        group_id=args.group,
        create_group=args.create_group,
        quality_level=args.quality,
        largest_face=args.largest_face,
        batch_size=args.batch_size,
        workers=args.workers,
    )
    items = load_items(args.source, enroll_cfg.max_items)
    engine = FaceEngine(cfg.engine)
    progress = Progress(len(items), sys.stderr)

    def on_outcome(outcome: Outcome, summary: EnrollSummary) -> None:
        if args.json_lines:  # one line per image; an "enrolled" line means the face is on disk
            print(json.dumps(outcome.as_json(), ensure_ascii=False), flush=True)
        progress.update(summary)

    with open_gallery(cfg.gallery, engine) as gallery:
        summary = Enroller(engine, gallery, enroll_cfg).run(items, on_outcome)
    progress.update(summary, final=True)
    if args.json or args.json_lines:
        print(json.dumps(summary.as_json(), ensure_ascii=False), flush=True)
    else:
        print(summary_table(summary))
    return 1 if summary.rejected else 0
