"""Publishing config: strict models, secrets from files or systemd credentials, never from the config."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.errors import ConfigError
from agent.publish.config import MqttConfig, PublishConfig, read_password


def test_unknown_fields_and_a_plain_password_are_refused() -> None:
    with pytest.raises(ValidationError, match="password"):
        MqttConfig(host="h", username="u", password="secret")  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        PublishConfig(topic_prefx="x")  # type: ignore[call-arg]


@pytest.mark.parametrize(
    "fields",
    [
        {"port": 0},
        {"port": 70000},
        {"inflight_window": 0},
        {"reconnect_min_s": 30, "reconnect_max_s": 10},
        {"password_file": "/p"},  # no username
        {"username": "u", "password_file": "/p", "password_credential": "c"},
        {"username": "u", "password_credential": "../etc/shadow"},
        {"ca_file": "/ca.pem"},  # TLS file without tls: true
        {"tls": True, "cert_file": "/c.pem"},  # cert without key
    ],
)
def test_mqtt_config_bounds(fields: dict) -> None:
    with pytest.raises(ValidationError):
        MqttConfig(host="broker", **fields)


@pytest.mark.parametrize("prefix", ["a/#", "a/+/b", "a//b", "/a", "a b"])
def test_topic_prefix_without_wildcards_or_empty_levels(prefix: str) -> None:
    with pytest.raises(ValidationError):
        PublishConfig(topic_prefix=prefix)


def test_device_id_defaults_to_a_topic_safe_host_name() -> None:
    device = PublishConfig().resolved_device_id()
    assert device and all(c.isalnum() or c in "_-" for c in device)
    assert PublishConfig(device_id="door-1").resolved_device_id() == "door-1"
    with pytest.raises(ValidationError):
        PublishConfig(device_id="a/b")


def test_password_from_file_first_line(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("hunter 2\nignored\n")
    secret.chmod(0o600)
    cfg = MqttConfig(host="h", username="u", password_file=secret)
    assert read_password(cfg) == "hunter 2"
    assert read_password(MqttConfig(host="h")) is None


def test_password_from_systemd_credentials_directory(tmp_path: Path) -> None:
    (tmp_path / "mqtt").write_text("from-systemd")
    cfg = MqttConfig(host="h", username="u", password_credential="mqtt")
    assert read_password(cfg, env={"CREDENTIALS_DIRECTORY": str(tmp_path)}) == "from-systemd"
    with pytest.raises(ConfigError, match="CREDENTIALS_DIRECTORY"):
        read_password(cfg, env={})


def test_missing_or_empty_password_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        read_password(MqttConfig(host="h", username="u", password_file=tmp_path / "absent"))
    (tmp_path / "empty").write_text("")
    with pytest.raises(ConfigError, match="empty"):
        read_password(MqttConfig(host="h", username="u", password_file=tmp_path / "empty"))
