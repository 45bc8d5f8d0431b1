"""Replicas that start at once on an empty PostgreSQL database migrate it once, together.

Each process runs `upgrade_database` at start (core/server.py); without a lock two of them
create the same tables and one fails its start. Four processes are started on one fresh
database at the same moment: all succeed and the schema is at the newest revision.
"""

from __future__ import annotations

import subprocess
import sys
import uuid

import psycopg

from tests.audit_helpers import PG_ADMIN
from tests.fixtures.common import REPO

MIGRATE = "import sys; from core.db import upgrade_database; upgrade_database(sys.argv[1])"


def test_processes_migrating_one_empty_database_at_once_all_succeed() -> None:
    name = f"tlm_lock_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    try:
        procs = [
            subprocess.Popen([sys.executable, "-c", MIGRATE, url], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for _ in range(4)
        ]  # fmt: skip
        results = [(p.wait(timeout=300), p.stdout.read() if p.stdout else "") for p in procs]
        assert [code for code, _ in results] == [0] * 4, [out[-2000:] for _, out in results]
        versions = sorted(
            p.stem.split("_")[0] for p in (REPO / "core/migrations/versions").glob("0*.py")
        )
        with psycopg.connect(url.replace("+psycopg", "")) as db:
            [(head,)] = db.execute("SELECT version_num FROM alembic_version").fetchall()
        assert head == versions[-1]
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
