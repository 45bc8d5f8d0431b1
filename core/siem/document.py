"""One audit row as one JSON document with Elastic Common Schema (ECS) field names.

Every sink sends this same document (the file sink one per line, syslog as the message,
HEC as `event`, Elasticsearch as the indexed source), so a SIEM rule written for one sink
reads the others. Fields without a value are left out rather than sent as null. ECS has no
place for the chain's fields, tokens or document ids: they go under `tenantllm`.

`prompt_text` is sent only when the row stores it (`Settings.audit_prompt_text`, already
redacted when it was recorded); the digest always.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from core.audit.chain import format_time
from core.audit.query import AuditRecord

ALERT_ACTION = "alert"
# ECS event.outcome allows only these three.
_ECS_OUTCOMES = {
    "ok": "success",
    "denied": "failure",
    "error": "failure",
    "rate_limited": "failure",
}


def _pruned(value: Any) -> Any:
    """`value` without None, empty dicts and empty lists, at any depth."""
    if isinstance(value, dict):
        items = ((k, _pruned(v)) for k, v in value.items())
        return {k: v for k, v in items if v is not None and v != {} and v != []}
    return value


def _source(address: str | None) -> dict[str, str | None]:
    # ECS maps source.ip as an IP: a non-address peer ("testclient", a unix socket) would
    # make Elasticsearch refuse the whole document, so it goes to source.address only.
    if address is None:
        return {}
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return {"address": address}
    return {"ip": address, "address": address}


def ecs_document(record: AuditRecord) -> dict[str, Any]:
    """The ECS document of `record`."""
    is_alert = record.action == ALERT_ACTION
    document = {
        "@timestamp": format_time(record.created_at),
        "event": {
            "id": record.event_id,
            "sequence": record.seq,
            "action": record.action,
            "outcome": _ECS_OUTCOMES.get(record.outcome, "unknown"),
            "kind": "alert" if is_alert else "event",
            "duration": round(record.latency_ms * 1_000_000),  # ECS: nanoseconds
            "dataset": "tenantllm.audit",
            "module": "tenantllm",
            "reason": record.detail,
        },
        "service": {"name": "tenantllm"},
        "user": {"id": record.user_sub, "email": record.user_email},
        "source": _source(record.client_ip),
        "user_agent": {"original": record.user_agent},
        "http": {
            "request": {"id": record.request_id or None},
            "response": {"status_code": record.status},
        },
        "error": {"type": record.error_class},
        "labels": {"tenant": record.tenant_id, "outcome": record.outcome},
        "tags": list(record.flags),
        "tenantllm": {
            "seq": record.seq,
            "hash": record.hash,
            "prev_hash": record.prev_hash,
            "tokens_in": record.tokens_in,
            "tokens_out": record.tokens_out,
            "document_ids": list(record.document_ids),
            "prompt_digest": record.prompt_digest,
            "prompt_text": record.prompt_text,
        },
    }
    return dict(_pruned(document))


def json_line(record: AuditRecord) -> str:
    """The ECS document of `record` as one line of compact JSON (no newline inside)."""
    return json.dumps(ecs_document(record), ensure_ascii=False, separators=(",", ":"))
