"""Fixtures of the SIEM tests: a fresh SQLite database at the newest migration."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.db import upgrade_database


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'siem.db'}"
    upgrade_database(url)
    return url
