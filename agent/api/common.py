"""Pieces shared by every API family: request/response values, the API error, body parsing, image rules,
the bounded engine gate and the face_token cache."""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import threading
import time
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any, TypeVar
from urllib.parse import parse_qs

import numpy as np

from agent.capture.imageio import decode_bytes, header_size, sniff_format
from agent.errors import ImageTooLargeError, ImageTooSmallError, InputError, TransientError
from agent.types import Image

T = TypeVar("T")


class ApiError(InputError):
    """A request failure with an internal `code` each family maps to its own code, message and status.

    `param` names the offending parameter where the vendor's message carries it (Face++ `BAD_ARGUMENTS:x`)."""

    def __init__(self, code: str, message: str, param: str = "") -> None:
        super().__init__(message, code=code)
        self.param = param


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes
    client_ip: str
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    started: float = field(default_factory=time.monotonic)
    _form: dict[str, Any] | None = None

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()

    def form(self) -> dict[str, Any]:
        """Query parameters overlaid with the body (JSON object, urlencoded or multipart). Values are str,
        except multipart file parts (bytes) and JSON values (as sent). Parsed once."""
        if self._form is None:
            out: dict[str, Any] = {k: v[0] for k, v in self.query.items()}
            out.update(parse_body(self))
            self._form = out
        return self._form

    def elapsed_ms(self) -> int:
        return int((time.monotonic() - self.started) * 1000)


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "application/json; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


def json_response(status: int, payload: object, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return Response(status, body, headers=headers or {})


def parse_body(req: Request) -> dict[str, Any]:
    if not req.body:
        return {}
    ctype = req.content_type
    if ctype == "application/json":
        return _parse_json_object(req.body)
    if ctype == "multipart/form-data":
        return _parse_multipart(req.headers.get("content-type", ""), req.body)
    if ctype in ("application/x-www-form-urlencoded", "", "text/plain"):
        try:
            text = req.body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ApiError("bad_body", "form body is not UTF-8") from exc
        # A JSON body without a content type is common from scripts; accept it if it parses as an object.
        if text.lstrip().startswith("{"):
            return _parse_json_object(req.body)
        return {k: v[0] for k, v in parse_qs(text, keep_blank_values=True, max_num_fields=100).items()}
    raise ApiError("bad_body", f"unsupported content type {ctype!r}")


def _parse_json_object(body: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise ApiError("body_not_json", f"body is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ApiError("body_not_json", "body must be a JSON object")
    return obj


def _parse_multipart(content_type: str, body: bytes) -> dict[str, Any]:
    if "boundary=" not in content_type:
        raise ApiError("bad_body", "multipart body without boundary")
    msg = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    if not msg.is_multipart():
        raise ApiError("bad_body", "multipart body could not be parsed")
    out: dict[str, Any] = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name or len(out) >= 100:
            continue
        payload = part.get_payload(decode=True) or b""
        if part.get_filename() is not None:
            out[str(name)] = payload
        else:
            out[str(name)] = payload.decode("utf-8", errors="replace")
    return out


# -- parameters --------------------------------------------------------------------------------------------


def get_str(form: dict[str, Any], name: str, required: bool = False, max_len: int = 1024) -> str | None:
    value = form.get(name)
    if value is None or value == "":
        if required:
            raise ApiError("missing_argument", f"{name} is required", name)
        return None
    if not isinstance(value, str):
        raise ApiError("bad_argument", f"{name} must be a string", name)
    if len(value) > max_len or "\x00" in value:
        raise ApiError("bad_argument", f"{name} must be 1..{max_len} characters without NUL", name)
    return value


def get_int(form: dict[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    value = form.get(name)
    if value is None or value == "":
        return default
    if isinstance(value, bool) or not isinstance(value, (int, str, float)):
        raise ApiError("bad_argument", f"{name} must be an integer", name)
    try:
        number = int(value) if not isinstance(value, float) or value.is_integer() else None
    except (ValueError, OverflowError):
        number = None
    if number is None or not lo <= number <= hi:
        raise ApiError("bad_argument", f"{name} must be an integer in [{lo}, {hi}]", name)
    return number


def get_choice(form: dict[str, Any], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = form.get(name)
    if value is None or value == "":
        return default
    if not isinstance(value, str) or value.upper() not in choices:
        raise ApiError("bad_argument", f"{name} must be one of {', '.join(choices)}", name)
    return value.upper()


# -- images ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageRules:
    formats: tuple[str, ...]
    max_bytes: int
    min_side: int
    max_side: int


def b64decode(text: object, param: str, max_chars: int) -> bytes:
    """Strict base64 (a data: URL prefix and whitespace tolerated); its size is checked before decoding."""
    if not isinstance(text, str):
        raise ApiError("base64_invalid", f"{param} must be a base64 string", param)
    if len(text) > max_chars:
        raise ApiError(
            "image_file_too_large", f"{param} is {len(text)} base64 characters; limit {max_chars}", param
        )
    if text.startswith("data:") and "," in text[:100]:
        text = text.split(",", 1)[1]
    # '+' arrives as ' ' when a client forgets to percent-encode a form field; base64 never holds spaces.
    text = "".join(text.replace(" ", "+").split())
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError("base64_invalid", f"{param} is not valid base64", param) from exc
    if not data:
        raise ApiError("base64_invalid", f"{param} is empty", param)
    return data


# engine decode errors that are about size, not about a broken image
_DECODE_CODES = {ImageTooLargeError.code: "image_too_large", ImageTooSmallError.code: "image_too_small"}


class PixelBudget:
    """The pixels of decoded request images alive at once, across all requests and families.

    A burst of 24 legal 4096x4096 images took the server from 199 MB to 2.2 GB (scripts/bench_api_memory.py):
    each request decodes before it queues for the engine. A decode now first reserves its pixels here, waiting
    up to `wait_s` for room and then answering the family's busy error; the room comes back when the decoded
    array is freed (weakref.finalize), however the request ends. An image larger than the whole budget waits
    until it is alone."""

    def __init__(self, max_pixels: int, wait_s: float) -> None:
        self.total = int(max_pixels)
        self._free = self.total
        self._wait_s = wait_s
        self._cond = threading.Condition()
        self.refused = 0
        self.waited = 0  # acquisitions that found no room at first

    @property
    def free(self) -> int:
        with self._cond:
            return self._free

    def acquire(self, pixels: int) -> int:
        need = min(int(pixels), self.total)
        deadline = time.monotonic() + self._wait_s
        with self._cond:
            if self._free < need:
                self.waited += 1
            while self._free < need:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.refused += 1
                    raise TransientError("too many large images are being decoded; retry", code="busy")
                self._cond.wait(left)
            self._free -= need
        return need

    def release(self, reserved: int) -> None:
        with self._cond:
            self._free = min(self.total, self._free + reserved)
            self._cond.notify_all()


def check_header(data: bytes, rules: ImageRules, param: str) -> tuple[int, int]:
    """Vendor image rules without decoding: size in bytes, format, side bounds from the header."""
    if len(data) > rules.max_bytes:
        raise ApiError(
            "image_file_too_large", f"{param} is {len(data)} bytes; limit {rules.max_bytes}", param
        )
    fmt = sniff_format(data)
    if fmt is None or fmt not in rules.formats:
        raise ApiError("image_unsupported_format", f"{param}: not a {'/'.join(rules.formats)} image", param)
    try:
        width, height = header_size(data)
    except ImageTooLargeError as exc:  # a WebP above Pillow's bomb bound: too large, not unreadable
        raise ApiError("image_too_large", f"{param}: {exc.message}", param) from exc
    except InputError as exc:
        raise ApiError("image_unsupported_format", f"{param}: image header unreadable", param) from exc
    if min(width, height) < rules.min_side:
        raise ApiError("image_too_small", f"{param} is {width}x{height}; min side {rules.min_side}", param)
    if max(width, height) > rules.max_side:
        raise ApiError("image_too_large", f"{param} is {width}x{height}; max side {rules.max_side}", param)
    return width, height


def check_image(
    data: bytes, rules: ImageRules, param: str, decode_limits, budget: PixelBudget | None = None
) -> Image:
    """`check_header`, then a safe decode, with its pixels reserved in `budget` for as long as they live."""
    width, height = check_header(data, rules, param)
    reserved = budget.acquire(width * height) if budget is not None else 0
    try:
        image = decode_bytes(data, decode_limits)
    except BaseException as exc:
        if budget is not None:
            budget.release(reserved)
        if not isinstance(exc, InputError):
            raise
        # The engine's limits (pixel count, smallest side) can be stricter than the vendor's: the image is
        # then too large or too small, not broken.
        code = _DECODE_CODES.get(exc.code, "image_unsupported_format")
        raise ApiError(code, f"{param}: {exc.message}", param) from exc
    if budget is not None:
        weakref.finalize(image.pixels, budget.release, reserved)
    return image


# -- engine gate -------------------------------------------------------------------------------------------


class EngineGate:
    """At most `concurrency` engine calls run; at most `queue` more wait, each up to `wait_s`.

    Anyone beyond that is refused at once (`busy`), so a flood gets the vendor's rate-limit answer
    instead of a hang; a wait that runs out is `engine_timeout`."""

    def __init__(self, concurrency: int, queue: int, wait_s: float) -> None:
        self._admit = threading.BoundedSemaphore(concurrency + queue)
        self._run = threading.BoundedSemaphore(concurrency)
        self._wait_s = wait_s
        self._lock = threading.Lock()
        self.rejected = 0
        self.timed_out = 0

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if not self._admit.acquire(blocking=False):
            with self._lock:
                self.rejected += 1
            raise TransientError("engine queue is full", code="busy")
        try:
            if not self._run.acquire(timeout=self._wait_s):
                with self._lock:
                    self.timed_out += 1
                raise TransientError(f"no engine slot within {self._wait_s}s", code="engine_timeout")
            try:
                return fn(*args, **kwargs)
            finally:
                self._run.release()
        finally:
            self._admit.release()


class TokenCache:
    """face_token -> embedding of recently detected query faces (bounded LRU with a lifetime), so a token
    handed out in a search answer can be searched again, as with the cloud APIs."""

    def __init__(self, size: int, ttl_s: float) -> None:
        self._size, self._ttl = size, ttl_s
        self._items: OrderedDict[str, tuple[float, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, vector: np.ndarray) -> str:
        token = uuid.uuid4().hex
        if self._size == 0:
            return token
        with self._lock:
            self._items[token] = (time.monotonic() + self._ttl, vector)
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return token

    def get(self, token: str) -> np.ndarray | None:
        with self._lock:
            item = self._items.get(token)
            if item is None:
                return None
            if item[0] < time.monotonic():
                del self._items[token]
                return None
            return item[1]


# -- error classification ------------------------------------------------------------------------------------

_PASSTHROUGH = {
    "group_not_found",
    "person_not_found",
    "face_not_found",
    "group_exists",
    "busy",
    "engine_timeout",
}


def classify(exc: Exception) -> tuple[str, str, str]:
    """(internal code, message, param) for any exception; families map the code to their own vocabulary.

    Gallery input errors other than not-found / exists become `bad_argument`; transient errors other than
    queue-full and engine-timeout become `unavailable`; anything unexpected is `internal`."""
    if isinstance(exc, ApiError):
        return exc.code, exc.message, exc.param
    if isinstance(exc, InputError):
        if exc.code in _PASSTHROUGH:
            return exc.code, exc.message, ""
        param = exc.code[len("invalid_") :] if exc.code.startswith("invalid_") else ""
        return "bad_argument", exc.message, param
    if isinstance(exc, TransientError):
        return (exc.code if exc.code in _PASSTHROUGH else "unavailable"), exc.message, ""
    return "internal", "internal error", ""


def digest_equal(expected: str, given: str) -> bool:
    """Constant-time comparison of a computed digest with what the client sent, as UTF-8 bytes: on str,
    hmac.compare_digest raises TypeError for non-ASCII text (a signature of '张三' was an HTTP 500)."""
    return hmac.compare_digest(expected.encode("utf-8"), given.encode("utf-8", "surrogatepass"))
