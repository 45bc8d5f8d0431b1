"""A local OpenID Connect provider with demo users, for trying tenantllm out (and tests).

`make run` starts it when no `TENANTLLM_OIDC_ISSUER` is configured. It is oidc-provider-mock
0.3.4 in a subprocess on loopback: anyone who can reach it signs in as any user by typing the
user name, without a password. It is for trying out only; point a real deployment at your
organisation's IdP (README, "Sign-in").
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx

from core.errors import ConfigError

START_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True)
class DemoUser:
    """One sign-in of the demo provider."""

    sub: str
    email: str
    name: str
    groups: tuple[str, ...]
    description: str

    def claims(self) -> dict[str, object]:
        """The claims the provider issues for this user."""
        return {
            "sub": self.sub,
            "email": self.email,
            "name": self.name,
            "groups": list(self.groups),
        }


DEMO_USERS: list[DemoUser] = [
    DemoUser("alice", "alice@example.com", "Alice", ("sales",), "sales member"),
    DemoUser("erin", "erin@example.com", "Erin", ("sales-editors",), "sales editor"),
    DemoUser("tess", "tess@example.com", "Tess", ("sales-admins",), "sales team admin"),
    DemoUser("dave", "dave@example.com", "Dave", ("development-editors",), "development editor"),
    DemoUser("fiona", "fiona@example.com", "Fiona", ("finance",), "finance member"),
    DemoUser("audrey", "audrey@example.com", "Audrey", ("auditors",), "auditor (audit log)"),
    DemoUser("root", "root@example.com", "Root", ("admins",), "admin (everything)"),
]


def demo_idp_command(port: int, token_max_age: int | None = None) -> list[str]:
    """The command line that runs the provider with every demo user."""
    command = [
        sys.executable,
        "-m",
        "oidc_provider_mock",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--require-nonce",
        "true",
    ]
    if token_max_age is not None:
        command += ["--token-max-age", str(token_max_age)]
    for user in DEMO_USERS:
        command += ["--user-claims", json.dumps(user.claims())]
    return command


def wait_for_discovery(issuer: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Return once the provider serves its discovery document (ConfigError if it dies)."""
    deadline = time.monotonic() + timeout
    url = f"{issuer}/.well-known/openid-configuration"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            raise ConfigError(f"The demo identity provider exited: {output[-1500:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise ConfigError(f"The demo identity provider did not answer at {url}.")


@contextmanager
def start_demo_idp(port: int, *, token_max_age: int | None = None) -> Iterator[str]:
    """Run the demo provider on 127.0.0.1:`port`; yield its issuer URL; stop it afterwards."""
    issuer = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        demo_idp_command(port, token_max_age),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_discovery(issuer, proc, START_TIMEOUT_SECONDS)
        _drain(proc)
        yield issuer
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _drain(proc: subprocess.Popen[bytes]) -> None:
    # The provider logs every request; an unread pipe would fill up and stall it.
    def pump() -> None:
        if proc.stdout is not None:
            for _line in proc.stdout:
                pass

    threading.Thread(target=pump, name="demo-idp-log", daemon=True).start()
