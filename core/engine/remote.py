"""Backend `openai`: a remote OpenAI-compatible vLLM server, for deployments that outgrow one
machine (start it with `vllm serve MODEL --scheduling-policy priority`).

Same interface as the in-process engine. The tenant's `cache_salt` and the priority travel in
the request body (vLLM's server accepts both); closing our stream closes the HTTP response,
and vLLM aborts a request whose client went away.

Prompt tokens (the fit, the caps, the budget reservation) are counted once per chat turn and
never by blocking the event loop: a blocking call there stalls every request of the process
for a round trip to a busy server (issue 19 measured +52 ms TTFT and half the throughput).
With the served model's own tokenizer at hand (`TENANTLLM_ENGINE_TOKENIZER`, else the model
folder of `TENANTLLM_MODEL` when it is on this machine) they are counted here, in
microseconds; otherwise by one async call to the server's `/tokenize` (its own chat
template). A local tokenizer is used only after one probe at start gave exactly the server's
token ids: a tokenizer that counts differently would make the caps lie.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import httpx

from core.config import Settings
from core.engine.base import (
    ChoiceOutput,
    Engine,
    EngineRequest,
    EngineStatus,
    GenerationChunk,
    GenerationParams,
    PreparedPrompt,
    SamplingOptions,
    TokenLogprob,
)
from core.engine.model import BUNDLED, bundled_model_dir
from core.errors import (
    ConfigError,
    EngineOverloaded,
    EngineUnavailable,
    InvalidRequest,
    TenantLLMError,
)

log = logging.getLogger(__name__)

# Covers what chat templates do: a system prompt, turns of both roles, the generation prompt.
TOKENIZER_PROBE = [
    {"role": "system", "content": "You are the assistant of the Probe team. Answer briefly."},
    {"role": "user", "content": "Ünïcode, digits 12345, code `x = {'a': 1}` and emoji 🙂?"},
    {"role": "assistant", "content": "Fine.\n\nNext line."},
    {"role": "user", "content": "And the question."},
]

START_TIMEOUT_S = 120.0  # the server may still be loading its model when we start
REQUEST_TIMEOUT_S = 30.0
STREAM_TIMEOUT_S = 120.0  # longest silence between two streamed events (queueing included)


class RemoteEngine(Engine):
    """A client of one remote vLLM server, shared by all tenants of this process."""

    backend = "openai"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        if not settings.engine_url:
            raise ConfigError("TENANTLLM_ENGINE_URL must be set for the `openai` engine backend.")
        self._root = settings.engine_url.rstrip("/").removesuffix("/v1")
        headers = {"Authorization": f"Bearer {settings.engine_api_key}"}
        self._headers = headers if settings.engine_api_key else {}
        self._client: Any = None  # openai.AsyncOpenAI once started
        self._http: httpx.AsyncClient | None = None  # /tokenize and /metrics, once started
        self._sync_http: httpx.Client | None = None  # only for `_prepare` outside the event loop
        self._tokenizer: Any = None  # the served model's tokenizer, when it counts like the server
        self._served: str = ""
        self._adapters: set[str] = set()  # adapter names the server is known to serve
        self._adapter_lock = asyncio.Lock()

    @property
    def ready(self) -> bool:
        """True once the server answered and told us which model it serves."""
        return self._client is not None

    @property
    def honours_seed(self) -> bool:
        """When the operator says the server runs on a GPU (`engine_seeded_sampling`)."""
        return self.settings.engine_seeded_sampling

    async def start(self) -> None:
        """Wait for the server (up to START_TIMEOUT_S) and pick the model it serves."""
        if self._client is not None:
            return
        from openai import AsyncOpenAI

        client = AsyncOpenAI(
            base_url=f"{self._root}/v1",
            api_key=self.settings.engine_api_key or "none",
            max_retries=1,
            timeout=STREAM_TIMEOUT_S,
        )
        self._http = httpx.AsyncClient(headers=self._headers, timeout=REQUEST_TIMEOUT_S)
        try:
            self._served = self._pick_model(await self._served_models(client))
            self._tokenizer = await self._checked_tokenizer()
        except BaseException:  # a failed start leaves no client open
            await client.close()
            await self.stop()
            raise
        self._client = client
        counted = "here" if self._tokenizer is not None else "by the server's /tokenize"
        log.info(
            "remote engine %s serves %s; prompts counted %s", self._root, self._served, counted
        )

    async def _served_models(self, client: Any) -> list[str]:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                return [m.id async for m in client.models.list()]
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise EngineUnavailable(
                        f"The engine server at {self._root} did not answer ({type(exc).__name__})."
                    ) from None
                await asyncio.sleep(1.0)

    def _pick_model(self, served: list[str]) -> str:
        wanted = self.settings.model
        if wanted in served:
            return wanted
        if len(served) == 1:  # e.g. model=bundled while the server names it its own way
            return served[0]
        raise ConfigError(
            f"TENANTLLM_MODEL={wanted!r} is not served by {self._root} (it serves {served})."
        )

    async def _checked_tokenizer(self) -> Any:
        """The served model's tokenizer if it is on this machine and, on one probe, gives
        exactly the server's token ids; else None (count with the server's /tokenize).

        A configured `TENANTLLM_ENGINE_TOKENIZER` that cannot be loaded or counts otherwise is
        a ConfigError: the operator asked for it. A guessed one (the model folder) falls back.
        """
        configured = self.settings.engine_tokenizer.strip()
        source = configured or _model_folder(self.settings)
        if source is None:
            return None
        try:
            tokenizer = await asyncio.to_thread(_load_tokenizer, source)
            local = _local_prompt(tokenizer, TOKENIZER_PROBE).token_ids
        except Exception as exc:  # missing files, no transformers, a broken chat template
            if configured:
                raise ConfigError(
                    f"TENANTLLM_ENGINE_TOKENIZER={configured!r} cannot be loaded "
                    f"({type(exc).__name__}: {exc})."
                ) from None
            log.warning("no local tokenizer from %s (%s): counting remotely", source, exc)
            return None
        served = (await self._tokenize_remote(TOKENIZER_PROBE)).token_ids
        if local == served:
            return tokenizer
        if configured:
            raise ConfigError(
                f"TENANTLLM_ENGINE_TOKENIZER={configured!r} does not tokenize like "
                f"{self._served} on {self._root}; unset it to count on the server."
            )
        log.warning("the tokenizer in %s differs from the server's: counting remotely", source)
        return None

    async def stop(self) -> None:
        """Close the HTTP clients (the remote server keeps running)."""
        client, self._client = self._client, None
        if client is not None:
            await client.close()
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()
        if self._sync_http is not None:
            self._sync_http.close()
            self._sync_http = None

    async def status(self) -> EngineStatus:
        """Running/waiting requests as the server reports them (all its clients)."""
        running, waiting = len(self._running), len(self._waiting)
        if self._http is not None:
            try:
                metrics = (await self._http.get(f"{self._root}/metrics", timeout=5.0)).text
                running = _gauge(metrics, "vllm:num_requests_running", running)
                waiting = _gauge(metrics, "vllm:num_requests_waiting", waiting)
            except httpx.HTTPError:
                pass  # fall back to what this process knows
        return EngineStatus(
            self.backend, self._served or self.settings.model, self.ready, running, waiting
        )

    def _prepare(self, messages: list[dict[str, str]]) -> PreparedPrompt:
        if self._tokenizer is not None:
            return _local_prompt(self._tokenizer, messages)
        # Blocks: for callers outside the event loop only (a chat turn awaits prepare_prompt).
        if self._sync_http is None:
            self._sync_http = httpx.Client(headers=self._headers, timeout=REQUEST_TIMEOUT_S)
        try:
            response = self._sync_http.post(
                f"{self._root}/tokenize", json=self._tokenize_body(messages)
            )
        except httpx.HTTPError:
            raise EngineUnavailable("The engine server cannot be reached.") from None
        return _tokenized(messages, response)

    async def _prepare_async(self, messages: list[dict[str, str]]) -> PreparedPrompt:
        if self._tokenizer is not None:
            return await super()._prepare_async(messages)  # the local tokenizer, off the loop
        return await self._tokenize_remote(messages)

    async def _tokenize_remote(self, messages: list[dict[str, str]]) -> PreparedPrompt:
        """The server's count of `messages` after its chat template: one async round trip."""
        assert self._http is not None
        try:
            url = f"{self._root}/tokenize"
            response = await self._http.post(url, json=self._tokenize_body(messages))
        except httpx.HTTPError:
            raise EngineUnavailable("The engine server cannot be reached.") from None
        return _tokenized(messages, response)

    def _tokenize_body(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        return {"model": self._served, "messages": messages, "add_generation_prompt": True}

    async def _generate(
        self, prompt: PreparedPrompt, params: GenerationParams, request: EngineRequest
    ) -> AsyncGenerator[GenerationChunk, None]:
        from openai import NotFoundError

        body = self._body(prompt, params, request)
        adapter = request.lora_path if self.settings.enable_lora else None
        if adapter:
            body["model"] = await self._adapter_name(adapter)
        try:
            stream = await self._client.chat.completions.create(**body)
        except NotFoundError:
            if not adapter:
                raise
            # The server restarted since it loaded the adapter and forgot it: load it again.
            self._adapters.discard(body["model"])
            body["model"] = await self._adapter_name(adapter)
            stream = await self._client.chat.completions.create(**body)
        try:
            answers = _Answers(prompt.tokens)
            async for event in stream:
                chunk = answers.step(event)
                if chunk is not None:
                    yield chunk
            # The finish reason and the final usage come in the last events: one closing chunk.
            yield answers.closing()
        finally:
            # Closing the response tells the server the client is gone: it aborts.
            await stream.close()

    def _map_error(self, exc: Exception) -> TenantLLMError:
        return map_openai_error(exc)

    async def _adapter_name(self, lora_path: str) -> str:
        """The server's model name for the adapter in `lora_path` (its folder's name, unique:
        see core/adapters), loaded into the server first if it does not serve it yet.

        Loading needs a server started with `--enable-lora` and
        `VLLM_ALLOW_RUNTIME_LORA_UPDATING=true`, and `lora_path` readable there (one machine
        or a shared volume); a server started with `--lora-modules NAME=PATH` serves it as is.
        """
        name = Path(lora_path).name
        if name in self._adapters:
            return name
        async with self._adapter_lock:  # one load per adapter, however many turns wait for it
            if name not in self._adapters:
                served = [m.id async for m in self._client.models.list()]
                if name not in served:
                    await self._load_adapter(name, lora_path)
                self._adapters.add(name)
        return name

    async def _load_adapter(self, name: str, lora_path: str) -> None:
        assert self._http is not None
        try:
            response = await self._http.post(
                f"{self._root}/v1/load_lora_adapter",
                json={"lora_name": name, "lora_path": lora_path},
                timeout=STREAM_TIMEOUT_S,  # the server reads the weights before it answers
            )
        except httpx.HTTPError:
            raise EngineUnavailable("The engine server cannot be reached.") from None
        if response.status_code == 200 or "already been loaded" in response.text:
            log.info("engine server %s loaded adapter %s from %s", self._root, name, lora_path)
            return
        log.error(
            "engine server %s cannot load adapter %s from %s (HTTP %s: %s). Start it with "
            "--enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=true, with the adapters "
            "folder readable at the same path, or with --lora-modules %s=%s",
            self._root, name, lora_path, response.status_code, response.text[:300],
            name, lora_path,
        )  # fmt: skip
        raise EngineUnavailable(
            "The team's fine-tuned adapter is not available on the engine server; "
            "an administrator needs to check the engine's LoRA settings."
        )

    def _body(
        self, prompt: PreparedPrompt, params: GenerationParams, request: EngineRequest
    ) -> dict[str, Any]:
        extra: dict[str, Any] = {"cache_salt": request.cache_salt}
        if params.ignore_eos:
            extra["ignore_eos"] = True
        if request.priority:  # non-zero needs a server started with priority scheduling
            extra["priority"] = request.priority
        return {
            "model": self._served,
            "messages": prompt.messages,
            "max_tokens": request.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "stop": list(params.stop) or None,
            "seed": params.seed,
            **_sampling_body(params.sampling),
            "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
            "extra_body": extra,
            "extra_headers": {"X-Request-Id": request.request_id},
        }


def _sampling_body(sampling: SamplingOptions) -> dict[str, Any]:
    """The OpenAI parameters of `sampling` that differ from the server's defaults."""
    body: dict[str, Any] = {}
    if sampling.n != 1:
        body["n"] = sampling.n
    if sampling.frequency_penalty:
        body["frequency_penalty"] = sampling.frequency_penalty
    if sampling.presence_penalty:
        body["presence_penalty"] = sampling.presence_penalty
    if sampling.logprobs:
        body["logprobs"] = True
        body["top_logprobs"] = sampling.top_logprobs
    if sampling.logit_bias:
        body["logit_bias"] = {str(token): bias for token, bias in sampling.logit_bias}
    response_format = sampling.response_format
    if response_format is not None and response_format.type == "json_object":
        body["response_format"] = {"type": "json_object"}
    elif response_format is not None and response_format.json_schema is not None:
        schema = json.loads(response_format.json_schema)
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "response", "schema": schema},
        }
    return body


class _Answers:
    """The `n` answers of one remote stream, put together from its events.

    vLLM's server streams each answer's text and finish in events of their own (one choice
    each); with `continuous_usage_stats` an event's usage counts its own answer's tokens, and
    the final event (no choices) counts all of them.
    """

    def __init__(self, prompt_tokens: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.text: dict[int, str] = {}
        self.finish: dict[int, str] = {}
        self.tokens: dict[int, int] = {}  # per answer, from the continuous usage
        self.total: int | None = None  # all answers, from the final usage event

    def step(self, event: Any) -> GenerationChunk | None:
        """The chunk of one server event (None when it carries no new text or finish)."""
        if event.usage is not None:
            self.prompt_tokens = event.usage.prompt_tokens or self.prompt_tokens
            if len(event.choices) == 1:
                self.tokens[event.choices[0].index] = event.usage.completion_tokens
            elif not event.choices:
                self.total = event.usage.completion_tokens
        choices = []
        for choice in event.choices:
            delta = (choice.delta.content or "") if choice.delta is not None else ""
            text = self.text.get(choice.index, "") + delta
            self.text[choice.index] = text
            if choice.finish_reason:
                self.finish[choice.index] = choice.finish_reason
            logprobs = _token_logprobs(choice.logprobs)
            if delta or logprobs or choice.finish_reason:
                choices.append(
                    ChoiceOutput(choice.index, text, delta, choice.finish_reason, logprobs)
                )
        if not choices:
            return None
        first = next((c.delta for c in choices if c.index == 0), "")
        return GenerationChunk(
            self.text.get(0, ""),
            first,
            False,
            None,
            self.prompt_tokens,
            self._completion_tokens(),
            choices=tuple(choices),
        )

    def closing(self) -> GenerationChunk:
        """The last chunk: finished, with the final usage."""
        reason = self.finish.get(0, "stop")
        text = self.text.get(0, "")
        return GenerationChunk(
            text, "", True, reason, self.prompt_tokens, self._completion_tokens()
        )

    def _completion_tokens(self) -> int:
        return self.total if self.total is not None else sum(self.tokens.values())


def _token_logprobs(logprobs: Any) -> tuple[TokenLogprob, ...]:
    """An OpenAI choice's `logprobs.content` as TokenLogprobs (none if absent)."""
    if logprobs is None or not logprobs.content:
        return ()
    return tuple(
        TokenLogprob(
            entry.token,
            float(entry.logprob),
            tuple((top.token, float(top.logprob)) for top in entry.top_logprobs or ()),
        )
        for entry in logprobs.content
    )


def _model_folder(settings: Settings) -> str | None:
    """The folder of `TENANTLLM_MODEL` if it is on this machine (the bundled model only once
    converted: the remote backend never converts it), else None."""
    name = settings.model.strip()
    folder = bundled_model_dir(settings.data_dir) if name == BUNDLED else Path(name).expanduser()
    return str(folder) if (folder / "tokenizer_config.json").is_file() else None


def _load_tokenizer(source: str) -> Any:
    """The tokenizer (and chat template) of a model folder or an HF name in the local cache."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source)


def _local_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> PreparedPrompt:
    """What the server's /tokenize does: the chat template with the generation prompt, then
    the text's tokens without special tokens again (the template holds them; BOS twice)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = list(tokenizer.encode(text, add_special_tokens=False))
    return PreparedPrompt(messages=messages, tokens=len(ids), text=text, token_ids=ids)


def _tokenized(messages: list[dict[str, str]], response: httpx.Response) -> PreparedPrompt:
    if response.status_code >= 400:
        raise _status_error(response.status_code, response.text)
    body = response.json()
    return PreparedPrompt(messages=messages, tokens=int(body["count"]), token_ids=body["tokens"])


def _gauge(metrics: str, name: str, default: int) -> int:
    """Sum a Prometheus gauge over its label sets (one per served model)."""
    values = [
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    ]
    return int(sum(values)) if values else default


def _status_error(status: int, detail: str) -> TenantLLMError:
    if status in (429, 503):
        return EngineOverloaded("The model is busy right now; try again in a moment.")
    if status in (400, 413, 422):
        return InvalidRequest(f"The model refused the request: {detail[:200]}")
    log.error("engine server answered %s: %s", status, detail[:500])
    return EngineUnavailable("The model failed to answer; try again.")


def map_openai_error(exc: Exception) -> TenantLLMError:
    """An `openai` client failure as a typed error with a user-safe message."""
    import openai

    if isinstance(exc, openai.APIStatusError):
        message = getattr(exc, "message", "") or str(exc)
        return _status_error(exc.status_code, message)
    if isinstance(exc, openai.APIConnectionError):  # includes timeouts
        return EngineUnavailable("The engine server cannot be reached.")
    log.error("remote generation failed", exc_info=exc)
    return EngineUnavailable("The model failed to answer; try again.")
