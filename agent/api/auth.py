"""Authentication in each vendor's style, checked against the secrets loaded at start-up.

- Face++: `api_key` + `api_secret` in the form (a shared secret sent as is; use on loopback / TLS only).
- JD: `appkey`, `timestamp` (ms), `sign` = hex MD5(secret + timestamp), in the query or the body; or JD
  Cloud's SDK signature, header `Authorization: JDCLOUD2|JDCLOUD3-HMAC-SHA256 ...` (see jdcloud_sig.py).
- jumdata: `appId`, `timestamp` (ms), `sign` = hex sha256(appId + appSecret + timestamp).
- native: header `Authorization: FA-HMAC-SHA256 key=K,ts=MS,nonce=N,sig=HEX` with
  sig = HMAC-SHA256(secret, METHOD \\n PATH?QUERY \\n ts \\n nonce \\n hex sha256(body)).

Signed timestamps must be within `signature_max_age_s` of now; a signature seen before inside that window
is a replay and refused (JD and jumdata signatures cover only the timestamp, so one request per key and
millisecond), also after a restart: see replay.py for how the cache survives one and when requests signed
before the start are refused instead. Requests carrying no credentials at all pass only from loopback and
only if configured.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import time
from dataclasses import dataclass
from typing import Any

from agent.api import jdcloud_sig
from agent.api.common import ApiError, Request, digest_equal
from agent.api.config import ApiConfig
from agent.api.replay import ReplayCache

NATIVE_SCHEME = "FA-HMAC-SHA256"


@dataclass(frozen=True)
class Identity:
    key: str | None  # None: unauthenticated loopback caller
    family: str


def is_loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


class Authenticator:
    def __init__(self, config: ApiConfig, secrets: dict[str, str], replays: Any = None) -> None:
        """`replays`: a shared store (SharedReplayCache: hub processes on PostgreSQL); else the file."""
        self._cfg = config
        self._secrets = secrets
        self._creds = {c.key: c for c in config.credentials}
        self._replays = (
            replays
            if replays is not None  # not `or`: an empty cache has len 0
            else ReplayCache(config.replay_cache_size, config.signature_max_age_s, config.replay_store)
        )

    def close(self) -> None:
        self._replays.close()

    def anonymous(self, req: Request, family: str) -> Identity:
        """A request that carries no credentials at all."""
        if self._cfg.allow_unauthenticated_loopback and is_loopback(req.client_ip):
            return Identity(None, family)
        raise ApiError("auth_missing", "credentials are required", self._first_param(family))

    @staticmethod
    def _first_param(family: str) -> str:
        return {"faceplusplus": "api_key", "jd": "appkey", "jumdata": "appId"}.get(family, "Authorization")

    def _secret(self, key: str, family: str) -> str:
        cred = self._creds.get(key)
        if cred is None or key not in self._secrets:
            raise ApiError("auth_unknown_key", "unknown key")
        if not cred.enabled:
            raise ApiError("auth_disabled", "this key is disabled")
        if family not in cred.apis:
            raise ApiError("auth_not_allowed", f"this key may not call the {family} API")
        return self._secrets[key]

    def _fresh(self, timestamp: str) -> float:
        """Epoch seconds of a millisecond timestamp within the validity window."""
        try:
            ts_ms = int(timestamp)
        except ValueError as exc:
            raise ApiError(
                "auth_bad_timestamp", "timestamp must be milliseconds since the epoch", "timestamp"
            ) from exc
        if abs(time.time() * 1000 - ts_ms) > self._cfg.signature_max_age_s * 1000:
            raise ApiError("auth_stale", "timestamp is outside the validity window", "timestamp")
        return ts_ms / 1000

    def key_secret(self, req: Request, key: str | None, secret: str | None) -> Identity:
        if not key and not secret:
            return self.anonymous(req, "faceplusplus")
        if not key or not secret:
            raise ApiError(
                "missing_argument",
                "api_key and api_secret are both required",
                "api_key" if not key else "api_secret",
            )
        expected = self._secret(key, "faceplusplus")
        if not digest_equal(expected, secret):
            raise ApiError("auth_failed", "api_key and api_secret do not match")
        return Identity(key, "faceplusplus")

    def signed(
        self, req: Request, family: str, key: str | None, timestamp: str | None, sign: str | None
    ) -> Identity:
        """JD (MD5 of secret + timestamp) or jumdata (sha256 of appId + secret + timestamp)."""
        if not key and not timestamp and not sign:
            return self.anonymous(req, family)
        names = ("appkey", "timestamp", "sign") if family == "jd" else ("appId", "timestamp", "sign")
        for name, value in zip(names, (key, timestamp, sign), strict=True):
            if not value:
                raise ApiError("auth_missing", f"{name} is required", name)
        assert key and timestamp and sign
        secret = self._secret(key, family)
        signed_at = self._fresh(timestamp)
        if family == "jd":
            expected = hashlib.md5((secret + timestamp).encode()).hexdigest()
        else:
            expected = hashlib.sha256((key + secret + timestamp).encode()).hexdigest()
        if not digest_equal(expected, sign.lower()):
            raise ApiError("auth_failed", "sign does not match")
        self._replays.check_and_add(f"{family}:{key}:{expected}", signed_at)
        return Identity(key, family)

    def jdcloud(self, req: Request) -> Identity:
        """JD Cloud SDK signature (JDCLOUD2 / JDCLOUD3) over the request as received."""
        auth = jdcloud_sig.parse_authorization(req.headers.get("authorization", ""))
        secret = self._secret(auth.access_key, "jd")
        jd_date = req.headers.get(jdcloud_sig.DATE_HEADER, "").strip()
        if not jd_date:
            raise ApiError("auth_missing", f"{jdcloud_sig.DATE_HEADER} is required", jdcloud_sig.DATE_HEADER)
        signed_at = jdcloud_sig.request_time(jd_date, auth)
        if abs(time.time() - signed_at) > self._cfg.signature_max_age_s:
            raise ApiError("auth_stale", f"{jdcloud_sig.DATE_HEADER} is outside the validity window")
        # Without a signed host a signature made for another server (or vhost) would be accepted here.
        if "host" not in auth.signed_headers:
            raise ApiError("auth_failed", "the host header must be signed")
        candidates = jdcloud_sig.canonical_requests(auth, req.method, raw_target(req), req.headers, req.body)
        jdcloud_sig.check_body_digest(auth, req.headers, req.body)
        if not jdcloud_sig.matches(secret, auth, jd_date, candidates):
            raise ApiError("auth_failed", "signature does not match")
        # Keyed by the signature, not access key + nonce: the current SDK does not sign x-jdcloud-nonce, so
        # a replayer could change the nonce freely; any change to a signed part changes the signature.
        self._replays.check_and_add(f"jdcloud:{auth.access_key}:{auth.signature}", signed_at)
        return Identity(auth.access_key, "jd")

    def native(self, req: Request) -> Identity:
        header = req.headers.get("authorization", "")
        if not header:
            return self.anonymous(req, "native")
        scheme, _, rest = header.partition(" ")
        if scheme != NATIVE_SCHEME:
            raise ApiError("auth_failed", f"Authorization scheme must be {NATIVE_SCHEME}")
        fields = dict(p.strip().partition("=")[::2] for p in rest.split(","))
        key, ts, nonce, sig = (fields.get(k, "") for k in ("key", "ts", "nonce", "sig"))
        if not (key and ts and nonce and sig) or len(nonce) > 64:
            raise ApiError("auth_failed", "Authorization needs key, ts, nonce (<= 64 chars) and sig")
        secret = self._secret(key, "native")
        signed_at = self._fresh(ts)
        expected = native_signature(secret, req.method, raw_target(req), ts, nonce, req.body)
        if not digest_equal(expected, sig.lower()):
            raise ApiError("auth_failed", "signature does not match")
        self._replays.check_and_add(f"native:{key}:{expected}", signed_at)
        return Identity(key, "native")


def raw_target(req: Request) -> str:
    return req.headers.get(":target", req.path)


def native_signature(secret: str, method: str, target: str, ts: str, nonce: str, body: bytes) -> str:
    """The native API's request signature; clients compute the same (see docs/api.md)."""
    text = "\n".join([method.upper(), target, ts, nonce, hashlib.sha256(body).hexdigest()])
    return hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest()


def native_header(
    key: str, secret: str, method: str, target: str, body: bytes, nonce: str, ts_ms: int | None = None
) -> str:
    """Build the native Authorization header (used by tests, the benchmark and Python clients)."""
    ts = str(ts_ms if ts_ms is not None else int(time.time() * 1000))
    sig = native_signature(secret, method, target, ts, nonce, body)
    return f"{NATIVE_SCHEME} key={key},ts={ts},nonce={nonce},sig={sig}"
