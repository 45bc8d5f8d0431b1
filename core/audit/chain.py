"""The per-deployment hash chain over audit events: canonical form, hashing, verification.

Each row stores `prev_hash` (the previous row's `hash`, or 64 zeros for the first) and
`hash = sha256(canonical JSON of seq + prev_hash + every field)`. Editing any field, deleting or
inserting a row in the middle breaks the chain at that row. Deleting rows at the tail leaves a
valid (shorter) chain: operators keep the head hash printed by `tenantllm audit verify` outside
the database and pass it back with `--expect-head`.

Prompt text is hashed through its digest (issue 15, item 5: retention). Since migration 0008
a row stores `prompt_text_sha256 = sha256(prompt_text)` beside the text, and the hashed
`prompt_text` field is `"sha256:<that digest>"`, not the text. Retention may then set
`prompt_text` to NULL on old rows: the digest, and so the row's hash and the chain, stay as
they were. Verification checks both links: the digest is in the hash, and a text still
stored must match its digest (an edited text breaks the row). We chose this over the
alternatives because it keeps every hash already written and needs no re-chaining:
- re-hashing the chain once with the text left out would invalidate every head hash an
  operator kept outside the database, the one defence against a cut tail;
- a row per prompt in a separate, unchained table would leave the text unprotected.
The form of a row follows from its columns, so old rows keep verifying: a row written before
0008 has text and no digest and was hashed over the text itself (it verifies that way; its
text cannot be dropped without breaking it, so retention leaves it and counts it); a row
without text has `prompt_text: null` in both forms.
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
DIGEST_FIELD = "prompt_text_sha256"


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


def text_digest(text: str) -> str:
    """The sha256 hex digest of a prompt text, as stored in `prompt_text_sha256`."""
    return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()


def compute_hash(seq: int, prev_hash: str, payload: Mapping[str, Any]) -> str:
    """sha256 over the canonical JSON of the sequence number, previous hash and fields.

    The latency is hashed as fixed 3-decimal text so that float storage differences between
    backends cannot change the hash. The prompt text enters through its digest when the row
    has one (see the module docstring), else as itself (rows written before migration 0008).
    """
    body = dict(payload)
    digest = body.pop(DIGEST_FIELD, None)
    if digest is not None:
        body["prompt_text"] = f"sha256:{digest}"
    body["latency_ms"] = f"{float(body['latency_ms']):.3f}"
    body["seq"] = seq
    body["prev_hash"] = prev_hash
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def payload_to_row(payload: Mapping[str, Any], seq: int, prev_hash: str) -> dict[str, Any]:
    """The column values to insert for `payload` at position `seq` after `prev_hash`."""
    row = dict(payload)
    text = payload.get("prompt_text")
    # Set here, where the row is hashed: spooled payloads of an older version get it too.
    row[DIGEST_FIELD] = text_digest(text) if text is not None else None
    row["created_at"] = parse_time(payload["created_at"])
    for name in LIST_FIELDS:
        row[name] = dump_list(payload[name])
    row["seq"] = seq
    row["prev_hash"] = prev_hash
    row["hash"] = compute_hash(seq, prev_hash, {**payload, DIGEST_FIELD: row[DIGEST_FIELD]})
    return row


def row_to_payload(row: Mapping[Any, Any]) -> dict[str, Any]:
    """The hashed fields of a stored row (inverse of `payload_to_row`)."""
    payload = {k: v for k, v in row.items() if k not in ("seq", "prev_hash", "hash")}
    payload["created_at"] = format_time(row["created_at"])
    for name in LIST_FIELDS:
        payload[name] = json.loads(row[name]) if row[name] else []
    return payload


def _content_problem(seq: int, row: Mapping[Any, Any]) -> str | None:
    """Why this row's content does not match its hash, or None when it does."""
    try:
        payload = row_to_payload(row)
        actual = compute_hash(seq, row["prev_hash"], payload)
    except (ValueError, TypeError, KeyError) as exc:
        return f"unreadable row ({type(exc).__name__})"
    if actual != row["hash"]:
        return "content does not match its hash (row edited)"
    text, digest = payload.get("prompt_text"), payload.get(DIGEST_FIELD)
    # The hash covers the digest only: the text kept beside it must match the digest.
    if text is not None and digest is not None and text_digest(text) != digest:
        return "prompt text does not match its digest (row edited)"
    return None


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
            reason = _content_problem(seq, row)
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
