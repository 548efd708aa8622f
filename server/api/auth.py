"""API-key checks (constant-time), as FastAPI dependencies."""

from __future__ import annotations

import hmac

from fastapi import Request

from qadapter.core.errors import Forbidden, Unauthorized
from qadapter.core.settings import Settings


def key_matches(given: str, keys: list[str]) -> bool:
    """Constant-time comparison against every configured key."""
    return any(hmac.compare_digest(given.encode(), key.encode()) for key in keys)


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


async def require_api_key(request: Request) -> None:
    """Refuse a request without a valid inference key, when keys are configured."""
    check_api_token(bearer_token(request), request.app.state.settings)


def check_api_token(token: str, settings: Settings) -> None:
    """An inference key, when keys are configured (an admin key is not one)."""
    keys = settings.api_key_list
    if not keys:
        return
    if not token:
        raise Unauthorized("Missing API key: send it as 'Authorization: Bearer <key>'.")
    if not key_matches(token, keys):
        raise Unauthorized("Incorrect API key provided.")


async def require_admin_key(request: Request) -> None:
    """Admin routes need the admin key (also checked by RequestGate before the body is read)."""
    check_admin_token(bearer_token(request), request.app.state.settings)


def check_admin_token(token: str, settings: Settings) -> None:
    """Admin routes need the admin key; an inference key is not enough; no admin key = routes off."""
    if not settings.admin_key:
        raise Forbidden("Admin routes are off: start the server with QADAPTER_ADMIN_KEY (or --admin-key) set.")
    if not token:
        raise Unauthorized("Missing admin key: send it as 'Authorization: Bearer <admin key>'.")
    if key_matches(token, [settings.admin_key]):
        return
    if key_matches(token, settings.api_key_list):
        raise Forbidden("An inference key cannot manage adapters; use the admin key.")
    raise Unauthorized("Incorrect admin key provided.")
