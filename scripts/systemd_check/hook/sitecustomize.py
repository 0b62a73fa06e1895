"""Test hook of scripts/systemd_check.sh: hangs the recognition thread on demand. Not part of the agent.

It is installed only inside the check's container, at /opt/face-agent-check/hook, and reaches the agent only
through the drop-in scripts/systemd_check/check-hook.conf (PYTHONPATH=/opt/face-agent-check/hook and
FACE_AGENT_CHECK_HANG_FILE=...): Python imports `sitecustomize` from sys.path at start-up. Without that
variable it does nothing. With it, every frame the recognition thread takes first looks for the file; while
the file exists the thread sleeps inside `RecognitionPipeline._process`, as a thread stuck in a driver call
would, so its `recognition-N` heartbeat goes stale and the agent's WatchdogPinger withholds WATCHDOG=1. The
camera, event and watchdog threads keep running. Removing the file does not unblock the thread that
already hangs (a hung driver call does not come back either); the process is expected to be killed.
"""

import os

_HANG_FILE = os.environ.get("FACE_AGENT_CHECK_HANG_FILE")

if _HANG_FILE:
    import logging
    import time

    from agent.recognition import pipeline as _pipeline

    _original = _pipeline.RecognitionPipeline._process

    def _process(self, cam, frame):  # noqa: ANN001, ANN202 (wraps a private method)
        if os.path.exists(_HANG_FILE):
            logging.getLogger("agent.check-hook").error(
                "check hook: %s exists, recognition thread hangs now (test of WatchdogSec=)", _HANG_FILE
            )
            while True:
                time.sleep(3600)
        return _original(self, cam, frame)

    _pipeline.RecognitionPipeline._process = _process
