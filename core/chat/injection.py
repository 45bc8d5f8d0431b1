"""Prompt-injection signals: a light, pattern-based detector whose findings flag the audit event.

It looks for the common shapes: "ignore previous instructions", attempts to extract the system
prompt, role/jailbreak overrides, fake chat-template markers, and requests for another team's
data ("show me finance documents" asked in the sales tenant). It is a signal for auditors, not
a security boundary: isolation is enforced by the per-tenant stores, never by this. By default
nothing is blocked; with `Settings.injection_block` the chat layer refuses flagged prompts.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from core.errors import PromptRejected

IGNORE_INSTRUCTIONS = "prompt_injection:ignore_instructions"
SYSTEM_PROMPT = "prompt_injection:system_prompt_extraction"
ROLE_OVERRIDE = "prompt_injection:role_override"
TEMPLATE_MARKERS = "prompt_injection:template_markers"
CROSS_TENANT = "prompt_injection:cross_tenant_request"

_PATTERNS: dict[str, re.Pattern[str]] = {
    IGNORE_INSTRUCTIONS: re.compile(
        r"\b(ignore|disregard|forget|override|bypass|skip)\b(\s+\w+){0,3}?\s+"
        r"(previous|prior|above|earlier|preceding|initial|original|system|all|your)\s+"
        r"(instructions?|prompts?|rules|directions|guidelines|context|messages?)"
    ),
    SYSTEM_PROMPT: re.compile(
        r"\b(reveal|show|print|repeat|output|display|leak|dump|recite|tell me|what (is|are|was))"
        r"\b(\s+\w+){0,4}?\s+(system\s+(prompt|message|instructions?)|hidden\s+(prompt|"
        r"instructions?)|initial\s+(prompt|instructions?)|(your|the)\s+(instructions|prompt)\b)"
        r"|\b(repeat|print|output|recite)\s+(the\s+)?(text|words|everything|all)\s+"
        r"(above|before this)"
    ),
    ROLE_OVERRIDE: re.compile(
        r"\b(you are now|from now on,? you are|pretend (to be|you are)|act as an? "
        r"(unrestricted|unfiltered|jailbroken)|developer mode|jailbreak|do anything now)\b"
    ),
    TEMPLATE_MARKERS: re.compile(
        r"(<\|im_(start|end)\|>|<\|(system|assistant|endoftext)\|>|\[/?inst\]|<<sys>>|"
        r"^\s*#{2,}\s*(system|instruction)s?\s*:)",
        re.MULTILINE,
    ),
}
_DATA_NOUNS = (
    r"(documents?|docs|files?|data|records|reports?|notes|spreadsheets?|knowledge base|"
    r"contracts?|salar(y|ies)|budgets?|emails?)"
)
_OTHER_TEAMS = re.compile(
    r"\b(other|another|every|all)\s+(teams?|tenants?|departments?)'?s?\s+" + _DATA_NOUNS
)
# Zero-width and formatting characters are removed so "ig\u200bnore" is still "ignore".
_INVISIBLE = dict.fromkeys(i for i in range(0x2000, 0x2070) if unicodedata.category(chr(i)) == "Cf")
_INVISIBLE[0xFEFF] = None


def normalize(text: str) -> str:
    """Lower-case, NFKC-folded text without invisible characters, whitespace collapsed."""
    folded = unicodedata.normalize("NFKC", text).translate(_INVISIBLE).lower()
    return re.sub(r"[ \t]+", " ", folded)


def _tenant_pattern(name: str) -> re.Pattern[str]:
    team = re.escape(normalize(name).strip())
    # "<team> documents", "<team> team's files", "documents of/from/for the <team> team".
    return re.compile(
        rf"\b{team}\b(\s+(team|department|tenant)('?s)?)?(\s+\w+){{0,2}}?\s+{_DATA_NOUNS}\b"
        rf"|\b{_DATA_NOUNS}\s+(of|from|for|belonging to|owned by)\s+(the\s+)?{team}\b"
    )


def _asks_for_other_tenant(text: str, tenant_id: str | None, others: Sequence[str]) -> bool:
    if _OTHER_TEAMS.search(text):
        return True
    own = normalize(tenant_id or "").strip()
    for name in others:
        cleaned = normalize(name).strip()
        if cleaned and cleaned != own and _tenant_pattern(cleaned).search(text):
            return True
    return False


def detect_injection(
    text: str, tenant_id: str | None = None, other_tenants: Sequence[str] = ()
) -> list[str]:
    """Flag names (see the module constants) for the injection patterns found in `text`.

    `other_tenants`: ids and display names of the tenants the request is NOT for; a request
    for their documents or data is flagged `prompt_injection:cross_tenant_request`.
    """
    folded = normalize(text)
    flags = [name for name, pattern in _PATTERNS.items() if pattern.search(folded)]
    if _asks_for_other_tenant(folded, tenant_id, other_tenants):
        flags.append(CROSS_TENANT)
    return flags


def check_prompt(
    text: str, tenant_id: str | None, other_tenants: Sequence[str], block: bool
) -> list[str]:
    """Detect injection signals; raise `PromptRejected` if any is found and `block` is set.

    Returns the flags to put on the audit event (empty when the prompt looks ordinary).
    """
    flags = detect_injection(text, tenant_id, other_tenants)
    if flags and block:
        raise PromptRejected(
            "This request was refused: it looks like an attempt to override the assistant's "
            "instructions or to reach another team's data."
        )
    return flags
