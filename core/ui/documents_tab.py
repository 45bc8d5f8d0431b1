"""The Documents tab: a team's documents; editors (and admins) upload and delete.

Members see the list read-only (they chat with these documents, so knowing which exist is
useful and not a leak across teams); the upload and delete controls are shown only to those
`authorize` lets upload, and the handlers check again. Uploads are indexed in the background,
one job per file (core/knowledge/ingest_worker.py); the upload event only queues them, and
the progress panel (core/ui/jobs_panel.py) polls the jobs. Uploaded files are removed from
Gradio's temp folder as soon as they are queued: `/gradio_api/file=` serves that folder to
any signed-in user (STACK_NOTES 1.5), and the queue keeps its own (encrypted) copy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from core.errors import InvalidRequest
from core.knowledge.jobs import JobInfo
from core.services import Services
from core.ui import jobs_panel
from core.ui.gradio_guard.uploads import delete_upload
from core.ui.jobs_panel import OUTCOME_COLUMNS
from core.ui.render import inline_markdown
from core.ui.session import UiCall, may, ui_call

DOC_COLUMNS = ["Name", "Size", "Chunks", "Uploaded by", "Uploaded (UTC)"]


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
    """The team's list and upload jobs, and whether this user gets the editing controls."""
    with ui_call(services, request) as call:
        if not team:
            empty = pd.DataFrame([], columns=DOC_COLUMNS)
            hidden = gr.update(visible=False)
            return (empty, gr.update(choices=[], value=None), hidden, hidden, "",
                    *jobs_panel.job_updates([]))  # fmt: skip
        table, choices = _documents(call, team)
        editor = may(call.principal, team, "upload")
        note = "" if editor else "You can read this team's document list; editors add documents."
        shown = gr.update(visible=editor)
        jobs = jobs_panel.team_jobs(call, team)
        return (table, gr.update(choices=choices, value=None), shown, shown, note,
                *jobs_panel.job_updates(jobs))  # fmt: skip


def _summary(queued: list[JobInfo]) -> str:
    # A refusal on arrival is audited with its reason (over a cap, a bad file); each job's
    # own outcome is audited by the worker (`ingest_job`).
    return "; ".join(
        f"{j.filename}: refused ({j.error})" if j.state == "failed" else f"{j.filename}: queued"
        for j in queued
    )


def upload(
    services: Services, files: list[str] | None, team: str | None, request: gr.Request | None
) -> tuple[Any, ...]:
    """Queue each file as its own job (one bad file never loses the good ones); at once."""
    paths = [Path(f) for f in files or []]
    try:
        with ui_call(services, request) as call:
            if not team:
                raise InvalidRequest("Choose a team first.")
            if not paths:
                raise InvalidRequest("Choose one or more files first.")
            call.check(team, "upload")
            started = time.monotonic()
            principal = call.principal
            queued = services.ingest_jobs.enqueue(
                services.tenants.get(team), paths, [p.name for p in paths],
                principal.email or principal.subject, principal.subject,
            )  # fmt: skip
            call.record_ok("ui_upload", team, _summary(queued)[:500], started)
            table, choices = _documents(call, team)
            jobs = jobs_panel.team_jobs(call, team)
    finally:
        for path in paths:  # queued or refused: the files must not stay in Gradio's folder
            delete_upload(str(path))
    results, progress, timer = jobs_panel.job_updates(jobs)
    return results, None, table, gr.update(choices=choices), progress, timer


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
    progress: gr.HTML
    timer: gr.Timer
    finished: gr.State
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
        progress = gr.HTML(elem_id="docs-progress")
        outcomes = gr.Dataframe(
            headers=OUTCOME_COLUMNS,
            label="Upload results",
            interactive=False,
            wrap=True,
            elem_id="docs-outcomes",
        )
    # Ticks only while a job of the team is queued or running (core/ui/jobs_panel.py).
    timer = gr.Timer(jobs_panel.TICK_SECONDS, active=False)
    finished = gr.State("")  # jobs ended at the last tick: the list is re-read when one more has
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
        note, editor_box, files, upload_btn, outcomes, progress, timer, finished, table,
        delete_row, doc_pick, delete_btn, confirm_row, confirm_text, confirm_btn, cancel_btn,
    )  # fmt: skip
    _wire(services, team, view)
    return view


def _wire(services: Services, team: gr.Dropdown, v: DocumentsView) -> None:
    def reload(team_id: str | None, request: gr.Request) -> tuple[Any, ...]:
        return refresh(services, team_id, request)

    def do_upload(files: list[str] | None, team_id: str | None, request: gr.Request) -> Any:
        return upload(services, files, team_id, request)

    def poll(team_id: str | None, seen: str, request: gr.Request) -> tuple[Any, ...]:
        *shown, finished, changed = jobs_panel.tick(services, team_id, seen, request)
        if not changed:
            return (*shown, finished, gr.skip(), gr.skip())
        with ui_call(services, request) as call:  # a file finished: the list has changed
            table, choices = _documents(call, team_id or "")
        return (*shown, finished, table, gr.update(choices=choices))

    def pick(doc_id: str | None, team_id: str | None, request: gr.Request) -> tuple[Any, str]:
        return ask_to_delete(services, doc_id, team_id, request)

    def confirm(doc_id: str | None, team_id: str | None, request: gr.Request) -> tuple[Any, ...]:
        return delete(services, doc_id, team_id, request)

    private: dict[str, Any] = {"api_visibility": "private"}
    jobs_out = [v.outcomes, v.progress, v.timer]
    reload_out = [v.table, v.doc_pick, v.editor_box, v.delete_row, v.note, *jobs_out]
    team.change(reload, [team], reload_out, **private)
    v.upload_btn.click(
        do_upload, [v.files, team], [v.outcomes, v.files, v.table, v.doc_pick, v.progress,
                                     v.timer], **private
    )  # fmt: skip
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
    # Last: events added after the others keep the earlier ones' numbers (fn_index).
    v.timer.tick(
        poll,
        [team, v.finished],
        [*jobs_out, v.finished, v.table, v.doc_pick],
        api_name="docs_jobs_tick",
        show_progress="hidden",
        **private,
    )
