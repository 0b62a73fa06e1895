"""Where the shared real data lives: $FACE_AGENT_DATA, else `shared/data` beside the project (or the folder
given as `beside`). One definition for the CLI, the scripts and the tests."""

from __future__ import annotations

import os
from pathlib import Path


def shared_data_dir(beside: Path) -> Path:
    """$FACE_AGENT_DATA, or `<beside>/../shared/data` (the layout CI and developers use)."""
    return Path(os.environ.get("FACE_AGENT_DATA", beside.parent / "shared" / "data"))
