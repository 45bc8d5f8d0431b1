"""Each team's vectors on a Chroma server: one client per team, bound to the team's database.

With `TENANTLLM_CHROMA_URL` (or a tenant's own `chroma_url`) a team's vectors live on a
Chroma server instead of its embedded store: database `team_<tenant id>` under one Chroma
tenant (`TENANTLLM_CHROMA_TENANT`), created on first use. Each team's client is built bound
to that database, from the registered tenant's id alone; the collection name is the constant
of `vectorstore`. Nothing here takes a database, collection name or id from a request.

Chroma's tenants and databases are namespaces, not a security boundary (a collection id
opens from any database of the server, and the OSS server has no authentication): what keeps
teams apart is this module's choice of database, the registry check on every retrieved chunk
(core/knowledge/retrieval.py) and the network that only the app replicas reach. The
table of who enforces what is in docs/architecture.md ("Isolation").

A server that does not answer becomes `DocumentStoreUnavailable` (`store_errors`), and the
next call tries again: nothing is cached until a team's client is open.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import chromadb
import httpx
from chromadb.config import Settings as ChromaSettings
from chromadb.errors import AuthorizationError, ChromaAuthError, ChromaError, NotFoundError

from core.config import Settings
from core.errors import ConfigError, DocumentStoreUnavailable
from core.knowledge.vectorstore import COLLECTION_NAME
from core.tenancy import Tenant

if TYPE_CHECKING:
    from chromadb.api import AdminAPI
    from llama_index.vector_stores.chroma import ChromaVectorStore

log = logging.getLogger(__name__)

#: Chroma database names need at least 3 characters; tenant ids may have 2.
DATABASE_PREFIX = "team_"
_TOKEN_PROVIDER = "chromadb.auth.token_authn.TokenAuthClientProvider"  # noqa: S105 (a class)
UNAVAILABLE = "The team's document store is not answering right now; try again shortly."


def database_name(tenant_id: str) -> str:
    """The Chroma database of a team (its id is a validated slug of a registered tenant)."""
    return f"{DATABASE_PREFIX}{tenant_id}"


class ChromaServers:
    """The Chroma servers of this deployment: which one serves a team, and its clients."""

    def __init__(self, settings: Settings) -> None:
        self._default_url = settings.chroma_url
        self._chroma_tenant = settings.chroma_tenant
        self._token = settings.chroma_token.get_secret_value()
        self._token_header = settings.chroma_token_header
        self._admins: dict[str, AdminAPI] = {}
        self._provisioned: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    @property
    def chroma_tenant(self) -> str:
        """The Chroma tenant that holds every team's database."""
        return self._chroma_tenant

    def url_for(self, tenant: Tenant) -> str:
        """The server of this (registered) tenant: its own, else the setting's; '' for none."""
        return tenant.chroma_url or self._default_url

    def client_settings(self, url: str) -> ChromaSettings:
        """Chroma client settings for `url`: no telemetry, the token if one is configured."""
        values: dict[str, object] = {"anonymized_telemetry": False}
        if self._token:
            values |= {
                "chroma_client_auth_provider": _TOKEN_PROVIDER,
                "chroma_client_auth_credentials": self._token,
                "chroma_auth_token_transport_header": self._token_header,
            }
        return ChromaSettings(**values)  # type: ignore[arg-type]

    def client(self, url: str, database: str) -> chromadb.ClientAPI:
        """A client of `url` bound to `database` of our Chroma tenant (which must exist)."""
        parts = urlsplit(url)
        https = parts.scheme == "https"
        # A full URL as host: Chroma then keeps its port and path (a proxy's prefix) as given.
        return chromadb.HttpClient(
            host=url.rstrip("/"),
            port=parts.port or (443 if https else 8000),
            ssl=https,
            settings=self.client_settings(url),
            tenant=self._chroma_tenant,
            database=database,
        )

    def store(self, tenant_id: str, url: str) -> ChromaVectorStore:
        """The team's store on `url`: its own database (created on first use) and collection.

        Raises DocumentStoreUnavailable when the server does not answer, and ConfigError when
        the database holds another team's collection (two installs or teams pointed at one
        database by hand).
        """
        from llama_index.vector_stores.chroma import ChromaVectorStore

        database = database_name(tenant_id)
        with store_errors():
            self._provision(url, database)
            collection = self.client(url, database).get_or_create_collection(
                COLLECTION_NAME,
                embedding_function=None,
                configuration={"hnsw": {"space": "cosine"}},
                metadata={"tenant_id": tenant_id},
            )
        owner = (collection.metadata or {}).get("tenant_id")
        if owner != tenant_id:
            raise ConfigError(
                f"Chroma database {database!r} holds the collection of {owner!r}, not of "
                f"{tenant_id!r}: refusing to use it."
            )
        return ChromaVectorStore(chroma_collection=collection)

    def _admin(self, url: str) -> AdminAPI:
        with self._lock:
            admin = self._admins.get(url)
            if admin is None:
                settings = self.client_settings(url)
                parts = urlsplit(url)
                https = parts.scheme == "https"
                settings.chroma_api_impl = "chromadb.api.fastapi.FastAPI"
                settings.chroma_server_host = url.rstrip("/")
                settings.chroma_server_http_port = parts.port or (443 if https else 8000)
                settings.chroma_server_ssl_enabled = https
                admin = chromadb.AdminClient(settings)
                self._admins[url] = admin
            return admin

    def _provision(self, url: str, database: str) -> None:
        """Create our Chroma tenant and the team's database on `url` unless they exist."""
        if (url, database) in self._provisioned:
            return
        admin = self._admin(url)
        _ensure(
            lambda: admin.get_tenant(self._chroma_tenant),
            lambda: admin.create_tenant(self._chroma_tenant),
        )
        _ensure(
            lambda: admin.get_database(database, tenant=self._chroma_tenant),
            lambda: admin.create_database(database, tenant=self._chroma_tenant),
        )
        with self._lock:
            self._provisioned.add((url, database))


def _ensure(get: Callable[[], object], create: Callable[[], object]) -> None:
    """`get()`, else `create()`; another replica creating it first is no error."""
    try:
        get()
        return
    except NotFoundError:
        pass
    try:
        create()
    except ChromaError:
        get()  # "already exists": a concurrent replica won; anything else raises here


@contextmanager
def store_errors() -> Iterator[None]:
    """Turn "the Chroma server does not answer" into DocumentStoreUnavailable.

    Transport errors (refused, reset, timed out), the client's own "could not connect" and a
    refused token. Other Chroma errors are bugs or bad data and pass unchanged.
    """
    try:
        yield
    except httpx.TransportError as exc:
        log.warning("the Chroma server does not answer: %s", exc)
        raise DocumentStoreUnavailable(UNAVAILABLE) from exc
    except ValueError as exc:
        # chromadb's client re-raises a refused connection as a bare ValueError.
        if not isinstance(exc.__context__, httpx.TransportError):
            raise
        log.warning("the Chroma server does not answer: %s", exc)
        raise DocumentStoreUnavailable(UNAVAILABLE) from exc
    except (ChromaAuthError, AuthorizationError) as exc:
        log.error("the Chroma server refused our credentials (TENANTLLM_CHROMA_TOKEN): %s", exc)
        raise DocumentStoreUnavailable(UNAVAILABLE) from exc
