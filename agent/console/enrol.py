"""Enrolment from the console through the same code as `face-agent enroll`: agent.gallery.enroll.Enroller.

Uploaded photos (and review crops) are not files, so `_MemoryEnroller` only changes where the bytes come
from; detection, the one-face rule, the quality gate, the duplicate check, thumbnails and the batch commit
are the Enroller's own. The whole run holds one slot of the API's engine gate, like one API enrolment.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from agent.api.service import ApiContext
from agent.errors import InputError
from agent.gallery.enroll import EnrollConfig, Enroller, EnrollItem, EnrollSummary


class _MemoryEnroller(Enroller):
    def __init__(self, ctx: ApiContext, config: EnrollConfig, images: dict[Path, bytes]) -> None:
        super().__init__(ctx.engine, ctx.gallery, config)
        self._images = images

    def _read(self, path: Path) -> bytes:
        data = self._images[path]
        limit = self.engine.config.images.max_bytes
        if len(data) > limit:  # the same limit Enroller._read applies to files
            raise InputError(f"file is {len(data)} bytes; the limit is {limit}", code="image_too_large")
        return data


def enrol_images(
    ctx: ApiContext,
    group_id: str,
    outer_id: str,
    user_info: str | None,
    images: Sequence[tuple[str, bytes]],
    quality_level: str,
    largest_face: bool = False,
) -> EnrollSummary:
    """Enrol `images` (name, bytes) as `outer_id`; the summary names each refused image and why."""
    ctx.gallery.get_group(group_id)  # unknown group: group_not_found, before the engine is used
    config = EnrollConfig(
        group_id=group_id,
        quality_level=quality_level,
        largest_face=largest_face,  # type: ignore[arg-type]
    )
    # Names are only labels in the summary; the index keeps two uploads of the same name apart.
    data = {Path(f"{i + 1}:{name}"): raw for i, (name, raw) in enumerate(images)}
    items = [EnrollItem(path, outer_id, user_info) for path in data]
    enroller = _MemoryEnroller(ctx, config, data)
    summary = ctx.gate.run(enroller.run, items)
    if summary.enrolled and user_info is not None:
        ctx.gallery.upsert_person(group_id, outer_id, user_info)
    return summary


def describe(summary: EnrollSummary) -> list[tuple[str, str]]:
    """Flash messages: what was enrolled and, per refused image, the reasons."""
    out: list[tuple[str, str]] = []
    if summary.enrolled:
        out.append(("ok", f"enrolled {summary.enrolled} face(s)"))
    if summary.duplicates:
        out.append(("info", f"{summary.duplicates} photo(s) already enrolled, not added again"))
    for refused in summary.refused:
        name = str(refused["path"]).split(":", 1)[-1]
        out.append(("error", f"{name}: refused: {', '.join(refused['reasons'])} ({refused['detail']})"))
    return out
