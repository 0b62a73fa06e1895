"""The console's actions over HTTP against a real agent (the Hamilton clip looped, the API server with the
console): correct a wrong name by moving the matched face or re-enrolling the capture, rename, user_info,
delete a face, dismiss a cluster, create a group, and an erase that is not confirmed."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from console_support import LIN_PHOTO, Client, start_agent


@pytest.fixture(scope="module")
def agent(tmp_path_factory, data_dir: Path):
    app = start_agent(tmp_path_factory.mktemp("console-actions"), data_dir)
    yield app
    app.stop()


def wait_for(predicate, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while not (found := predicate()):
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.1)  # polling interval, not synchronisation
    return found


def flashes(c: Client, page: str = "/console/people?group=door") -> list[str]:
    return re.findall(r'class="flash[^"]*"[^>]*>([^<]*)', c.get(page).text)


def recognised_as(agent, person: str):
    return lambda: [f for f in agent.observer.recent() if f.known and f.person_id == person]


def test_correct_rename_edit_delete_dismiss(agent, data_dir: Path) -> None:
    c = Client(agent.api.port)
    assert c.login().status == 303
    token = c.csrf()
    gallery = agent.gallery
    photo = (data_dir / LIN_PHOTO).read_bytes()

    # Enrolled under a wrong name, recognised under it by the camera.
    fields = {"csrf": token, "group_id": "door", "outer_id": "wrong-name"}
    assert c.post_multipart("/console/people/add", fields, [("photos", "lin.png", photo)]).status == 303
    assert "enrolled 1 face(s)" in flashes(c)
    (enrolled,) = gallery.faces_of_person("door", "wrong-name")
    seen = wait_for(recognised_as(agent, "wrong-name"), "a recognition as wrong-name")[0]
    assert seen.matched_face_id == enrolled.face_id
    page = c.get("/console/review").text
    assert f'value="{seen.id}"' in page and "wrong-name" in page

    # Move the face that matched to the right person: same embedding and thumbnail, old person gone.
    before = (gallery.get_embedding(enrolled.face_id), gallery.get_thumbnail(enrolled.face_id))
    move = {"csrf": token, "faces": str(seen.id), "new_id": "lin-manuel", "how": "move"}
    assert c.post_form("/console/review/move", move).status == 303
    (moved,) = gallery.faces_of_person("door", "lin-manuel")
    assert (gallery.get_embedding(moved.face_id) == before[0]).all()
    assert gallery.get_thumbnail(moved.face_id) == before[1]
    assert "wrong-name" not in [p.outer_id for p in gallery.list_persons("door")]
    assert not agent.observer.get([seen.id])  # the corrected row leaves the review page

    # Rename keeps the faces; user_info is saved.
    rename = {"csrf": token, "group_id": "door", "outer_id": "lin-manuel", "new_id": "lin"}
    assert c.post_form("/console/people/rename", rename).status == 303
    assert [f.face_id for f in gallery.faces_of_person("door", "lin")] and not any(
        p.outer_id == "lin-manuel" for p in gallery.list_persons("door")
    )
    info = {"csrf": token, "group_id": "door", "outer_id": "lin", "user_info": '{"badge": 9}'}
    assert c.post_form("/console/people/info", info).status == 303
    assert gallery.get_person("door", "lin").user_info == '{"badge": 9}'

    # Re-enrol a capture under another person, through the gates (its crop is detected and checked again).
    seen = wait_for(recognised_as(agent, "lin"), "a recognition as lin")[0]
    reenrol = {"csrf": token, "faces": str(seen.id), "new_id": "lin-2", "how": "reenrol"}
    assert c.post_form("/console/review/move", reenrol).status == 303
    (capture,) = gallery.faces_of_person("door", "lin-2")
    assert gallery.get_thumbnail(capture.face_id) is not None

    # Delete that face; the person page no longer shows it.
    delete = {"csrf": token, "group_id": "door", "face_id": capture.face_id}
    assert c.post_form("/console/people/delete-face", delete).status == 303
    assert not gallery.faces_of_person("door", "lin-2")
    assert capture.face_id not in c.get("/console/people?group=door").text
    # A face of another group is refused.
    (lin_face,) = gallery.faces_of_person("door", "lin")
    other_group = {**delete, "group_id": "elsewhere", "face_id": lin_face.face_id}
    assert c.post_form("/console/people/delete-face", other_group).status == 303
    assert any("is not in group elsewhere" in f for f in flashes(c))
    assert gallery.faces_of_person("door", "lin")

    # Dismiss a cluster of unknown faces.
    unknown = wait_for(lambda: [f for f in agent.observer.recent() if not f.known], "an unknown face")
    ids = ",".join(str(f.id) for f in unknown)
    assert c.post_form("/console/review/dismiss", {"csrf": token, "faces": ids}).status == 303
    assert not agent.observer.get(f.id for f in unknown)
    assert c.post_form("/console/review/dismiss", {"csrf": token, "faces": "1,x"}).status == 303
    assert any("faces must list" in f for f in flashes(c, "/console/review"))

    # A new group; an erase without the right confirmation changes nothing.
    assert c.post_form("/console/people/add-group", {"csrf": token, "group_id": "visitors"}).status == 303
    assert "visitors" in [g.group_id for g in gallery.list_groups()]
    erase = {"csrf": token, "group_id": "door", "outer_id": "lin", "confirm": "lin-typo"}
    assert c.post_form("/console/people/erase", erase).status == 303
    assert any("to confirm" in f for f in flashes(c)) and gallery.faces_of_person("door", "lin")
