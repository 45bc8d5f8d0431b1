"""The Gradio routes the browser page needs; every other Gradio route answers 404.

An allow-list, not a deny-list: a route that a Gradio upgrade adds is refused until someone
decides the product needs it and adds it here (tests/security/test_gradio_routes.py lists
the app's own route table and fails on a route this list lets through unchecked).

Decided per route of Gradio 6.31 (`gradio/routes.py`), from what the page requests while a
person signs in, chats, stops an answer, uploads, and exports the audit log:

- needed: the page `/` and `/config` (without `deep_link`), the front end's files (`/assets/`,
  `/static/`, `/theme.css`, `/favicon.ico`), `heartbeat`, `queue/join`, `queue/data`, `cancel`
  and `reset` (Stop), `upload` and `upload_progress`, `file=` (only files the caller was
  handed), `app_id` (the page checks it to reconnect after a restart);
- refused: `deep_link` (any session's component state by its hash), `/run`, `/api`, `/call`
  (direct calls that skip the queue and its limits), `info` and both `openapi.json` (the API
  description), `proxy=` (fetches other servers), `file/` (the old spelling of `file=`),
  `stream/`, `component_server`, `process_recording`, `monitoring`, `runs` and `run-history`,
  `dev/reload`, `vibe-*`, `user`, `token`, `login_check`, `login`, `logout` (ours is the app's),
  `startup-events`, `custom_component`, `svelte/`, `pwa_icon`, `manifest.json`, `robots.txt`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Kind = Literal["plain", "page", "heartbeat", "join", "data", "cancel", "upload", "file"]


@dataclass(frozen=True)
class Rule:
    """One allowed route: methods, a full-match path pattern, who may call it, what to check."""

    name: str
    methods: frozenset[str]
    pattern: re.Pattern[str]
    public: bool = False  # the front end's own files: no user data, served signed out too
    kind: Kind = "plain"


def _rule(
    name: str, methods: str, pattern: str, public: bool = False, kind: Kind = "plain"
) -> Rule:
    return Rule(name, frozenset(methods.split()), re.compile(pattern), public, kind)


ALLOWED: tuple[Rule, ...] = (
    _rule("page", "GET HEAD", r"/", kind="page"),
    _rule("config", "GET", r"/config", kind="page"),
    _rule("frontend", "GET", r"/assets/[^?]+", public=True),
    _rule("static", "GET", r"/static/[^?]+", public=True),
    _rule("theme", "GET", r"/theme\.css", public=True),
    _rule("favicon", "GET", r"/favicon\.ico", public=True),
    _rule("app_id", "GET", r"/gradio_api/app_id"),
    _rule("heartbeat", "GET", r"/gradio_api/heartbeat/[^/]+", kind="heartbeat"),
    _rule("queue_join", "POST", r"/gradio_api/queue/join", kind="join"),
    _rule("queue_data", "GET", r"/gradio_api/queue/data", kind="data"),
    _rule("cancel", "POST", r"/gradio_api/cancel", kind="cancel"),
    _rule("reset", "POST", r"/gradio_api/reset"),
    _rule("upload", "POST", r"/gradio_api/upload", kind="upload"),
    _rule("upload_progress", "GET", r"/gradio_api/upload_progress"),
    _rule("file", "GET HEAD", r"/gradio_api/file=.+", kind="file"),
)


def allowed_rule(method: str, path: str) -> Rule | None:
    """The rule that lets `method path` through to Gradio, or None (refuse with 404)."""
    for rule in ALLOWED:
        if method in rule.methods and rule.pattern.fullmatch(path):
            return rule
    return None
