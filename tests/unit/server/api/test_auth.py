"""server/api/auth.py: the bearer token is read from the Authorization header alone; inference keys
open /v1 only when configured; the admin key alone opens /admin (an inference key is a 403, no admin
key turns the routes off); every comparison is constant-time and never fails on odd bytes."""

from __future__ import annotations

import hmac
from collections.abc import Callable

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from starlette.requests import Request

from qadapter.core.errors import Forbidden, QAdapterError, Unauthorized
from qadapter.core.settings import Settings
from qadapter.server.api import auth
from qadapter.server.api.auth import (
    bearer_token,
    check_admin_token,
    check_api_token,
    key_matches,
    require_admin_key,
    require_api_key,
)
from qadapter.server.api.errors import install


def request_with(headers: dict[str, str]) -> Request:
    raw = [(name.lower().encode(), value.encode()) for name, value in headers.items()]
    return Request({"type": "http", "method": "GET", "path": "/", "headers": raw, "query_string": b""})


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ({"Authorization": "Bearer sk-1"}, "sk-1"),
        ({"Authorization": "bearer sk-1"}, "sk-1"),
        ({"Authorization": "BEARER   sk-1  "}, "sk-1"),
        ({"Authorization": "Basic c2stMQ=="}, ""),
        ({"Authorization": "sk-1"}, ""),
        ({"Authorization": "Bearer"}, ""),
        ({"X-Api-Key": "sk-1"}, ""),
        ({}, ""),
    ],
)
def test_the_bearer_token_is_read_from_a_bearer_authorization_header_only(header: dict[str, str], token: str) -> None:
    assert bearer_token(request_with(header)) == token


def test_without_configured_keys_the_inference_routes_are_open() -> None:
    for token in ("", "anything"):
        check_api_token(token, Settings(api_keys=""))


@pytest.mark.parametrize(
    ("token", "message"),
    [("", "Missing API key"), ("sk-3", "Incorrect API key"), ("sk-", "Incorrect API key"), ("sk-1x", "Incorrect")],
)
def test_a_missing_or_wrong_inference_key_is_unauthorized(token: str, message: str) -> None:
    with pytest.raises(Unauthorized, match=message):
        check_api_token(token, Settings(api_keys="sk-1, sk-2"))


def test_every_configured_inference_key_is_accepted_spaces_and_empty_entries_aside() -> None:
    settings = Settings(api_keys=" sk-1 ,, sk-2 ,")
    assert settings.api_key_list == ["sk-1", "sk-2"]
    check_api_token("sk-1", settings)
    check_api_token("sk-2", settings)
    with pytest.raises(Unauthorized):
        check_api_token(" sk-1 ", settings)  # bearer_token strips; the check itself compares exactly


def test_the_admin_key_is_not_an_inference_key() -> None:
    with pytest.raises(Unauthorized):
        check_api_token("admin", Settings(api_keys="sk-1", admin_key="admin"))


def test_admin_routes_are_off_without_an_admin_key_whatever_the_token() -> None:
    for token in ("", "sk-1", "admin"):
        with pytest.raises(Forbidden, match="Admin routes are off"):
            check_admin_token(token, Settings(api_keys="sk-1"))


@pytest.mark.parametrize(
    ("token", "refusal", "message"),
    [
        ("", Unauthorized, "Missing admin key"),
        ("sk-1", Forbidden, "An inference key cannot manage adapters"),
        ("wrong", Unauthorized, "Incorrect admin key"),
        ("admi", Unauthorized, "Incorrect admin key"),
    ],
)
def test_admin_routes_need_the_admin_key_and_an_inference_key_is_forbidden(
    token: str, refusal: type[QAdapterError], message: str
) -> None:
    with pytest.raises(refusal, match=message):
        check_admin_token(token, Settings(api_keys="sk-1", admin_key="admin"))
    check_admin_token("admin", Settings(api_keys="sk-1", admin_key="admin"))


def test_keys_are_compared_in_constant_time_against_every_configured_key(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real: Callable[[bytes, bytes], bool] = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    assert not key_matches("guess", ["sk-1", "sk-2", "sk-3"])
    assert compared == [(b"guess", b"sk-1"), (b"guess", b"sk-2"), (b"guess", b"sk-3")]


def test_a_non_ascii_token_is_refused_not_an_internal_error() -> None:
    assert not key_matches("ключ", ["sk-1"])
    assert key_matches("ключ", ["ключ"])
    with pytest.raises(Unauthorized):
        check_api_token("ключ", Settings(api_keys="sk-1"))
    with pytest.raises(Unauthorized):
        check_admin_token("\x00admin", Settings(admin_key="admin"))


def dependency_app(settings: Settings) -> TestClient:
    app = FastAPI()
    app.state.settings = settings
    install(app)

    @app.get("/v1/thing", dependencies=[Depends(require_api_key)])
    async def thing() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/admin/thing", dependencies=[Depends(require_admin_key)])
    async def admin_thing() -> dict[str, bool]:
        return {"ok": True}

    return TestClient(app)


@pytest.mark.parametrize(
    ("path", "token", "status", "code"),
    [
        ("/v1/thing", None, 401, "invalid_api_key"),
        ("/v1/thing", "wrong", 401, "invalid_api_key"),
        ("/v1/thing", "sk-1", 200, None),
        ("/admin/thing", None, 401, "invalid_api_key"),
        ("/admin/thing", "sk-1", 403, "forbidden"),
        ("/admin/thing", "admin", 200, None),
    ],
)
def test_the_dependencies_answer_with_openai_shaped_errors(
    path: str, token: str | None, status: int, code: str | None
) -> None:
    client = dependency_app(Settings(api_keys="sk-1", admin_key="admin"))
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    response = client.get(path, headers=headers)
    assert response.status_code == status, response.text
    if code is not None:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert (error["type"], error["code"]) == ("invalid_request_error", code)
