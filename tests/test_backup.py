"""`tenantllm backup` / `restore`: a real install (two teams' documents, conversations, API
keys, audit events) backed up and restored into empty data dirs, SQLite and PostgreSQL.

Each restore is opened with build_services and must find every document (the same top chunk
for a known question, per team, never the other team's), conversation, key and audit event,
with the audit chain verifying. Tampered archives and non-empty targets are refused with
nothing written.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from sqlalchemy import text

from core.backup.create import create_backup
from core.backup.manifest import Member, parse_manifest
from core.backup.restore import restore_backup
from core.chat import conversations as conv
from core.cli import main
from core.config import Settings, reset_settings_cache
from core.db import dispose_engines, get_engine
from core.errors import BackupError
from core.services import build_services
from tests.audit_helpers import PG_ADMIN, pg_database
from tests.fixtures.common import BUNDLED_MODEL_DIR
from tests.install_helpers import Install, check_copy, event_ids, fill_install, install_settings


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Install, Path]]:
    """A development install on SQLite (key file in the data dir) and its archive."""
    root = tmp_path_factory.mktemp("backup-source")
    settings = install_settings(root / "data")
    services = build_services(settings)
    (settings.data_dir / "models").mkdir()  # derived: must not travel
    (settings.data_dir / "models" / "weights.bin").write_bytes(b"x" * 1000)
    scratch = root / "scratch"
    scratch.mkdir()
    install = fill_install(services, scratch)
    archive = root / "install.tar.gz"
    create_backup(settings, archive)  # while the stores are open: a live backup
    services.auditor.close()
    yield settings, install, archive
    dispose_engines()


def _cli(env: dict[str, str], *args: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    reset_settings_cache()
    try:
        return CliRunner().invoke(main, list(args))
    finally:
        reset_settings_cache()


def test_cli_round_trip_into_empty_sqlite_install(
    source: tuple[Settings, Install, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, install, _ = source
    archive = tmp_path / "cli.tar.gz"
    monkeypatch.setenv("TENANTLLM_MODEL", str(BUNDLED_MODEL_DIR))
    made = _cli({"TENANTLLM_DATA_DIR": str(settings.data_dir)}, "backup", "--out", str(archive),
                monkeypatch=monkeypatch)  # fmt: skip
    assert made.exit_code == 0, made.output
    assert "backup written" in made.output
    with get_engine(settings.resolved_database_url).connect() as conn:
        actions = conn.execute(text("SELECT action FROM audit_events WHERE action LIKE 'backup%'"))
        assert [r[0] for r in actions] == ["backup_create"]  # audited in the source, after the dump
    assert all(c not in made.output for c in install.canary.values())  # counts, not content
    target = tmp_path / "restored"
    done = _cli({"TENANTLLM_DATA_DIR": str(target)}, "restore", str(archive),
                monkeypatch=monkeypatch)  # fmt: skip
    assert done.exit_code == 0, done.output
    assert "audit chain ok" in done.output
    assert all(c not in done.output for c in install.canary.values())
    assert not (target / "models").exists()
    assert (target / "master.key").read_bytes() == (settings.data_dir / "master.key").read_bytes()
    check_copy(install_settings(target), install)


def test_postgres_round_trip(source: tuple[Settings, Install, Path], tmp_path: Path) -> None:
    """SQLite archive -> PostgreSQL install -> its own backup -> a second PostgreSQL install."""
    _, install, archive = source
    with pg_database("tlm_backup") as first_url, pg_database("tlm_backup") as second_url:
        first = install_settings(tmp_path / "pg1", database_url=first_url)
        restore_backup(first, archive)
        check_copy(first, install)
        install_now = Install(
            install.canary, install.top, install.documents, install.conversations,
            install.key_secrets, event_ids(first_url),
        )  # fmt: skip
        pg_archive = tmp_path / "pg.tar.gz"
        manifest = create_backup(first, pg_archive)
        assert manifest.database_backend == "postgresql"
        second = install_settings(tmp_path / "pg2", database_url=second_url)
        report = restore_backup(second, pg_archive)
        assert report.chain.ok
        assert report.table_rows == manifest.table_rows
        check_copy(second, install_now)


def _rewrite(
    archive: Path, out: Path, change: Any, extra: tuple[tuple[str, bytes], ...] = ()
) -> None:
    """Copy `archive` to `out`, each member's bytes through change(name, data), plus `extra`."""
    with tarfile.open(archive, "r:gz") as src, tarfile.open(out, "w:gz") as dst:
        for info in src:
            handle = src.extractfile(info)
            assert handle is not None
            data = change(info.name, handle.read())
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
        for name, data in extra:
            added = tarfile.TarInfo(name)
            added.size = len(data)
            dst.addfile(added, io.BytesIO(data))


def _forge(archive: Path, out: Path, member: str, change: Any) -> None:
    """A consistent forgery: `member` changed, its checksum fixed, the manifest re-signed.

    Possible only for a development archive, whose key travels inside it (documented).
    """
    with tarfile.open(archive, "r:gz") as src:
        key = src.extractfile("files/master.key").read().strip()  # type: ignore[union-attr]
        data = change(src.extractfile(member).read())  # type: ignore[union-attr]
        manifest = parse_manifest(src.extractfile("manifest.json").read())  # type: ignore[union-attr]
    manifest.members[member] = Member(hashlib.sha256(data).hexdigest(), len(data))
    manifest.sign(key)
    replaced = {member: data, "manifest.json": manifest.to_json()}
    _rewrite(archive, out, lambda name, old: replaced.get(name, old))


def _flip_first_byte(data: bytes) -> bytes:
    return bytes([data[0] ^ 1]) + data[1:]


def _assert_nothing_written(target: Path) -> None:
    assert not target.exists() or not any(target.iterdir())
    assert [p.name for p in target.parent.iterdir() if ".restoring-" in p.name] == []


@pytest.mark.parametrize(
    "tamper",
    ["encrypted original", "chroma store", "table rows", "manifest counts", "extra member"],
)
def test_tampered_archive_is_refused_and_nothing_is_written(
    source: tuple[Settings, Install, Path], tmp_path: Path, tamper: str
) -> None:
    _, install, archive = source
    some_file = next(iter(install.documents["finance"]))
    targets = {
        "encrypted original": f"files/tenants/finance/files/{some_file}.bin",
        "chroma store": "files/tenants/sales/chroma/chroma.sqlite3",
        "table rows": "database/conversation_messages.jsonl",
    }

    def change(name: str, data: bytes) -> bytes:
        if name == targets.get(tamper):
            return _flip_first_byte(data)
        if tamper == "manifest counts" and name == "manifest.json":
            manifest = json.loads(data)
            # A forger who also fixes the checksums still cannot make the MAC.
            manifest["table_rows"]["audit_events"] += 1
            return json.dumps(manifest).encode()
        return data

    bad = tmp_path / "bad.tar.gz"
    planted = (("files/tenants/sales/files/planted.bin", b"evil"),)
    _rewrite(archive, bad, change, planted if tamper == "extra member" else ())
    target = tmp_path / "restored"
    with pytest.raises(BackupError, match="does not match|altered|does not verify"):
        restore_backup(install_settings(target), bad)
    _assert_nothing_written(target)


def test_truncated_archive_is_refused(
    source: tuple[Settings, Install, Path], tmp_path: Path
) -> None:
    _, _, archive = source
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    target = tmp_path / "restored"
    with pytest.raises(BackupError, match="not a readable backup"):
        restore_backup(install_settings(target), cut)
    _assert_nothing_written(target)
    plain = tmp_path / "plain.tar.gz"
    plain.write_bytes(gzip.compress(b"not a tar at all" * 100))
    with pytest.raises(BackupError):
        restore_backup(install_settings(target), plain)


def test_non_empty_targets_are_refused(
    source: tuple[Settings, Install, Path], tmp_path: Path
) -> None:
    _, _, archive = source
    busy_dir = tmp_path / "busy"
    busy_dir.mkdir()
    (busy_dir / "notes.txt").write_text("keep me")
    with pytest.raises(BackupError, match="not empty"):
        restore_backup(install_settings(busy_dir), archive)
    assert [p.name for p in busy_dir.iterdir()] == ["notes.txt"]
    with pg_database("tlm_backup") as url:
        conv.create_conversation(url, "someone", "sales", "already here")
        target = tmp_path / "fresh"
        with pytest.raises(BackupError, match="conversations"):
            restore_backup(install_settings(target, database_url=url), archive)
        _assert_nothing_written(target)
        with get_engine(url).connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM conversations")).scalar() == 1
            assert conn.execute(text("SELECT count(*) FROM audit_events")).scalar() == 0


def test_failed_load_leaves_a_bare_postgres_database_bare(
    source: tuple[Settings, Install, Path], tmp_path: Path
) -> None:
    """A row the schema refuses, in a re-signed archive: the tables made are dropped again."""
    _, _, archive = source
    name = f"tlm_backup_bare_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"

    def untitled(data: bytes) -> bytes:  # conversations.title is NOT NULL
        rows = [json.loads(line) for line in data.splitlines()]
        rows[-1]["title"] = None
        return b"".join(json.dumps(r).encode() + b"\n" for r in rows)

    forged = tmp_path / "forged.tar.gz"
    _forge(archive, forged, "database/conversations.jsonl", untitled)
    target = tmp_path / "restored"
    try:
        with pytest.raises(BackupError, match="could not be loaded"):
            restore_backup(install_settings(target, database_url=url), forged)
        _assert_nothing_written(target)
        with get_engine(url).connect() as conn:
            tables = conn.execute(
                text("SELECT count(*) FROM information_schema.tables WHERE table_schema='public'")
            ).scalar()
        assert tables == 0
    finally:
        dispose_engines()
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_setting_key_stays_out_and_must_match(tmp_path: Path) -> None:
    key = "k" * 40
    settings = install_settings(tmp_path / "src", master_key=key)
    services = build_services(settings)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    install = fill_install(services, scratch)
    services.auditor.close()
    archive = tmp_path / "keyed.tar.gz"
    manifest = create_backup(settings, archive)
    assert manifest.master_key_source == "setting"
    with tarfile.open(archive, "r:gz") as tar:
        names = tar.getnames()
        raw = b"".join(tar.extractfile(n).read() for n in names)  # type: ignore[union-attr]
    assert "files/master.key" not in names
    assert key.encode() not in raw
    assert all(not n.startswith(("files/tmp/", "files/models/")) for n in names)
    target = tmp_path / "dst"
    for wrong, message in (("", "set the same"), ("w" * 40, "does not verify")):
        with pytest.raises(BackupError, match=message):
            restore_backup(install_settings(target, master_key=wrong), archive)
        _assert_nothing_written(target)
    restore_backup(install_settings(target, master_key=key), archive)
    install.event_ids = event_ids(settings.resolved_database_url)
    check_copy(install_settings(target, master_key=key), install)


def test_backup_refuses_an_existing_file_or_the_data_dir(
    source: tuple[Settings, Install, Path], tmp_path: Path
) -> None:
    settings, _, archive = source
    before = archive.read_bytes()
    with pytest.raises(BackupError, match="exists already"):
        create_backup(settings, archive)
    assert archive.read_bytes() == before
    with pytest.raises(BackupError, match="inside the data dir"):
        create_backup(settings, settings.data_dir / "self.tar.gz")
    assert not (settings.data_dir / "self.tar.gz").exists()
