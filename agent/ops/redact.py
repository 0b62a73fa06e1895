"""One scrubber for credentials anywhere in a string shown to people (the console's config values, camera
errors in logs and pages).

- The user part of a URL anywhere in the text (`scheme://user:pass@host`, also inside a GStreamer pipeline
  or an error message): everything after the scheme up to the *last* '@' of that run of text, so a password
  holding '@' or '/' (`rtsp://admin:p@ss/w0rd@host`) is masked whole. The user name before the first ':'
  stays (which account, not its secret); without a ':' the whole user part goes (it may be a token).
- Parameters whose name says credential (`?user=admin&pwd=S3cret`, GStreamer's `user-pw=S3cret`): the
  value is masked, wherever the `name=value` pair stands (after ?, &, ;, a space or at the start).

Over-masking is the safe side: a host after an '@' in a path is masked too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

MASK = "***"
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^\s'\"<>]*)@")
_PARAM = re.compile(r"(^|[?&;,\s])([A-Za-z][\w.-]*)=([^&;,\s'\"<>]*)")
_WORDS = re.compile(r"[-_.]")
SECRET_WORDS = frozenset(
    {
        "user", "username", "userid", "usr", "login", "uid",
        "pw", "pwd", "pass", "password", "passwd", "passphrase", "passcode",
        "token", "key", "apikey", "secret", "auth", "authorization", "sig", "signature",
        "credential", "credentials", "session", "sid",
    }
)  # fmt: skip


def _secret_name(name: str) -> bool:
    low = name.lower()
    return low in SECRET_WORDS or any(w in SECRET_WORDS for w in _WORDS.split(low))


def _userinfo(match: re.Match[str]) -> str:
    scheme, info = match.group(1), match.group(2)
    user, colon, _ = info.partition(":")
    return f"{scheme}{user}:{MASK}@" if colon and "/" not in user else f"{scheme}{MASK}@"


def _param(match: re.Match[str]) -> str:
    lead, name, value = match.groups()
    return f"{lead}{name}={MASK}" if value and _secret_name(name) else match.group(0)


def scrub(text: str) -> str:
    """`text` with every URL password and credential parameter masked (module doc)."""
    return _PARAM.sub(_param, _USERINFO.sub(_userinfo, text))


def scrub_all(value: Any) -> Any:
    """A copy of JSON-like data with every string (keys too) scrubbed."""
    if isinstance(value, Mapping):
        return {scrub_all(k): scrub_all(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub_all(v) for v in value]
    return scrub(value) if isinstance(value, str) else value
