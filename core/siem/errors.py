"""The one failure a sink raises besides OSError: the receiver answered, but refused."""

from __future__ import annotations


class DeliveryFailed(Exception):
    """A receiver refused a batch (HTTP status, an error in its answer); nothing acknowledged.

    Not a `TenantLLMError`: no user sees it. The deliverer keeps it as the cursor's
    `last_error` (shown by `tenantllm siem status`) and retries the batch with backoff.
    """
