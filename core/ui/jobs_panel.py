"""The Documents tab's indexing progress: the team's upload jobs, polled while any runs.

Uploads are indexed in the background (core/knowledge/ingest_worker.py); this panel reads the
job rows, so a reloaded page (or a colleague's) shows the same progress: file k of n, pages
parsed, chunks embedded, about how long is left, and each file's outcome with its reason.
A `gr.Timer` ticks every second while a job of the team is queued or running, and stops
when none is. Rows are the caller's team's only (`read_documents` checked on every tick).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gradio as gr
import pandas as pd

from core.db import utcnow
from core.knowledge.jobs import JobInfo, batch_status
from core.services import Services
from core.ui.render import inline_text
from core.ui.session import UiCall, ui_call

OUTCOME_COLUMNS = ["File", "Outcome", "Chunks", "Detail"]
TICK_SECONDS = 1.0
_SHOWN_JOBS = 20
# A job that failed is shown as the upload's refusal, as it was when uploads were synchronous.
_OUTCOME = {"failed": "refused"}


def team_jobs(call: UiCall, team: str) -> list[JobInfo]:
    """The team's recent jobs (the caller must be allowed to read its documents)."""
    call.check(team, "read_documents")
    tenant = call.services.tenants.get(team)
    return call.services.ingest_jobs.list_jobs(tenant, limit=_SHOWN_JOBS)


def _detail(job: JobInfo) -> str:
    if job.error:
        return job.error
    pages = f"{job.pages} {'pages' if job.filename.lower().endswith('.pdf') else 'parts'}"
    return {
        "queued": "waiting its turn",
        "indexed": "ready for answers",
        "duplicate": "already in this team's documents",
    }.get(job.state) or {
        "parsing": "reading the file",
        "embedding": f"{pages} parsed; {job.chunks_done} of {job.chunks_expected} chunks embedded",
        "storing": f"{pages} parsed; {job.chunks_done} chunks embedded; storing",
    }.get(job.step, job.step)


def outcome_table(jobs: Sequence[JobInfo]) -> pd.DataFrame:
    """One row per job: file, outcome (queued, running, indexed, duplicate, refused), detail."""
    rows = [[j.filename, _OUTCOME.get(j.state, j.state), j.chunks_done, _detail(j)] for j in jobs]
    return pd.DataFrame(rows, columns=OUTCOME_COLUMNS)


def _time_left(seconds: float | None) -> str:
    if seconds is None:
        return "estimating the time left"
    if seconds < 60:
        return f"about {max(1, round(seconds))} s left"
    return f"about {round(seconds / 60)} min left"


def progress_html(jobs: Sequence[JobInfo]) -> str:
    """The line over the results: file k of n of the running batch, its bar, the time left."""
    active = [j for j in jobs if j.active]
    if not active:
        return ""
    batch = [j for j in jobs if j.batch_id == active[-1].batch_id]
    status = batch_status(batch, utcnow())
    current = status.current or active[0]
    done = sum(1 for j in batch if not j.active)
    percent = round(100 * (done + current.fraction_done()) / max(1, status.size))
    line = (
        f"Indexing file {status.position} of {status.size}: "
        f"<strong>{inline_text(current.filename, 120)}</strong> · "
        f"{inline_text(_detail(current), 200)} · {_time_left(status.seconds_left)}"
    )
    # Everything above is escaped; the bar is a plain element (no URL, no script).
    return (
        f'<div id="docs-progress-line"><p>{line}</p>'
        f'<progress max="100" value="{percent}" aria-label="Indexing progress">'
        f"{percent}%</progress></div>"
    )


def job_updates(jobs: Sequence[JobInfo]) -> tuple[Any, Any, Any]:
    """(results table, progress line, timer): the timer runs while a job is active."""
    active = any(j.active for j in jobs)
    return outcome_table(jobs), progress_html(jobs), gr.Timer(active=active)


def finished_ids(jobs: Sequence[JobInfo]) -> str:
    """The shown jobs that have ended, as one value a `gr.State` can hold between ticks.

    A set, not a count: only the newest `_SHOWN_JOBS` are listed, so when a job ends as another
    is queued and the oldest drops off, as many shown jobs have ended as before.
    """
    return ",".join(sorted(j.id for j in jobs if not j.active))


def tick(
    services: Services, team: str | None, finished_before: str, request: gr.Request | None
) -> tuple[Any, ...]:
    """One poll: the team's jobs, and whether the document list must be re-read.

    Returns (results, progress, timer, finished jobs, list changed: bool).
    """
    with ui_call(services, request) as call:
        if not team:
            return (pd.DataFrame([], columns=OUTCOME_COLUMNS), "", gr.Timer(active=False), "",
                    False)  # fmt: skip
        jobs = team_jobs(call, team)
    finished = finished_ids(jobs)
    return (*job_updates(jobs), finished, finished != finished_before)
