"""No session hashes, authorization codes or tokens in the server's logs (issue 12, item 3).

Uvicorn's access log prints every request line with its query string:
`/auth/callback?code=...&state=...` (a code is a sign-in, replayable until it is used),
`/gradio_api/queue/data?session_hash=...`, `/gradio_api/heartbeat/<session hash>`. Anyone who
reads the log (an operator, a log shipper, a support ticket) would hold other people's
capabilities. `RedactingFilter` sits on every log handler and rewrites, before formatting:
- the access log's path: every query value, and the path parts that carry a capability
  (heartbeat and stream session hashes, `file=` paths), become `[REDACTED]`;
- any other message: `name=value` pairs of sensitive names, `Bearer ...`, JWTs, and the
  API-key shapes of core/redaction.py.
Parameter names stay, so a log still says which route was called and how.
"""

from __future__ import annotations

import copy
import logging
import re
from typing import Any
from urllib.parse import parse_qsl

from core.redaction import REDACTED, redact_secrets

SENSITIVE_NAMES = (
    "code|state|nonce|session_hash|upload_id|event_id|deep_link|token|access_token|"
    "refresh_token|id_token|id_token_hint|client_secret|password|api_key|key|__sign"
)
_PAIR = re.compile(rf"(?i)\b({SENSITIVE_NAMES})(\"?\s*[=:]\s*\"?)([^&\s\"',;]+)")
_BEARER = re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]+")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
# Path parts that are capabilities: a session hash, a file's location in the upload folder.
_PATH_CAPABILITIES = (
    re.compile(r"(/gradio_api/heartbeat/)[^/?]+"),
    re.compile(r"(/gradio_api/stream/)[^?]+"),
    re.compile(r"(/gradio_api/file(?:=|%3D))[^?]+", re.IGNORECASE),  # uvicorn quotes '='
    re.compile(r"(/gradio_api/file/)[^?]+"),
    re.compile(r"(/gradio_api/call/(?:v2/)?[^/?]+/)[^/?]+"),
)


def redact_path(path: str) -> str:
    """A request path with its query values and capability path parts replaced."""
    base, sep, query = path.partition("?")
    for pattern in _PATH_CAPABILITIES:
        base = pattern.sub(rf"\g<1>{REDACTED}", base)
    if not sep:
        return base
    names = [name for name, _ in parse_qsl(query, keep_blank_values=True)]
    shown = "&".join(f"{name}={REDACTED}" for name in names) if names else REDACTED
    return f"{base}?{shown}"


def redact_text(text: str) -> str:
    """Free text with sensitive `name=value` pairs, bearer tokens, JWTs and keys replaced."""
    text = _PAIR.sub(rf"\g<1>\g<2>{REDACTED}", text)
    text = _BEARER.sub(f"Bearer {REDACTED}", text)
    text = _JWT.sub(REDACTED, text)
    for pattern in _PATH_CAPABILITIES:
        text = pattern.sub(rf"\g<1>{REDACTED}", text)
    return redact_secrets(text)[0]


class RedactingFilter(logging.Filter):
    """A handler filter that redacts each record before it is formatted (never drops one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite `record` in place; always keep it."""
        args = record.args
        if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == 5:
            # (client address, method, path with query, HTTP version, status)
            record.args = (args[0], args[1], redact_path(str(args[2])), args[3], args[4])
            return True
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a broken format string: leave it to the handler
            return True
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:  # tracebacks can quote URLs, too
            record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info))
        return True


def uvicorn_log_config() -> dict[str, Any]:
    """Uvicorn's default logging configuration with `RedactingFilter` on its handlers."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["redact"] = {"()": f"{__name__}.RedactingFilter"}
    for handler in config["handlers"].values():
        handler.setdefault("filters", []).append("redact")
    return config


def install_log_redaction() -> None:
    """Add `RedactingFilter` to every handler configured so far (root and named loggers)."""
    loggers: list[Any] = [logging.getLogger()]
    named = logging.Logger.manager.loggerDict.values()
    loggers += [lg for lg in named if isinstance(lg, logging.Logger)]
    for logger in loggers:
        for handler in logger.handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(RedactingFilter())
