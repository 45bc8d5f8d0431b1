"""`tenantllm tenants|ingest|docs|rm|reindex`: tenants and their documents, from the server.

The CLI runs on the server with operator rights; every command that touches documents
records one audit event with the actor `local:<os user>`. `ingest` queues one job per file
(core/knowledge/ingest_worker.py), kept for itself, and runs them here with a progress bar on
stderr (file k of n, the file's step, chunks embedded; click's bar gives the time left); the
jobs show in the Documents tab meanwhile, like the browser's uploads.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from core.audit.auditor import AuditEvent
from core.cli.base import main, user_errors
from core.config import load_settings
from core.knowledge.jobs import JobInfo
from core.knowledge.service import IngestOutcome
from core.plugins import load_tenants, plugin_package
from core.rbac import operator_principal
from core.services import Services, build_services
from core.tenancy import Tenant

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
tenant_option = click.option("--tenant", "tenant_id", required=True, help="Tenant id.")


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=_jsonable))


@contextmanager
def operator_knowledge(tenant_id: str) -> Iterator[tuple[Services, Tenant]]:
    """The services (no engine) and the tenant of one command; the audit is flushed after."""
    services = build_services(load_settings())
    tenant = services.tenants.get(tenant_id)
    try:
        yield services, tenant
    finally:
        services.auditor.close()


def audit_operator(
    services: Services, action: str, tenant: Tenant, started: float, **fields: Any
) -> None:
    # No request: the CLI's caller is the operator on this machine.
    services.auditor.record(
        AuditEvent.from_request(
            None,
            action=action,
            outcome=fields.pop("outcome", "ok"),
            principal=operator_principal(),
            tenant_id=tenant.id,
            latency_ms=(time.monotonic() - started) * 1000,
            **fields,
        )
    )


@main.command("tenants")
@json_option
@user_errors
def tenants_command(as_json: bool) -> None:
    """List the tenants and the plugin (and package) that provides each."""
    settings = load_settings()
    rows = [
        {
            "id": t.id,
            "display_name": t.display_name,
            "description": t.description,
            "plugin": t.plugin,
            "package": plugin_package(t.plugin),
        }
        for t in load_tenants(settings).all()
    ]
    if as_json:
        _print_json(rows)
        return
    for row in rows:
        click.echo(f"{row['id']:<14} {row['display_name']:<16} {row['plugin']} ({row['package']})")


_BAR_STEPS = 100  # the bar counts percent of each file


def _outcome_of(job: JobInfo) -> IngestOutcome:
    status = "refused" if job.state == "failed" else job.state
    return IngestOutcome(
        filename=job.filename,
        status=status,  # type: ignore[arg-type]  # a finished job: indexed, duplicate, refused
        chunks=job.chunks_done,
        document_id=job.document_id,
        error=job.error,
    )


def _bar_label(job: JobInfo) -> str:
    where = {"parsing": "parsing", "storing": "storing"}.get(job.step, "")
    if job.step == "embedding":
        where = f"{job.pages} parts, {job.chunks_done}/{job.chunks_expected} chunks embedded"
    return f"file {job.position}/{job.batch_size} {job.filename[:40]}: {where or job.state}"


def _run_with_bar(services: Services, tenant: Tenant, queued: list[JobInfo]) -> list[JobInfo]:
    """Run the queued jobs here, one after the other, under one progress bar; the finished."""
    finished = [j for j in queued if not j.active]  # refused on arrival
    todo = [j for j in queued if j.active]
    # On stderr: --json keeps stdout for the outcomes.
    with click.progressbar(
        length=_BAR_STEPS * len(queued), label="indexing", file=sys.stderr, show_eta=True, width=30
    ) as bar:
        bar.update(_BAR_STEPS * len(finished))
        for job in todo:
            shown = [0]  # percent of this file already on the bar

            def moved(info: JobInfo, shown: list[int] = shown) -> None:
                step = round(_BAR_STEPS * info.fraction_done())
                bar.label = _bar_label(info)
                bar.update(max(0, step - shown[0]))
                shown[0] = max(shown[0], step)

            done = services.ingest_jobs.run_job(tenant, job.id, moved)
            finished.append(done or job)
    return sorted(finished, key=lambda j: j.position)


def _outcome_line(outcome: IngestOutcome) -> str:
    if outcome.status == "refused":
        return f"refused    {outcome.filename}: {outcome.error}"
    where = f"{outcome.document_id} ({outcome.chunks} chunks)"
    return f"{outcome.status:<10} {outcome.filename} -> {where}"


@main.command("ingest")
@tenant_option
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@json_option
@user_errors
def ingest_command(tenant_id: str, paths: tuple[Path, ...], as_json: bool) -> None:
    """Add files to a tenant's documents (.txt .md .pdf .docx .html .csv); exit 1 if any refused."""
    started = time.monotonic()
    with operator_knowledge(tenant_id) as (services, tenant):
        operator = operator_principal().subject
        queued = services.ingest_jobs.enqueue(
            tenant, list(paths), [p.name for p in paths], operator, operator, keep_for_me=True
        )
        outcomes = [_outcome_of(j) for j in _run_with_bar(services, tenant, queued)]
        for outcome in outcomes:
            refused = outcome.status == "refused"
            audit_operator(
                services,
                "cli_ingest",
                tenant,
                started,
                outcome="error" if refused else "ok",
                status=400 if refused else 200,
                document_ids=[outcome.document_id] if outcome.document_id else [],
                error_class="IngestionError" if refused else None,
                detail=f"{outcome.filename}: {outcome.error or outcome.status}",
            )
    if as_json:
        _print_json([dataclasses.asdict(o) for o in outcomes])
    else:
        for outcome in outcomes:
            click.echo(_outcome_line(outcome))
    if any(o.status == "refused" for o in outcomes):
        raise SystemExit(1)


@main.command("docs")
@tenant_option
@json_option
@user_errors
def docs_command(tenant_id: str, as_json: bool) -> None:
    """List a tenant's documents, newest first."""
    started = time.monotonic()
    with operator_knowledge(tenant_id) as (services, tenant):
        docs = services.knowledge.list_documents(tenant)
        audit_operator(
            services, "cli_list_documents", tenant, started, detail=f"{len(docs)} documents"
        )
    if as_json:
        _print_json([dataclasses.asdict(d) for d in docs])
        return
    for doc in docs:
        when = doc.uploaded_at.strftime("%Y-%m-%d %H:%M")
        click.echo(f"{doc.id}  {when}  {doc.chunks:>5} chunks  {doc.size:>9} B  {doc.filename}")


@main.command("rm")
@tenant_option
@click.argument("document_id")
@json_option
@user_errors
def rm_command(tenant_id: str, document_id: str, as_json: bool) -> None:
    """Delete one of a tenant's documents, its vectors and its stored original."""
    started = time.monotonic()
    with operator_knowledge(tenant_id) as (services, tenant):
        try:
            services.knowledge.delete_document(tenant, document_id)
        except Exception as exc:
            audit_operator(
                services,
                "cli_delete_document",
                tenant,
                started,
                outcome="error",
                status=getattr(exc, "status", 500),
                error_class=type(exc).__name__,
                document_ids=[document_id],
            )
            raise
        audit_operator(services, "cli_delete_document", tenant, started, document_ids=[document_id])
    if as_json:
        _print_json({"deleted": document_id, "tenant": tenant_id})
    else:
        click.echo(f"deleted {document_id}")


@main.command("reindex")
@tenant_option
@json_option
@user_errors
def reindex_command(tenant_id: str, as_json: bool) -> None:
    """Rebuild a tenant's vectors from its stored (encrypted) originals."""
    started = time.monotonic()
    with operator_knowledge(tenant_id) as (services, tenant):
        chunks = services.knowledge.reindex(tenant)
        audit_operator(services, "cli_reindex", tenant, started, detail=f"{chunks} chunks")
    if as_json:
        _print_json({"tenant": tenant_id, "chunks": chunks})
    else:
        click.echo(f"re-indexed {tenant_id}: {chunks} chunks")
