"""Config slice of the metrics / health HTTP endpoint."""

from __future__ import annotations

import ipaddress

from pydantic import BaseModel, ConfigDict, Field, field_validator


class MetricsConfig(BaseModel):
    """Where /metrics, /healthz and /readyz are served. Loopback by default: the data is not public."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(True, description="Serve /metrics, /healthz and /readyz over HTTP.")
    host: str = Field(
        "127.0.0.1",
        description="IP literal to bind (no name lookup). 0.0.0.0 or :: exposes it to the network.",
    )
    port: int = Field(9851, ge=0, le=65535, description="TCP port; 0 picks a free one (tests).")
    request_timeout_s: float = Field(
        5.0, gt=0, le=60, description="Socket timeout per connection, so a stalled client frees its thread."
    )
    max_connections: int = Field(
        8, ge=1, le=128, description="Connections handled at once; extra ones are closed and counted."
    )
    start_timeout_s: float = Field(5.0, gt=0, le=60, description="How long start() waits for the server.")
    stop_timeout_s: float = Field(
        5.0, gt=0, le=60, description="How long stop() waits for the server thread."
    )

    @field_validator("host")
    @classmethod
    def _ip_literal(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"host must be an IP address such as 127.0.0.1 or ::1, got {value!r}") from None
        return value
