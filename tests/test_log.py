"""Journal-format logging (syslog priority prefixes) and one log line per state change."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pydantic
import pytest

from agent.ops.log import LogConfig, StateLog, setup_logging, stream_is_journal, syslog_priority


def _journal_env(path: Path) -> dict[str, str]:
    st = os.stat(path)
    return {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}


def test_journal_lines_carry_syslog_priorities(tmp_path: Path) -> None:
    out = tmp_path / "stderr"
    with out.open("w") as stream:
        env = _journal_env(out)  # JOURNAL_STREAM names exactly this file, as systemd does for its stream
        assert stream_is_journal(env, stream)
        handler = setup_logging(LogConfig(level="debug"), env, stream=stream, logger_name="t.journal")
        try:
            log = logging.getLogger("t.journal.camera")
            log.debug("probing")
            log.info("connected")
            log.warning("slow")
            log.error("lost")
            try:
                raise RuntimeError("boom")
            except RuntimeError:
                log.exception("crashed")
        finally:
            logging.getLogger("t.journal").removeHandler(handler)
    lines = out.read_text().splitlines()
    assert lines[:4] == [
        "<7>t.journal.camera: probing",
        "<6>t.journal.camera: connected",
        "<4>t.journal.camera: slow",
        "<3>t.journal.camera: lost",
    ]
    assert lines[4] == "<3>t.journal.camera: crashed"
    assert len(lines) > 6 and all(line.startswith("<3>") for line in lines[5:])  # the traceback too
    assert lines[-1] == "<3>RuntimeError: boom"


def test_text_format_when_stderr_is_not_the_journal(tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    journal.write_text("")
    out = tmp_path / "stderr"
    with out.open("w") as stream:
        env = _journal_env(journal)  # the variable is inherited but points at another file
        assert not stream_is_journal(env, stream)
        assert not stream_is_journal({"JOURNAL_STREAM": "garbage"}, stream)
        first = setup_logging(LogConfig(level="WARNING"), env, stream=stream, logger_name="t.text")
        second = setup_logging(LogConfig(level="WARNING"), env, stream=stream, logger_name="t.text")
        try:
            assert logging.getLogger("t.text").handlers == [second]  # repeated setup replaces, not stacks
            assert first is not second
            logging.getLogger("t.text").info("hidden")
            logging.getLogger("t.text").warning("shown")
        finally:
            logging.getLogger("t.text").removeHandler(second)
    text = out.read_text()
    assert "hidden" not in text
    assert text.count("shown") == 1
    assert "WARNING" in text and not text.startswith("<")


def test_log_config_validation() -> None:
    assert LogConfig(level="info").level == "INFO"
    with pytest.raises(pydantic.ValidationError):
        LogConfig(level="LOUD")
    with pytest.raises(pydantic.ValidationError):
        LogConfig(colour=True)
    assert syslog_priority(25) == 6 and syslog_priority(5) == 7 and syslog_priority(60) == 2


def test_state_log_logs_transitions_only(caplog: pytest.LogCaptureFixture) -> None:
    states = StateLog(logging.getLogger("t.state"), max_keys=2)
    with caplog.at_level(logging.INFO, logger="t.state"):
        for _ in range(100):  # per-frame calls
            states.change("camera/front", "streaming")
        assert states.change("camera/front", "lost", "read timeout", level=logging.WARNING)
        assert not states.change("camera/front", "lost")
        states.change("camera/front", "streaming")
    messages = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert messages == [
        (logging.INFO, "camera/front: start -> streaming"),
        (logging.WARNING, "camera/front: streaming -> lost (read timeout)"),
        (logging.INFO, "camera/front: lost -> streaming"),
    ]
    states.change("b", "x")
    states.change("c", "y")  # bounded: the least recently changed key goes
    assert states.evicted == 1
    assert states.state("camera/front") is None
    assert states.state("c") == "y"
    states.forget("c")
    assert states.state("c") is None
