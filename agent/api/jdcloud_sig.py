"""JD Cloud's OpenAPI request signature (`Authorization: JDCLOUD2-HMAC-SHA256 ...` / `JDCLOUD3-...`), as the
official SDKs compute it, rebuilt here from the request the server actually received.

The scheme is SigV4-like: a canonical request (method, URI, query, the signed headers, hex sha256 of the
body) is hashed into a string to sign together with the algorithm, `x-jdcloud-date` and the credential scope
`date/region/service/jdcloudN_request`; the key is an HMAC-SHA256 chain seeded with "JDCLOUDN" + secret.

Two canonical forms exist. The SDKs that sign JDCLOUD3 decode then re-encode the path and query and strip
header values ("normalized"); the older Python SDK that signed JDCLOUD2 (<= 1.6.1) used the query and path as
written ("legacy"). JDCLOUD2 is accepted in either form, JDCLOUD3 only in the normalized one. Everything here
is pure; key lookup, the time window and replays are the Authenticator's job.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import re
import time
from dataclasses import dataclass
from urllib.parse import quote, unquote_plus, urlsplit

from agent.api.common import ApiError, digest_equal

_HEADER = re.compile(
    r"(?P<alg>JDCLOUD[23]-HMAC-SHA256) Credential=(?P<cred>[^,\s]+),\s*"
    r"SignedHeaders=(?P<signed>[^,\s]+),\s*Signature=(?P<sig>[0-9a-f]{64})"
)
_SCOPE_PART = re.compile(r"[A-Za-z0-9._-]{1,64}")
_HEADER_NAME = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]{1,64}")
_DATE = re.compile(r"\d{8}T\d{6}Z")
DATE_HEADER, CONTENT_SHA_HEADER = "x-jdcloud-date", "x-jdcloud-content-sha256"


@dataclass(frozen=True)
class JdAuthorization:
    version: str  # "2" or "3"
    access_key: str
    date: str  # YYYYMMDD from the credential scope
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str

    @property
    def algorithm(self) -> str:
        return f"JDCLOUD{self.version}-HMAC-SHA256"

    @property
    def scope(self) -> str:
        return f"{self.date}/{self.region}/{self.service}/jdcloud{self.version}_request"


def is_jdcloud(header: str) -> bool:
    return header.startswith(("JDCLOUD2-", "JDCLOUD3-"))


def _malformed(detail: str) -> ApiError:
    return ApiError("auth_failed", f"malformed JDCLOUD Authorization header: {detail}")


def parse_authorization(header: str) -> JdAuthorization:
    m = _HEADER.fullmatch(header.strip())
    if m is None:
        raise _malformed("expected '<ALG> Credential=<ak>/<scope>, SignedHeaders=<h;h>, Signature=<64 hex>'")
    version = m["alg"][7]
    parts = m["cred"].split("/")
    if len(parts) != 5:
        raise _malformed("Credential must be <access key>/<date>/<region>/<service>/<terminator>")
    key, date, region, service, terminator = parts
    if not re.fullmatch(r"\d{8}", date) or not all(_SCOPE_PART.fullmatch(p) for p in (key, region, service)):
        raise _malformed("bad access key, date, region or service in Credential")
    if terminator != f"jdcloud{version}_request":
        raise _malformed(f"a {m['alg']} scope must end with jdcloud{version}_request")
    names = tuple(m["signed"].split(";"))
    if not all(_HEADER_NAME.fullmatch(n) for n in names) or "authorization" in names:
        raise _malformed("SignedHeaders must be lower-case header names, without authorization")
    return JdAuthorization(version, key, date, region, service, names, m["sig"])


def request_time(value: str, auth: JdAuthorization) -> float:
    """Epoch seconds of `x-jdcloud-date`, which must lie on the scope's day."""
    if not _DATE.fullmatch(value):
        raise ApiError("auth_bad_timestamp", f"{DATE_HEADER} must be YYYYMMDDTHHMMSSZ (UTC)")
    if value[:8] != auth.date:
        raise ApiError("auth_bad_timestamp", f"{DATE_HEADER} is not on the credential scope's date")
    try:
        return float(calendar.timegm(time.strptime(value, "%Y%m%dT%H%M%SZ")))
    except ValueError as exc:
        raise ApiError("auth_bad_timestamp", f"{DATE_HEADER} is not a valid date") from exc


def _uri_normalized(path: str) -> str:
    decoded = re.sub("/+", "/", unquote_plus(path))
    encoded = quote(decoded, safe="/~")
    return encoded if encoded.startswith("/") else "/" + encoded


def _query_normalized(raw: str) -> str:
    pairs = []
    for item in raw.split("&"):
        kv = [quote(unquote_plus(x), safe="~") for x in item.split("=", 1)]
        if len(kv) == 2 and kv[0]:
            pairs.append((kv[0], kv[1]))
    return "&".join(f"{k}={v}" for k, v in sorted(pairs))


def _query_legacy(raw: str) -> str | None:
    items = [[x.strip() for x in item.split("=")] for item in raw.split("&") if item]
    # The legacy form keeps only the text before a second '=': such a value would be partly unsigned.
    if any(len(p) > 2 for p in items):
        return None
    return "&".join(f"{p[0]}={p[1] if len(p) > 1 else ''}" for p in sorted(items))


def canonical_requests(
    auth: JdAuthorization, method: str, target: str, headers: dict[str, str], body: bytes
) -> list[str]:
    """The canonical request(s) the client may have signed: one per canonical form the version allows."""
    split = urlsplit(target)
    for item in split.query.split("&"):
        # The SDKs drop a parameter without '=' from the canonical query: it would travel unsigned.
        if item and "=" not in item:
            raise ApiError("auth_failed", f"query parameter {item[:40]!r} has no '=' and cannot be signed")
    lines = []
    for name in auth.signed_headers:
        if name not in headers:
            raise ApiError("auth_failed", f"signed header {name} is missing from the request")
        lines.append(f"{name}:{headers[name].strip()}\n")
    tail = "\n".join(["".join(lines), ";".join(auth.signed_headers), hashlib.sha256(body).hexdigest()])
    forms = [(_uri_normalized(split.path or "/"), _query_normalized(split.query))]
    if auth.version == "2":
        legacy_query = _query_legacy(split.query)
        if legacy_query is not None:
            forms.append((quote(split.path or "/", safe="/"), legacy_query))
    return ["\n".join([method.upper(), uri, query, tail]) for uri, query in dict.fromkeys(forms)]


def signature(secret: str, auth: JdAuthorization, jd_date: str, canonical_request: str) -> str:
    to_sign = "\n".join(
        [auth.algorithm, jd_date, auth.scope, hashlib.sha256(canonical_request.encode()).hexdigest()]
    )
    key = f"JDCLOUD{auth.version}{secret}".encode()
    for part in (auth.date, auth.region, auth.service, f"jdcloud{auth.version}_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


def check_body_digest(auth: JdAuthorization, headers: dict[str, str], body: bytes) -> None:
    """A signed x-jdcloud-content-sha256 must match the body received: clearer than a bad signature."""
    if CONTENT_SHA_HEADER in auth.signed_headers:
        if headers[CONTENT_SHA_HEADER].strip().lower() != hashlib.sha256(body).hexdigest():
            raise ApiError("auth_failed", f"the body does not match {CONTENT_SHA_HEADER}")


def matches(secret: str, auth: JdAuthorization, jd_date: str, candidates: list[str]) -> bool:
    # Every candidate is compared (no early exit) so timing does not reveal which form came closest.
    results = [digest_equal(signature(secret, auth, jd_date, c), auth.signature) for c in candidates]
    return any(results)
