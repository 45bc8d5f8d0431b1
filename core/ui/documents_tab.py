"""The Documents tab: a team's documents; editors (and admins) upload and delete.

Members see the list read-only (they chat with these documents, so knowing which exist is
useful and not a leak across teams); the upload and delete controls are shown only to those
`authorize` lets upload, and the handlers check again. Uploaded files are removed from Gradio's
temp folder as soon as they are ingested: `/gradio_api/file=` serves that folder to any
signed-in user (STACK_NOTES 1.5), and the knowledge service keeps its own (encrypted) copy.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from core.errors import InvalidRequest, TenantLLMError
from core.identity import Principal
from core.knowledge.service import IngestOutcome
from core.services import Services
from core.ui.render import inline_markdown
from core.ui.session import check, may, principal_of, record_ok, shown_as_error, user_message

log = logging.getLogger(__name__)

DOC_COLUMNS = ["Name", "Size", "Chunks", "Uploaded by", "Uploaded (UTC)"]
OUTCOME_COLUMNS = ["File", "Outcome", "Chunks", "Detail"]


def human_size(size: int) -> str:
    """1536 -> '1.5 KB'."""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def _documents(services: Services, principal: Principal, team: str, request: gr.Request):
    check(services, principal, team, "read_documents", request)
    docs = services.knowledge.list_documents(services.tenants.get(team))
    rows = [
        [
            d.filename,
            human_size(d.size),
            d.chunks,
            d.uploaded_by,
            d.uploaded_at.strftime("%Y-%m-%d %H:%M"),
        ]
        for d in docs
    ]
    return pd.DataFrame(rows, columns=DOC_COLUMNS), [(d.filename, d.id) for d in docs]


def refresh(services: Services, team: str | None, request: gr.Request) -> tuple[Any, ...]:
    """The team's list, and whether this user gets the upload and delete controls."""
    with shown_as_error():
        principal = principal_of(request)
        if not team:
            empty = pd.DataFrame([], columns=DOC_COLUMNS)
            hidden = gr.update(visible=False)
            return empty, gr.update(choices=[], value=None), hidden, hidden, ""
        table, choices = _documents(services, principal, team, request)
        editor = may(principal, team, "upload")
        note = "" if editor else "You can read this team's document list; editors add documents."
        shown = gr.update(visible=editor)
        return table, gr.update(choices=choices, value=None), shown, shown, note


def _outcome_row(outcome: IngestOutcome) -> list[Any]:
    label = {"indexed": "indexed", "duplicate": "duplicate", "refused": "refused"}[outcome.status]
    # The Chunks column has the count; the detail says what the outcome means for the user.
    detail = outcome.error or ("ready for answers" if outcome.status == "indexed" else "")
    if outcome.status == "duplicate" and not detail:
        detail = "already in this team's documents"
    return [outcome.filename, label, outcome.chunks, detail]


def _discard_upload(path: Path) -> None:
    # Gradio stores each upload as <temp>/<sha256>/<name>: remove the file and its folder.
    path.unlink(missing_ok=True)
    # Not empty (another upload with the same content) or already gone: leave it to Gradio.
    with contextlib.suppress(OSError):
        path.parent.rmdir()


def _ingest_one(services: Services, team: str, path: Path, uploader: str) -> IngestOutcome:
    try:
        [outcome] = services.knowledge.ingest(
            services.tenants.get(team), [path], uploaded_by=uploader, names=[path.name]
        )
        return outcome
    except TenantLLMError as exc:
        return IngestOutcome(path.name, "refused", error=user_message(exc))
    except Exception:
        log.exception("ingesting %s failed", path.name)
        return IngestOutcome(path.name, "refused", error=user_message(RuntimeError()))
    finally:
        _discard_upload(path)


def upload(
    services: Services,
    files: list[str] | None,
    team: str | None,
    request: gr.Request,
    progress: gr.Progress,
) -> tuple[Any, ...]:
    """Ingest each file on its own: one bad file never loses the good ones."""
    paths = [Path(f) for f in files or []]
    try:
        with shown_as_error():
            principal = principal_of(request)
            if not team:
                raise InvalidRequest("Choose a team first.")
            if not paths:
                raise InvalidRequest("Choose one or more files first.")
            check(services, principal, team, "upload", request)
            started = time.monotonic()
            rows = []
            for i, path in enumerate(paths):
                progress((i, len(paths)), desc=f"Indexing {path.name}", unit="files")
                outcome = _ingest_one(services, team, path, principal.email or principal.subject)
                rows.append(_outcome_row(outcome))
            progress((len(paths), len(paths)), desc="Done", unit="files")
            # A refusal is audited with its reason (over a cap, the quota, a bad file).
            summary = "; ".join(
                f"{r[0]}: {r[1]} ({r[3]})" if r[1] == "refused" else f"{r[0]}: {r[1]}" for r in rows
            )
            record_ok(services, principal, "ui_upload", team, request, summary[:500], started)
            table, choices = _documents(services, principal, team, request)
    finally:
        for path in paths:  # refused before ingestion: the files must not stay either
            _discard_upload(path)
    return pd.DataFrame(rows, columns=OUTCOME_COLUMNS), None, table, gr.update(choices=choices)


def delete(services: Services, doc_id: str | None, team: str | None, request: gr.Request):
    """Delete one document of the team (after the confirmation)."""
    with shown_as_error():
        principal = principal_of(request)
        if not doc_id or not team:
            raise InvalidRequest("Choose a document to delete first.")
        check(services, principal, team, "delete_document", request)
        services.knowledge.delete_document(services.tenants.get(team), doc_id)
        record_ok(services, principal, "ui_delete_document", team, request, doc_id)
        table, choices = _documents(services, principal, team, request)
        gr.Info("Document deleted.")
        return table, gr.update(choices=choices, value=None), gr.update(visible=False)


@dataclass
class DocumentsView:
    """The Documents tab's components, for wiring."""

    note: gr.Markdown
    editor_box: gr.Column
    files: gr.File
    upload_btn: gr.Button
    outcomes: gr.Dataframe
    table: gr.Dataframe
    delete_row: gr.Row
    doc_pick: gr.Dropdown
    delete_btn: gr.Button
    confirm_row: gr.Row
    confirm_text: gr.Markdown
    confirm_btn: gr.Button
    cancel_btn: gr.Button


def build_documents_tab(services: Services, team: gr.Dropdown) -> DocumentsView:
    """Lay out the Documents tab and wire its events (call inside a `gr.Tab`)."""
    note = gr.Markdown(elem_id="docs-note")
    with gr.Column(visible=False, elem_id="docs-editor") as editor_box:
        files = gr.File(
            label=f"Add documents (PDF, Word, text, Markdown, HTML, CSV; up to "
            f"{services.settings.max_upload_mb} MB each)",
            file_count="multiple",
            elem_id="docs-upload",
        )
        upload_btn = gr.Button("Upload and index", variant="primary", elem_id="docs-upload-btn")
        outcomes = gr.Dataframe(
            headers=OUTCOME_COLUMNS,
            label="Upload results",
            interactive=False,
            elem_id="docs-outcomes",
        )
    table = gr.Dataframe(
        headers=DOC_COLUMNS,
        label="Team documents",
        interactive=False,
        wrap=True,
        elem_id="docs-table",
    )
    with gr.Row(visible=False, elem_id="docs-delete") as delete_row:
        doc_pick = gr.Dropdown(label="Document", choices=[], scale=4, elem_id="docs-pick")
        delete_btn = gr.Button("Delete…", variant="stop", scale=1, elem_id="docs-delete-btn")
    with gr.Row(visible=False, elem_id="docs-confirm") as confirm_row:
        confirm_text = gr.Markdown()
        confirm_btn = gr.Button("Yes, delete", variant="stop", elem_id="docs-confirm-btn")
        cancel_btn = gr.Button("Cancel")
    view = DocumentsView(
        note, editor_box, files, upload_btn, outcomes, table,
        delete_row, doc_pick, delete_btn, confirm_row, confirm_text, confirm_btn, cancel_btn,
    )  # fmt: skip
    _wire(services, team, view)
    return view


def _wire(services: Services, team: gr.Dropdown, v: DocumentsView) -> None:
    def reload(team_id: str | None, request: gr.Request):
        return refresh(services, team_id, request)

    def do_upload(files, team_id, request: gr.Request, progress=gr.Progress()):
        return upload(services, files, team_id, request, progress)

    def confirm(doc_id: str | None, team_id: str | None, request: gr.Request):
        return delete(services, doc_id, team_id, request)

    def pick(doc_id: str | None, team_id: str | None, request: gr.Request):
        with shown_as_error():
            principal = principal_of(request)
            if not team_id or not doc_id:
                raise InvalidRequest("Choose a document to delete first.")
            check(services, principal, team_id, "delete_document", request)
            _, choices = _documents(services, principal, team_id, request)
            name = dict((i, n) for n, i in choices).get(doc_id)
            if name is None:
                raise InvalidRequest("This document is not in the team's list any more.")
            return gr.update(
                visible=True
            ), f"Delete **{inline_markdown(name)}** from the team's knowledge?"

    private: dict[str, Any] = {"api_visibility": "private"}
    reload_out = [v.table, v.doc_pick, v.editor_box, v.delete_row, v.note]
    team.change(reload, [team], reload_out, **private)
    v.upload_btn.click(
        do_upload, [v.files, team], [v.outcomes, v.files, v.table, v.doc_pick], **private
    )
    v.delete_btn.click(pick, [v.doc_pick, team], [v.confirm_row, v.confirm_text], **private)
    v.confirm_btn.click(
        confirm, [v.doc_pick, team], [v.table, v.doc_pick, v.confirm_row], **private
    )
    v.cancel_btn.click(
        lambda: gr.update(visible=False),
        None,
        [v.confirm_row],
        api_name="delete_cancel",
        **private,
    )
