"""API shape (issue 12, items 9 and 10): every error under /v1 is ONE OpenAI error object, and
refusals of `GET /v1/models/{model}` are audited.

OpenAI clients read `{"error": {"message", "type", "param", "code"}}`; anything else (Gradio's
`{"detail": "Not Found"}` for an unknown path, FastAPI's 422 list) surfaces as an unreadable
error. Checked with the official `openai` client and raw httpx against the real app.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from core.audit.query import AuditFilters
from core.auth.apikeys import create_key
from core.config import Settings
from tests.ui_helpers import app_db_url, wait_for_audit

ERROR_KEYS = {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def sales_key(app_server: Any) -> str:
    """An API key of the sales team on the running app."""
    settings = Settings(data_dir=app_server.data_dir)
    return create_key(settings, tenant_id="sales", created_by="test-api-shape").secret


def _client(app_server: Any, key: str) -> OpenAI:
    return OpenAI(base_url=f"{app_server.base_url}/v1", api_key=key, max_retries=0, timeout=120)


def assert_openai_error(body: Any, code: str | None = None) -> dict[str, Any]:
    """`body` is exactly one OpenAI error object (with `code`, if given); returns its error."""
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == ERROR_KEYS, error
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["type"], str) and error["type"], error
    if code is not None:
        assert error["code"] == code, error
    return dict(error)


def test_unknown_path_is_an_openai_404(app_server: Any, sales_key: str) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        _client(app_server, sales_key).get("/assistants/nope", cast_to=object)
    assert raised.value.status_code == 404
    error = assert_openai_error(raised.value.response.json(), "not_found")
    assert "/v1/assistants/nope" in error["message"]
    signed_out = httpx.get(f"{app_server.base_url}/v1/no/such/path", timeout=30)
    assert signed_out.status_code == 404
    assert_openai_error(signed_out.json(), "not_found")


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [("POST", "/v1/models", "GET"), ("GET", "/v1/chat/completions", "POST")],
)
def test_wrong_method_is_an_openai_405(
    app_server: Any, sales_key: str, method: str, path: str, allowed: str
) -> None:
    client = _client(app_server, sales_key)
    with pytest.raises(openai.APIStatusError) as raised:
        if method == "POST":
            client.post(path.removeprefix("/v1"), cast_to=object, body={})
        else:
            client.get(path.removeprefix("/v1"), cast_to=object)
    response = raised.value.response
    assert response.status_code == 405, response.text
    assert response.headers.get("allow") == allowed
    assert_openai_error(response.json(), "method_not_allowed")


def test_bad_json_is_an_openai_400(app_server: Any, sales_key: str) -> None:
    answer = httpx.post(
        f"{app_server.base_url}/v1/chat/completions",
        content=b'{"model": "sales", "messages": [',
        headers={"content-type": "application/json", "authorization": f"Bearer {sales_key}"},
        timeout=60,
    )
    assert answer.status_code == 400, answer.text
    assert_openai_error(answer.json(), "invalid_request")


def test_invalid_parameters_are_a_400_naming_the_parameter(app_server: Any, sales_key: str) -> None:
    """FastAPI would answer 422 with a list; OpenAI answers 400 with `param`."""
    with pytest.raises(openai.BadRequestError) as raised:
        _client(app_server, sales_key).chat.completions.create(model="sales", messages=[])
    error = assert_openai_error(raised.value.response.json(), "invalid_request")
    assert error["param"] == "messages", error


def test_huge_body_is_an_openai_413(app_server: Any, sales_key: str) -> None:
    question = {"role": "user", "content": "x" * 2_000_000}
    with pytest.raises(openai.APIStatusError) as raised:
        _client(app_server, sales_key).chat.completions.create(
            model="sales",
            messages=[question],  # type: ignore[list-item]
        )
    assert raised.value.status_code == 413
    assert_openai_error(raised.value.response.json(), "request_too_large")


def test_model_refusals_are_openai_errors_and_audited(app_server: Any, sales_key: str) -> None:
    """A sales key asking for finance (403) and for a model that does not exist (404)."""
    started = datetime.now(UTC)
    client = _client(app_server, sales_key)
    with pytest.raises(openai.PermissionDeniedError) as denied:
        client.models.retrieve("finance")
    assert_openai_error(denied.value.response.json(), "permission_denied")
    unknown = f"no-such-team-{uuid.uuid4().hex[:8]}"
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve(unknown)
    assert_openai_error(missing.value.response.json(), "model_not_found")

    db_url = app_db_url(app_server.data_dir)
    finance = wait_for_audit(db_url, AuditFilters(since=started, action="api_models"), minimum=2)
    by_status = {row.status: row for row in finance}
    assert set(by_status) >= {403, 404}, [(r.status, r.detail) for r in finance]
    assert by_status[403].outcome == "denied" and by_status[403].tenant_id == "finance"
    assert by_status[404].outcome == "denied" and unknown in (by_status[404].detail or "")
    for row in (by_status[403], by_status[404]):
        assert row.user_sub, row  # who asked: the key's principal
        assert row.client_ip == "127.0.0.1", row
