"""A paho client for sync announcements (the hub publishes them, edges subscribe), with the same broker
settings as the event publisher (publish.config.MqttConfig: TLS, user, password file or credential)."""

from __future__ import annotations

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from agent.errors import ConfigError
from agent.publish.config import MqttConfig, read_password


def make_client(m: MqttConfig, client_id: str) -> paho.Client:
    """A configured, not yet connected client (connect with connect_async + loop_start: never blocks)."""
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=True,
        protocol=paho.MQTTv311,
        reconnect_on_failure=True,
    )
    if m.username is not None:
        client.username_pw_set(m.username, read_password(m))
    if m.tls:
        try:
            client.tls_set(
                ca_certs=str(m.ca_file) if m.ca_file else None,
                certfile=str(m.cert_file) if m.cert_file else None,
                keyfile=str(m.key_file) if m.key_file else None,
            )
        except (OSError, ValueError) as exc:
            raise ConfigError(f"MQTT TLS setup failed: {exc}") from exc
    client.reconnect_delay_set(m.reconnect_min_s, m.reconnect_max_s)
    client.connect_timeout = m.connect_timeout_s
    return client


def version_topic(prefix: str, group_id: str) -> str:
    return f"{prefix}/hub/groups/{group_id}/version"
