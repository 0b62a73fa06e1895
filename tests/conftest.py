"""Shared fixtures: where the real data lives, and the built models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def data_root() -> Path:
    return Path(os.environ.get("FACE_AGENT_DATA", ROOT.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = data_root()
    if not path.is_dir():
        pytest.skip(f"real data folder not found at {path} (set FACE_AGENT_DATA)")
    return path


@pytest.fixture(scope="session")
def models_dir() -> Path:
    return ROOT / "models"


# -- camera agent (tests/test_pipeline.py, tests/test_app_run.py) -------------------------------------------

# Used only while models/manifest.json carries no calibrated thresholds for the test engine: cosine at FAR
# 1e-3/1e-4/1e-5 measured with agent/evaluation/calibrate.py (lfw-devtrain impostor pairs) for
# facenet-casia fp32 on OpenVINO. The manifest's values win once scripts/build_models.py writes them.
FACENET_FP32_FALLBACK_THRESHOLDS = {"1e-3": 0.57934, "1e-4": 0.65806, "1e-5": 0.71839, "1e-6": 0.77171}


@pytest.fixture(scope="session")
def agent_engine_config():
    """The engine the camera-agent tests use. fp32: the int8 facenet variant is not built yet."""
    from agent.config import EmbedderConfig, EngineConfig

    return EngineConfig(embedder=EmbedderConfig(precision="fp32"))


@pytest.fixture(scope="session")
def agent_engine(agent_engine_config):
    from agent.inference.engine import FaceEngine

    return FaceEngine(agent_engine_config)


@pytest.fixture(scope="session")
def agent_thresholds(agent_engine) -> dict[str, float]:
    return dict(agent_engine.thresholds) or dict(FACENET_FP32_FALLBACK_THRESHOLDS)


@pytest.fixture(scope="session")
def mqtt_broker(tmp_path_factory: pytest.TempPathFactory):
    """A real Mosquitto for tests outside test_publish_mqtt.py (same Broker helper)."""
    from test_publish_mqtt import Broker

    b = Broker(tmp_path_factory.mktemp("mosquitto-agent"))
    b.start()
    yield b
    b.stop()
