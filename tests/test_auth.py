"""The service's ASGI guard (textclf.serving.auth) in front of a tiny ASGI app: no server, no model.
The same checks against a real `bentoml serve` are in test_serving.py."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from projects import section
from textclf.errors import ConfigError
from textclf.serving import auth

TOKENS = {
    "reader": {"token": "reader-secret", "scopes": ["read"]},
    "classifier": {"token_sha256": auth.sha256_hex("classify-secret"), "scopes": ["classify"]},
    "labeller": {"token": "feedback-secret", "scopes": ["classify", "feedback"], "rate_limit_burst": 2},
}
SETTINGS = section("serve", max_body_kb=1, max_concurrency=2, rate_limit_per_minute=60, rate_limit_burst=5)


class App:
    """Reads the whole body and answers 200 with the submitter and the body's size."""

    def __init__(self) -> None:
        self.calls = 0
        self.release: asyncio.Event | None = None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        self.calls += 1
        size, more = 0, True
        while more:
            message = await receive()
            size += len(message.get("body", b""))
            more = message.get("more_body", False)
        if self.release is not None:
            await self.release.wait()
        body = json.dumps({"submitter": auth.submitter(), "size": size}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})


@pytest.fixture
def guard(monkeypatch: pytest.MonkeyPatch) -> auth.ServiceGuard:
    monkeypatch.delenv(auth.TOKENS_FILE_ENV, raising=False)
    monkeypatch.delenv(auth.AUTH_ENV, raising=False)
    monkeypatch.setenv(auth.TOKENS_ENV, json.dumps(TOKENS))
    return auth.ServiceGuard(App(), SETTINGS)


async def _call(
    guard: auth.ServiceGuard,
    path: str,
    token: str | None = None,
    method: str = "POST",
    body: list[bytes] | None = None,
    content_type: str = "application/json",
    length: bool = True,
) -> tuple[int, dict[str, str], dict]:
    chunks = list(body if body is not None else [b"{}"])
    headers = [(b"content-type", content_type.encode())]
    if token:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    if length:
        headers.append((b"content-length", str(sum(map(len, chunks))).encode()))
    scope = {"type": "http", "method": method, "path": path, "headers": headers}
    sent: list[dict] = []
    read = 0

    async def receive() -> dict:
        nonlocal read
        if read < len(chunks):
            read += 1
            return {"type": "http.request", "body": chunks[read - 1], "more_body": read < len(chunks)}
        await asyncio.sleep(3600)  # a client that waits: the guard must never need this
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    await guard(scope, receive, send)
    start = sent[0]
    got_headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], got_headers, {**json.loads(sent[1]["body"]), "_chunks_read": read}


def call(guard: auth.ServiceGuard, path: str, token: str | None = None, **kwargs: Any) -> tuple[int, dict]:
    status, _, body = asyncio.run(_call(guard, path, token, **kwargs))
    return status, body


@pytest.mark.parametrize("path", ["/classify", "/feedback", "/metadata", "/metrics", "/", "/docs.json"])
def test_no_or_bad_token_is_401(guard: auth.ServiceGuard, path: str) -> None:
    status, headers, _ = asyncio.run(_call(guard, path, None))
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    assert call(guard, path, "not-a-token")[0] == 401
    assert call(guard, path, "")[0] == 401
    assert guard.app.calls == 0


def test_scopes_decide_the_routes(guard: auth.ServiceGuard) -> None:
    assert call(guard, "/classify", "classify-secret") == (
        200,
        {"submitter": "classifier", "size": 2, "_chunks_read": 1},
    )
    assert call(guard, "/feedback", "classify-secret")[0] == 403
    assert call(guard, "/metadata", "classify-secret", method="GET")[0] == 403
    assert call(guard, "/metadata", "reader-secret", method="GET")[0] == 200
    assert call(guard, "/classify", "reader-secret")[0] == 403
    assert call(guard, "/feedback", "feedback-secret")[1]["submitter"] == "labeller"
    assert guard.app.calls == 3


@pytest.mark.parametrize("path", sorted(auth.OPEN_PATHS))
def test_probes_stay_open(guard: auth.ServiceGuard, path: str) -> None:
    assert call(guard, path, None, method="GET", content_type="")[0] == 200


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", ""]
)
def test_a_post_that_is_not_json_is_415(guard: auth.ServiceGuard, content_type: str) -> None:
    assert call(guard, "/classify", "classify-secret", content_type=content_type)[0] == 415
    assert (
        call(guard, "/classify", "classify-secret", content_type="application/json; charset=utf-8")[0] == 200
    )
    assert guard.app.calls == 1


def test_a_large_body_is_413_before_it_is_read(guard: auth.ServiceGuard) -> None:
    big = [b"x" * 600] * 100  # 60 KB in 600-byte chunks; the limit is 1 KB
    status, body = call(guard, "/classify", "classify-secret", body=big)
    assert status == 413 and body["_chunks_read"] == 0  # by Content-Length: nothing read
    status, body = call(guard, "/classify", "classify-secret", body=big, length=False)
    assert status == 413 and body["_chunks_read"] == 2  # streamed: read only past the limit
    status, body = call(guard, "/classify", "classify-secret", body=[b"x" * 512, b"y" * 512], length=False)
    assert status == 200 and body["size"] == 1024  # the limit itself passes, whole
    assert guard.app.calls == 1


def test_over_rate_is_429_per_token(guard: auth.ServiceGuard) -> None:
    got = [call(guard, "/feedback", "feedback-secret")[0] for _ in range(4)]
    assert got == [200, 200, 429, 429]  # the token's own burst of 2
    status, headers, _ = asyncio.run(_call(guard, "/feedback", "feedback-secret"))
    assert status == 429 and int(headers["retry-after"]) >= 1
    got = [call(guard, "/classify", "classify-secret")[0] for _ in range(6)]
    assert got == [200] * 5 + [429]  # serve.rate_limit_burst; another token's bucket is its own


def test_over_concurrency_is_503(guard: auth.ServiceGuard) -> None:
    async def scenario() -> list[int]:
        guard.app.release = asyncio.Event()
        held = [asyncio.create_task(_call(guard, "/classify", "classify-secret")) for _ in range(2)]
        await asyncio.sleep(0.05)
        over = await _call(guard, "/classify", "classify-secret")
        guard.app.release.set()
        return [over[0], *[(await t)[0] for t in held]]

    assert asyncio.run(scenario()) == [503, 200, 200]
    assert guard.in_flight == 0


def test_auth_none_skips_tokens_but_keeps_the_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(auth.TOKENS_ENV, raising=False)
    monkeypatch.delenv(auth.TOKENS_FILE_ENV, raising=False)
    monkeypatch.setenv(auth.AUTH_ENV, "none")
    guard = auth.ServiceGuard(App(), SETTINGS)
    assert call(guard, "/feedback", None) == (200, {"submitter": None, "size": 2, "_chunks_read": 1})
    assert call(guard, "/feedback", None, content_type="text/plain")[0] == 415
    assert call(guard, "/feedback", None, body=[b"x" * 2000])[0] == 413


def test_no_token_configured_refuses_to_start(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # noqa: ANN001
    for var in (auth.TOKENS_ENV, auth.TOKENS_FILE_ENV, auth.AUTH_ENV):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigError, match="no token is configured"):
        auth.check_startup(section("serve"))
    with pytest.raises(ConfigError, match="no token is configured"):
        auth.ServiceGuard(App(), section("serve"))
    auth.check_startup(section("serve", auth="none"))
    monkeypatch.setenv(auth.AUTH_ENV, "none")
    auth.check_startup(section("serve"))
    monkeypatch.setenv(auth.AUTH_ENV, "tokens")
    with pytest.raises(ConfigError, match="no token is configured"):
        auth.check_startup(section("serve", auth="none"))
    secret = tmp_path / "tokens.json"  # a mounted secret
    secret.write_text(json.dumps({"ops": {"token_sha256": auth.sha256_hex("t"), "scopes": ["read"]}}))
    monkeypatch.setenv(auth.TOKENS_FILE_ENV, str(secret))
    auth.check_startup(section("serve"))


@pytest.mark.parametrize(
    "tokens, message",
    [
        ("{not json", "TEXTCLF_SERVE_TOKENS"),
        ('["a"]', "valid dictionary"),
        ('{"a": {"scopes": ["read"]}}', "a.token_sha256: Field required"),
        ('{"a": {"token": "t", "token_sha256": "' + "0" * 64 + '", "scopes": ["read"]}}', "not both"),
        ('{"a": {"token": "", "scopes": ["read"]}}', "non-empty"),
        ('{"a": {"token_sha256": "abc", "scopes": ["read"]}}', "token_sha256"),
        ('{"a": {"token": "sekrit-1", "scopes": ["admin"]}}', "a.scopes"),
        ('{"a": {"token": "sekrit-2", "scopes": ["read"], "rate": 1}}', "a.rate: Extra inputs"),
        ('{"a": {"token": "t", "scopes": []}}', "scopes"),
    ],
)
def test_malformed_tokens_fail_with_their_source(tokens: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        auth.load_tokens({auth.TOKENS_ENV: tokens})
    assert "sekrit" not in str(err.value)  # a token in the input is never in the message


def test_a_name_in_both_sources_is_an_error(tmp_path) -> None:  # noqa: ANN001
    entry = {"a": {"token": "t", "scopes": ["read"]}}
    (tmp_path / "t.json").write_text(json.dumps(entry))
    env = {auth.TOKENS_ENV: json.dumps(entry), auth.TOKENS_FILE_ENV: str(tmp_path / "t.json")}
    with pytest.raises(ConfigError, match="configured twice"):
        auth.load_tokens(env)
    with pytest.raises(ConfigError, match="cannot read"):
        auth.load_tokens({auth.TOKENS_FILE_ENV: str(tmp_path / "missing.json")})


@pytest.mark.parametrize(
    "host, tokens, expected", [("127.0.0.1", "", "none"), ("0.0.0.0", "", None), ("127.0.0.1", "t", None)]
)
def test_textclf_serve_on_loopback_without_tokens_serves_without_auth_and_warns(
    host: str,
    tokens: str,
    expected: str | None,
    repo_root,
    monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
) -> None:
    from typer.testing import CliRunner

    from textclf import cli
    from textclf.serving import release

    for var in (auth.TOKENS_FILE_ENV, auth.AUTH_ENV):
        monkeypatch.delenv(var, raising=False)
    entry = {"ops": {"token": tokens, "scopes": ["read"]}} if tokens else {}
    monkeypatch.setenv(auth.TOKENS_ENV, json.dumps(entry))
    monkeypatch.chdir(repo_root)
    monkeypatch.setattr(release, "champion_bento", lambda *_: "textclf:v1")
    execs: list[tuple[list[str], dict[str, str]]] = []
    monkeypatch.setattr(cli.os, "execvpe", lambda _, cmd, env: execs.append((cmd, env)))
    result = CliRunner().invoke(cli.app, ["serve", "--host", host])
    assert result.exit_code == 0, result.output
    ((cmd, env),) = execs
    assert cmd[cmd.index("--host") + 1] == host and env.get(auth.AUTH_ENV) == expected
    assert ("WITHOUT authentication" in result.output) == (expected == "none")
