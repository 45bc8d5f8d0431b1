"""Two app replicas on shared services, as `docs/scale-out.md` deploys them (issue 19).

One topology per run, on loopback: the machine's PostgreSQL (a fresh database) and Redis, the
run's Chroma server (`chroma run`, tests/fixtures/chroma_server.py), the run's vLLM server
(tests/fixtures/vllm_server.py) and two `tenantllm serve` processes with the same settings and
a data dir each (nothing shared on disk). The checks run in order on it:

1. a document uploaded through replica A is cited by an answer through replica B;
2. a session signed in on A works on B, a conversation started on A continues on B, and
   signing out on B ends the session on A;
3. a team's generation cap holds at the engine across both replicas, and a per-user rate
   limit is one budget for both;
4. replica A killed (-9) while it streams: B keeps serving; once A is back, every answered
   request is in the audit log and the hash chain verifies;
5. the Chroma server stopped: a question gets a clear 503 (audited with the reason), an
   upload is refused with nothing half-written, and both work again once it is back;
6. a sales canary never reaches finance on either replica: not in answers, sources or lists.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.audit.query import AuditFilters
from core.auth.apikeys import create_key
from core.chat import conversations as conv
from core.config import Settings
from tests.audit_helpers import pg_database
from tests.fixtures.app_server import run_cli, wait_ready
from tests.fixtures.chroma_server import ChromaServer, unique_chroma_tenant
from tests.fixtures.common import BUNDLED_MODEL_DIR, REPO, free_port
from tests.security.test_output_scoping import GradioSession, final_job_row, listed_documents
from tests.ui_helpers import make_user, signed_in_client, wait_for_audit

pytestmark = [pytest.mark.engine, pytest.mark.timeout(2400)]

REDIS_URL = "redis://127.0.0.1:6379/0"
TEAM_CAP = 2  # generations of one team at the engine at once, across replicas
USER_LIMIT = 6  # requests per minute of one user (one API key), across replicas
SECRET_KEY = "scale-out-test-secret-key-0123456789abcdef"
MASTER_KEY = "scale-out-test-master-key-0123456789abcdef"
TAG = uuid.uuid4().hex[:6]
CANARY = f"ORION-{uuid.uuid4().hex[:10].upper()}"
DOC_NAME = f"orion-{TAG}.md"
QUESTION = f"What is the Orion {TAG} partner discount code?"


@dataclass
class Replica:
    """One `tenantllm serve` process of the topology."""

    name: str
    base_url: str
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the process (same port, same data dir as before); `ready` waits for it."""
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "app.py"], cwd=REPO, env=self.env, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def ready(self) -> None:
        """Until /readyz answers 200 (the log's tail if the process exits)."""
        assert self.proc is not None
        wait_ready(self.base_url, self.proc, self.log_path, timeout=900)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the process group (the server and any child) and wait for it to exit."""
        if self.proc is None:
            return
        os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=60)
        self.proc = None

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`tenantllm ARGS` with this replica's settings."""
        return run_cli(self.env, *args)


@dataclass
class Topology:
    """Both replicas and what they share."""

    a: Replica
    b: Replica
    db_url: str
    issuer: str
    chroma: ChromaServer
    vllm_url: str
    settings: Settings  # for keys made by the test, on the shared database

    def key(self, team: str) -> str:
        """A new API key of `team` (its own rate-limit budget)."""
        made = create_key(self.settings, tenant_id=team, created_by=f"scale-{uuid.uuid4().hex[:6]}")
        return made.secret


@pytest.fixture(scope="module")
def topology(
    tmp_path_factory: pytest.TempPathFactory,
    oidc_issuer: str,
    chroma_server: ChromaServer,
    vllm_server: str,
) -> Iterator[Topology]:
    """PostgreSQL, Redis, Chroma and vLLM servers, and two replicas started side by side."""
    with pg_database("tlm_scale") as db_url:
        shared = {
            **os.environ,
            "TENANTLLM_DATABASE_URL": db_url,
            "TENANTLLM_REDIS_URL": REDIS_URL,
            "TENANTLLM_CHROMA_URL": chroma_server.url,
            "TENANTLLM_CHROMA_TENANT": unique_chroma_tenant(),
            "TENANTLLM_ENGINE_BACKEND": "openai",
            "TENANTLLM_ENGINE_URL": vllm_server,
            "TENANTLLM_MODEL": str(BUNDLED_MODEL_DIR),  # its tokenizer counts prompts here
            "TENANTLLM_OIDC_ISSUER": oidc_issuer,
            "TENANTLLM_SECRET_KEY": SECRET_KEY,
            "TENANTLLM_MASTER_KEY": MASTER_KEY,
            "TENANTLLM_TENANT_MAX_CONCURRENCY": str(TEAM_CAP),
            "TENANTLLM_FAIR_QUEUE_WAIT_SECONDS": "600",
            "TENANTLLM_RATE_LIMIT_USER": f"{USER_LIMIT}/minute",
            "TENANTLLM_RATE_LIMIT_SIGNIN": "100000/minute",
            "TENANTLLM_DEFAULT_MAX_TOKENS": "32",  # the browser tab's turns: short answers
            "HF_HUB_OFFLINE": "1",
        }
        replicas = []
        for name in ("a", "b"):
            data_dir = tmp_path_factory.mktemp(f"replica-{name}")
            port = free_port()
            env = {**shared, "TENANTLLM_DATA_DIR": str(data_dir), "TENANTLLM_PORT": str(port)}
            replicas.append(Replica(name, f"http://127.0.0.1:{port}", env, data_dir / "server.log"))
        a, b = replicas
        settings = Settings(
            data_dir=tmp_path_factory.mktemp("keys"), database_url=db_url,
            secret_key=SECRET_KEY, master_key=MASTER_KEY,
        )  # fmt: skip
        try:
            for replica in replicas:  # both at once: they seed the demo documents together
                replica.start()
            for replica in replicas:
                replica.ready()
            yield Topology(a, b, db_url, oidc_issuer, chroma_server, vllm_server, settings)
        finally:
            for replica in replicas:
                replica.kill(signal.SIGTERM)
            if not chroma_server.running:
                chroma_server.start()


def ask(base_url: str, key: str, question: str, **body: Any) -> httpx.Response:
    """One non-streamed chat turn of the API key's team."""
    return httpx.post(
        f"{base_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": body.pop("model", "sales"), "temperature": 0, "max_tokens": 24,
              "messages": [{"role": "user", "content": question}], **body},
        timeout=600,
    )  # fmt: skip


def sources_of(answer: httpx.Response) -> list[str]:
    """The file names an API answer cites."""
    return [s["filename"] for s in answer.json()["tenantllm"]["sources"]]


def signed_in(client: httpx.Client) -> bool:
    """Whether the client's session opens the app (else it is sent to sign in)."""
    page = client.get("/", follow_redirects=False)
    assert page.status_code in (200, 302, 303, 307, 401), page.status_code
    return page.status_code == 200


def tab_of(client: httpx.Client) -> GradioSession:
    """A browser tab of this signed-in client: its load event has set the team choices."""
    page = GradioSession(client)
    page.ok("load", [])
    return page


# --- 1. upload on A, answer with its source on B ----------------------------------------------
def test_a_document_uploaded_on_a_is_cited_on_b(topology: Topology) -> None:
    editor = make_user(topology.issuer, ["sales-editors"], prefix="scale")
    text = f"# Orion {TAG}\n\nThe Orion {TAG} partner discount code is {CANARY}, valid in 2027.\n"
    with signed_in_client(topology.a.base_url, editor) as client:
        page = tab_of(client)
        page.ok("do_upload", [[page.upload(DOC_NAME, text)], "sales"])
        assert DOC_NAME in listed_documents(page, "sales", DOC_NAME)
    answer = ask(topology.b.base_url, topology.key("sales"), QUESTION)
    assert answer.status_code == 200, answer.text
    assert DOC_NAME in sources_of(answer), answer.json()["tenantllm"]
    # B lists it too: the registry is the shared database's.
    with signed_in_client(topology.b.base_url, editor) as client:
        assert DOC_NAME in listed_documents(tab_of(client), "sales")


# --- 2. sessions and conversations across replicas --------------------------------------------
def test_sessions_and_conversations_move_between_replicas(topology: Topology) -> None:
    member = make_user(topology.issuer, ["sales"], prefix="scale")
    with signed_in_client(topology.a.base_url, member) as on_a:
        page_a = tab_of(on_a)
        page_a.ok("switch", ["sales"])
        page_a.ok("chat_send", [QUESTION, "sales", None])
        [started] = conv.list_conversations(topology.db_url, member, "sales")
        with httpx.Client(
            base_url=topology.b.base_url, cookies=on_a.cookies, timeout=60, follow_redirects=True
        ) as on_b:
            assert signed_in(on_b)  # A's session cookie, valid on B
            page_b = tab_of(on_b)
            page_b.ok("switch", ["sales"])
            opened = page_b.ok("conversation_open", [started.id, "sales"])
            assert QUESTION in str(opened[-1]["output"]), opened[-1]
            page_b.ok("chat_send", ["Who may use that code?", "sales", None])
            kept = conv.get_conversation(topology.db_url, member, "sales", started.id)
            assert [m.role for m in kept.messages] == ["user", "assistant"] * 2
            assert kept.messages[0].content == QUESTION
            # Signing out on B ends the session everywhere (it is a row in the shared database).
            form = on_b.get("/logout", follow_redirects=False)
            token = form.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
            out = on_b.post("/logout", data={"csrf_token": token}, follow_redirects=False)
            assert out.status_code == 303, out.text[:300]
        assert not signed_in(on_a)


# --- 3. the team cap and the user rate limit hold across replicas -----------------------------
def _engine_load(vllm_url: str) -> float:
    """Requests the vLLM server is running or holding (its own gauges)."""
    text = httpx.get(f"{vllm_url}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(("vllm:num_requests_running{", "vllm:num_requests_waiting{"))
    )


def test_the_team_cap_holds_at_the_engine_across_replicas(topology: Topology) -> None:
    keys = [topology.key("sales") for _ in range(8)]
    seen: list[float] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.append(_engine_load(topology.vllm_url))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    replicas = [topology.a, topology.b] * 4
    try:
        with ThreadPoolExecutor(len(keys)) as pool:
            answers = list(
                pool.map(
                    lambda rk: ask(rk[0].base_url, rk[1], "Write a long story about the sea.",
                                   max_tokens=24),
                    zip(replicas, keys, strict=True),
                )
            )  # fmt: skip
    finally:
        done.set()
        watcher.join()
    assert [a.status_code for a in answers] == [200] * 8, [a.text[:200] for a in answers]
    # Eight at once from two replicas, yet never more than the cap at the engine.
    assert 1 <= max(seen) <= TEAM_CAP, sorted(seen)[-10:]


def test_a_user_rate_limit_is_one_budget_for_both_replicas(topology: Topology) -> None:
    key = topology.key("sales")
    codes = [
        ask(replica.base_url, key, "Hi.", max_tokens=1).status_code
        for replica in [topology.a, topology.b] * (USER_LIMIT // 2)
    ]
    assert codes == [200] * USER_LIMIT
    # The next request is over the budget whichever replica takes it.
    assert ask(topology.a.base_url, key, "Hi.", max_tokens=1).status_code == 429
    assert ask(topology.b.base_url, key, "Hi.", max_tokens=1).status_code == 429


# --- 4. a replica killed mid-stream ------------------------------------------------------------
def _stream_until_first_token(base_url: str, key: str, started: threading.Event) -> None:
    body = {"model": "sales", "max_tokens": 400, "stream": True,
            "messages": [{"role": "user", "content": "Tell a very long story."}]}  # fmt: skip
    try:
        with httpx.stream(
            "POST", f"{base_url}/v1/chat/completions", json=body, timeout=600,
            headers={"Authorization": f"Bearer {key}"},
        ) as response:  # fmt: skip
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    started.set()
    except httpx.HTTPError:
        pass  # the server died under it: expected


def test_a_replica_killed_mid_stream_loses_no_answered_audit_event(topology: Topology) -> None:
    since = datetime.now(UTC)
    key = topology.key("sales")
    answered = []
    for replica in (topology.a, topology.b, topology.a):
        answer = ask(replica.base_url, key, "Say hello.", max_tokens=4)
        assert answer.status_code == 200, answer.text
        answered.append(answer.json()["tenantllm"]["request_id"])
    started = threading.Event()
    streaming = threading.Thread(
        target=_stream_until_first_token, args=(topology.a.base_url, key, started), daemon=True
    )
    streaming.start()
    assert started.wait(300), "replica A never streamed"
    topology.a.kill()
    streaming.join(timeout=120)
    # B serves on.
    after = ask(topology.b.base_url, topology.key("sales"), "Say hello.", max_tokens=4)
    assert after.status_code == 200, after.text
    answered.append(after.json()["tenantllm"]["request_id"])
    # A comes back on its data dir: what its writer had spooled but not stored is replayed.
    topology.a.start()
    topology.a.ready()
    filters = AuditFilters(since=since, tenant_id="sales", action="api_chat")
    deadline = time.monotonic() + 120
    while True:
        stored = {r.request_id for r in wait_for_audit(topology.db_url, filters, minimum=4)}
        if set(answered) <= stored or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert set(answered) <= stored, set(answered) - stored
    verified = topology.b.cli("audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


# --- 5. the Chroma server down ------------------------------------------------------------------
def test_the_vector_store_down_is_a_clear_error_and_recovers(topology: Topology) -> None:
    since = datetime.now(UTC)
    key = topology.key("sales")
    editor = make_user(topology.issuer, ["sales-editors"], prefix="scale")
    topology.chroma.stop()
    try:
        answer = ask(topology.b.base_url, key, QUESTION)
        assert answer.status_code == 503, answer.text
        assert "document store" in answer.json()["error"]["message"].lower(), answer.text
        with signed_in_client(topology.a.base_url, editor) as client:
            page = tab_of(client)
            before = listed_documents(page, "sales")
            name = f"outage-{TAG}.md"
            page.ok("do_upload", [[page.upload(name, "Written while Chroma is down.\n")], "sales"])
            row = final_job_row(page, "sales", name)
            assert row[1] == "refused", row
            assert listed_documents(page, "sales") == before  # nothing half-written
    finally:
        topology.chroma.start()
    rows = wait_for_audit(
        topology.db_url, AuditFilters(since=since, tenant_id="sales", outcome="error")
    )
    assert any(r.status == 503 for r in rows), [(r.action, r.status, r.detail) for r in rows]
    answer = ask(topology.b.base_url, key, QUESTION)
    assert answer.status_code == 200 and DOC_NAME in sources_of(answer), answer.text


# --- 6. canaries ------------------------------------------------------------------------------
def test_the_sales_canary_never_reaches_finance_on_either_replica(topology: Topology) -> None:
    finance = topology.key("finance")
    fin_editor = make_user(topology.issuer, ["finance-editors"], prefix="scale")
    for replica in (topology.a, topology.b):
        answer = ask(replica.base_url, finance, f"{QUESTION} Quote the code {CANARY[:6]}.",
                     model="finance", max_tokens=48)  # fmt: skip
        assert answer.status_code == 200, answer.text
        assert CANARY not in answer.text and DOC_NAME not in answer.text
        assert DOC_NAME not in sources_of(answer)
        # As the model name of another team: refused, nothing of sales in the refusal.
        other = ask(replica.base_url, finance, QUESTION, model="sales")
        assert other.status_code in (403, 404), other.text
        assert CANARY not in other.text and DOC_NAME not in other.text
        with signed_in_client(replica.base_url, fin_editor) as client:
            page = tab_of(client)
            assert DOC_NAME not in listed_documents(page, "finance")
            refused = page.call("reload", ["sales"])
            assert refused[-1].get("success") is False and CANARY not in str(refused)
