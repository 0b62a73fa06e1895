"""Typed errors shared by every part.

Two families: `TransientError` (retry may succeed: a camera that vanished, a broker that is down) and
`FatalError` (configuration or installation is wrong: retrying will not help, fail at start-up).
`InputError` is the caller's fault (bad image, bad request) and carries a stable machine-readable `code`.
"""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error the agent raises on purpose."""

    code = "agent_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.code


class TransientError(AgentError):
    code = "transient"


class FatalError(AgentError):
    code = "fatal"


class ConfigError(FatalError):
    code = "config_invalid"


class ModelError(FatalError):
    """A model file is missing, corrupt, has the wrong checksum or produced unusable output."""

    code = "model_error"


class DeviceError(FatalError):
    """A runtime, device or execution provider is not available on this machine."""

    code = "device_unavailable"


class InputError(AgentError):
    """The caller sent something unusable. `code` says what, for API error mapping."""

    code = "invalid_input"


class ImageDecodeError(InputError):
    code = "image_decode_failed"


class ImageTooLargeError(InputError):
    code = "image_too_large"


class ImageTooSmallError(InputError):
    code = "image_too_small"


class EmptyInputError(InputError):
    code = "empty_input"
