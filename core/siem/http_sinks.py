"""The HTTP sinks: Splunk HEC, Elasticsearch bulk, and the alert webhook (httpx).

- Splunk HEC: `POST /services/collector/event`, `Authorization: Splunk <token>`, the batch
  as concatenated event objects; acknowledged by HTTP 200 with `code` 0.
- Elasticsearch: `POST /_bulk` (NDJSON), one `create` per row with `_id` = the event id, so
  a batch sent twice is stored once (a second `create` answers 409, taken as delivered).
  The answer's `errors` flag and each item's status are read: the rows up to the first
  refused item are acknowledged, and delivery resumes at that item.
- Webhook: alert rows only, as `{"alerts": [documents]}`; any 2xx acknowledges the batch.
"""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Sequence
from typing import Any

import httpx

from core.audit.query import AuditRecord
from core.siem.document import ALERT_ACTION, ecs_document
from core.siem.errors import DeliveryFailed

HEC_PATH = "/services/collector/event"
Verify = ssl.SSLContext | bool


def _refused(response: httpx.Response) -> DeliveryFailed:
    return DeliveryFailed(f"HTTP {response.status_code}: {response.text[:300]}")


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise DeliveryFailed(f"HTTP {response.status_code}: not JSON") from None


class SplunkHecSink:
    """Sends batches to a Splunk HTTP Event Collector."""

    kind = "splunk-hec"
    starts_at_head = False

    def __init__(self, name: str, url: str, token: str, verify: Verify, timeout: float) -> None:
        """A sink posting to `url` (its path defaults to the event endpoint)."""
        self.name = name
        self.url = url if httpx.URL(url).path not in ("", "/") else url.rstrip("/") + HEC_PATH
        self.client = httpx.Client(
            verify=verify, timeout=timeout, headers={"authorization": f"Splunk {token}"}
        )
        self.host = socket.gethostname()

    def _event(self, record: AuditRecord) -> str:
        body = {
            "time": round(record.created_at.timestamp(), 6),
            "host": self.host,
            "source": "tenantllm",
            "sourcetype": "tenantllm:audit",
            "event": ecs_document(record),
        }
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"))

    def deliver(self, records: Sequence[AuditRecord]) -> int:
        """Post the batch; all or nothing."""
        body = "".join(self._event(r) for r in records).encode("utf-8")
        response = self.client.post(
            self.url, content=body, headers={"content-type": "application/json"}
        )
        answer = _json(response) if response.status_code == 200 else None
        if not isinstance(answer, dict) or answer.get("code", 0) != 0:
            raise _refused(response)
        return len(records)

    def close(self) -> None:
        """Close the connection pool."""
        self.client.close()


class ElasticsearchSink:
    """Indexes batches with the Elasticsearch bulk API."""

    kind = "elasticsearch"
    starts_at_head = False

    def __init__(
        self, name: str, origin: str, index: str, api_key: str, verify: Verify, timeout: float
    ) -> None:
        """A sink writing to `index` at `origin` (`ApiKey` auth when `api_key` is set)."""
        self.name = name
        self.url = f"{origin}/_bulk"
        self.index = index
        headers = {"authorization": f"ApiKey {api_key}"} if api_key else {}
        self.client = httpx.Client(verify=verify, timeout=timeout, headers=headers)

    def _lines(self, record: AuditRecord) -> str:
        action = {"create": {"_index": self.index, "_id": record.event_id}}
        document = ecs_document(record)
        return (
            json.dumps(action, separators=(",", ":"))
            + "\n"
            + json.dumps(document, ensure_ascii=False, separators=(",", ":"))
            + "\n"
        )

    def deliver(self, records: Sequence[AuditRecord]) -> int:
        """Post the batch; returns how many rows, from the first, Elasticsearch stored."""
        body = "".join(self._lines(r) for r in records).encode("utf-8")
        response = self.client.post(
            self.url, content=body, headers={"content-type": "application/x-ndjson"}
        )
        if response.status_code != 200:
            raise _refused(response)
        answer = _json(response)
        if not answer.get("errors"):
            return len(records)
        return _stored_prefix(answer.get("items") or [], len(records))

    def close(self) -> None:
        """Close the connection pool."""
        self.client.close()


def _stored_prefix(items: list[dict[str, Any]], sent: int) -> int:
    """How many leading items were stored (201/200, or 409: stored by an earlier try)."""
    for position, item in enumerate(items[:sent]):
        result: dict[str, Any] = next(iter(item.values()), {})
        status = int(result.get("status", 0))
        if not (200 <= status < 300 or status == 409):
            if position == 0:
                error = result.get("error") or {}
                raise DeliveryFailed(
                    f"Elasticsearch refused event {result.get('_id')}: status {status} "
                    f"{error.get('type', '')}: {str(error.get('reason', ''))[:300]}"
                )
            return position
    if len(items) < sent:
        raise DeliveryFailed(f"Elasticsearch answered {len(items)} items for {sent} rows")
    return sent


class WebhookSink:
    """Posts alert rows as JSON to a webhook (chat-ops, paging); other rows pass silently."""

    kind = "webhook"
    starts_at_head = True  # pages about now, not about the history before it was set

    def __init__(self, name: str, url: str, verify: Verify, timeout: float) -> None:
        """A sink posting to `url`."""
        self.name = name
        self.url = url
        self.client = httpx.Client(verify=verify, timeout=timeout)

    def deliver(self, records: Sequence[AuditRecord]) -> int:
        """Post the batch's alerts (if any); all or nothing."""
        alerts = [ecs_document(r) for r in records if r.action == ALERT_ACTION]
        if alerts:
            response = self.client.post(self.url, json={"alerts": alerts})
            if not response.is_success:
                raise _refused(response)
        return len(records)

    def close(self) -> None:
        """Close the connection pool."""
        self.client.close()
