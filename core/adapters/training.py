"""Fine-tune a LoRA adapter on the serving model with transformers + peft, on CPU or GPU.

The examples are laid out with the model's own chat template, exactly as the engine will see
the team's chat turns, and the loss counts only the answer's tokens (the prompt's labels are
-100): the adapter learns what to answer, not to repeat questions. Only the LoRA matrices
train (peft freezes the base model), so the result is a small folder vLLM loads next to the
base model: `adapter_config.json` + `adapter_model.safetensors`.

A plain loop rather than `transformers.Trainer`: a few dozen full-batch steps over a handful
of short examples, where the Trainer's dataloaders, accelerate state and checkpointing cost
more than the training itself on two CPU cores.

Written into a fresh temporary folder and renamed into place only when complete, so a crash
or a bad run never leaves a half adapter where the registry (or vLLM) would look.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import InvalidRequest, ModelError

log = logging.getLogger(__name__)

# The projections vLLM's LoRA layers cover for Llama-style models (SmolLM2, Llama, Qwen):
# attention and MLP, not the embeddings or the head (vLLM's extra-vocab support is gone).
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_RANKS = (1, 8, 16, 32, 64)  # ranks vLLM accepts; the engine's max_lora_rank caps them


@dataclass(frozen=True)
class Example:
    """One training example: the chat messages before the answer, and the answer."""

    messages: list[dict[str, str]]
    completion: str


@dataclass(frozen=True)
class TrainingOptions:
    """How hard to train: defaults fit a few facts into the bundled model in about a minute."""

    steps: int = 40
    rank: int = 8
    learning_rate: float = 2e-3
    batch_size: int = 8
    max_tokens: int = 256  # longest example (prompt + answer), in tokens; longer are cut
    # Adapt only the top `layers` decoder layers (0: all). Backpropagation then stops there,
    # which makes a step several times cheaper, and facts a team teaches are answers the top
    # layers can learn to give.
    layers: int = 8
    # CPU threads for the run (0: torch's default, one per core). On a machine whose cores
    # are busy with other work, 1 thread can be several times faster than 2: OpenMP's
    # threads wait for each other at every operation.
    threads: int = 0
    seed: int = 0

    def check(self) -> None:
        """InvalidRequest for values outside what the engine can serve or a run can finish."""
        if self.rank not in LORA_RANKS:
            raise InvalidRequest(f"The adapter rank must be one of {LORA_RANKS}.")
        if not 1 <= self.steps <= 10_000:
            raise InvalidRequest("Training steps must be between 1 and 10000.")
        if not 0 < self.learning_rate <= 0.1:
            raise InvalidRequest("The learning rate must be above 0 and at most 0.1.")
        if not 1 <= self.batch_size <= 256:
            raise InvalidRequest("The batch size must be between 1 and 256.")
        if not 16 <= self.max_tokens <= 8192:
            raise InvalidRequest("The longest example must be 16 to 8192 tokens.")
        if not 0 <= self.layers <= 1000:
            raise InvalidRequest("The adapted layers must be 0 (all) to 1000.")
        if not 0 <= self.threads <= 1024:
            raise InvalidRequest("Threads must be 0 (torch's default) to 1024.")


@dataclass(frozen=True)
class TrainingResult:
    """What a run did: for the registry row and the operator's summary."""

    steps: int
    examples: int
    final_loss: float
    seconds: float


def train_lora(
    model_dir: str, examples: Sequence[Example], target: Path, options: TrainingOptions
) -> TrainingResult:
    """Train an adapter of `model_dir` on `examples` and save it as the folder `target`.

    `target` must not exist yet. Raises InvalidRequest for options or examples that cannot
    train, ModelError if the model cannot be loaded; in both cases nothing is left behind.
    """
    options.check()
    if not examples:
        raise InvalidRequest("There is nothing to train on.")
    if target.exists():
        raise InvalidRequest(f"The adapter folder {target} already exists.")
    import torch

    started = time.monotonic()
    torch.manual_seed(options.seed)
    threads = torch.get_num_threads()
    if options.threads:
        torch.set_num_threads(options.threads)
    try:
        result = _train(torch, model_dir, examples, target, options, started)
    finally:
        torch.set_num_threads(threads)
    return result


def _train(
    torch: Any,
    model_dir: str,
    examples: Sequence[Example],
    target: Path,
    options: TrainingOptions,
    started: float,
) -> TrainingResult:
    tokenizer, model = _load(model_dir, options)
    batch = [_encode(tokenizer, e, options.max_tokens) for e in examples]
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=options.learning_rate
    )
    model.train()
    loss_value = float("nan")
    for step in range(options.steps):
        # Cycle through the examples batch by batch; a small set is one batch every step.
        first = (step * options.batch_size) % len(batch)
        chunk = (batch + batch)[first : first + min(options.batch_size, len(batch))]
        ids, labels, mask = _collate(chunk, tokenizer.pad_token_id or 0)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        loss_value = float(loss.detach())
        log.debug(
            "adapter training step %d: loss %.4f at %.1f s",
            step + 1,
            loss_value,
            time.monotonic() - started,
        )
    _save_atomically(model, target)
    return TrainingResult(
        options.steps, len(examples), loss_value, round(time.monotonic() - started, 2)
    )


def _load(model_dir: str, options: TrainingOptions) -> tuple[Any, Any]:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        # float32: the CPU has no fast half-precision training, and bf16 gradients at this
        # size lose the small updates a few steps make.
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_float32())
    except (OSError, ValueError) as exc:
        raise ModelError(f"Cannot load the model {model_dir} for training: {exc}") from None
    total = int(base.config.num_hidden_layers)
    top = min(options.layers, total) if options.layers else total
    config = LoraConfig(
        layers_to_transform=list(range(total - top, total)),
        r=options.rank,
        lora_alpha=2 * options.rank,
        lora_dropout=0.0,
        target_modules=list(TARGET_MODULES),
        task_type="CAUSAL_LM",
    )
    return tokenizer, get_peft_model(base, config)


def torch_float32() -> Any:
    """torch.float32 (imported late: torch takes seconds to import)."""
    import torch

    return torch.float32


def _encode(tokenizer: Any, example: Example, max_tokens: int) -> tuple[list[int], list[int]]:
    """Token ids of prompt + answer, and labels that are -100 on the prompt's tokens."""
    prompt = tokenizer.apply_chat_template(
        example.messages, tokenize=False, add_generation_prompt=True
    )
    # The end-of-turn token closes the answer so the adapter learns where to stop.
    answer = example.completion + (getattr(tokenizer, "eos_token", None) or "")
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
    answer_ids = tokenizer.encode(answer, add_special_tokens=False)
    ids = (prompt_ids + answer_ids)[-max_tokens:]  # cut the prompt, never the answer's end
    labels = ([-100] * len(prompt_ids) + answer_ids)[-max_tokens:]
    return ids, labels


def _collate(chunk: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[Any, Any, Any]:
    import torch

    width = max(len(ids) for ids, _ in chunk)
    ids = [row + [pad_id] * (width - len(row)) for row, _ in chunk]
    labels = [row + [-100] * (width - len(row)) for _, row in chunk]
    mask = [[1] * len(row) + [0] * (width - len(row)) for row, _ in chunk]
    return torch.tensor(ids), torch.tensor(labels), torch.tensor(mask)


def _save_atomically(model: Any, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(str(tmp))
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
