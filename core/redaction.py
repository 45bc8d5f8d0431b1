"""Core's default prompt hook: redact credentials before a prompt reaches the engine.

Registered as a built-in plugin like any tenant plugin; `trylast` so that tenant plugins
see the prompt first and may add their own rules. Credentials pasted into a question (or
sitting in a document) should never be sent to the model nor end up in an audit row.
"""

from __future__ import annotations

import re

from core.hookspecs import hookimpl
from core.tenancy import PromptDraft

REDACTED = "[REDACTED]"

# Shapes of secrets worth never forwarding: our own API keys, common cloud/API tokens and
# PEM private keys. Deliberately narrow: redacting ordinary numbers would hurt answers.
_SECRET_PATTERNS = (
    re.compile(r"\btlm_[A-Za-z0-9_-]{16,}"),
    re.compile(r"\bsk-[A-Za-z0-9_-]{20,}"),
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S),
)


def redact_secrets(text: str) -> tuple[str, int]:
    """`text` with every credential-looking string replaced, and how many were replaced."""
    total = 0
    for pattern in _SECRET_PATTERNS:
        text, count = pattern.subn(REDACTED, text)
        total += count
    return text, total


@hookimpl(trylast=True)
def tenantllm_process_prompt(draft: PromptDraft) -> None:
    """Replace credential-looking strings in every message and flag the prompt "redacted"."""
    redacted_any = False
    for message in draft.messages:
        new_text, count = redact_secrets(message["content"])
        if count:
            message["content"] = new_text
            redacted_any = True
    if redacted_any and "redacted" not in draft.flags:
        draft.flags.append("redacted")
