"""Fuzzing the API: whatever a client sends, no 500 and no crash; errors keep their shape.

- Schemathesis drives every route from the app's own OpenAPI schema (valid and invalid
  requests), in process, on an app without an engine: it reaches every check before
  generation (auth, validation, tenant lookup, authorization, rate limit) cheaply.
- Hypothesis drives the generation parameters through the real shared engine.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from core.auth.apikeys import create_key
from core.config import Settings

ERROR_KEYS = {"message", "type", "code"}


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, str]:
    """The real app without an engine, and a sales API key for it."""
    from core.server import create_app
    from core.services import build_services

    settings = Settings(data_dir=tmp_path_factory.mktemp("fuzz"), rate_limit_user="100000/minute")
    services = build_services(settings)
    key = create_key(settings, tenant_id="sales", created_by="fuzz").secret
    return create_app(settings, services), key


@pytest.fixture(scope="module")
def api_schema(fuzz_app: tuple[Any, str]) -> Any:
    """The app's own OpenAPI schema, limited to the OpenAI-compatible routes."""
    app, _key = fuzz_app
    return schemathesis.openapi.from_asgi("/openapi.json", app).include(path_regex="^/v1/")


# schemathesis' pytest integration (`from_fixture`) does not run under pytest 9, so its
# case strategies are driven with hypothesis directly, valid and invalid requests alike.
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_server_errors(api_schema: Any, fuzz_app: tuple[Any, str], mode: Any) -> None:
    _app, key = fuzz_app
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/models", "/v1/chat/completions"}
    for operation in operations:

        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=mode))
        def call(case: Any) -> None:
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {key}"}
            _check_answer(case.call())

        call()


def _check_answer(response: Any) -> None:
    assert response.status_code != 500, response.text
    if response.status_code >= 400:
        assert set(response.json()["error"]) >= ERROR_KEYS, response.text
    if response.status_code == 503:  # no engine in this app: the one expected server answer
        assert response.json()["error"]["code"] == "engine_unavailable"


def test_garbage_bodies_get_400_in_openai_shape(fuzz_app: tuple[Any, str]) -> None:
    from starlette.testclient import TestClient

    app, key = fuzz_app
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    http = TestClient(app)  # no `with`: the lifespan (engine start) is not wanted here
    for body in (b"", b"{", b"[]", b"null", b'"x"', b"\xff\xfe", b'{"model": 1}'):
        answer = http.post("/v1/chat/completions", content=body, headers=headers)
        assert answer.status_code == 400, (body, answer.text)
        assert set(answer.json()["error"]) >= ERROR_KEYS


# --- generation parameters through the real engine ---------------------------------------

TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=80)
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]), "content": TEXT})
REQUEST = st.fixed_dictionaries(
    {
        "model": st.just("sales"),
        "messages": st.lists(MESSAGE, max_size=3).map(
            lambda history: [*history, {"role": "user", "content": "Any discount?"}]
        ),
        "max_tokens": st.integers(1, 6),
        "stream": st.booleans(),
    },
    optional={
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0.01, 1),
        "seed": st.integers(0, 2**63 - 1),
        "stop": st.one_of(TEXT, st.lists(TEXT, max_size=4)),
        "user": TEXT,
    },
)


@pytest.fixture
async def engine_app(services: Any) -> tuple[Any, str]:
    """The real app on services sharing the session's engine, and a sales key."""
    from core.server import create_app

    key = create_key(services.settings, tenant_id="sales", created_by="fuzz").secret
    return create_app(services.settings, services), key


@pytest.mark.engine
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(request=REQUEST)
async def test_generation_parameters_never_crash(
    engine_app: tuple[Any, str], request: dict[str, Any]
) -> None:
    app, key = engine_app
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        answer = await http.post("/v1/chat/completions", json=request, headers=headers)
    assert answer.status_code in (200, 400), answer.text
    if answer.status_code == 400:
        assert set(answer.json()["error"]) >= ERROR_KEYS
    elif request["stream"]:
        assert answer.text.rstrip().endswith("data: [DONE]"), answer.text[-300:]
    else:
        assert answer.json()["usage"]["completion_tokens"] <= request["max_tokens"]
