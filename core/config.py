"""Settings: one pydantic-settings class, read from `TENANTLLM_*` variables and `.env`.

Nothing here runs at import time: call `get_settings()` (cached) when a value is needed.
Every field is documented in the README's "Settings" table (a test checks it).
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

from limits import parse
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.errors import ConfigError

# Values that must never be used outside development mode.
DEV_PLACEHOLDER_SECRET = "dev-insecure-change-me"  # noqa: S105
DEV_CLIENT_SECRET = "tenantllm-secret"  # noqa: S105  (the demo IdP's client secret)
MIN_SECRET_LENGTH = 32
# Audit actions of an operator or admin (core/cli/keys.py, budgets.py, ui/admin_tab.py).
DEFAULT_ADMIN_ACTIONS = (
    "budget_set",
    "ui_create_key",
    "ui_revoke_key",
    "api_key_create",
    "api_key_revoke",
    "audit_export",
)
_ORIGIN_RE = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?/?")


class Settings(BaseSettings):
    """All configuration of one tenantllm deployment."""

    model_config = SettingsConfigDict(
        env_prefix="TENANTLLM_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="forbid",
        validate_default=True,
    )

    # --- general -------------------------------------------------------------------------
    mode: Literal["development", "production"] = Field(
        "development",
        description="`production` refuses placeholder secrets and sets Secure cookies.",
    )
    data_dir: Path = Field(Path("./data"), description="Where all local state lives.")
    host: str = Field("127.0.0.1", description="Address the web server binds to.")
    port: int = Field(7860, ge=1, le=65535, description="Port the web server listens on.")
    public_url: str = Field(
        "",
        description="External base URL (for OIDC redirects behind a proxy); default http://host:port.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log level."
    )
    allowed_hosts: list[str] = Field(
        default_factory=lambda: ["127.0.0.1", "localhost", "testserver"],
        description="Host headers accepted (TrustedHostMiddleware). JSON list.",
    )
    secret_key: str = Field(
        DEV_PLACEHOLDER_SECRET,
        description="Signs session cookies. Required (not the placeholder) in production.",
    )
    master_key: str = Field(
        "",
        description="Master key for encrypting stored documents (per-tenant keys are derived "
        "from it). Empty: a random key is generated under data_dir in development; "
        "required in production.",
    )

    # --- TLS (issue 17): `tenantllm serve` terminates TLS itself when both files are set ----
    tls_certfile: str = Field(
        "",
        description="PEM certificate chain for HTTPS served by the app itself (no proxy in "
        "front). Set together with TENANTLLM_TLS_KEYFILE; empty: plain HTTP.",
    )
    tls_keyfile: str = Field("", description="PEM private key of TENANTLLM_TLS_CERTFILE.")
    tls_keyfile_password: str = Field(
        "", description="Password of an encrypted TENANTLLM_TLS_KEYFILE (empty: not encrypted)."
    )
    tls_min_version: Literal["1.2", "1.3"] = Field(
        "1.2",
        description="Oldest TLS version accepted (1.3 is always preferred when the client "
        "offers it; older than 1.2 is never accepted).",
    )

    # --- engine --------------------------------------------------------------------------
    engine_backend: Literal["vllm", "openai"] = Field(
        "vllm", description="`vllm`: in-process engine. `openai`: a remote vLLM server."
    )
    model: str = Field(
        "bundled",
        description="`bundled` (SmolLM2-135M-Instruct, converted once) or an HF folder/name.",
    )
    engine_url: str = Field(
        "", description="Base URL of the remote OpenAI-compatible server (backend `openai`)."
    )
    engine_api_key: str = Field("", description="API key for the remote engine, if it needs one.")
    engine_tokenizer: str = Field(
        "",
        description="Backend `openai`: a folder (or cached HF name) with the served model's "
        "tokenizer, to count prompt tokens here instead of asking the server's /tokenize; it "
        "must give the server's token ids (checked at start). Empty: the TENANTLLM_MODEL "
        "folder when it is on this machine, else the server counts.",
    )
    engine_seeded_sampling: bool = Field(
        False,
        description="Backend `openai`: pass a request's `seed` to the server. Turn it on only "
        "for a vLLM server on a GPU: on the CPU, a seeded request whose prompt is prefilled in "
        "chunks stops the server's engine (vLLM rewinds the sampler with CUDA-only calls). "
        "The in-process engine decides by itself: seeds are honoured on a GPU only.",
    )
    max_model_len: int = Field(2048, ge=256, description="Context length the engine serves.")
    kv_cache_gib: int = Field(1, ge=1, description="KV-cache size in GiB (CPU engine).")
    max_num_seqs: int = Field(64, ge=1, description="Requests batched together by the engine.")
    enforce_eager: bool = Field(True, description="Skip graph compilation (fast start on CPU).")
    enable_lora: bool = Field(
        False, description="Start the engine with LoRA (per-tenant adapters)."
    )
    max_lora_rank: Literal[8, 16, 32, 64] = Field(
        8,
        description="Highest adapter rank the engine serves (and `adapters train` accepts). "
        "vLLM pads every adapter to it: on the CPU, rank 64 made turns with adapters 6.5x "
        "slower than rank 8 (bench/adapters.py).",
    )
    max_prompt_tokens: int = Field(1536, ge=16, description="Longest prompt accepted, in tokens.")
    max_output_tokens: int = Field(512, ge=1, description="Largest `max_tokens` accepted.")
    default_max_tokens: int = Field(256, ge=1, description="`max_tokens` when none is given.")
    prefix_cache_scope: Literal["user", "tenant"] = Field(
        "user",
        description="Who shares vLLM's prefix cache (its `cache_salt`): `user` (no timing "
        "channel between teammates; each user warms their own cache) or `tenant` (teammates "
        "share cached prefixes such as the system prompt). Never shared across tenants.",
    )

    # --- identity ------------------------------------------------------------------------
    oidc_issuer: str = Field(
        "",
        description="Issuer URL of your IdP. Empty: `make run` starts a local demo provider.",
    )
    oidc_client_id: str = Field("tenantllm", description="OIDC client id.")
    oidc_client_secret: str = Field(DEV_CLIENT_SECRET, description="OIDC client secret.")
    oidc_groups_claim: str = Field("groups", description="Claim that carries the IdP groups.")
    oidc_audience: str = Field(
        "",
        description="Audience of JWT access tokens for the API (e.g. `tenantllm-api`): set, "
        "they are verified locally (signature, iss, aud, exp). Empty: every bearer token is "
        "checked at the IdP's userinfo endpoint. ID tokens are refused either way.",
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="Other sites (origins like `https://tools.example.com`) allowed to call "
        "the app from a browser with credentials (CORS). Empty: same origin only. JSON list.",
    )
    refusal_audit_window_seconds: int = Field(
        60,
        ge=1,
        description="Refused credentials: the first few per client address are audited at "
        "once, the rest of this window as one row with a count.",
    )
    group_mapping_file: Path = Field(
        Path("assets/group_mapping.yaml"), description="IdP groups -> tenant roles (YAML)."
    )
    groups_refresh_seconds: int = Field(
        300, ge=5, description="How often a session's groups are re-read from the IdP."
    )
    session_max_age_seconds: int = Field(8 * 3600, ge=60, description="Session lifetime.")
    demo_idp_port: int = Field(9400, description="Port of the local demo OIDC provider.")
    metrics_token: str = Field(
        "",
        description="Bearer token that `/metrics` (Prometheus text format) answers to. Empty: "
        "`/metrics` is off (404) and no metrics are collected.",
    )
    metrics_listen: str = Field(
        "",
        pattern=r"^$|^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$",
        description="`host:port` of a separate Prometheus endpoint without a token (bind it to "
        "an address only the scraper reaches). Empty: none.",
    )

    # --- storage -------------------------------------------------------------------------
    database_url: str = Field(
        "", description="SQLAlchemy URL. Empty: SQLite (WAL) at data_dir/tenantllm.db."
    )
    redis_url: str = Field(
        "",
        description="Redis URL shared by every app replica: rate-limit counters, the team caps "
        "and fair-share counters, the response cache. Empty: in-process (no response cache).",
    )
    # scale-out (issue 19): a Chroma server instead of each team's embedded store
    chroma_url: str = Field(
        "",
        pattern=r"^$|^https?://[^\s/?#]+(/[^\s?#]*)?$",
        description="Chroma server for every team's vectors (`http(s)://host:port`), each team "
        "in its own database under `TENANTLLM_CHROMA_TENANT`; a tenant's `chroma_url` names "
        "its own server. Empty: an embedded store per team under data_dir.",
    )
    chroma_tenant: str = Field(
        "tenantllm",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{2,62}$",
        description="The Chroma tenant under which the teams' databases are created (one "
        "per tenantllm install sharing a Chroma server).",
    )
    chroma_token: SecretStr = Field(
        SecretStr(""),
        description="Token sent to the Chroma server (Chroma's token client auth, for a "
        "server or proxy that checks one). Empty: none.",
    )
    chroma_token_header: Literal["Authorization", "X-Chroma-Token"] = Field(
        "Authorization",
        description="How the Chroma token is sent: `Authorization: Bearer <token>` or "
        "`X-Chroma-Token: <token>`.",
    )
    originals_store: Literal["auto", "database", "files"] = Field(
        "auto",
        description="Where the encrypted originals are kept: `database` (a table of the SQL "
        "database, readable by every replica), `files` (under data_dir), `auto` (the database "
        "when it is PostgreSQL, else files).",
    )
    audit_prompt_text: bool = Field(
        False, description="Store prompt text in the audit log (a digest is always stored)."
    )
    audit_flush_interval_ms: int = Field(200, ge=10, description="Audit writer batch interval.")
    budget_cache_seconds: float = Field(
        2.0,
        ge=0,
        description="How long a process trusts its copy of a team's token budgets; a change "
        "made by another process (a replica, `tenantllm budgets set`) applies within this.",
    )
    # retention (issue 15, item 5): the policies are per team (core/retention)
    retention_interval_hours: float = Field(
        24.0,
        ge=0.0,
        description="How often the app applies every team's retention policy (0: never; "
        "`tenantllm retention run` still does).",
    )
    retention_first_delay_seconds: float = Field(
        60.0, ge=0.0, description="Delay after start before the app's first retention pass."
    )
    injection_block: bool = Field(
        False, description="Refuse prompts flagged as prompt injection (default: flag only)."
    )

    # --- limits --------------------------------------------------------------------------
    rate_limit_user: str = Field("30/minute", description="Chat requests per user.")
    rate_limit_tenant: str = Field("300/minute", description="Chat requests per tenant.")
    rate_limit_signin: str = Field(
        "60/minute",
        description="Sign-in requests (/login, /auth/callback) per client address; raise it when "
        "many people sign in from one address (a NAT or a proxy that hides theirs).",
    )
    tenant_max_concurrency: int = Field(
        64,
        ge=1,
        description="Generations one tenant may run at once: a safety limit; fairness between "
        "teams is the scheduler's (`engine_concurrency`).",
    )
    engine_concurrency: int = Field(
        16,
        ge=1,
        description="Generations admitted to the engine at once across teams; the rest wait "
        "in per-team queues, served in token-fair order (weights per tenant). Set it where "
        "the engine's throughput stops growing (`make bench`, scaling curve).",
    )
    fair_queue_wait_seconds: float = Field(
        30.0,
        gt=0,
        description="Longest a chat turn waits for the engine before it is refused (429, "
        "Retry-After).",
    )
    api_max_body_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        description="Largest request body the /v1 API accepts, in bytes (413 above it).",
    )

    # --- documents -----------------------------------------------------------------------
    max_upload_mb: int = Field(20, ge=1, description="Largest file accepted, in MB.")
    ui_upload_max_files: int = Field(
        10,
        ge=1,
        description="Files one person may hold uploaded but not yet indexed in the browser "
        "app; more are refused (429). Also caps one upload request at this many files.",
    )
    ui_upload_ttl_seconds: int = Field(
        600,
        ge=60,
        description="Uploads not indexed within this time are deleted from the upload folder.",
    )
    parse_timeout_seconds: int = Field(60, ge=1, description="Time limit to parse one file.")
    # Background indexing (core/knowledge/ingest_worker.py): one job per uploaded file.
    ingest_poll_seconds: float = Field(
        5.0,
        gt=0,
        description="How often the app's indexing worker looks for jobs queued by another "
        "process (a replica); its own uploads start at once.",
    )
    ingest_job_stale_seconds: int = Field(
        300,
        ge=30,
        description="A job whose worker (on another host) has not written for this long is "
        "taken as stopped: resumed, or failed with the reason. Keep it above the parse time "
        "limit.",
    )
    parse_memory_mb: int = Field(2048, ge=128, description="Memory limit to parse one file.")
    # all-MiniLM-L6-v2 embeds the first 256 word pieces of a chunk and ignores the rest:
    # bigger chunks would be found by their first half only (and crowd the prompt).
    chunk_size: int = Field(
        256, ge=64, description="Chunk size in tokens (the embedding model reads 256)."
    )
    chunk_overlap: int = Field(32, ge=0, description="Chunk overlap in tokens.")
    # Indexing 1.2 MB of extracted text took 30-44 s of CPU on 2 cores: these caps bound what
    # one file (or one team) can make the server parse, embed and store.
    max_document_chars: int = Field(
        1_000_000, ge=1000, description="Most characters of text extracted from one file."
    )
    max_pdf_pages: int = Field(500, ge=1, description="Most pages of one PDF.")
    max_document_chunks: int = Field(
        2000, ge=1, description="Most chunks (vectors) one file may become."
    )
    team_storage_mb: int = Field(
        1000, ge=1, description="Most MB of documents (original file sizes) one team may store."
    )
    top_k: int = Field(4, ge=1, le=50, description="Chunks retrieved per question (default).")
    # retrieval (issue 18)
    # Hybrid retrieval fuses the dense (vector) ranking with a BM25 keyword ranking by
    # reciprocal rank fusion: score = sum of weight / (rrf_k + rank). A tenant may set its own
    # weight (Tenant.keyword_weight).
    retrieval_keyword_weight: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="Weight of the BM25 keyword ranking in hybrid retrieval; the dense ranking "
        "gets 1 minus this (0 = dense only, 1 = keyword only).",
    )
    retrieval_candidates: int = Field(
        20, ge=1, le=200, description="Candidates each ranking (dense, keyword) brings to fusion."
    )
    # k=5, not the usual 60: with 20 candidates a side, 60 makes every rank weigh almost the
    # same and BM25's weak tail outvotes dense; on the 10-Q set (bench/retrieval_quality.py)
    # k=5 gave hit@5 0.779 vs 0.728 at k=60 (dense alone 0.749-0.759).
    retrieval_rrf_k: int = Field(
        5, ge=1, description="The k of reciprocal rank fusion (higher: flatter rank weights)."
    )
    tenant_plugins: list[str] = Field(
        default_factory=list,
        description="Allow-list of third-party tenant plugins (entry-point names), JSON list.",
    )

    # --- SIEM delivery and anomaly alerts (core/siem/) -----------------------------------
    # Sinks are operator-level: they receive every tenant's audit rows.
    siem_sinks: list[str] = Field(
        default_factory=list,
        description="Where audit events are delivered, JSON list of URLs: file:///path.jsonl, "
        "syslog+tcp://host:514, syslog+tls://host:6514, splunk-hec+https://host:8088, "
        "elasticsearch+https://host:9200/index; `#name` names the sink's cursor.",
    )
    siem_splunk_token: SecretStr = Field(
        SecretStr(""), description="Splunk HEC token (sent as `Authorization: Splunk <token>`)."
    )
    siem_elasticsearch_api_key: SecretStr = Field(
        SecretStr(""),
        description="Elasticsearch API key (sent as `Authorization: ApiKey <key>`); empty: none.",
    )
    siem_tls_ca_file: str = Field(
        "", description="CA bundle (PEM) TLS sinks verify the receiver with; empty: system CAs."
    )
    siem_tls_cert_file: str = Field(
        "", description="Client certificate (PEM) TLS sinks present (mutual TLS); empty: none."
    )
    siem_tls_key_file: str = Field(
        "", description="Private key of `siem_tls_cert_file` when not in the same file."
    )
    siem_in_app: bool = Field(
        True,
        description="Deliver (and judge alerts) in the web app's background task; false: only "
        "`tenantllm siem deliver` (cron, or one replica of several).",
    )
    siem_batch_size: int = Field(500, ge=1, le=10_000, description="Audit rows per delivery.")
    siem_poll_seconds: float = Field(
        1.0, gt=0, description="How often the app's deliverer looks for new audit rows."
    )
    siem_retry_max_seconds: float = Field(
        300.0, ge=1, description="Longest wait between retries to a failing sink (backoff cap)."
    )
    siem_timeout_seconds: float = Field(
        10.0, gt=0, description="Connect/answer time limit for one delivery to a sink."
    )
    alerts_enabled: bool = Field(
        True, description="Judge the audit stream with the anomaly rules (alert rows)."
    )
    alert_webhook_url: str = Field(
        "", description="URL that alert rows are POSTed to as JSON (an `alerts` list)."
    )
    alert_denials: str = Field(
        "20/5 minutes",
        description="Denied requests by one principal or client address per window; empty: off.",
    )
    alert_bad_credentials: str = Field(
        "30/minute", description="Refused credentials from one client address per window."
    )
    alert_injection: str = Field(
        "1/hour", description="Prompt-injection flags by one principal in one team per window."
    )
    alert_many_teams: str = Field(
        "3/hour", description="Distinct teams one principal touches per window."
    )
    alert_rate_limits: str = Field(
        "50/5 minutes", description="Rate-limited or over-budget requests of one team per window."
    )
    alert_office_hours_utc: str = Field(
        "07-19",
        description="Office hours `HH-HH` (UTC, end exclusive); admin actions outside them "
        "raise an alert. Empty: off.",
    )
    alert_admin_actions: list[str] = Field(
        default_factory=lambda: list(DEFAULT_ADMIN_ACTIONS),
        description="Audit actions that count as admin actions for office hours. JSON list.",
    )

    @field_validator("cors_origins")
    @classmethod
    def _origins_are_origins(cls, value: list[str]) -> list[str]:
        # "*" with credentials would let every site read signed-in answers.
        for origin in value:
            if not _ORIGIN_RE.fullmatch(origin):
                raise ValueError(f"{origin!r} is not an origin like https://tools.example.com")
        return [o.rstrip("/") for o in value]

    @field_validator(
        "alert_denials", "alert_bad_credentials", "alert_injection", "alert_many_teams",
        "alert_rate_limits",
    )  # fmt: skip
    @classmethod
    def _threshold_per_window(cls, value: str) -> str:
        # The same "N/period" grammar as the rate-limit settings (the limits package).
        if value.strip():
            try:
                parse(value)
            except ValueError:
                raise ValueError(f"{value!r} is not like 20/5 minutes") from None
        return value.strip()

    @field_validator("alert_office_hours_utc")
    @classmethod
    def _office_hours(cls, value: str) -> str:
        match = re.fullmatch(r"\s*(\d{1,2})\s*-\s*(\d{1,2})\s*", value)
        if value.strip() and not (match and all(int(h) <= 24 for h in match.groups())):
            raise ValueError(f"{value!r} is not like 07-19 (UTC hours)")
        return f"{int(match[1]):02d}-{int(match[2]):02d}" if match else ""

    @field_validator("secret_key")
    @classmethod
    def _secret_not_empty(cls, value: str) -> str:
        if not value:
            raise ValueError("must not be empty")
        return value

    # --- derived paths -------------------------------------------------------------------
    @property
    def resolved_database_url(self) -> str:
        """The database URL in use (SQLite under data_dir unless configured)."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'tenantllm.db').resolve()}"

    @property
    def base_url(self) -> str:
        """Where users reach the app."""
        scheme = "https" if self.tls_enabled else "http"
        return self.public_url.rstrip("/") or f"{scheme}://{self.host}:{self.port}"

    @property
    def tls_enabled(self) -> bool:
        """True when the app serves HTTPS itself (a certificate file is configured)."""
        return bool(self.tls_certfile or self.tls_keyfile)

    @property
    def secure_cookies(self) -> bool:
        """Cookies carry `Secure`: in production (TLS in front) or when serving TLS itself."""
        return self.mode == "production" or self.tls_enabled


def check_production(settings: Settings) -> None:
    """Refuse, in production mode, every dev-only default that would be unsafe there.

    All problems are named at once (by their variable), so one restart fixes them all. Runs
    when settings are loaded, i.e. before the engine or any identity provider is started.
    """
    if settings.mode != "production":
        return
    problems = production_problems(settings)
    if problems:
        raise ConfigError("Refusing to start in production mode: " + "; ".join(problems) + ".")


def production_problems(settings: Settings) -> list[str]:
    """What `check_production` objects to, one sentence per setting."""
    problems = []
    if not settings.oidc_issuer:
        # Without it `serve` would start the demo IdP: anyone signs in as anyone.
        problems.append(
            "TENANTLLM_OIDC_ISSUER must name your identity provider (the demo provider "
            "signs anyone in without a password)"
        )
    secret = settings.secret_key
    if secret == DEV_PLACEHOLDER_SECRET or len(secret) < MIN_SECRET_LENGTH:
        problems.append(
            f"TENANTLLM_SECRET_KEY must be set to a random value of at least {MIN_SECRET_LENGTH} "
            "characters"
        )
    if not settings.master_key:
        problems.append("TENANTLLM_MASTER_KEY must be set")
    if settings.oidc_client_secret == DEV_CLIENT_SECRET:
        problems.append("TENANTLLM_OIDC_CLIENT_SECRET must be your client's secret, not the demo's")
    if not settings.public_url.startswith("https://"):
        # Session cookies are Secure in production: over plain http sign-in cannot work.
        problems.append("TENANTLLM_PUBLIC_URL must be the https:// address users open")
    if "*" in settings.allowed_hosts:
        problems.append("TENANTLLM_ALLOWED_HOSTS must list host names, not '*'")
    if settings.metrics_token and len(settings.metrics_token) < MIN_SECRET_LENGTH:
        problems.append(f"TENANTLLM_METRICS_TOKEN must be at least {MIN_SECRET_LENGTH} characters")
    return problems


def _unknown_env_settings() -> list[str]:
    """`TENANTLLM_*` variables that name no setting (pydantic-settings ignores them silently)."""
    known = {f"TENANTLLM_{name.upper()}" for name in Settings.model_fields}
    return sorted(
        k for k in os.environ if k.upper().startswith("TENANTLLM_") and k.upper() not in known
    )


def load_settings() -> Settings:
    """Read settings, turning validation errors into one clear message naming the setting."""
    unknown = _unknown_env_settings()
    if unknown:
        raise ConfigError("Invalid configuration: unknown setting " + ", ".join(unknown))
    try:
        settings = Settings()
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"]) or "?"
            env_name = f"TENANTLLM_{name.upper()}"
            if err["type"] == "extra_forbidden":
                problems.append(f"unknown setting {env_name}")
            else:
                problems.append(f"{env_name}: {err['msg']}")
        raise ConfigError("Invalid configuration: " + "; ".join(problems)) from None
    check_production(settings)
    return settings


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once, on first use)."""
    return load_settings()


def reset_settings_cache() -> None:
    """Forget cached settings (tests and SIGHUP reloads)."""
    get_settings.cache_clear()
