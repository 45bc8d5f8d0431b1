"""The Documents tab: a team's documents; editors (and admins) upload and delete.

Members see the list read-only (they chat with these documents, so knowing which exist is
useful and not a leak across teams); the upload and delete controls are shown only to those
`authorize` lets upload, and the handlers check again. Uploaded files are removed from Gradio's
temp folder as soon as they are ingested: `/gradio_api/file=` serves that folder to any
signed-in user (STACK_NOTES 1.5), and the knowledge service keeps its own (encrypted) copy.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from core.errors import InvalidRequest, TenantLLMError
from core.knowledge.service import IngestOutcome
from core.services import Services
from core.ui.gradio_guard.uploads import delete_upload
from core.ui.render import inline_markdown
from core.ui.session import UiCall, may, ui_call, user_message

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


def _documents(call: UiCall, team: str) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    call.check(team, "read_documents")
    services = call.services
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


def refresh(services: Services, team: str | None, request: gr.Request | None) -> tuple[Any, ...]:
    """The team's list, and whether this user gets the upload and delete controls."""
    with ui_call(services, request) as call:
        if not team:
            empty = pd.DataFrame([], columns=DOC_COLUMNS)
            hidden = gr.update(visible=False)
            return empty, gr.update(choices=[], value=None), hidden, hidden, ""
        table, choices = _documents(call, team)
        editor = may(call.principal, team, "upload")
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
        delete_upload(str(path))


def _ingest_all(
    call: UiCall, team: str, paths: list[Path], progress: gr.Progress
) -> list[list[Any]]:
    """One outcome row per file, in order; the progress bar follows the files."""
    uploader = call.principal.email or call.principal.subject
    rows = []
    for i, path in enumerate(paths):
        progress((i, len(paths)), desc=f"Indexing {path.name}", unit="files")
        rows.append(_outcome_row(_ingest_one(call.services, team, path, uploader)))
    progress((len(paths), len(paths)), desc="Done", unit="files")
    return rows


def _summary(rows: list[list[Any]]) -> str:
    # A refusal is audited with its reason (over a cap, the quota, a bad file).
    return "; ".join(
        f"{r[0]}: {r[1]} ({r[3]})" if r[1] == "refused" else f"{r[0]}: {r[1]}" for r in rows
    )


def upload(
    services: Services,
    files: list[str] | None,
    team: str | None,
    request: gr.Request | None,
    progress: gr.Progress,
) -> tuple[Any, ...]:
    """Ingest each file on its own: one bad file never loses the good ones."""
    paths = [Path(f) for f in files or []]
    try:
        with ui_call(services, request) as call:
            if not team:
                raise InvalidRequest("Choose a team first.")
            if not paths:
                raise InvalidRequest("Choose one or more files first.")
            call.check(team, "upload")
            started = time.monotonic()
            rows = _ingest_all(call, team, paths, progress)
            call.record_ok("ui_upload", team, _summary(rows)[:500], started)
            table, choices = _documents(call, team)
    finally:
        for path in paths:  # refused before ingestion: the files must not stay either
            delete_upload(str(path))
    return pd.DataFrame(rows, columns=OUTCOME_COLUMNS), None, table, gr.update(choices=choices)


def delete(
    services: Services, doc_id: str | None, team: str | None, request: gr.Request | None
) -> tuple[Any, ...]:
    """Delete one document of the team (after the confirmation)."""
    with ui_call(services, request) as call:
        if not doc_id or not team:
            raise InvalidRequest("Choose a document to delete first.")
        call.check(team, "delete_document")
        services.knowledge.delete_document(services.tenants.get(team), doc_id)
        call.record_ok("ui_delete_document", team, doc_id)
        table, choices = _documents(call, team)
        gr.Info("Document deleted.")
        return table, gr.update(choices=choices, value=None), gr.update(visible=False)


def ask_to_delete(
    services: Services, doc_id: str | None, team: str | None, request: gr.Request | None
) -> tuple[Any, str]:
    """The confirmation row for deleting one document of the team, naming it."""
    with ui_call(services, request) as call:
        if not team or not doc_id:
            raise InvalidRequest("Choose a document to delete first.")
        call.check(team, "delete_document")
        _, choices = _documents(call, team)
        name = dict((i, n) for n, i in choices).get(doc_id)
        if name is None:
            raise InvalidRequest("This document is not in the team's list any more.")
        question = f"Delete **{inline_markdown(name)}** from the team's knowledge?"
        return gr.update(visible=True), question


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
    def reload(team_id: str | None, request: gr.Request) -> tuple[Any, ...]:
        return refresh(services, team_id, request)

    def do_upload(
        files: list[str] | None,
        team_id: str | None,
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),
    ) -> tuple[Any, ...]:
        return upload(services, files, team_id, request, progress)

    def pick(doc_id: str | None, team_id: str | None, request: gr.Request) -> tuple[Any, str]:
        return ask_to_delete(services, doc_id, team_id, request)

    def confirm(doc_id: str | None, team_id: str | None, request: gr.Request) -> tuple[Any, ...]:
        return delete(services, doc_id, team_id, request)

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
