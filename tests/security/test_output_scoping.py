"""Outputs are scoped, not only actions (issue 12, item 2), against the real app.

Team B (finance) gets rows of every kind, each carrying a unique canary: a document, an API
key, conversations (also one owned by a sales user, as if they had been in finance before),
and audit rows (its editor's subject starts with the canary). Then every Gradio event, every
`/v1` route and every CLI command that returns rows is called as a member or editor of team A
(sales), and the WHOLE output (every message of the event, walked recursively) must hold none
of team B's values, while team A's own rows must be there (so each test can fail both ways).

The handler table is checked against the running app's `/config` (and the API's route table,
and the CLI's command tree): a handler added later without a row here fails the suite.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.audit.auditor import AuditEvent, Auditor
from core.audit.query import AuditFilters
from core.auth import apikeys
from core.chat import conversations as conv
from core.chat import feedback
from core.config import Settings
from tests.ui_helpers import app_db_url, make_user, signed_in_client, wait_for_audit

AUDIT_ALL = ["All time", "all", "", "", "any", None]
AUDIT_FINANCE = ["All time", "finance", "", "", "any", None]


# --- a Gradio session: one session hash for several events, like one browser tab ------------
class GradioSession:
    """Events of one browser session: component state (choices, gr.State) carries over."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client
        self.session_hash = uuid.uuid4().hex[:11]
        config = client.get("/config", headers={"accept": "application/json"}).json()
        self.ids = {d["api_name"]: int(d["id"]) for d in config["dependencies"]}
        self.backend_events = {d["api_name"] for d in config["dependencies"] if d["backend_fn"]}
        self.loaded: list[dict[str, Any]] = []

    def call(self, api_name: str, data: list[Any], event_data: Any = None) -> list[dict[str, Any]]:
        """Every message the event sent (progress, partial outputs, the final one)."""
        joined = self.client.post(
            "/gradio_api/queue/join",
            json={"data": data, "fn_index": self.ids[api_name], "session_hash": self.session_hash,
                  "event_data": event_data, "trigger_id": None},
        )  # fmt: skip
        joined.raise_for_status()
        event_id = joined.json()["event_id"]
        messages: list[dict[str, Any]] = []
        params = {"session_hash": self.session_hash}
        with self.client.stream("GET", "/gradio_api/queue/data", params=params) as stream:
            for line in stream.iter_lines():
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[5:])
                if message.get("event_id") not in (None, event_id):
                    continue
                messages.append(message)
                if message.get("msg") == "process_completed":
                    return messages
        raise AssertionError(f"{api_name} never completed: {messages}")

    def ok(self, api_name: str, data: list[Any], event_data: Any = None) -> list[dict[str, Any]]:
        """`call`, asserting the event succeeded."""
        messages = self.call(api_name, data, event_data)
        assert messages[-1].get("success") is True, messages[-1]
        return messages

    def upload(self, name: str, text: str) -> dict[str, Any]:
        """A file sent to Gradio's upload route, as the File component does."""
        answer = self.client.post(
            "/gradio_api/upload", files={"files": (name, text.encode("utf-8"), "text/plain")}
        )
        answer.raise_for_status()
        return {"path": answer.json()[0], "orig_name": name, "meta": {"_type": "gradio.FileData"}}


def final_data(messages: list[dict[str, Any]]) -> list[Any]:
    """The outputs of the final message."""
    return list(messages[-1]["output"]["data"])


def strings(value: Any) -> Iterator[str]:
    """Every string (keys too) and number anywhere in a JSON value."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from strings(item)
    elif value is not None:
        yield str(value)


def assert_scoped(output: Any, own: list[str], foreign: list[str]) -> None:
    """None of `foreign` anywhere in `output`; all of `own` somewhere in it."""
    values = list(strings(output))
    blob = "\n".join(values).lower()
    # A numeric id (a conversation's or a message's) is a whole value, never a digit run
    # inside a timing such as Gradio's `duration`.
    exact = {v.strip().lower() for v in values}
    leaked = [f for f in foreign if (f in exact if f.isdigit() else f.lower() in blob)]
    assert not leaked, f"team B's values reached a team A caller: {leaked}"
    missing = [o for o in own if o.lower() not in blob]
    assert not missing, f"team A's own rows are missing: {missing}\n{blob[:2000]}"


# --- the rows of both teams ---------------------------------------------------------------
@dataclass
class World:
    """Users of both teams and the ids of their rows."""

    base_url: str
    db: str
    sales: str  # the sales canary
    fin: str  # the finance canary
    users: dict[str, str] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)

    def foreign(self) -> list[str]:
        """Every value of team B that a team A caller must never receive."""
        keys = ("fin_key", "fin_doc", "fin_conv", "fin_conv_mine", "fin_editor")
        return [self.fin, *(self.ids[k] for k in keys)]

    @contextmanager
    def session(self, who: str) -> Iterator[GradioSession]:
        """A signed-in Gradio session of one of the world's users, page already loaded."""
        with signed_in_client(self.base_url, self.users[who]) as client:
            session = GradioSession(client)
            session.loaded = session.ok("load", [])
            yield session


def listed_documents(session: GradioSession, team: str, *wanted: str) -> dict[str, str]:
    """filename -> document id, from the Documents tab's list (once `wanted` are indexed:
    uploads are indexed in the background)."""
    deadline = time.monotonic() + 300
    while True:
        picker = final_data(session.ok("reload", [team]))[1]
        docs = {name: doc_id for name, doc_id in picker["choices"]}
        if all(w in docs for w in wanted) or time.monotonic() > deadline:
            return docs
        time.sleep(0.5)


def final_job_row(session: GradioSession, team: str, filename: str) -> list[Any]:
    """The file's row in the Documents tab's results once its job has ended (polled as the
    page's timer does)."""
    deadline = time.monotonic() + 300
    while True:
        results = final_data(session.ok("docs_jobs_tick", [team, ""]))[0]["data"]
        [row] = [r for r in results if r[0] == filename]
        if row[1] not in {"queued", "running"} or time.monotonic() > deadline:
            return list(row)
        time.sleep(0.5)


def _new_key(session: GradioSession, team: str) -> tuple[str, str]:
    """(id, secret) of a new key of `team`, made through the Admin tab's event."""
    secret = final_data(session.ok("admin_create_key", [team, "member", 30]))[0]
    assert secret.startswith("tlm_"), secret
    return str(secret.split("_")[1]), str(secret)


def _team_rows(world: World, who: str, team: str, canary: str, prefix: str) -> None:
    with world.session(who) as session:
        files = [session.upload(f"{canary}-{n}.txt", f"{canary} {n} notes.") for n in ("a", "b")]
        session.ok("do_upload", [files, team])
        docs = listed_documents(session, team, f"{canary}-a.txt", f"{canary}-b.txt")
        world.ids[f"{prefix}_doc"] = docs[f"{canary}-a.txt"]
        world.ids[f"{prefix}_doc_spare"] = docs[f"{canary}-b.txt"]
        world.ids[f"{prefix}_key"], world.ids[f"{prefix}_secret"] = _new_key(session, team)


def _conversations(world: World) -> None:
    db, member = world.db, world.users["sales_member"]
    sales = conv.create_conversation(db, member, "sales", f"{world.sales} chat")
    conv.append_messages(db, member, "sales", sales, [conv.StoredMessage("user", world.sales)])
    world.ids["sales_conv"] = sales
    world.ids["sales_conv_spare"] = conv.create_conversation(db, member, "sales", "spare")
    # The same user's conversation in finance: only the tenant filter keeps it out.
    world.ids["fin_conv_mine"] = conv.create_conversation(db, member, "finance", f"{world.fin} x")
    fin_owner = world.users["fin_editor"]
    world.ids["fin_conv"] = conv.create_conversation(db, fin_owner, "finance", f"{world.fin} y")


def _budgets(app_server: Any, world: World) -> None:
    # Generous (no other test comes near them), so that each team's allowance line has numbers;
    # finance's member budget names the finance editor, whose id is one of team B's values.
    for args in (
        ["--tenant", "sales", "--daily", "90000000"],
        ["--tenant", "finance", "--daily", "80000000"],
        ["--tenant", "finance", "--daily", "70000000", "--user", world.ids["fin_editor"]],
    ):
        done = app_server.cli("budgets", "set", *args)
        assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def world(app_server) -> World:
    """Both teams' rows, made through the real app by their own editors."""
    sales, fin = f"salescanary{uuid.uuid4().hex[:8]}", f"fincanary{uuid.uuid4().hex[:8]}"
    w = World(app_server.base_url, app_db_url(app_server.data_dir), sales, fin)
    issuer = app_server.issuer
    w.users = {
        "sales_member": make_user(issuer, ["sales"], prefix="salesmember"),
        "sales_editor": make_user(issuer, ["sales-editors"], prefix=sales),
        "fin_editor": make_user(issuer, ["finance-editors"], prefix=fin),
        "auditor": make_user(issuer, ["auditors"], prefix="auditor"),
        "admin": make_user(issuer, ["admins"], prefix="admin"),
        "sales_admin": make_user(issuer, ["sales-admins"], prefix="salesadmin"),
    }
    w.ids["fin_editor"] = w.users["fin_editor"]
    _team_rows(w, "sales_editor", "sales", sales, "sales")
    _team_rows(w, "fin_editor", "finance", fin, "fin")
    _conversations(w)
    _budgets(app_server, w)
    _usage_rows(w)
    # Team B's audit rows are stored before any audit handler is called.
    assert wait_for_audit(w.db, AuditFilters(user=w.users["fin_editor"], action="ui_create_key"))
    return w


# --- Gradio events: one scenario per event of the running app -----------------------------
Scenario = Callable[[World], None]


def _open_sales(s: GradioSession, w: World, conversation: str = "sales_conv") -> Any:
    s.ok("switch", ["sales"])  # sets this session's conversation choices, as the page does
    return s.ok("conversation_open", [w.ids[conversation], "sales"])


def scenario_load(w: World) -> None:
    with w.session("sales_member") as s:
        out = s.loaded
    # A sales member's page knows nothing of finance, not even that it is a choice.
    assert_scoped(out, ["sales", w.users["sales_member"]], [*w.foreign(), "finance"])


def scenario_switch(w: World) -> None:
    with w.session("sales_member") as s:
        out = s.ok("switch", ["sales"])
    assert_scoped(out, [w.ids["sales_conv"], w.sales], w.foreign())


def scenario_open(w: World) -> None:
    with w.session("sales_member") as s:
        out = _open_sales(s, w)
    # The conversation id goes to a gr.State (kept on the server): the messages are the proof.
    assert_scoped(out, [w.sales], w.foreign())


def scenario_send(api_name: str) -> Scenario:
    def run(w: World) -> None:
        with w.session("sales_member") as s:
            _open_sales(s, w)
            out = s.ok(api_name, ["Say hello.", "sales", None])
        # The history shown is the open conversation's (its message is the sales canary).
        assert_scoped(out, [w.sales, w.ids["sales_conv"]], w.foreign())

    return run


def scenario_rename(w: World) -> None:
    with w.session("sales_member") as s:
        _open_sales(s, w)
        out = s.ok("rename", [None, "sales", f"{w.sales} chat renamed"])
    assert_scoped(out, [f"{w.sales} chat renamed", w.ids["sales_conv"]], w.foreign())


def scenario_delete(w: World) -> None:
    with w.session("sales_member") as s:
        _open_sales(s, w, "sales_conv_spare")
        out = s.ok("delete", [None, "sales"])
    assert_scoped(out, [w.ids["sales_conv"]], [*w.foreign(), w.ids["sales_conv_spare"]])


def scenario_constant(api_name: str, who: str, inputs: list[Any]) -> Scenario:
    """Events whose function returns constants (no rows): still nothing of team B."""

    def run(w: World) -> None:
        with w.session(who) as s:
            out = s.ok(api_name, inputs)
        assert_scoped(out, [], w.foreign())

    return run


def scenario_reload(w: World) -> None:
    with w.session("sales_member") as s:
        out = s.ok("reload", ["sales"])
    assert_scoped(out, [f"{w.sales}-a.txt", w.ids["sales_doc"]], w.foreign())


def scenario_upload(w: World) -> None:
    with w.session("sales_editor") as s:
        out = s.ok("do_upload", [[s.upload(f"{w.sales}-c.txt", f"{w.sales} c.")], "sales"])
    assert_scoped(out, [f"{w.sales}-c.txt", f"{w.sales}-a.txt", w.ids["sales_doc"]], w.foreign())


def scenario_jobs_tick(w: World) -> None:
    """The indexing progress poll: the team's own upload jobs; another team's is refused."""
    with w.session("sales_member") as s:
        own = s.ok("docs_jobs_tick", ["sales", ""])
        refused = s.call("docs_jobs_tick", ["finance", ""])
    assert_scoped(own, [f"{w.sales}-a.txt", "ready for answers"], w.foreign())
    assert refused[-1].get("success") is False, refused[-1]
    assert_scoped(refused, [], [*w.foreign(), "ready for answers"])


def scenario_pick(w: World) -> None:
    with w.session("sales_editor") as s:
        s.ok("reload", ["sales"])
        out = s.ok("pick", [w.ids["sales_doc"], "sales"])
    assert_scoped(out, [w.sales], w.foreign())  # the name is shown markdown-escaped


def scenario_confirm(w: World) -> None:
    with w.session("sales_editor") as s:
        s.ok("reload", ["sales"])
        out = s.ok("confirm", [w.ids["sales_doc_spare"], "sales"])
    assert_scoped(out, [f"{w.sales}-a.txt", w.ids["sales_doc"]], w.foreign())


def _exported(s: GradioSession, out: list[dict[str, Any]]) -> str:
    """The text of the CSV file an export event returned."""
    update = final_data(out)[0]
    answer = s.client.get(update["value"]["url"])
    answer.raise_for_status()
    return answer.text


def scenario_audit(api_name: str, with_page: bool = True) -> Scenario:
    """The audit log: refused to a sales editor; an auditor gets exactly the team asked for."""

    def run(w: World) -> None:
        shape: Callable[[list[Any]], list[Any]] = (lambda d: d) if with_page else (lambda d: d[:-1])
        with w.session("sales_editor") as s:
            for data in (AUDIT_ALL, AUDIT_FINANCE):
                out = s.call(api_name, shape(data))
                assert out[-1].get("success") is False, out[-1]
                assert_scoped(out, ["auditors and admins"], w.foreign())
        with w.session("auditor") as s:
            out = s.ok(api_name, shape(AUDIT_FINANCE))
            shown = out if with_page else [_exported(s, out)]
        assert_scoped(shown, [w.fin], [w.sales])
        _team_admin_audit(w, api_name, shape(AUDIT_ALL), shape(AUDIT_FINANCE), with_page)

    return run


def _teams_in(s: GradioSession, out: list[dict[str, Any]], with_page: bool) -> set[str]:
    """The team column of every row an audit or usage event returned (table or CSV)."""
    if not with_page:
        lines = csv.DictReader(io.StringIO(_exported(s, out)))
        return {row.get("team", row.get("tenant_id")) or "-" for row in lines}
    # The first table among the outputs (the Usage tab's chart comes before its table).
    table = next(v for v in final_data(out) if isinstance(v, dict) and "headers" in v)
    column = table["headers"].index("team")
    return {row[column] for row in table["data"]}


def _team_admin_audit(
    w: World, api_name: str, every: list[Any], finance: list[Any], with_page: bool
) -> None:
    """A sales team admin: sales rows only, for 'All teams' too (no global row, shown as the
    dash); finance refused, naming none of its values."""
    with w.session("sales_admin") as s:
        out = s.ok(api_name, every)
        teams = _teams_in(s, out, with_page)
        shown = out if with_page else [_exported(s, out)]
        refused = s.call(api_name, finance)
    assert teams == {"sales"}, teams
    assert_scoped(shown, [w.sales], w.foreign())
    assert refused[-1].get("success") is False, refused[-1]
    assert_scoped(refused, ["audit log of the team 'finance'"], w.foreign())


def scenario_admin_view(api_name: str) -> Scenario:
    """The Admin tab's overview: refused to a sales editor; an admin sees every team's keys."""

    def run(w: World) -> None:
        with w.session("sales_editor") as s:
            out = s.call(api_name, [])
        assert out[-1].get("success") is False, out[-1]
        assert_scoped(out, ["admins"], w.foreign())
        with w.session("admin") as s:
            out = s.ok(api_name, [])
        assert_scoped(out, [w.ids["sales_key"], w.ids["fin_key"]], [])

    return run


def scenario_create_key(w: World) -> None:
    # The reproduced hole: allowed for a sales editor on sales, it answered every team's keys.
    with w.session("sales_editor") as s:
        out = s.ok("admin_create_key", ["sales", "member", 30])
    assert_scoped(out, ["tlm_", w.ids["sales_key"]], w.foreign())
    with w.session("admin") as s:
        out = s.ok("admin_create_key", ["sales", "member", 30])
    assert_scoped(out, [w.ids["sales_key"], w.ids["fin_key"]], [])


def _key_revoked(w: World, key_id: str) -> bool:
    [key] = [k for k in apikeys.list_keys(Settings(database_url=w.db)) if k.id == key_id]
    return key.revoked_at is not None


def scenario_revoke_key(w: World) -> None:
    with w.session("sales_editor") as s:
        spare, _ = _new_key(s, "sales")
        out = s.ok("admin_revoke_key", [spare])
        assert_scoped(out, [w.ids["sales_key"], spare], w.foreign())
        # Another team's key: refused like an unknown id, and it still works.
        refused = s.call("admin_revoke_key", [w.ids["fin_key"]])
    assert refused[-1].get("success") is False, refused[-1]
    assert "No API key" in str(refused[-1]["output"])
    assert_scoped(refused, [], [w.fin, w.ids["fin_doc"], w.ids["fin_editor"], "finance"])
    assert _key_revoked(w, spare) and not _key_revoked(w, w.ids["fin_key"])


def scenario_allowance(api_name: str) -> Scenario:
    """The budget line under the chat: the caller's team only; another team's is refused."""

    def run(w: World) -> None:
        with w.session("sales_member") as s:
            own = s.ok(api_name, ["sales"])
            refused = s.call(api_name, ["finance"])
        assert_scoped(own, ["Sales: ", "tokens left today"], [*w.foreign(), "finance"])
        assert refused[-1].get("success") is False, refused[-1]
        assert_scoped(refused, [], [*w.foreign(), "tokens left"])

    return run


def _rated_answers(w: World) -> None:
    """Once: an answer of each team citing that team's document, rated down by its owner."""
    if "sales_answer_conv" in w.ids:
        return
    for prefix, team, who in (("sales", "sales", "sales_member"), ("fin", "finance", "fin_editor")):
        owner, doc = w.users[who], w.ids[f"{prefix}_doc"]
        canary = w.sales if prefix == "sales" else w.fin
        cited = {"document_id": doc, "filename": f"{canary}-a.txt", "location": "part 1",
                 "snippet": f"{canary} a notes.", "score": 1.0}  # fmt: skip
        cid = conv.create_conversation(w.db, owner, team, f"{canary} rated")
        exchange = [conv.StoredMessage("user", f"{canary}?"),
                    conv.StoredMessage("assistant", f"{canary} answer", [cited])]  # fmt: skip
        conv.append_messages(w.db, owner, team, cid, exchange)
        [answer] = [m for m in conv.get_conversation(w.db, owner, team, cid).messages if m.id
                    and m.role == "assistant"]  # fmt: skip
        feedback.rate_answer(w.db, owner, team, cid, int(answer.id or 0), "down")
        w.ids[f"{prefix}_answer_conv"], w.ids[f"{prefix}_answer"] = cid, str(answer.id)


def _open_rated(s: GradioSession, w: World) -> None:
    _rated_answers(w)
    s.ok("switch", ["sales"])
    s.ok("conversation_open", [w.ids["sales_answer_conv"], "sales"])


DISLIKE = {"index": 1, "value": ["answer"], "liked": False}


def scenario_feedback(w: World) -> None:
    with w.session("sales_member") as s:
        _open_rated(s, w)
        out = s.ok("chat_feedback", [None, "sales"], DISLIKE)
        # The same user's conversation in finance cannot be opened from sales, so not rated.
        refused = s.call("conversation_open", [w.ids["fin_conv_mine"], "sales"])
    # The rated answer's id goes to a gr.State, which Gradio keeps on the server: what comes
    # back is the comment box of a thumbs-down (its id matched only when a timing held it).
    assert_scoped(out, ["what was wrong with this answer"], w.foreign())
    assert refused[-1].get("success") is False, refused[-1]
    # Gradio's refusal names the id it was sent (not in this session's choices): nothing more.
    assert_scoped(refused, [], [w.fin])


def scenario_sources(api_name: str) -> Scenario:
    """The sources of the open conversation's last answer: the team's own document only."""

    def run(w: World) -> None:
        with w.session("sales_member") as s:
            _open_rated(s, w)
            out = s.ok(api_name, [None, "sales"])
        assert_scoped(out, [f"{w.sales}-a.txt"], w.foreign())

    return run


def _forged_answer(w: World) -> str:
    """A sales member's sales conversation whose answer cites finance's document (as if a
    stored source had been tampered with): opening it must show nothing of finance's."""
    owner = w.users["sales_member"]
    cited = {"document_id": w.ids["fin_doc"], "filename": "forged.txt", "location": "part 1",
             "snippet": f"{w.fin} a notes.", "score": 1.0}  # fmt: skip
    cid = conv.create_conversation(w.db, owner, "sales", "forged source")
    exchange = [conv.StoredMessage("user", "notes?"),
                conv.StoredMessage("assistant", "answer", [cited])]  # fmt: skip
    conv.append_messages(w.db, owner, "sales", cid, exchange)
    return cid


def scenario_source_open(w: World) -> None:
    with w.session("sales_member") as s:
        _open_rated(s, w)
        [choices] = final_data(s.ok("sources_list", [None, "sales"]))
        choice = choices["choices"][0][1]
        out = s.ok("source_open", [choice, None, "sales"])
        # Asked in another team: refused before any document is looked up.
        other_team = s.call("source_open", [choice, None, "finance"])
        forged_id = _forged_answer(w)
        s.ok("switch", ["sales"])  # lists it among this session's conversations
        s.ok("conversation_open", [forged_id, "sales"])
        [forged] = final_data(s.ok("sources_list", [None, "sales"]))
        refused = s.call("source_open", [forged["choices"][0][1], None, "sales"])
    # The passage of the cited chunk, the question's word (the canary) highlighted.
    assert_scoped(out, [f"<mark>{w.sales}</mark> a notes", f"{w.sales}-a.txt"], w.foreign())
    assert other_team[-1].get("success") is False, other_team[-1]
    assert_scoped(other_team, [], w.foreign())
    assert refused[-1].get("success") is False, refused[-1]
    assert_scoped(refused, ["not among your team's documents"], w.foreign())


def scenario_feedback_comment(w: World) -> None:
    with w.session("sales_member") as s:
        _open_rated(s, w)
        s.ok("chat_feedback", [None, "sales"], DISLIKE)
        out = s.ok("chat_feedback_comment", [None, "sales", None, "outdated"])
    assert_scoped(out, [], w.foreign())


def scenario_export(w: World) -> None:
    with w.session("sales_member") as s:
        _open_rated(s, w)
        out = s.ok("conversation_export", [None, "sales", "json"])
        shown = _exported(s, out)
    assert_scoped(shown, [w.sales, f"{w.sales}-a.txt", w.ids["sales_doc"]], w.foreign())


def scenario_feedback_table(api_name: str) -> Scenario:
    """Per-document ratings: nothing for a sales member; an admin gets the team asked for."""

    def run(w: World) -> None:
        _rated_answers(w)
        with w.session("sales_member") as s:
            hidden = s.ok(api_name, ["sales"])
        assert_scoped(hidden, [], [*w.foreign(), f"{w.sales}-a.txt"])
        with w.session("admin") as s:
            out = s.ok(api_name, ["sales"])
        assert_scoped(out, [f"{w.sales}-a.txt"], w.foreign())

    return run


def scenario_retention(api_name: str, data: list[Any]) -> Scenario:
    """Retention: refused to a sales editor; an admin gets every team's policy (configuration)."""

    def run(w: World) -> None:
        with w.session("sales_editor") as s:
            out = s.call(api_name, data)
        assert out[-1].get("success") is False, out[-1]
        assert_scoped(out, ["admins"], w.foreign())
        with w.session("admin") as s:
            out = s.ok(api_name, data)
        assert_scoped(out, ["sales", "finance"], [w.fin, w.ids["fin_doc"], w.ids["fin_editor"]])

    return run


def _usage_rows(w: World) -> None:
    """A chat turn's audit row in each team (tokens set): the Usage tab's rows. Written by a
    second writer on the app's database, as another replica would (the chain stays one)."""
    settings = Settings(data_dir=Path(tempfile.mkdtemp()), database_url=w.db)
    auditor = Auditor(settings)
    for who, team in (("sales_member", "sales"), ("fin_editor", "finance")):
        auditor.record(
            AuditEvent(action="chat", outcome="ok", user_sub=w.users[who], tenant_id=team,
                       user_email=f"{w.users[who]}@example.com", tokens_in=12, tokens_out=5)
        )  # fmt: skip
    auditor.close()
    w.ids["sales_member"] = w.users["sales_member"]


USAGE_SALES = ["Last 30 days", "user", "all"]
USAGE_FINANCE = ["Last 30 days", "user", "finance"]


def scenario_usage(api_name: str, with_page: bool = True) -> Scenario:
    """Usage: refused to a sales editor; a sales team admin gets sales only (finance refused);
    an admin gets both teams."""

    def run(w: World) -> None:
        with w.session("sales_editor") as s:
            out = s.call(api_name, USAGE_SALES)
        assert out[-1].get("success") is False, out[-1]
        assert_scoped(out, ["admins and team admins"], w.foreign())
        with w.session("sales_admin") as s:
            out = s.ok(api_name, USAGE_SALES)
            assert _teams_in(s, out, with_page) == {"sales"}
            shown = out if with_page else [_exported(s, out)]
            refused = s.call(api_name, USAGE_FINANCE)
        assert_scoped(shown, [w.users["sales_member"]], [*w.foreign(), "finance"])
        assert refused[-1].get("success") is False, refused[-1]
        assert_scoped(refused, ["usage of the team 'finance'"], w.foreign())
        with w.session("admin") as s:
            out = s.ok(api_name, USAGE_SALES)
            shown = out if with_page else [_exported(s, out)]
        assert_scoped(shown, [w.users["sales_member"], w.ids["fin_editor"]], [])

    return run


def scenario_usage_budget(w: World) -> None:
    """Member budgets: refused to a sales editor; a sales team admin sets a sales member's,
    under the team's budget, and gets sales rows only; finance is refused; an admin sets any."""
    member, fin_editor = w.users["sales_member"], w.ids["fin_editor"]
    with w.session("sales_editor") as s:
        out = s.call("usage_set_budget", ["sales", member, "1000", ""])
    assert out[-1].get("success") is False, out[-1]
    assert_scoped(out, ["member budgets of the team 'sales'"], w.foreign())
    with w.session("sales_admin") as s:
        out = s.ok("usage_set_budget", ["sales", member, "1000", ""])
        over = s.call("usage_set_budget", ["sales", member, "95000000", ""])
        refused = s.call("usage_set_budget", ["finance", fin_editor, "1", ""])
    assert_scoped(out, [member, "90000000"], [*w.foreign(), "80000000", "70000000"])
    assert over[-1].get("success") is False and "90,000,000" in str(over[-1]), over[-1]
    assert refused[-1].get("success") is False, refused[-1]
    assert_scoped(refused, ["member budgets of the team 'finance'"], w.foreign())
    with w.session("admin") as s:
        out = s.ok("usage_set_budget", ["finance", fin_editor, "70000000", ""])
    assert_scoped(out, [fin_editor, "80000000"], [member, "90000000"])


HANDLERS: dict[str, Scenario] = {
    "load": scenario_load,
    # Chat tab (a sales member)
    "chat_send": scenario_send("chat_send"),
    "chat_send_btn": scenario_send("chat_send_btn"),
    "chat_stop": scenario_constant("chat_stop", "sales_member", []),  # Stop: the idle label
    "chat_allowance": scenario_allowance("chat_allowance"),
    "chat_allowance_after_send": scenario_allowance("chat_allowance_after_send"),
    "chat_allowance_after_btn": scenario_allowance("chat_allowance_after_btn"),
    "conversation_open": scenario_open,
    "switch": scenario_switch,
    "conversation_new": scenario_constant("conversation_new", "sales_member", []),
    "rename": scenario_rename,
    "delete": scenario_delete,
    # Feedback and export (core/ui/feedback.py, core/ui/feedback_panel.py)
    "chat_feedback": scenario_feedback,
    "chat_feedback_comment": scenario_feedback_comment,
    "conversation_export": scenario_export,
    # Sources a person can check (core/ui/citations.py)
    "sources_after_send": scenario_sources("sources_after_send"),
    "sources_after_btn": scenario_sources("sources_after_btn"),
    "sources_list": scenario_sources("sources_list"),
    "source_open": scenario_source_open,
    "feedback_by_document": scenario_feedback_table("feedback_by_document"),
    "feedback_refresh": scenario_feedback_table("feedback_refresh"),
    # Documents tab (a sales member reads, a sales editor changes)
    "reload": scenario_reload,
    "do_upload": scenario_upload,
    "docs_jobs_tick": scenario_jobs_tick,
    "pick": scenario_pick,
    "confirm": scenario_confirm,
    "delete_cancel": scenario_constant("delete_cancel", "sales_editor", []),
    # Audit tab
    "audit_query": scenario_audit("audit_query"),
    "audit_prev_page": scenario_constant("audit_prev_page", "sales_editor", [None]),
    "audit_show_prev": scenario_audit("audit_show_prev"),
    "audit_next_page": scenario_constant("audit_next_page", "sales_editor", [None]),
    "audit_show_next": scenario_audit("audit_show_next"),
    "audit_export": scenario_audit("audit_export", with_page=False),
    "audit_tab_open": scenario_audit("audit_tab_open"),
    # Admin tab
    "admin_overview": scenario_admin_view("admin_overview"),
    "admin_tab_open": scenario_admin_view("admin_tab_open"),
    # Usage tab (admins; team admins for their team)
    "usage_query": scenario_usage("usage_query"),
    "usage_export": scenario_usage("usage_export", with_page=False),
    "usage_tab_open": scenario_usage("usage_tab_open"),
    "usage_set_budget": scenario_usage_budget,
    "admin_create_key": scenario_create_key,
    "admin_revoke_key": scenario_revoke_key,
    "retention_show": scenario_retention("retention_show", []),
    "retention_save": scenario_retention("retention_save", ["development", "default", ""]),
}


def test_every_gradio_event_has_a_scenario(world: World) -> None:
    """The table covers exactly the events of the running app that run a function."""
    with world.session("sales_member") as s:
        events = s.backend_events
    assert events == set(HANDLERS), (
        f"events without a scenario: {sorted(events - set(HANDLERS))}; "
        f"scenarios of events that are gone: {sorted(set(HANDLERS) - events)}"
    )


@pytest.mark.parametrize("api_name", list(HANDLERS))
def test_gradio_event_returns_only_the_callers_team(world: World, api_name: str) -> None:
    HANDLERS[api_name](world)


# --- the OpenAI-compatible API, as a sales API key ----------------------------------------
def _api(w: World, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {w.ids['sales_secret']}"}
    return httpx.request(method, w.base_url + path, json=body, headers=headers, timeout=300)


def api_models(w: World) -> None:
    answer = _api(w, "GET", "/v1/models")
    assert answer.status_code == 200, answer.text
    assert [m["id"] for m in answer.json()["data"]] == ["sales"]
    assert_scoped(answer.json(), ["sales"], w.foreign())


def api_model(w: World) -> None:
    own = _api(w, "GET", "/v1/models/sales")
    assert own.status_code == 200 and own.json()["id"] == "sales", own.text
    other = _api(w, "GET", "/v1/models/finance")
    assert other.status_code == 403, other.text
    assert_scoped(other.json(), [], [*w.foreign(), "budgets"])  # not finance's description


def _ask(w: World, model: str) -> httpx.Response:
    question = f"What do the {w.sales} notes say?"
    body = {"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": 8}
    return _api(w, "POST", "/v1/chat/completions", body)


def api_chat(w: World) -> None:
    answer = _ask(w, "sales")
    assert answer.status_code == 200, answer.text
    # The sales canary is in the question too: the positive is read from the sources only.
    assert_scoped(answer.json()["tenantllm"]["sources"], [f"{w.sales}-"], [])
    assert_scoped(answer.json(), [], w.foreign())
    other = _ask(w, "finance")
    assert other.status_code == 403, other.text
    assert_scoped(other.json(), [], w.foreign())


API_ROUTES: dict[tuple[str, str], Scenario] = {
    ("GET", "/v1/models"): api_models,
    ("GET", "/v1/models/{model}"): api_model,
    ("POST", "/v1/chat/completions"): api_chat,
}


def test_every_api_route_has_a_scenario() -> None:
    from core.api.routes import router

    routes = {(m, r.path) for r in router.routes for m in getattr(r, "methods", None) or ()}
    routes -= {("HEAD", path) for _, path in routes}  # Starlette's automatic HEAD for GET
    assert routes == set(API_ROUTES)


@pytest.mark.parametrize("route", list(API_ROUTES), ids=" ".join)
def test_api_route_returns_only_the_callers_team(world: World, route: tuple[str, str]) -> None:
    API_ROUTES[route](world)


# --- CLI commands (the operator on the server asks for one team) --------------------------
CLI_ROWS: dict[str, tuple[list[str], str]] = {
    # command -> (arguments for team sales, the sales value that must be in the output)
    "keys list": (["keys", "list", "--tenant", "sales", "--json"], "sales_key"),
    "docs": (["docs", "--tenant", "sales", "--json"], "sales_doc"),
    "audit list": (["audit", "list", "--tenant", "sales", "--json", "--limit", "1000"], "sales"),
    "audit export": (["audit", "export", "--tenant", "sales"], "sales"),
    "usage": (["usage", "--tenant", "sales", "--by", "user", "--json"], "sales_member"),
}
# Commands that print no team's rows, or only rows of what they were just given.
CLI_NO_ROWS = {
    "serve": "starts the server",
    # Whole-install operator commands (like db upgrade): counts only, never a team's content;
    # that teams stay apart after a restore is tests/test_backup.py's _check_restored.
    "backup": "row and file counts of the archive it wrote",
    "restore": "row and file counts, the chain verdict",
    "migrate": "row counts, originals, vectors per team: test_cli_migrates_sqlite_into_postgres",
    "db upgrade": "migrates the schema",
    "tenants": "the team registry (no team's data)",
    "ingest": "outcomes of the files it was given",
    "rm": "the one document named (NotFound outside --tenant)",
    "reindex": "a chunk count",
    "keys create": "the key it made",
    "keys revoke": "the key it revoked",
    "audit verify": "the chain's head hash",
    # Its sources come from the same knowledge.retrieve(tenant) as the API's (api_chat); it
    # starts its own engine, minutes on this machine beside the app's.
    "ask": "one answer from --tenant's documents",
    "budgets set": "the budget it set",
    "budgets show": "budget rows, not documents: test_budgets_show_of_one_team_names_no_other",
    "eval": "--tenant's retrieval on a question file: test_cli_eval_reads_only_the_asked_team",
    # Operator-level, every team's rows by design (sinks are the SIEM's feed): it prints cursor
    # names and counts, never a row; tests/siem/test_cli.py checks what it prints.
    "siem status": "cursor positions and lag per sink, no audit row",
    "siem deliver": "sends rows to the configured sinks, prints counts per sink",
    "fairness set": "the weight it set (configuration, no team's rows)",
    "fairness show": "each team's weight: configuration, no team's rows",
    "retention set": "the policy it set (configuration, no team's rows)",
    "retention show": "policies per team: configuration, no team's rows",
    "retention run": "counts of what it removed, per team with a policy",
    # A team's adapters (versions, never training data); the world has none, so the cross-team
    # check is tests/test_adapters.py's test_another_team_can_neither_see_nor_touch_the_adapter.
    "adapters train": "the version it trained for --tenant",
    "adapters list": "--tenant's versions only: test_another_team_can_neither_see_nor_touch_...",
    "adapters activate": "the version it activated (another team's number is refused)",
    "adapters remove": "the version it removed (another team's number is refused)",
}


def _cli_commands(group: Any, prefix: str = "") -> set[str]:
    found: set[str] = set()
    for name, command in group.commands.items():
        full = f"{prefix}{name}"
        found |= _cli_commands(command, f"{full} ") if hasattr(command, "commands") else {full}
    return found


def test_every_cli_command_is_classified() -> None:
    from core.cli import main

    assert _cli_commands(main) == set(CLI_ROWS) | set(CLI_NO_ROWS)


@pytest.mark.parametrize("command", list(CLI_ROWS))
def test_cli_command_returns_only_the_asked_team(app_server, world: World, command: str) -> None:
    args, own = CLI_ROWS[command]
    done = app_server.cli(*args)
    assert done.returncode == 0, done.stderr
    own_value = world.sales if own == "sales" else world.ids[own]
    assert_scoped(done.stdout, [own_value], world.foreign())


def test_budgets_show_of_one_team_names_no_other(app_server, world: World) -> None:
    done = app_server.cli("budgets", "show", "--tenant", "sales", "--json")
    assert done.returncode == 0, done.stderr
    assert_scoped(done.stdout, ["sales", "90000000"], [*world.foreign(), "finance", "80000000"])


def test_cli_eval_reads_only_the_asked_team(app_server, world: World, tmp_path) -> None:
    """Questions naming team B's canary, asked of team A, retrieve only team A's documents."""
    questions = tmp_path / "questions.jsonl"
    lines = [
        {"id": "own", "question": f"{world.sales} notes", "source": f"{world.sales}-a.txt"},
        {"id": "foreign", "question": f"{world.fin} notes", "source": f"{world.fin}-a.txt"},
    ]
    questions.write_text("".join(json.dumps(line) + "\n" for line in lines))
    report = tmp_path / "report.json"
    done = app_server.cli("eval", "--tenant", "sales", str(questions), "--json", str(report))
    assert done.returncode == 0, done.stderr
    # What was retrieved (the question file itself names team B's file as expected).
    retrieved = [r["retrieved"] for r in json.loads(report.read_text())["results"]]
    assert_scoped(retrieved, [f"{world.sales}-a.txt"], [world.fin])
