"""Helpers for UI tests: users on the test IdP, an HTTP sign-in, Gradio calls over HTTP."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from core.audit.query import AuditFilters, AuditRecord, query


def make_user(issuer: str, groups: list[str], prefix: str = "ui") -> str:
    """A fresh user on the test IdP with these groups; returns its subject."""
    sub = f"{prefix}-{uuid.uuid4().hex[:8]}"
    response = httpx.put(
        f"{issuer.rstrip('/')}/users/{sub}",
        json={"email": f"{sub}@example.com", "groups": groups, "name": sub},
        timeout=10,
    )
    response.raise_for_status()
    return sub


@contextmanager
def signed_in_client(base_url: str, sub: str) -> Iterator[httpx.Client]:
    """An HTTP client that went through the real sign-in (app -> IdP form -> callback)."""
    with httpx.Client(base_url=base_url, follow_redirects=True, timeout=60) as client:
        form = client.get("/login")
        assert form.status_code == 200 and 'name="sub"' in form.text, form.text[:500]
        done = client.post(str(form.url), data={"sub": sub})
        assert done.status_code == 200, done.text[:500]
        assert str(done.url).startswith(base_url), done.url
        yield client


def fn_index(client: httpx.Client, api_name: str) -> int:
    """The id of the Gradio event registered under `api_name` (from /config)."""
    config = client.get("/config", headers={"accept": "application/json"}).json()
    for dep in config["dependencies"]:
        if dep.get("api_name") == api_name:
            return int(dep["id"])
    raise AssertionError(f"no event {api_name!r} in /config")


def join_queue(
    client: httpx.Client, api_name: str, data: list[Any], session_hash: str
) -> httpx.Response:
    """Ask Gradio to run one event for `session_hash`, as the browser does (not raised)."""
    return client.post(
        "/gradio_api/queue/join",
        json={
            "data": data,
            "fn_index": fn_index(client, api_name),
            "session_hash": session_hash,
            "event_data": None,
            "trigger_id": None,
        },
    )


def gradio_call(client: httpx.Client, api_name: str, data: list[Any]) -> dict[str, Any]:
    """Join the queue for one event like the browser does; return the final message."""
    session_hash = uuid.uuid4().hex[:11]
    join_queue(client, api_name, data, session_hash).raise_for_status()
    with client.stream(
        "GET", "/gradio_api/queue/data", params={"session_hash": session_hash}
    ) as stream:
        for line in stream.iter_lines():
            if not line.startswith("data:"):
                continue
            message = json.loads(line[5:])
            if message.get("msg") == "process_completed":
                return dict(message)
    raise AssertionError("the event never completed")


def wait_for_audit(
    db_url: str, filters: AuditFilters, deadline_s: float = 60, minimum: int = 1
) -> list[AuditRecord]:
    """Rows matching `filters` once the app's audit writer has stored (at least `minimum`)."""
    end = time.monotonic() + deadline_s
    while True:
        rows = query(db_url, filters, 1, 100).rows
        if len(rows) >= minimum or time.monotonic() > end:
            return rows
        time.sleep(0.5)


def app_db_url(data_dir: Path) -> str:
    """The SQLite database of an app started on `data_dir` (the app_server fixture)."""
    return f"sqlite:///{(data_dir / 'tenantllm.db').resolve()}"
