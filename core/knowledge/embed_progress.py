"""How far the embedding of one file has got, read from llama-index's own instrumentation.

Embedding is most of an upload's time (seconds of CPU per hundred chunks), and it happens
inside `chunking.build_nodes` in one call. llama-index announces that work on its root
dispatcher: a span around `get_text_embedding_batch` (its `texts` are every
chunk of the file) and an `EmbeddingEndEvent` after each batch. One handler of each kind is
registered once per process; they report to the sink of the thread that is embedding (a
context variable), so two files indexed at once in two threads never mix their counts.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol

from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events.embedding import EmbeddingEndEvent
from llama_index.core.instrumentation.span.simple import SimpleSpan
from llama_index.core.instrumentation.span_handlers import BaseSpanHandler

# Span ids are "<the instance's class>.<method>-<uuid>": the method name is what is stable.
_BATCH_METHOD = ".get_text_embedding_batch-"


class EmbeddingSink(Protocol):
    """Who hears about one file's embedding."""

    def embedding_started(self, chunks: int) -> None:
        """The file's `chunks` chunks are about to be embedded."""

    def embedded(self, chunks: int) -> None:
        """`chunks` more chunks were embedded."""


_sink: ContextVar[EmbeddingSink | None] = ContextVar("tenantllm_embedding_sink", default=None)
_installed = threading.Lock()
_handlers: list[Any] = []


class _BatchEnd(BaseEventHandler):
    """Counts each embedded batch for the current thread's sink."""

    def handle(self, event: Any, **kwargs: Any) -> None:
        sink = _sink.get()
        if sink is not None and isinstance(event, EmbeddingEndEvent):
            sink.embedded(len(event.chunks))


class _BatchSpan(BaseSpanHandler[SimpleSpan]):
    """Tells the current thread's sink how many chunks a batch call will embed."""

    def new_span(
        self,
        id_: str,
        bound_args: inspect.BoundArguments,
        instance: Any | None = None,
        parent_span_id: str | None = None,
        tags: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> SimpleSpan | None:
        sink = _sink.get()
        if sink is not None and _BATCH_METHOD in id_:
            sink.embedding_started(len(bound_args.arguments.get("texts") or ()))
        return None  # nothing is kept: no span to close later

    def prepare_to_exit_span(self, *args: Any, **kwargs: Any) -> SimpleSpan | None:
        return None

    def prepare_to_drop_span(self, *args: Any, **kwargs: Any) -> SimpleSpan | None:
        return None


def _install() -> None:
    with _installed:
        if not _handlers:
            dispatcher = get_dispatcher()
            _handlers.extend([_BatchEnd(), _BatchSpan()])
            dispatcher.add_event_handler(_handlers[0])
            dispatcher.add_span_handler(_handlers[1])


@contextmanager
def reporting_to(sink: EmbeddingSink | None) -> Iterator[None]:
    """Within the block, this thread's embeddings are reported to `sink` (None: nowhere)."""
    if sink is None:
        yield
        return
    _install()
    token = _sink.set(sink)
    try:
        yield
    finally:
        _sink.reset(token)
