"""The training set of a team adapter: JSON lines of `{"prompt": ..., "completion": ...}`.

Checked whole before training starts, so a bad line is a clear `InvalidRequest` naming the
line and nothing is trained or written. The bounds keep a CLI run within minutes on a CPU:
the bundled model learns a handful of facts from a few dozen pairs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from core.errors import InvalidRequest

MAX_PAIRS = 10_000
MAX_FIELD_CHARS = 4_000
MAX_FILE_BYTES = 50 * 2**20


@dataclass(frozen=True)
class TrainingPair:
    """One example: the user's message and the answer the adapter should give."""

    prompt: str
    completion: str


def read_pairs(path: Path) -> list[TrainingPair]:
    """Every pair of the JSON-lines file at `path` (blank lines skipped), or InvalidRequest."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise InvalidRequest(f"The training file is larger than {MAX_FILE_BYTES >> 20} MiB.")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest(f"The training file {path.name} is not UTF-8 text.") from None
    except OSError as exc:
        raise InvalidRequest(f"Cannot read the training file {path}: {exc.strerror}.") from None
    pairs = [
        parse_line(number, line)
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip()
    ]
    if not pairs:
        raise InvalidRequest("The training file has no pairs (one JSON object per line).")
    if len(pairs) > MAX_PAIRS:
        raise InvalidRequest(f"The training file has {len(pairs)} pairs; at most {MAX_PAIRS}.")
    return pairs


def parse_line(number: int, line: str) -> TrainingPair:
    """One line as a pair; InvalidRequest names the line and what is wrong with it."""
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"Line {number} is not JSON ({exc.msg}).") from None
    if not isinstance(value, dict):
        raise InvalidRequest(
            f'Line {number} must be an object {{"prompt": ..., "completion": ...}}.'
        )
    fields = {}
    for name in ("prompt", "completion"):
        field = value.get(name)
        if not isinstance(field, str) or not field.strip():
            raise InvalidRequest(f"Line {number} needs a non-empty text '{name}'.")
        if len(field) > MAX_FIELD_CHARS:
            raise InvalidRequest(f"Line {number}: '{name}' is over {MAX_FIELD_CHARS} characters.")
        fields[name] = field.strip()
    return TrainingPair(fields["prompt"], fields["completion"])
