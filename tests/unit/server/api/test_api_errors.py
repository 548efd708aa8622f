"""The one error mapping: every exception becomes an OpenAI-shaped body with the right status."""

from __future__ import annotations

import json

import pytest

from qadapter.core.errors import (
    AdapterNotFound,
    ContextTooLong,
    InvalidAdapter,
    InvalidRequest,
    Overloaded,
    Unauthorized,
)
from qadapter.server.api.errors import render, sse_error


@pytest.mark.parametrize(
    ("exc", "status", "code", "param"),
    [
        (InvalidRequest("bad", param="top_p"), 400, "invalid_request_error", "top_p"),
        (ContextTooLong("long", param="max_tokens"), 400, "context_length_exceeded", "max_tokens"),
        (AdapterNotFound("nope", param="model"), 404, "model_not_found", "model"),
        (Unauthorized("who"), 401, "invalid_api_key", None),
        (InvalidAdapter("broken"), 400, "invalid_adapter", None),
        (Overloaded("busy", retry_after_s=2.4), 503, "overloaded", None),
    ],
)
def test_our_errors_keep_status_code_and_param(exc: Exception, status: int, code: str, param: str | None) -> None:
    got_status, body, headers = render(exc)
    assert got_status == status
    assert body["error"]["code"] == code and body["error"]["param"] == param
    assert body["error"]["message"] == str(exc)
    assert ("Retry-After" in headers) == isinstance(exc, Overloaded)


def test_overloaded_carries_a_retry_after_header() -> None:
    assert render(Overloaded("busy", retry_after_s=2.4))[2] == {"Retry-After": "2"}


def test_an_unexpected_error_is_a_500_that_hides_internals() -> None:
    status, body, _ = render(RuntimeError("secret path /srv/model"))
    assert status == 500 and body["error"]["type"] == "server_error"
    assert "secret" not in body["error"]["message"]


def test_an_error_after_a_stream_started_is_one_data_event() -> None:
    event = sse_error(IndexError("index out of range"))
    assert event.startswith("data: ") and event.endswith("\n\n")
    assert json.loads(event[6:])["error"]["code"] == "internal_error"
