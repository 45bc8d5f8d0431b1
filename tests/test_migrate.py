"""`tenantllm migrate`: a real embedded install (SQLite, embedded Chroma) onto PostgreSQL and
a real Chroma server without losing a row.

The migrated install, opened with build_services on the target database, must find every
document, conversation, key and audit event with the teams still apart, and its audit chain
must verify with the migration as the one new event. The source is only read. A target with
rows is refused, and a copy that fails halfway leaves the target database empty.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import chromadb
import pytest
from click.testing import CliRunner

from core.backup import database
from core.backup.migrate import migrate_install
from core.cli import main
from core.config import Settings, reset_settings_cache
from core.db import dispose_engines, get_engine
from core.errors import BackupError
from core.knowledge.chroma_server import database_name
from core.knowledge.vectorstore import COLLECTION_NAME
from core.services import build_services
from tests.audit_helpers import pg_database
from tests.fixtures.chroma_server import ChromaServer, unique_chroma_tenant
from tests.fixtures.common import BUNDLED_MODEL_DIR
from tests.install_helpers import TEAMS, Install, check_copy, fill_install, install_settings


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Install]]:
    """A development install on SQLite with two teams' data."""
    root = tmp_path_factory.mktemp("migrate-source")
    settings = install_settings(root / "data")
    services = build_services(settings)
    scratch = root / "scratch"
    scratch.mkdir()
    install = fill_install(services, scratch)
    services.auditor.close()
    yield settings, install
    dispose_engines()


def _counts(url: str) -> dict[str, int]:
    with get_engine(url).connect() as conn:
        return database.row_counts(conn)


def _migrate_cli(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, *args: str, chroma_tenant: str = ""
) -> Any:
    monkeypatch.setenv("TENANTLLM_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("TENANTLLM_MODEL", str(BUNDLED_MODEL_DIR))
    if chroma_tenant:
        monkeypatch.setenv("TENANTLLM_CHROMA_TENANT", chroma_tenant)
    reset_settings_cache()
    try:
        return CliRunner().invoke(main, ["migrate", *args])
    finally:
        reset_settings_cache()


def test_cli_migrates_sqlite_into_postgres(
    source: tuple[Settings, Install], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, install = source
    before = _counts(settings.resolved_database_url)
    with pg_database("tlm_migrate") as url:
        done = _migrate_cli(settings, monkeypatch, "--database-url", url)
        assert done.exit_code == 0, done.output
        assert f"copied {sum(before.values())} rows in {len(before)} tables" in done.output
        assert "audit chain ok" in done.output
        assert all(c not in done.output for c in install.canary.values())  # counts only
        documents = sum(len(ids) for ids in install.documents.values())
        assert f"{documents} document originals now in the target's store" in done.output
        migrated = _counts(url)
        added = {"audit_events": 1, "document_originals": documents}  # the migration's event
        assert migrated == {t: n + added.get(t, 0) for t, n in before.items()}
        assert _counts(settings.resolved_database_url) == before  # the source was only read
        check_copy(settings.model_copy(update={"database_url": url}), install)


def test_a_target_with_rows_is_refused(source: tuple[Settings, Install]) -> None:
    settings, _ = source
    with pg_database("tlm_migrate") as url:
        target = settings.model_copy(update={"database_url": url})
        migrate_install(settings, target)
        landed = _counts(url)
        with pytest.raises(BackupError, match="not empty"):
            migrate_install(settings, target)
        assert _counts(url) == landed


def test_the_install_own_database_is_refused(source: tuple[Settings, Install]) -> None:
    settings, _ = source
    with pytest.raises(BackupError, match="own database"):
        migrate_install(settings, settings.model_copy())


def test_a_copy_failing_halfway_leaves_the_target_empty(
    source: tuple[Settings, Install], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, _ = source
    real_insert = database.insert_rows
    tables_done: list[str] = []

    def insert_then_fail(conn: Any, table: Any, rows: Any) -> int:
        if len(tables_done) == 3:
            raise BackupError("the target went away")  # a failure after three tables landed
        tables_done.append(table.name)
        return real_insert(conn, table, rows)

    monkeypatch.setattr(database, "insert_rows", insert_then_fail)
    with pg_database("tlm_migrate") as url:
        with pytest.raises(BackupError, match="went away"):
            migrate_install(settings, settings.model_copy(update={"database_url": url}))
        assert len(tables_done) == 3
        assert not any(_counts(url).values())


def test_an_unreachable_target_is_a_clear_error(source: tuple[Settings, Install]) -> None:
    settings, _ = source
    url = "postgresql+psycopg://postgres@127.0.0.1:1/none"
    with pytest.raises(BackupError, match="Cannot reach the target database"):
        migrate_install(settings, settings.model_copy(update={"database_url": url}))


def _server_records(server: ChromaServer, chroma_tenant: str, team: str) -> list[str]:
    """The chunk texts in a team's database on the server, read with a raw client."""
    client = chromadb.HttpClient(
        host="127.0.0.1", port=server.port, tenant=chroma_tenant, database=database_name(team)
    )
    return client.get_collection(COLLECTION_NAME).get(include=["documents"])["documents"] or []


def test_cli_moves_the_vectors_to_a_chroma_server(
    source: tuple[Settings, Install], chroma_server: ChromaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, install = source
    chroma_tenant = unique_chroma_tenant()
    with pg_database("tlm_migrate") as url:
        done = _migrate_cli(
            settings, monkeypatch, "--database-url", url, "--chroma-url", chroma_server.url,
            chroma_tenant=chroma_tenant,
        )  # fmt: skip
        assert done.exit_code == 0, done.output
        for team in TEAMS:
            texts = "\n".join(_server_records(chroma_server, chroma_tenant, team))
            assert f"team {team}: " in done.output
            assert install.canary[team] in texts  # each team's chunks in its own database
            assert all(install.canary[o] not in texts for o in TEAMS if o != team)
        target = settings.model_copy(
            update={"database_url": url, "chroma_url": chroma_server.url,
                    "chroma_tenant": chroma_tenant}
        )  # fmt: skip
        check_copy(target, install)


def test_a_chroma_server_with_the_teams_vectors_is_refused_and_nothing_kept(
    source: tuple[Settings, Install], chroma_server: ChromaServer
) -> None:
    settings, _ = source
    chroma_tenant = unique_chroma_tenant()
    with pg_database("tlm_migrate") as first, pg_database("tlm_migrate") as second:
        changes = {"chroma_url": chroma_server.url, "chroma_tenant": chroma_tenant}
        report = migrate_install(
            settings, settings.model_copy(update=changes | {"database_url": first})
        )
        assert sum(report.vectors.values()) > 0
        on_server = {t: len(_server_records(chroma_server, chroma_tenant, t)) for t in TEAMS}
        with pytest.raises(BackupError, match="already holds vectors"):
            migrate_install(
                settings, settings.model_copy(update=changes | {"database_url": second})
            )
        assert not any(_counts(second).values())  # the database copy was undone too
        assert on_server == {
            t: len(_server_records(chroma_server, chroma_tenant, t)) for t in TEAMS
        }
