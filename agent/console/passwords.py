"""The console password: a scrypt hash in a JSON file, mode 0600.

hashlib.scrypt is in the standard library and is a memory-hard password hash; the file keeps its cost
parameters and a random salt beside the hash, so the cost can be raised later without breaking old files.
Written to a temporary file and renamed, so a crash never leaves half a hash.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

from agent.errors import ConfigError, InputError

# N = 2^15, r = 8: about 32 MiB and ~0.1 s per check on a Raspberry Pi 4 class CPU.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 15, 8, 1
MIN_LENGTH = 10
MAX_LENGTH = 1024
_MAXMEM = 256 * 1024 * 1024


def _derive(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=32)


def hash_password(password: str) -> dict[str, object]:
    if not MIN_LENGTH <= len(password) <= MAX_LENGTH:
        raise InputError(
            f"the console password needs {MIN_LENGTH} to {MAX_LENGTH} characters", code="weak_password"
        )
    salt = secrets.token_bytes(16)
    digest = _derive(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return {
        "algorithm": "scrypt",
        "n": SCRYPT_N,
        "r": SCRYPT_R,
        "p": SCRYPT_P,
        "salt": base64.b64encode(salt).decode(),
        "hash": base64.b64encode(digest).decode(),
    }


def write_password(path: Path, password: str) -> None:
    """Hash and store atomically with mode 0600 (the file is created 0600, not chmod-ed afterwards)."""
    record = hash_password(password)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(record, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_hash(path: Path) -> dict[str, object] | None:
    """The stored record, None when there is no file; a file that is not ours is a ConfigError."""
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read the console password file {path}: {exc}") from exc
    try:
        record = json.loads(raw)
        ok = record.get("algorithm") == "scrypt" and all(
            isinstance(record.get(k), int) for k in ("n", "r", "p")
        )
        base64.b64decode(record["salt"], validate=True)
        base64.b64decode(record["hash"], validate=True)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{path} is not a console password file: {exc}") from exc
    if not ok:
        raise ConfigError(f"{path} is not a scrypt console password file (face-agent console passwd)")
    return record


def verify_password(record: dict[str, object], password: str) -> bool:
    if not 0 < len(password) <= MAX_LENGTH:
        return False
    salt = base64.b64decode(str(record["salt"]))
    expected = base64.b64decode(str(record["hash"]))
    n, r, p = int(record["n"]), int(record["r"]), int(record["p"])  # type: ignore[call-overload]
    try:
        digest = _derive(password, salt, n, r, p)
    except ValueError:  # parameters scrypt refuses (edited file): no password matches
        return False
    return hmac.compare_digest(digest, expected)
