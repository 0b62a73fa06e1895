"""Shared fixtures: where the real data lives, and the built models."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from agent.evaluation.datadir import shared_data_dir

ROOT = Path(__file__).resolve().parent.parent


def data_root() -> Path:
    return shared_data_dir(ROOT).resolve()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = data_root()
    if not path.is_dir():
        pytest.skip(f"real data folder not found at {path} (set FACE_AGENT_DATA)")
    return path


@pytest.fixture(scope="session")
def models_dir() -> Path:
    return ROOT / "models"


# -- the shared engine (camera agent, enrolment, API tests) -----------------------------------------------


@pytest.fixture(scope="session")
def agent_engine_config():
    """The engine the tests share: the shipped defaults (INT8 dlib ResNet, BlazeFace full range, OpenVINO)."""
    from agent.config import EngineConfig

    return EngineConfig()


@pytest.fixture(scope="session")
def agent_engine(agent_engine_config):
    from agent.inference.engine import FaceEngine

    return FaceEngine(agent_engine_config)


@pytest.fixture(scope="session")
def agent_thresholds(agent_engine) -> dict[str, float]:
    assert agent_engine.thresholds, "the model manifest has no calibrated thresholds for the default model"
    return dict(agent_engine.thresholds)


@pytest.fixture(scope="session")
def mqtt_broker(tmp_path_factory: pytest.TempPathFactory):
    """A real Mosquitto for tests outside test_publish_mqtt.py (same Broker helper)."""
    from test_publish_mqtt import Broker

    b = Broker(tmp_path_factory.mktemp("mosquitto-agent"))
    b.start()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def synth():
    """scripts/liveness_eval.py (scripts/ is no package): the synthetic attack generators and the real-video
    tracker the published liveness numbers come from."""
    spec = importlib.util.spec_from_file_location("liveness_eval", ROOT / "scripts" / "liveness_eval.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["liveness_eval"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def pg_server():
    """A real PostgreSQL server for the session (tests/pg_support.py)."""
    import shutil

    from pg_support import start_server

    server = start_server()
    yield server
    try:
        server.stop()
    finally:
        shutil.rmtree(server.root, ignore_errors=True)
