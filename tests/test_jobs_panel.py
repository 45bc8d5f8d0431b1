"""The Documents tab re-reads the team's list whenever one more upload job ends.

The panel lists only the newest jobs: when a job ends as another is queued and the oldest drops
off the list, as many shown jobs have ended as before, so a count of them cannot tell.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from core.knowledge.jobs import JobInfo
from core.ui.jobs_panel import _SHOWN_JOBS, finished_ids

NOW = datetime(2026, 12, 2, tzinfo=UTC)


def _job(number: int, state: str) -> JobInfo:
    return JobInfo(
        id=f"job-{number:03d}", tenant_id="sales", batch_id=f"batch-{number}", position=1,
        batch_size=1, filename=f"file-{number}.md", size=10, uploaded_by="ed@example.test",
        state=state, step="", pages=0, chunks_done=0, chunks_expected=0, document_id=None,
        error=None, created_at=NOW, started_at=None, finished_at=None,
    )  # fmt: skip


def test_a_job_ending_changes_the_mark_when_the_list_is_full() -> None:
    older = [_job(n, "indexed") for n in range(1, _SHOWN_JOBS - 1)]  # newest last
    a, b, c = (_job(_SHOWN_JOBS - 1 + n, "queued") for n in range(3))
    shown_before = [b, replace(a, state="running"), *reversed(older)]  # newest first
    # A ends as a colleague queues C: the list still shows `_SHOWN_JOBS` rows, as many of them
    # ended as before (the oldest dropped off), yet A's document is new to the list.
    shown_after = [c, replace(b, state="running"), replace(a, state="indexed"),
                   *reversed(older[1:])]  # fmt: skip
    assert len(shown_before) == len(shown_after) == _SHOWN_JOBS
    assert sum(not j.active for j in shown_before) == sum(not j.active for j in shown_after)
    assert finished_ids(shown_after) != finished_ids(shown_before)


def test_the_mark_ignores_queued_and_running_jobs() -> None:
    ended = [_job(1, "indexed"), _job(2, "failed")]
    assert finished_ids([_job(3, "queued"), _job(4, "running"), *ended]) == finished_ids(ended)
    assert finished_ids([]) == ""
