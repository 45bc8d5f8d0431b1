"""Every Gradio event is callable over HTTP: the handlers themselves refuse and audit.

The page hides the Audit and Admin tabs from members, but a member's session can still join
the queue for those events by id. These tests do exactly that, through the real app (real
sign-in through the test IdP), and check the refusal reaches both the caller and the audit log.
"""

from __future__ import annotations

import uuid

import httpx

from core.audit.query import AuditFilters
from tests.ui_helpers import (
    app_db_url,
    gradio_call,
    make_user,
    signed_in_client,
    wait_for_audit,
)

AUDIT_FILTER_DATA = ["Last 24 hours", "all", "", "", "any", None]


def _error_text(message: dict) -> str:
    output = message.get("output") or {}
    return str(output.get("error") or output)


def test_signed_out_gradio_calls_get_401(app_server) -> None:
    with httpx.Client(base_url=app_server.base_url, timeout=30) as client:
        assert client.get("/config", headers={"accept": "application/json"}).status_code == 401
        joined = client.post(
            "/gradio_api/queue/join",
            json={"data": [], "fn_index": 0, "session_hash": "x" * 11},
        )
        assert joined.status_code == 401
        assert (
            client.post("/gradio_api/upload", files={"files": ("a.txt", b"x")}).status_code == 401
        )
        # The public HTTP API is off: even signed in it would be 404, signed out it is 401.
        assert client.post("/gradio_api/run/audit_query", json={"data": []}).status_code in (
            401,
            404,
        )


def test_member_calling_audit_handlers_is_refused_and_audited(app_server) -> None:
    sub = make_user(app_server.issuer, ["sales"])
    with signed_in_client(app_server.base_url, sub) as client:
        for api_name, data in (
            ("audit_query", AUDIT_FILTER_DATA),
            ("audit_export", AUDIT_FILTER_DATA[:-1]),
        ):
            message = gradio_call(client, api_name, data)
            assert message["success"] is False, message
            assert "auditors and admins" in _error_text(message)
            assert "Traceback" not in _error_text(message)
    rows = wait_for_audit(
        app_db_url(app_server.data_dir),
        AuditFilters(user=sub, action="ui_read_audit", outcome="denied"),
        minimum=2,
    )
    assert len(rows) >= 2
    assert all(r.user_sub == sub and r.status == 403 for r in rows)
    # Nothing the member asked for was recorded as viewed or exported.
    viewed = wait_for_audit(
        app_db_url(app_server.data_dir), AuditFilters(user=sub, action="audit_view"), 0
    )
    assert viewed == []


def test_member_calling_admin_handlers_is_refused_and_audited(app_server) -> None:
    sub = make_user(app_server.issuer, ["sales"])
    with signed_in_client(app_server.base_url, sub) as client:
        overview = gradio_call(client, "admin_overview", [])
        assert overview["success"] is False
        assert "admins" in _error_text(overview)
        create = gradio_call(client, "admin_create_key", ["finance", "member", 30])
        assert create["success"] is False
        assert "tlm_" not in str(create)
    db = app_db_url(app_server.data_dir)
    assert wait_for_audit(db, AuditFilters(user=sub, action="ui_view_admin", outcome="denied"))
    assert wait_for_audit(db, AuditFilters(user=sub, action="ui_manage_keys", outcome="denied"))


def test_conversation_of_another_user_cannot_be_opened(app_server) -> None:
    from core.chat import conversations as conv

    db = app_db_url(app_server.data_dir)
    owner = make_user(app_server.issuer, ["sales"])
    other = make_user(app_server.issuer, ["sales"])
    cid = conv.create_conversation(db, owner, "sales", f"private-{uuid.uuid4().hex[:6]}")
    conv.append_messages(db, owner, "sales", cid, [conv.StoredMessage("user", "canary-8812")])
    with signed_in_client(app_server.base_url, other) as client:
        # Refused either by Gradio (not one of this session's choices) or by the handler
        # (owner and team filter): in both cases nothing of the conversation comes back.
        message = gradio_call(client, "conversation_open", [cid, "sales"])
    assert message["success"] is False
    assert "canary-8812" not in str(message)
