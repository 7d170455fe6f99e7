"""Who may call the service, and how much: one pure ASGI middleware in front of the Bento's routes.

BentoML has no self-hosted authentication, so :class:`ServiceGuard` (added with BentoML's
``add_asgi_middleware``) checks, in this order, before a request reaches the service:

* **401** no ``Authorization: Bearer <token>``, or a token that is not configured;
  **403** a token without the route's scope: ``classify`` (``POST /classify``), ``feedback``
  (``POST /feedback``), ``read`` (everything else: ``/metadata``, ``/metrics``, Swagger UI and specs).
  ``/livez``, ``/readyz`` and ``/healthz`` stay open (orchestrators' probes carry no token).
* **429** the token's bucket is empty (``serve.rate_limit_per_minute`` / ``rate_limit_burst``);
* **415** a POST whose Content-Type is not ``application/json`` (a cross-site form or ``text/plain``
  POST never reaches the JSON parser);
* **413** a body over ``serve.max_body_kb``: by its Content-Length before anything is read, and by
  counting a streamed (chunked) body, which is never held past the limit;
* **503** more than ``serve.max_concurrency`` requests in flight (split over the workers like BentoML's
  own ``traffic.max_concurrency``, which answers 429 and is therefore not used).

Tokens (docs/operations.md, "Service authentication") come from the environment: the JSON in
``TEXTCLF_SERVE_TOKENS`` and/or the file named by ``TEXTCLF_SERVE_TOKENS_FILE`` (a mounted secret)::

    {"web-frontend": {"token_sha256": "<hex sha256 of the token>", "scopes": ["classify"]},
     "labelling-team": {"token_sha256": "...", "scopes": ["classify", "feedback"],
                        "rate_limit_per_minute": 60, "rate_limit_burst": 10}}

A plain ``"token"`` is accepted instead of its hash (hashed when loaded); per-token limits override the
defaults from params.yaml. The token's name is the submitter :func:`submitter` reports to the service.
``serve.auth: none`` (or ``TEXTCLF_SERVE_AUTH=none``) turns the token check and rate limit off; the
size, type and concurrency limits stay.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import math
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from textclf.config import ServeConfig
from textclf.errors import ConfigError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

TOKENS_ENV, TOKENS_FILE_ENV, AUTH_ENV = (
    "TEXTCLF_SERVE_TOKENS",
    "TEXTCLF_SERVE_TOKENS_FILE",
    "TEXTCLF_SERVE_AUTH",
)
ScopeName = Literal["classify", "feedback", "read"]
OPEN_PATHS = frozenset({"/livez", "/readyz", "/healthz"})
ROUTE_SCOPES: dict[str, ScopeName] = {"/classify": "classify", "/feedback": "feedback"}

_SUBMITTER: ContextVar[str | None] = ContextVar("textclf_submitter", default=None)


def submitter() -> str | None:
    """The name of the token that made the current request (None with ``auth: none``)."""
    return _SUBMITTER.get()


def sha256_hex(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue(scopes: Iterable[ScopeName], **limits: float) -> tuple[str, dict[str, Any]]:
    """A new random token and its entry for the tokens JSON (which holds only the token's hash)."""
    token = secrets.token_urlsafe(32)
    return token, {"token_sha256": sha256_hex(token), "scopes": sorted(set(scopes)), **limits}


class TokenEntry(BaseModel):
    """One named token as configured: its hash (or the token itself), its scopes, optional limits."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    token_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    scopes: frozenset[ScopeName] = Field(min_length=1)
    rate_limit_per_minute: float | None = Field(default=None, gt=0.0)
    rate_limit_burst: int | None = Field(default=None, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _hash_a_plain_token(cls, data: Any) -> Any:
        """``{"token": ...}`` becomes its hash as it is read: only hashes are kept and compared."""
        if isinstance(data, dict) and "token" in data:
            if "token_sha256" in data:
                raise ValueError("give token_sha256 or token, not both")
            if not isinstance(data["token"], str) or not data["token"]:
                raise ValueError("token must be a non-empty string")
            data = {k: v for k, v in data.items() if k != "token"} | {
                "token_sha256": sha256_hex(data["token"])
            }
        return data


_TOKENS = TypeAdapter(dict[str, TokenEntry])


def load_tokens(environ: MutableMapping[str, str] | None = None) -> dict[str, TokenEntry]:
    """The configured tokens by name, from ``TEXTCLF_SERVE_TOKENS`` and ``TEXTCLF_SERVE_TOKENS_FILE``.

    A malformed source fails with its name; a name in both sources is an error (which would win?)."""
    env = os.environ if environ is None else environ
    sources: list[tuple[str, str]] = []
    if text := env.get(TOKENS_ENV, "").strip():
        sources.append((TOKENS_ENV, text))
    if path := env.get(TOKENS_FILE_ENV, "").strip():
        try:
            sources.append((f"{TOKENS_FILE_ENV}={path}", Path(path).read_text(encoding="utf-8")))
        except OSError as err:
            raise ConfigError(f"{TOKENS_FILE_ENV}: cannot read {path}: {err}") from None
    tokens: dict[str, TokenEntry] = {}
    for where, text in sources:
        try:
            entries = _TOKENS.validate_python(json.loads(text))
        except ValidationError as err:  # named by place, never with the input (it may hold a token)
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors(include_input=False)
            )
            raise ConfigError(f"{where}: {problems}") from None
        except ValueError as err:  # JSONDecodeError: the position, not the text
            raise ConfigError(f"{where}: {err}") from None
        if clash := tokens.keys() & entries.keys():
            raise ConfigError(f"{where}: token names {sorted(clash)} are configured twice")
        tokens |= entries
    return tokens


def auth_mode(settings: ServeConfig, environ: MutableMapping[str, str] | None = None) -> str:
    """``serve.auth``, unless ``TEXTCLF_SERVE_AUTH`` says otherwise at serve time."""
    mode = (os.environ if environ is None else environ).get(AUTH_ENV, "").strip() or settings.auth
    if mode not in ("tokens", "none"):
        raise ConfigError(f"{AUTH_ENV}={mode!r}: expected tokens or none")
    return mode


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address: where ``textclf serve`` may do without tokens."""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_startup(settings: ServeConfig, environ: MutableMapping[str, str] | None = None) -> None:
    """Refuse to serve with token auth and no token (the tokens are also validated here)."""
    if auth_mode(settings, environ) == "tokens" and not load_tokens(environ):
        raise ConfigError(
            f"serve.auth is 'tokens' but no token is configured: set {TOKENS_ENV} or {TOKENS_FILE_ENV} "
            f"(docs/operations.md), or serve without authentication with serve.auth: none or {AUTH_ENV}=none"
        )


class _Bucket:
    """Token bucket: ``capacity`` requests, refilled at ``per_minute``."""

    def __init__(self, per_minute: float, capacity: int) -> None:
        self.rate, self.capacity = per_minute / 60.0, capacity
        self.level, self.at = float(capacity), time.monotonic()

    def take(self) -> float:
        """0 when a request may pass (and takes it), else the seconds until one may."""
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.at) * self.rate)
        self.at = now
        if self.level >= 1.0:
            self.level -= 1.0
            return 0.0
        return (1.0 - self.level) / self.rate


class ServiceGuard:
    """The ASGI middleware (one instance per worker; state lives in the worker's event loop)."""

    def __init__(self, app: ASGIApp, settings: ServeConfig, workers: int = 1) -> None:
        self.app = app
        self.settings = settings
        check_startup(settings)
        self.tokens = load_tokens() if auth_mode(settings) == "tokens" else None
        self.max_body = settings.max_body_kb * 1024
        self.max_in_flight = math.ceil(settings.max_concurrency / max(workers, 1))
        self.in_flight = 0
        self.buckets: dict[str, _Bucket] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":  # the service has no websocket route
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        name, refusal = self._admit(scope, headers)
        if refusal:
            await _reply(send, *refusal)
            return
        if scope["method"] == "POST":
            media_type = headers.get("content-type", "").split(";")[0].strip().lower()
            if media_type != "application/json":
                await _reply(send, 415, f"Content-Type must be application/json, not {media_type!r}")
                return
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            await _reply(send, 413, self._too_large(), {"connection": "close"})
            return
        if self.in_flight >= self.max_in_flight:
            await _reply(send, 503, "the service is at its concurrency limit; retry", {"retry-after": "1"})
            return
        self.in_flight += 1
        token = _SUBMITTER.set(name)
        try:
            body = await self._read_body(receive)
            if body is None:
                await _reply(send, 413, self._too_large(), {"connection": "close"})
            else:
                await self.app(scope, _replay(body, receive), send)
        finally:
            _SUBMITTER.reset(token)
            self.in_flight -= 1

    def _admit(
        self, scope: Scope, headers: dict[str, str]
    ) -> tuple[str | None, tuple[int, str, dict[str, str]] | None]:
        """(token name, None) when the token may make this request now, else (None, the refusal)."""
        if self.tokens is None:
            return None, None
        challenge = {"www-authenticate": 'Bearer realm="textclf"'}
        scheme, _, presented = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            return None, (401, "missing bearer token (Authorization: Bearer <token>)", challenge)
        digest = sha256_hex(presented.strip())
        name = None
        for candidate, entry in self.tokens.items():  # every entry compared: no early exit
            if hmac.compare_digest(digest, entry.token_sha256):
                name = candidate
        if name is None:
            return None, (401, "invalid bearer token", challenge)
        entry = self.tokens[name]
        needed = ROUTE_SCOPES.get(scope["path"], "read")
        if needed not in entry.scopes:
            scope_error = {
                "www-authenticate": f'Bearer realm="textclf", error="insufficient_scope", scope="{needed}"'
            }
            return None, (403, f"token {name!r} lacks the {needed!r} scope", scope_error)
        bucket = self.buckets.get(name)
        if bucket is None:
            bucket = self.buckets[name] = _Bucket(
                entry.rate_limit_per_minute or self.settings.rate_limit_per_minute,
                entry.rate_limit_burst or self.settings.rate_limit_burst,
            )
        if wait := bucket.take():
            retry = {"retry-after": str(math.ceil(wait))}
            return None, (429, f"rate limit of token {name!r} exceeded; retry in {wait:.1f} s", retry)
        return name, None

    def _too_large(self) -> str:
        return f"request body over the limit of {self.settings.max_body_kb} KB"

    async def _read_body(self, receive: Receive) -> bytes | None:
        """The body, counted as it streams in; None once it passes ``max_body`` (the rest is never read).
        A client that goes away mid-body leaves a truncated body, which the service rejects as 400."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(chunks)
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body:
                return None
            if not message.get("more_body", False):
                return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the buffered body over once, then the client's later messages."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def _reply(send: Send, status: int, error: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"error": error}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
