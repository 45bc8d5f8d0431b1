"""The per-deployment hash chain over audit events: canonical form, hashing, verification.

Each row stores `prev_hash` (the previous row's `hash`, or 64 zeros for the first) and
`hash = sha256(canonical JSON of seq + prev_hash + every field)`. Editing any field, deleting or
inserting a row in the middle breaks the chain at that row. Deleting rows at the tail leaves a
valid (shorter) chain: operators keep the head hash printed by `tenantllm audit verify` outside
the database and pass it back with `--expect-head`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

GENESIS_HASH = "0" * 64
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
LIST_FIELDS = ("document_ids", "flags")


@dataclass(frozen=True)
class ChainReport:
    """Result of checking the whole chain."""

    ok: bool
    checked: int
    first_bad_seq: int | None
    head_hash: str
    message: str
    first_bad_event_id: str | None = None
    head_seq: int = 0


def format_time(value: datetime) -> str:
    """The canonical text of an event time (UTC, microseconds; naive means UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    # Same text as strftime(TIME_FORMAT), several times faster (verify formats every row).
    text = value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds")
    return text + "Z"


def parse_time(text: str) -> datetime:
    """Inverse of `format_time`: an aware UTC datetime."""
    if not text.endswith("Z"):
        raise ValueError(f"not a canonical event time: {text!r}")
    return datetime.fromisoformat(text[:-1]).replace(tzinfo=UTC)


def dump_list(values: Iterable[str]) -> str:
    """JSON text of a list column (compact, so the stored text is canonical too)."""
    return json.dumps(list(values), separators=(",", ":"), ensure_ascii=False)


def compute_hash(seq: int, prev_hash: str, payload: Mapping[str, Any]) -> str:
    """sha256 over the canonical JSON of the sequence number, previous hash and fields.

    The latency is hashed as fixed 3-decimal text so that float storage differences between
    backends cannot change the hash.
    """
    body = dict(payload)
    body["latency_ms"] = f"{float(body['latency_ms']):.3f}"
    body["seq"] = seq
    body["prev_hash"] = prev_hash
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def payload_to_row(payload: Mapping[str, Any], seq: int, prev_hash: str) -> dict[str, Any]:
    """The column values to insert for `payload` at position `seq` after `prev_hash`."""
    row = dict(payload)
    row["created_at"] = parse_time(payload["created_at"])
    for name in LIST_FIELDS:
        row[name] = dump_list(payload[name])
    row["seq"] = seq
    row["prev_hash"] = prev_hash
    row["hash"] = compute_hash(seq, prev_hash, payload)
    return row


def row_to_payload(row: Mapping[Any, Any]) -> dict[str, Any]:
    """The hashed fields of a stored row (inverse of `payload_to_row`)."""
    payload = {k: v for k, v in row.items() if k not in ("seq", "prev_hash", "hash")}
    payload["created_at"] = format_time(row["created_at"])
    for name in LIST_FIELDS:
        payload[name] = json.loads(row[name]) if row[name] else []
    return payload


class ChainChecker:
    """Feed rows in `seq` order; stops at the first row that breaks the chain."""

    def __init__(self, expect_head: str | None = None) -> None:
        self.checked = 0
        self.head_hash = GENESIS_HASH
        self.head_seq = 0
        self.expect_head = expect_head
        self.expected_head_seen = False
        self.bad: tuple[int, str, str] | None = None  # seq, event_id, reason

    def feed(self, row: Mapping[Any, Any]) -> bool:
        """Check one row; False once the chain is broken."""
        seq, event_id = int(row["seq"]), str(row["event_id"])
        reason = None
        if seq != self.head_seq + 1:
            reason = f"sequence jumps from {self.head_seq} to {seq} (rows missing or inserted)"
        elif row["prev_hash"] != self.head_hash:
            reason = "prev_hash does not match the previous event (chain broken here)"
        else:
            try:
                actual = compute_hash(seq, row["prev_hash"], row_to_payload(row))
            except (ValueError, TypeError, KeyError) as exc:
                actual, reason = "", f"unreadable row ({type(exc).__name__})"
            if reason is None and actual != row["hash"]:
                reason = "content does not match its hash (row edited)"
        if reason is not None:
            self.bad = (seq, event_id, reason)
            return False
        self.checked += 1
        self.head_seq, self.head_hash = seq, str(row["hash"])
        if self.expect_head is not None and self.head_hash == self.expect_head:
            self.expected_head_seen = True
        return True

    def report(self) -> ChainReport:
        """The verdict after all rows were fed (or the first bad one)."""
        if self.bad is not None:
            seq, event_id, reason = self.bad
            message = f"audit chain broken at seq {seq} (event {event_id}): {reason}"
            return ChainReport(
                False, self.checked, seq, self.head_hash, message, event_id, self.head_seq
            )
        if self.expect_head is not None and not self.expected_head_seen:
            message = (
                f"expected head {self.expect_head} is not in the chain: events at the tail "
                f"were removed or the log was replaced (current head seq {self.head_seq})"
            )
            return ChainReport(
                False, self.checked, self.head_seq + 1, self.head_hash, message, None, self.head_seq
            )
        message = f"audit chain ok: {self.checked} events, head seq {self.head_seq}"
        return ChainReport(True, self.checked, None, self.head_hash, message, None, self.head_seq)
