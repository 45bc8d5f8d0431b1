"""`POST /gradio_api/upload` behind the guard: who may upload, how much, and the audit row.

Gradio's own route accepts any number of files of up to `max_file_size` each from any
signed-in caller and tells nobody. Here, before Gradio reads a byte: the principal must be
allowed to upload to at least one team (editors, admins; never members), may hold at most
`ui_upload_max_files` files not yet indexed, and the body is capped at that many files of
`max_upload_mb` each (checked against Content-Length and again while the body arrives). After
Gradio stored the files: they are granted to the uploader only (the registry), files over the
count cap are deleted again, and every outcome is one audit row (`ui_upload_file`).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import Message, Receive, Scope, Send

from core.audit.auditor import Outcome
from core.errors import FileTooLarge, PermissionDenied, RateLimited, TenantLLMError
from core.identity import Principal
from core.rbac import is_allowed
from core.services import Services
from core.ui.gradio_guard import events, payloads
from core.ui.gradio_guard.uploads import UploadRegistry
from core.web import declared_length, error_response

ACTION = "ui_upload_file"
MULTIPART_SLACK = 64 * 1024  # boundaries and part headers around the files of one upload


class _BodyOverCap(HTTPException):
    """Raised from `receive` past the cap; FastAPI (inside Gradio) answers it with 413."""


def may_upload_somewhere(services: Services, principal: Principal) -> bool:
    """Whether the principal may upload documents to at least one team."""
    return any(is_allowed(principal, t.id, "upload") for t in services.tenants.all())


class UploadRoute:
    """One upload request, checked before and after Gradio handles it."""

    def __init__(
        self, services: Services, registry: UploadRegistry, principal: Principal, scope: Scope
    ) -> None:
        """Check the upload `scope` of `principal`."""
        settings = services.settings
        self.services = services
        self.registry = registry
        self.principal = principal
        self.scope = scope
        self.max_files = settings.ui_upload_max_files
        self.file_bytes = settings.max_upload_mb * 1024 * 1024
        self.body_cap = self.max_files * self.file_bytes + MULTIPART_SLACK

    async def run(self, app: Any, receive: Receive, send: Send) -> None:
        """Refuse before reading, or let Gradio store the files, then grant or refuse them."""
        refusal = self._refusal_before()
        if refusal is not None:
            await self._refuse(refusal, receive, send)
            return
        captured: list[Message] = []

        async def capture(message: Message) -> None:
            captured.append(message)

        scope = payloads.without_compression(self.scope)  # read here before it is forwarded
        await app(scope, self._capped(receive), capture)
        starts = [m["status"] for m in captured if m["type"] == "http.response.start"]
        status = starts[0] if starts else 500
        if status != 200:
            await self._refuse(self._gradio_refusal(status, captured), receive, send)
            return
        paths = _json_list(captured)
        over = self._grant(paths)
        if over is not None:
            await self._refuse(over, receive, send)
            return
        self._record("ok", 200, f"{len(paths)} file(s): {_names(paths)}")
        for message in captured:
            await send(message)

    def _refusal_before(self) -> TenantLLMError | None:
        if not may_upload_somewhere(self.services, self.principal):
            return PermissionDenied(
                "You may not upload documents: only editors of a team can. "
                "Ask an editor or an admin of your team."
            )
        held = self.registry.held(self.principal.subject)
        if len(held) >= self.max_files:
            return self._too_many(held)
        declared = declared_length(self.scope)
        if declared is not None and declared > self.body_cap:
            return self._too_large()
        return None

    def _capped(self, receive: Receive) -> Receive:
        received = 0

        async def capped() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.body_cap:
                raise _BodyOverCap(413, "over the upload cap")
            return message

        return capped

    def _grant(self, paths: list[str]) -> TenantLLMError | None:
        subject = self.principal.subject
        fresh = [p for p in paths if not self.registry.owns(subject, p)]
        self.registry.grant(subject, paths, uploaded=True)
        held = self.registry.held(subject)
        if len(held) <= self.max_files:
            return None
        self.registry.withdraw(subject, fresh)  # deletes what only this upload brought
        return self._too_many(self.registry.held(subject), uploading=len(fresh))

    def _too_many(self, held: list[float], uploading: int = 0) -> RateLimited:
        # `held`: this person's waiting uploads; `uploading`: files of a refused request.
        wait = self.registry.ttl_seconds - (self.registry.now() - held[0]) if held else 1
        if uploading:
            message = (
                f"This upload would leave {len(held) + uploading} files waiting to be indexed; "
                f"at most {self.max_files} at a time. Upload fewer files at once."
            )
        else:
            message = (
                f"You already have {len(held)} uploaded files waiting to be indexed; at most "
                f"{self.max_files} at a time. Index them (Upload and index) or try again later."
            )
        return RateLimited(
            message, retry_after=max(1, math.ceil(wait)), limit=f"{self.max_files} files"
        )

    def _too_large(self) -> FileTooLarge:
        mb = self.services.settings.max_upload_mb
        return FileTooLarge(
            f"This upload is too large: at most {mb} MB per file and {self.max_files} files "
            "at a time."
        )

    def _gradio_refusal(self, status: int, captured: list[Message]) -> TenantLLMError:
        if status == 413:  # a file over max_file_size, or the body over our cap
            return self._too_large()
        err = TenantLLMError(_text(captured)[:300] or "The upload was refused.")
        err.status, err.code, err.error_type = status, "upload_refused", "invalid_request_error"
        return err

    async def _refuse(self, err: TenantLLMError, receive: Receive, send: Send) -> None:
        outcome: Outcome = "rate_limited" if isinstance(err, RateLimited) else "denied"
        self._record(outcome, err.status, err.message, err)
        response = error_response(err)
        response.headers["Connection"] = "close"  # a refused body is never read to its end
        await response(self.scope, receive, send)

    def _record(
        self, outcome: Outcome, status: int, detail: str, err: TenantLLMError | None = None
    ) -> None:
        events.record(
            self.services, self.scope, self.principal, ACTION, outcome, status, detail, err
        )


def _text(captured: list[Message]) -> str:
    body = b"".join(m.get("body", b"") for m in captured if m["type"] == "http.response.body")
    return body.decode("utf-8", "replace")


def _json_list(captured: list[Message]) -> list[str]:
    try:
        value = json.loads(_text(captured))
    except ValueError:
        return []
    return [p for p in value if isinstance(p, str)] if isinstance(value, list) else []


def _names(paths: list[str]) -> str:
    return ", ".join(os.path.basename(p) for p in paths)[:400]
