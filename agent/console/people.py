"""People page: groups, persons and their face thumbnails; add, rename, edit, delete a face, erase."""

from __future__ import annotations

from typing import Any

from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from agent.console.enrol import describe, enrol_images
from agent.console.security import Session
from agent.console.web import Console, base
from agent.errors import InputError
from agent.gallery import NewFace

MAX_ID = 256
MAX_INFO = 65536


# The image types a thumbnail is served as; anything else is a download (no SVG with script, no HTML).
THUMB_TYPES = {"jpeg": "image/jpeg", "jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"}


def field(form: FormData, name: str, required: bool = True, max_len: int = MAX_ID) -> str:
    """A text field of the form, stripped; a missing required or an overlong one is an InputError."""
    value = form.get(name)
    if isinstance(value, UploadFile):
        raise InputError(f"{name} must be text, not a file", code="bad_argument")
    text = (value or "").strip()
    if required and not text:
        raise InputError(f"{name} is required", code="missing_argument")
    if len(text) > max_len:
        raise InputError(f"{name} is longer than {max_len} characters", code="bad_argument")
    return text


def _overview(console: Console, group_id: str | None) -> dict[str, Any]:
    gallery, model = console.ctx.gallery, console.ctx.model_id
    groups = gallery.list_groups()
    chosen = next((g for g in groups if g.group_id == group_id), None)
    if chosen is None and groups:
        preferred = console.deps.group_id
        chosen = next((g for g in groups if g.group_id == preferred), groups[0])
    persons = []
    if chosen is not None:
        for p in gallery.list_persons(chosen.group_id):
            faces = gallery.faces_of_person(chosen.group_id, p.outer_id)
            other = [f for f in faces if f.model_id != model]
            persons.append({"person": p, "faces": faces, "other_model": other})
    return {"groups": groups, "group": chosen, "persons": persons}


async def page(request: Request, console: Console, session: Session) -> Response:
    data = await console.blocking(_overview, console, request.query_params.get("group"))
    levels = ("NONE", "LOW", "NORMAL", "HIGH")
    return console.render(
        request,
        "people.html",
        session,
        **data,
        quality=console.deps.config.enroll_quality,
        levels=levels,
        max_files=console.deps.config.max_upload_files,
    )


async def thumbnail(request: Request, console: Console, session: Session) -> Response:
    face_id = request.path_params["face_id"]
    if len(face_id) > 64:
        return PlainTextResponse("no such face", status_code=404)
    found = await console.blocking(console.ctx.gallery.get_thumbnail, face_id)
    if found is None:
        return PlainTextResponse("this face has no thumbnail", status_code=404)
    fmt, data = found
    media = THUMB_TYPES.get(str(fmt or "jpeg").lower())
    if media is None:  # gallery data (maybe a hub's mirror) names another type: never rendered as a page
        headers = {"Cache-Control": "no-store", "Content-Disposition": 'attachment; filename="thumbnail.bin"'}
        return Response(data, media_type="application/octet-stream", headers=headers)
    return Response(data, media_type=media, headers={"Cache-Control": "no-store"})


def _to_group(request: Request, group_id: str) -> RedirectResponse:
    from urllib.parse import quote

    return RedirectResponse(f"{base(request)}/people?group={quote(group_id)}", status_code=303)


async def _photos(console: Console, form: FormData) -> list[tuple[str, bytes]]:
    files = [f for f in form.getlist("photos") if isinstance(f, UploadFile) and f.filename]
    if not files:
        raise InputError("choose at least one photo", code="missing_argument")
    return [(f.filename or "photo", await f.read()) for f in files]


async def add(request: Request, console: Console, session: Session) -> Response:
    """New person (or more photos for one): the uploads go through the enrolment gates."""
    form = await console.form(request)
    group_id, outer_id = field(form, "group_id"), field(form, "outer_id")
    info = field(form, "user_info", required=False, max_len=MAX_INFO) or None
    level = field(form, "quality", required=False) or console.deps.config.enroll_quality
    if level not in ("NONE", "LOW", "NORMAL", "HIGH"):
        raise InputError(f"unknown quality level {level!r}", code="bad_argument")
    photos = await _photos(console, form)
    summary = await console.blocking(enrol_images, console.ctx, group_id, outer_id, info, photos, level)
    for kind, text in describe(summary):
        session.say(kind, text)
    await console.blocking(gallery_changed, console)
    return _to_group(request, group_id)


async def info(request: Request, console: Console, session: Session) -> Response:
    form = await console.form(request)
    group_id, outer_id = field(form, "group_id"), field(form, "outer_id")
    user_info = field(form, "user_info", required=False, max_len=MAX_INFO)
    gallery = console.ctx.gallery
    await console.blocking(gallery.get_person, group_id, outer_id)  # unknown person: person_not_found
    await console.blocking(gallery.upsert_person, group_id, outer_id, user_info)
    session.say("ok", f"{outer_id}: user_info saved")
    return _to_group(request, group_id)


def move_faces(console: Console, group_id: str, face_ids: list[str], to_id: str, info: str | None) -> int:
    """Move enrolled faces to another person of the group: same embedding, quality and thumbnail (they
    passed the gates when enrolled), added under `to_id`, then removed from their old person."""
    gallery = console.ctx.gallery
    new: list[NewFace] = []
    for face_id in face_ids:
        rec = gallery.get_face(face_id)
        if rec.group_id != group_id:
            raise InputError(f"face {face_id} is not in group {group_id}", code="face_not_found")
        thumb = gallery.get_thumbnail(face_id)
        vector = gallery.get_embedding(face_id)
        fmt, data = thumb if thumb is not None else ("jpeg", None)
        new.append(NewFace(to_id, vector, rec.model_id, rec.quality, info, data, fmt))
    if new:
        old_persons = {gallery.get_face(face_id).outer_id for face_id in face_ids}
        gallery.add_faces(group_id, new)
        for face_id in face_ids:
            gallery.delete_face(face_id)
        for outer_id in old_persons - {to_id}:  # a person left without a face is no person
            if not gallery.faces_of_person(group_id, outer_id):
                gallery.delete_person(group_id, outer_id)
    return len(new)


def _rename(console: Console, group_id: str, old: str, new: str) -> int:
    gallery = console.ctx.gallery
    person = gallery.get_person(group_id, old)
    if any(p.outer_id == new for p in gallery.list_persons(group_id)):
        raise InputError(f"{new} already exists in {group_id}: choose another id", code="person_exists")
    faces = [f.face_id for f in gallery.faces_of_person(group_id, old)]
    moved = move_faces(console, group_id, faces, new, person.user_info or None)  # removes `old` when done
    if not moved:
        gallery.upsert_person(group_id, new, person.user_info)
        gallery.delete_person(group_id, old)
    return moved


async def rename(request: Request, console: Console, session: Session) -> Response:
    form = await console.form(request)
    group_id, old, new = field(form, "group_id"), field(form, "outer_id"), field(form, "new_id")
    if new != old:
        moved = await console.blocking(_rename, console, group_id, old, new)
        session.say("ok", f"renamed {old} to {new} ({moved} face(s))")
        await console.blocking(gallery_changed, console)
    return _to_group(request, group_id)


async def delete_face(request: Request, console: Console, session: Session) -> Response:
    form = await console.form(request)
    group_id, face_id = field(form, "group_id"), field(form, "face_id", max_len=64)
    rec = await console.blocking(console.ctx.gallery.get_face, face_id)
    if rec.group_id != group_id:
        raise InputError(f"face {face_id} is not in group {group_id}", code="face_not_found")
    await console.blocking(console.ctx.gallery.delete_face, face_id)
    session.say("ok", f"deleted a face of {rec.outer_id}")
    await console.blocking(gallery_changed, console)
    return _to_group(request, group_id)


def _erase(console: Console, group_id: str, outer_id: str) -> int:
    gallery = console.ctx.gallery
    gallery.get_person(group_id, outer_id)
    removed = gallery.delete_person(group_id, outer_id)  # also scrubs their vectors in the index
    if console.deps.observer is not None:
        console.deps.observer.forget_person(group_id, outer_id)
    return removed


async def erase(request: Request, console: Console, session: Session) -> Response:
    form = await console.form(request)
    group_id, outer_id = field(form, "group_id"), field(form, "outer_id")
    if field(form, "confirm", required=False) != outer_id:
        raise InputError(f"type the person's id ({outer_id}) to confirm erasing them", code="not_confirmed")
    removed = await console.blocking(_erase, console, group_id, outer_id)
    session.say("ok", f"erased {outer_id}: {removed} face(s), thumbnails and index entries")
    await console.blocking(gallery_changed, console)
    return _to_group(request, group_id)


async def add_group(request: Request, console: Console, session: Session) -> Response:
    form = await console.form(request)
    group_id = field(form, "group_id")
    await console.blocking(console.ctx.gallery.create_group, group_id)
    session.say("ok", f"group {group_id} created")
    return _to_group(request, group_id)


def gallery_changed(console: Console) -> None:
    if console.deps.on_gallery_change is not None:
        console.deps.on_gallery_change()


ACTIONS = {
    "add": add,
    "info": info,
    "rename": rename,
    "delete-face": delete_face,
    "erase": erase,
    "add-group": add_group,
}
