"""Errors whose message is meant for the user.

The domain raises these; only the HTTP layer (core/api/routes.py, app.py) and the UI (core/ui/)
turn them into responses. `status` is the HTTP status the API answers with, `code` a stable
machine-readable code (OpenAI error shape), `str(err)` the message a person reads.
Anything else that escapes is a bug: it is logged with its traceback and shown as a generic
message.
"""

from __future__ import annotations


class TenantLLMError(Exception):
    """Base class: a failure the user can understand and act on."""

    status: int = 400
    code: str = "bad_request"
    error_type: str = "invalid_request_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(TenantLLMError):
    """The deployment's configuration is wrong (a setting, a plugin, the mapping file)."""

    status = 500
    code = "config_error"
    error_type = "server_error"


class BackupError(TenantLLMError):
    """A backup cannot be written, or an archive cannot be restored (nothing was changed)."""

    status = 500
    code = "backup_error"
    error_type = "server_error"


class ModelError(TenantLLMError):
    """The model could not be prepared or loaded."""

    status = 503
    code = "model_unavailable"
    error_type = "server_error"


class EngineUnavailable(TenantLLMError):
    """The engine is starting, stopped or dead."""

    status = 503
    code = "engine_unavailable"
    error_type = "server_error"


class EngineOverloaded(TenantLLMError):
    """The engine's queue is full; retry shortly."""

    status = 503
    code = "engine_overloaded"
    error_type = "server_error"


class DocumentStoreUnavailable(TenantLLMError):
    """A team's vector store (a Chroma server) does not answer; nothing was half-written."""

    status = 503
    code = "document_store_unavailable"
    error_type = "server_error"


class InvalidRequest(TenantLLMError):
    """A parameter is missing, of the wrong type or out of range."""

    status = 400
    code = "invalid_request"


class PromptTooLong(InvalidRequest):
    """The prompt exceeds the tenant's prompt-token cap."""

    code = "context_length_exceeded"


class NotAuthenticated(TenantLLMError):
    """No valid credential (no session, expired or revoked token or key)."""

    status = 401
    code = "invalid_api_key"
    error_type = "authentication_error"


class PermissionDenied(TenantLLMError):
    """The user is signed in but may not do this."""

    status = 403
    code = "permission_denied"
    error_type = "permission_error"


class TenantNotFound(TenantLLMError):
    """No tenant has this id."""

    status = 404
    code = "model_not_found"
    error_type = "invalid_request_error"


class NotFound(TenantLLMError):
    """A document, conversation or key does not exist (or is not visible to this user)."""

    status = 404
    code = "not_found"


class RateLimited(TenantLLMError):
    """Too many requests; `retry_after` says when to try again (seconds)."""

    status = 429
    code = "rate_limit_exceeded"
    error_type = "rate_limit_error"

    def __init__(self, message: str, retry_after: int, limit: str = "") -> None:
        super().__init__(message)
        self.retry_after = max(1, int(retry_after))
        self.limit = limit


class BudgetExceeded(TenantLLMError):
    """A team's or a member's token budget cannot hold this request until it resets.

    Not a `RateLimited`: retrying in a few seconds does not help. `retry_after` is the
    seconds until the budget resets, `remaining` the tokens still left under it.
    """

    status = 429
    code = "budget_exceeded"
    error_type = "insufficient_quota"  # OpenAI's type for a spent quota

    def __init__(self, message: str, retry_after: int, remaining: int = 0) -> None:
        super().__init__(message)
        self.retry_after = max(1, int(retry_after))
        self.remaining = max(0, int(remaining))


class BudgetUnavailable(TenantLLMError):
    """Token budgets apply but cannot be checked (the database is unreachable): fail closed."""

    status = 503
    code = "budget_unavailable"
    error_type = "server_error"


class PromptRejected(TenantLLMError):
    """A plugin or the injection detector refused the prompt."""

    status = 400
    code = "prompt_rejected"


class IngestionError(TenantLLMError):
    """One uploaded file could not be ingested; nothing of it was stored."""

    status = 400
    code = "ingestion_failed"


class UnsupportedFile(IngestionError):
    """The file type is not accepted, or its content does not match its extension."""

    code = "unsupported_file"


class FileTooLarge(IngestionError):
    """The file exceeds the upload size limit."""

    status = 413
    code = "file_too_large"


class QuotaExceeded(IngestionError):
    """The team's stored documents would go over its storage quota."""

    status = 413
    code = "quota_exceeded"


class RequestTooLarge(InvalidRequest):
    """An API request body is over the size limit."""

    status = 413
    code = "request_too_large"


class MethodNotAllowed(InvalidRequest):
    """The API path exists, but not with this HTTP method."""

    status = 405
    code = "method_not_allowed"

    def __init__(self, message: str, allowed: list[str]) -> None:
        super().__init__(message)
        self.allowed = allowed
