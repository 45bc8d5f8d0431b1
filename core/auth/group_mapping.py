"""IdP groups -> tenant roles and global roles, from a YAML file that can change at run time.

Tenant roles are `member`, `editor` and `team_admin` (core/identity.py); a group may make its
people team admins of one team exactly as it makes them editors (`tenants: {sales: team_admin}`).

The file (Settings.group_mapping_file, example in assets/group_mapping.yaml) is re-read when
its modification time or size changes, and on SIGHUP. A broken file at start is a
`ConfigError`; a broken file while running is logged and the previous mapping stays in force,
so a typo never locks everyone out (or in).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, cast

import yaml

from core.config import Settings
from core.errors import ConfigError
from core.identity import GLOBAL_ROLES, TENANT_ROLES, Role, merge_role
from core.resources import project_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GroupRule:
    """One grant: members of `group` get `role` on `tenant` (None: a global role)."""

    group: str
    tenant: str | None
    role: str


def resolve_mapping_path(path: Path) -> Path:
    """An absolute path: relative paths are tried in the working dir, then beside the code.

    "Beside the code" is the checkout's root, or the installed package holding `assets/`: the
    default `assets/group_mapping.yaml` is found from a wheel too (core/resources.py).
    """
    if path.is_absolute() or path.exists():
        return path.resolve()
    return project_path(path).resolve()


def parse_mapping(data: Any, source: str) -> list[GroupRule]:
    """Validate the YAML document and return its rules (ConfigError naming the problem)."""
    if not isinstance(data, dict) or not isinstance(data.get("groups"), dict):
        raise ConfigError(f"{source}: expected a top-level 'groups:' mapping.")
    rules: list[GroupRule] = []
    for group, grant in cast(dict[Any, Any], data["groups"]).items():
        where = f"{source}: group '{group}'"
        if not isinstance(grant, dict) or set(grant) - {"tenants", "global"}:
            raise ConfigError(f"{where}: expected 'tenants:' and/or 'global:'.")
        for tenant, role in (grant.get("tenants") or {}).items():
            if role not in TENANT_ROLES:
                raise ConfigError(f"{where}: role '{role}' is not one of {TENANT_ROLES}.")
            rules.append(GroupRule(str(group), str(tenant), str(role)))
        for role in grant.get("global") or []:
            if role not in GLOBAL_ROLES:
                raise ConfigError(f"{where}: global role '{role}' is not one of {GLOBAL_ROLES}.")
            rules.append(GroupRule(str(group), None, str(role)))
    return rules


def _read_rules(path: Path) -> list[GroupRule]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"Cannot read the group mapping file {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"The group mapping file {path} is not valid YAML: {exc}") from None
    return parse_mapping(data, str(path))


class GroupMapping:
    """The group mapping in force, re-read on file change or SIGHUP."""

    def __init__(self, settings: Settings) -> None:
        """Load the mapping file named by `settings` (ConfigError if missing or invalid)."""
        self.path = resolve_mapping_path(settings.group_mapping_file)
        self._lock = threading.Lock()
        self._reload_requested = False
        self._stamp = self._file_stamp()
        self._rules = _read_rules(self.path)

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size)

    def _refresh(self) -> None:
        stamp = self._file_stamp()
        if stamp == self._stamp and not self._reload_requested:
            return
        with self._lock:
            self._reload_requested = False
            self._stamp = stamp
            try:
                self._rules = _read_rules(self.path)
                log.info("group mapping reloaded from %s (%d rules)", self.path, len(self._rules))
            except ConfigError as exc:
                log.error("group mapping NOT reloaded, previous one stays in force: %s", exc)

    def request_reload(self) -> None:
        """Re-read the file on next use even if it looks unchanged (what SIGHUP does)."""
        self._reload_requested = True

    def rules(self) -> list[GroupRule]:
        """Every grant in force (for the admin page)."""
        self._refresh()
        return list(self._rules)

    def resolve(self, groups: Iterable[str]) -> tuple[dict[str, Role], frozenset[str]]:
        """Tenant roles and global roles granted to someone in `groups` (unknown: nothing)."""
        self._refresh()
        wanted = set(groups)
        tenant_roles: dict[str, Role] = {}
        global_roles: set[str] = set()
        for rule in self._rules:
            if rule.group not in wanted:
                continue
            if rule.tenant is None:
                global_roles.add(rule.role)
            else:
                role = cast(Role, rule.role)
                tenant_roles[rule.tenant] = merge_role(tenant_roles.get(rule.tenant), role)
        return tenant_roles, frozenset(global_roles)

    def install_sighup(self) -> bool:
        """Re-read on SIGHUP (chaining any previous handler); False if not possible here."""
        if (
            not hasattr(signal, "SIGHUP")
            or threading.current_thread() is not threading.main_thread()
        ):
            return False
        previous = signal.getsignal(signal.SIGHUP)

        def on_sighup(signum: int, frame: FrameType | None) -> None:
            self.request_reload()
            if callable(previous):
                previous(signum, frame)

        signal.signal(signal.SIGHUP, on_sighup)
        return True
