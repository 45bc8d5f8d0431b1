"""Gradio's own routes against the real app (issue 12, item 3 and Gradio's part of item 9).

The route table comes from the app itself (`core.server.create_app`, the code path of
`tenantllm serve`, built in-process without the engine), so a route a Gradio upgrade adds is
called here too: unless it is in NEEDED below, it must answer 404 to everyone. Each route is
called as a sales member, as an editor of another team and signed out. The other tests check
what the needed routes return: nothing of another session, user or team.
"""

from __future__ import annotations

import json
import re
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from starlette.routing import BaseRoute, Match, Mount

from core.audit.query import AuditFilters
from tests.ui_helpers import (
    app_db_url,
    fn_index,
    join_queue,
    make_user,
    signed_in_client,
    wait_for_audit,
)

pytestmark = pytest.mark.timeout(600)

# (method, route path) of the Gradio routes the browser page needs; every other one is refused.
NEEDED = {
    ("GET", "/"),
    ("HEAD", "/"),
    ("GET", "/config"),
    ("GET", "/assets/{path:path}"),
    ("GET", "/static/{path:path}"),
    ("GET", "/theme.css"),
    ("GET", "/favicon.ico"),
    ("GET", "/gradio_api/app_id"),
    ("GET", "/gradio_api/heartbeat/{session_hash}"),
    ("POST", "/gradio_api/queue/join"),
    ("GET", "/gradio_api/queue/data"),
    ("POST", "/gradio_api/cancel"),
    ("POST", "/gradio_api/reset"),
    ("POST", "/gradio_api/upload"),
    ("GET", "/gradio_api/upload_progress"),
    ("GET", "/gradio_api/file={path_or_url:path}"),
    ("HEAD", "/gradio_api/file={path_or_url:path}"),
}
# The front end's own files: served signed out too (they hold no user data).
PUBLIC = {"/assets/{path:path}", "/static/{path:path}", "/theme.css", "/favicon.ico"}
# Routes that must never be reachable, named so that the allow-list cannot drift onto them.
NEVER = (
    "/gradio_api/deep_link",
    "/gradio_api/info",
    "/gradio_api/openapi.json",
    "/gradio_api/run/{api_name}",
    "/gradio_api/call/{api_name}",
    "/gradio_api/api/{api_name}",
    "/gradio_api/proxy={url_path:path}",
    "/gradio_api/component_server",
    "/monitoring",
)
PARAMS = {"path": "index.js", "path_or_url": "/etc/hostname", "url_path": "http://127.0.0.1/"}
TXT = "text/plain"


@dataclass(frozen=True)
class GradioRoute:
    """One (method, path template) of the Gradio app as the parent app routes it."""

    method: str
    template: str

    def sample_path(self) -> str:
        """The template with every `{param}` filled with a harmless value."""
        return re.sub(
            r"\{(\w+)(?::\w+)?\}", lambda m: PARAMS.get(m.group(1), "x1y2z3"), self.template
        )


def _gradio_routes() -> list[GradioRoute]:
    """Every route of the Gradio mount that a request can reach (the parent's come first)."""
    from core.config import Settings
    from core.server import create_app
    from core.services import build_services

    settings = Settings(data_dir=Path(tempfile.mkdtemp()), oidc_issuer="http://127.0.0.1:9/")
    app = create_app(settings, build_services(settings))
    [mount] = [r for r in app.routes if isinstance(r, Mount)]
    parent = [r for r in app.routes if not isinstance(r, Mount)]
    found = []
    for route in mount.routes:
        for method in sorted(getattr(route, "methods", None) or {"GET"}):
            candidate = GradioRoute(method, route.path)  # type: ignore[attr-defined]
            if not _shadowed(parent, candidate):
                found.append(candidate)
    return found


def _shadowed(parent: list[BaseRoute], route: GradioRoute) -> bool:
    scope = {"type": "http", "method": route.method, "path": route.sample_path(), "root_path": ""}
    return any(r.matches(scope)[0] is Match.FULL for r in parent)


@pytest.fixture(scope="module")
def routes() -> list[GradioRoute]:
    """The Gradio routes of the app, from its own route table."""
    found = _gradio_routes()
    assert len(found) > 50, found  # Gradio 6.31 has ~95; far fewer means the listing broke
    return found


@dataclass(frozen=True)
class Caller:
    """Someone calling the app: their subject (None signed out) and their HTTP client."""

    sub: str | None
    client: httpx.Client


@contextmanager
def _callers(app_server: Any) -> Iterator[dict[str, Caller]]:
    member = make_user(app_server.issuer, ["sales"], prefix="gr-member")
    other_editor = make_user(app_server.issuer, ["finance-editors"], prefix="gr-editor")
    with (
        signed_in_client(app_server.base_url, member) as as_member,
        signed_in_client(app_server.base_url, other_editor) as as_editor,
        httpx.Client(base_url=app_server.base_url, timeout=60) as signed_out,
    ):
        yield {
            "member": Caller(member, as_member),
            "other_editor": Caller(other_editor, as_editor),
            "signed_out": Caller(None, signed_out),
        }


def _first(client: httpx.Client, method: str, url: str, **kwargs: Any) -> tuple[int, str]:
    """Status and the first bytes of the answer (a stream is not read to its end)."""
    with client.stream(method, url, timeout=30, **kwargs) as response:
        first = b""
        if method != "HEAD":
            for chunk in response.iter_bytes():
                first += chunk
                streaming = "text/event-stream" in response.headers.get("content-type", "")
                if len(first) > 2000 or response.status_code != 200 or streaming:
                    break
        return response.status_code, first[:2000].decode("utf-8", "replace")


def _call(client: httpx.Client, route: GradioRoute) -> tuple[int, str]:
    body: dict[str, Any] = {"json": {}} if route.method == "POST" else {}
    headers = {"accept": "application/json"}
    return _first(client, route.method, route.sample_path(), headers=headers, **body)


def test_every_gradio_route_is_refused_unless_needed(app_server, routes) -> None:
    wrong: list[str] = []
    with _callers(app_server) as callers:
        for route in routes:
            for who, caller in callers.items():
                status, first = _call(caller.client, route)
                seen = f"{who} {route.method} {route.template}: {status} {first[:200]!r}"
                if (route.method, route.template) not in NEEDED:
                    if status != 404:
                        wrong.append(seen)
                elif who == "signed_out" and route.template not in PUBLIC:
                    if status != 401:
                        wrong.append(seen)
                elif status >= 500:
                    wrong.append(seen)
    assert wrong == [], "\n".join(wrong)
    templates = {r.template for r in routes}
    assert set(NEVER) <= templates  # the named ones were really in the table and refused


# --- sessions and deep links ------------------------------------------------------------
def _completed(client: httpx.Client, session_hash: str) -> dict[str, Any]:
    with client.stream(
        "GET", "/gradio_api/queue/data", params={"session_hash": session_hash}, timeout=300
    ) as stream:
        assert stream.status_code == 200, stream.read()
        for line in stream.iter_lines():
            if line.startswith("data:"):
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    return dict(message)
    raise AssertionError("the event never completed")


def _chat(client: httpx.Client, text: str, session_hash: str) -> dict[str, Any]:
    """Open the page's session (its load event sets the team choices), then chat in it."""
    loaded = join_queue(client, "load", [], session_hash)
    assert loaded.status_code == 200, loaded.text
    assert _completed(client, session_hash).get("success") is True
    joined = join_queue(client, "chat_send", [text, "sales", None], session_hash)
    assert joined.status_code == 200, joined.text
    return _completed(client, session_hash)


def test_deep_links_and_other_sessions_give_nothing_away(app_server) -> None:
    canary = f"canary-{uuid.uuid4().hex[:10]}"
    session = uuid.uuid4().hex[:11]
    with _callers(app_server) as callers:
        owner, intruder = callers["member"].client, callers["other_editor"].client
        done = _chat(owner, f"Please repeat the word {canary}.", session)
        assert done.get("success") is True, done
        link_status, link = _first(
            intruder, "GET", "/gradio_api/deep_link", params={"session_hash": session}
        )
        answers = [
            (link_status, link),
            _first(intruder, "GET", "/config", params={"deep_link": session}),
            _first(intruder, "GET", "/", params={"deep_link": session}),
            _first(owner, "GET", "/gradio_api/deep_link", params={"session_hash": session}),
        ]
        if link_status == 200 and link.strip('"'):  # the old behaviour: a replayable link
            answers.append(
                _first(intruder, "GET", "/config", params={"deep_link": link.strip('"')})
            )
        # The session hash itself is worth nothing to someone else.
        cancel = {"session_hash": session, "fn_index": 0, "event_id": "x"}
        stolen = {
            "data": ["hi", "finance", None],
            "fn_index": fn_index(intruder, "chat_send"),
            "session_hash": session,
        }
        intruders_own = uuid.uuid4().hex[:11]
        answers += [
            _first(intruder, "GET", "/gradio_api/queue/data", params={"session_hash": session}),
            # The intruder's own hash first, the owner's last (FastAPI reads the last one).
            _first(
                intruder,
                "GET",
                f"/gradio_api/queue/data?session_hash={intruders_own}&session_hash={session}",
            ),
            _first(intruder, "GET", f"/gradio_api/heartbeat/{session}"),
            _first(intruder, "POST", "/gradio_api/cancel", json=cancel),
            _first(
                intruder, "POST", "/gradio_api/queue/join", json={**stolen, "session_hash": session}
            ),
        ]
        for status, text in answers:
            assert status == 404, (status, text[:300])
            assert canary not in text
        # Its owner still uses it.
        assert _chat(owner, "Say ok.", session).get("success") is True
    rows = wait_for_audit(
        app_db_url(app_server.data_dir),
        AuditFilters(user=callers["other_editor"].sub, action="ui_session", outcome="denied"),
        60,
        4,
    )
    assert len(rows) >= 4 and all(r.client_ip for r in rows)


# --- uploads ----------------------------------------------------------------------------
def _upload(client: httpx.Client, *files: tuple[str, bytes]) -> httpx.Response:
    parts = [("files", (name, data, TXT)) for name, data in files]
    return client.post("/gradio_api/upload", files=parts, timeout=120)


def _file_data(path: str, name: str) -> dict[str, Any]:
    return {"path": path, "orig_name": name, "meta": {"_type": "gradio.FileData"}}


def _message(response: httpx.Response) -> str:
    return str(response.json()["error"]["message"])


def test_member_upload_refused_and_audited(app_server) -> None:
    member = make_user(app_server.issuer, ["sales"], prefix="gr-member")
    with signed_in_client(app_server.base_url, member) as client:
        refused = _upload(client, ("notes.txt", b"a member's note"))
    assert refused.status_code == 403, refused.text
    assert "only editors" in _message(refused)
    rows = wait_for_audit(
        app_db_url(app_server.data_dir),
        AuditFilters(user=member, action="ui_upload_file", outcome="denied"),
    )
    assert rows and rows[0].status == 403 and rows[0].client_ip


def test_upload_readable_and_usable_only_by_its_uploader(app_server) -> None:
    canary = f"private-{uuid.uuid4().hex}"
    name = f"plan-{uuid.uuid4().hex[:6]}.txt"
    uploader = make_user(app_server.issuer, ["sales-editors"], prefix="gr-up")
    with _callers(app_server) as callers, signed_in_client(app_server.base_url, uploader) as own:
        stored = _upload(own, (name, canary.encode()))
        assert stored.status_code == 200, stored.text
        [path] = stored.json()
        mine = own.get(f"/gradio_api/file={path}")
        assert mine.status_code == 200 and canary in mine.text
        for who, caller in callers.items():
            status, text = _first(caller.client, "GET", f"/gradio_api/file={path}")
            assert status == (401 if caller.sub is None else 404), (who, status, text[:200])
            assert canary not in text
        # Nor may another team's editor feed it to their own upload event (into finance).
        intruder = callers["other_editor"]
        data = [[_file_data(path, name)], "finance"]
        joined = join_queue(intruder.client, "do_upload", data, uuid.uuid4().hex[:11])
        assert joined.status_code == 404, joined.text
        # A URL as a file input (Gradio would fetch it past the upload caps), a path the OS
        # cannot take: refused, and never a server error.
        remote = [[_file_data("https://files.example.test/big.pdf", "big.pdf")], "sales"]
        joined = join_queue(own, "do_upload", remote, uuid.uuid4().hex[:11])
        assert joined.status_code == 404, joined.text
        assert _first(own, "GET", "/gradio_api/file=/tmp/x%00y")[0] == 404
    # Where the upload lies is a capability: not in the access log.
    assert path not in _log_after(app_server.log_path, "/gradio_api/file")
    db = app_db_url(app_server.data_dir)
    assert wait_for_audit(db, AuditFilters(user=uploader, action="ui_upload_file", outcome="ok"))
    for caller, minimum in ((callers["member"], 1), (intruder, 2)):
        refusals = AuditFilters(user=caller.sub, action="ui_file", outcome="denied")
        assert len(wait_for_audit(db, refusals, 60, minimum)) >= minimum


def _left_on_disk(app_server: Any, names: list[str]) -> list[str]:
    """Which of these file names are still in the app's upload folders."""
    roots = [app_server.data_dir, Path(tempfile.gettempdir()) / "gradio"]
    return [n for n in names for root in roots if any(root.rglob(n))]


def test_upload_caps_refuse_with_a_clear_error(app_server) -> None:
    editor = make_user(app_server.issuer, ["sales-editors"], prefix="gr-cap")
    tag = uuid.uuid4().hex[:6]
    many = [(f"n{i}-{tag}.txt", f"note {i} {tag}".encode()) for i in range(11)]
    with signed_in_client(app_server.base_url, editor) as client:
        big = _upload(client, (f"big-{tag}.txt", b"x" * (21 * 1024 * 1024)))  # over 20 MB
        assert big.status_code == 413, big.text[:300]
        assert "at most 20 MB per file" in _message(big)
        too_many = _upload(client, *many)
        assert too_many.status_code == 429, too_many.text[:300]
        assert "at most 10 at a time" in _message(too_many)
        assert _left_on_disk(app_server, [n for n, _ in many]) == []  # refused: deleted
        ten = _upload(client, *many[:10])
        assert ten.status_code == 200, ten.text[:300]
        one_more = _upload(client, (f"late-{tag}.txt", b"one too many"))
        assert one_more.status_code == 429, one_more.text[:300]
        assert "at most 10 at a time" in _message(one_more)
    rows = wait_for_audit(
        app_db_url(app_server.data_dir), AuditFilters(user=editor, action="ui_upload_file"), 60, 4
    )
    outcomes = sorted(r.outcome for r in rows)
    assert outcomes == ["denied", "ok", "rate_limited", "rate_limited"], outcomes


def test_audit_export_downloads_only_for_its_auditor(app_server) -> None:
    auditor = make_user(app_server.issuer, ["auditors"], prefix="gr-aud")
    filters = ["Last 24 hours", "all", "", "", "any"]
    with _callers(app_server) as callers, signed_in_client(app_server.base_url, auditor) as own:
        session = uuid.uuid4().hex[:11]
        assert join_queue(own, "audit_export", filters, session).status_code == 200
        done = _completed(own, session)
        assert done.get("success") is True, done
        [exported] = _paths_in(done["output"])
        csv = own.get(f"/gradio_api/file={exported}")
        assert csv.status_code == 200 and "action" in csv.text  # the CSV header row
        for who, caller in callers.items():
            status, text = _first(caller.client, "GET", f"/gradio_api/file={exported}")
            assert status == (401 if caller.sub is None else 404), (who, status, text[:200])


def _paths_in(value: Any) -> list[str]:
    if isinstance(value, dict):
        own = [value["path"]] if isinstance(value.get("path"), str) else []
        return own + [p for v in value.values() for p in _paths_in(v)]
    if isinstance(value, list):
        return [p for v in value for p in _paths_in(v)]
    return []


# --- logs -------------------------------------------------------------------------------
def test_server_log_holds_no_codes_session_hashes_or_tokens(app_server) -> None:
    sub = make_user(app_server.issuer, ["sales"], prefix="gr-log")
    session = uuid.uuid4().hex[:11]
    with httpx.Client(base_url=app_server.base_url, follow_redirects=True, timeout=60) as client:
        form = client.get("/login")
        done = client.post(str(form.url), data={"sub": sub})
        callback = next(r for r in done.history if urlsplit(str(r.url)).path == "/auth/callback")
        query = parse_qs(urlsplit(str(callback.url)).query)
        code, state = query["code"][0], query["state"][0]
        assert _chat(client, "Say hello.", session).get("success") is True
        beat, _ = _first(client, "GET", f"/gradio_api/heartbeat/{session}")
        cookie = client.cookies.get("tenantllm_session") or ""
    assert beat == 200
    text = _log_after(app_server.log_path, "/gradio_api/heartbeat/")
    secrets = {"code": code, "state": state, "session hash": session, "cookie": cookie}
    leaked = [name for name, value in secrets.items() if value and value in text]
    assert leaked == [], leaked
    assert not re.search(r"code=(?!\[REDACTED\])[\w-]{6,}", text)
    assert not re.search(r"session_hash=(?!\[REDACTED\])\w", text)
    assert not re.search(r"\beyJ[\w-]{10,}\.[\w-]{10,}\.", text)  # no JWT (ID/access token)


def _log_after(path: Path, marker: str, deadline_s: float = 30) -> str:
    """The server log once `marker` is in it (the access log line of a request)."""
    import time

    end = time.monotonic() + deadline_s
    while True:
        text = path.read_text(errors="replace")
        if marker in text or time.monotonic() > end:
            return text
        time.sleep(0.5)


def test_uploads_not_indexed_in_time_are_deleted(tmp_path: Path) -> None:
    """The cleanup behind the count cap (in-process: the TTL is minutes in the real app)."""
    from core.ui.gradio_guard import UploadRegistry

    now = [1000.0]
    registry = UploadRegistry(lambda: str(tmp_path), ttl_seconds=600, clock=lambda: now[0])
    kept, shared = tmp_path / "a1" / "kept.txt", tmp_path / "b2" / "shared.txt"
    for path in (kept, shared):
        path.parent.mkdir()
        path.write_text("x")
    registry.grant("alice", [str(kept), str(shared)], uploaded=True)
    now[0] += 300
    registry.grant("bob", [str(shared)], uploaded=True)
    assert len(registry.held("alice")) == 2 and registry.owns("bob", str(shared))
    assert not registry.owns("bob", str(kept))
    now[0] += 301  # alice's grants expired, bob's has 299 s left
    assert registry.held("alice") == [] and not registry.owns("alice", str(kept))
    assert not kept.exists() and not kept.parent.exists()  # deleted with its folder
    assert shared.exists() and registry.owns("bob", str(shared))  # still bob's
    now[0] += 300
    assert registry.held("bob") == [] and not shared.exists()
