"""Prompt files of batch jobs: ``.txt`` (one prompt a line), ``.jsonl`` and ``.csv``.

A ``.jsonl`` line is ``{"id": ..., "prompt": ..., "seed": ..., "size": ..., "guidance": ...}``
(all but ``prompt`` optional); a ``.csv`` has a header row with the same column names. An item
without an id gets ``line-N`` (its line number). A malformed line is reported with its line
number and skipped; duplicate ids are an error before any work starts.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

from cascade.errors import UserError
from cascade.text.prompts import MAX_PROMPT_CHARS

FIELDS = ("id", "prompt", "seed", "size", "guidance")
MAX_ID_CHARS = 200


@dataclass(frozen=True)
class PromptItem:
    """One prompt of a job; ``seed``, ``size``, ``guidance`` override the job's when set."""

    id: str
    prompt: str
    line: int
    seed: int | None = None
    size: int | None = None
    guidance: tuple[float, ...] | None = None


@dataclass(frozen=True)
class Rejected:
    line: int
    reason: str


def _item(record: dict, line: int) -> PromptItem:
    unknown = sorted(set(record) - set(FIELDS))
    if unknown:
        raise ValueError(f"unknown field {unknown[0]!r} (allowed: {', '.join(FIELDS)})")
    prompt = record.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("empty prompt" if isinstance(prompt, str) or prompt is None else "prompt must be text")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"prompt longer than {MAX_PROMPT_CHARS} characters")
    identifier = record.get("id", f"line-{line}")
    if isinstance(identifier, bool) or not isinstance(identifier, (str, int)) or str(identifier).strip() == "":
        raise ValueError("id must be a non-empty string or number")
    identifier = str(identifier)
    if len(identifier) > MAX_ID_CHARS or "\x00" in identifier:
        raise ValueError(f"id must be at most {MAX_ID_CHARS} characters, without NUL")
    seed = record.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(f"seed must be a whole number >= 0, got {seed!r}")
    size = record.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise ValueError(f"bad size {size!r}")
    guidance = record.get("guidance")
    if guidance is not None:
        values = guidance if isinstance(guidance, list) else [guidance]
        if not values or not all(isinstance(g, (int, float)) and not isinstance(g, bool) and math.isfinite(g) for g in values):
            raise ValueError(f"guidance must be a finite number or a list of them, got {guidance!r}")
        guidance = tuple(float(g) for g in values)
    return PromptItem(identifier, prompt.strip(), line, seed, size, guidance)


def _csv_record(row: dict[str, str]) -> dict:
    record: dict = {}
    for key, value in row.items():
        if key is None:
            raise ValueError("more values than columns")
        if value is None or value == "":
            continue
        if key in ("seed", "size"):
            try:
                record[key] = int(value)
            except ValueError:
                raise ValueError(f"{key} must be a whole number, got {value!r}") from None
        elif key == "guidance":
            try:
                record[key] = [float(v) for v in value.split(",")] if "," in value else float(value)
            except ValueError:
                raise ValueError(f"guidance must be a number, got {value!r}") from None
        else:
            record[key] = value
    return record


def read_prompt_file(path: Path) -> tuple[list[PromptItem], list[Rejected]]:
    """The items of a prompt file and the lines rejected (with reasons), in file order."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"prompt file {str(path)!r} does not exist" if not path.exists() else f"{str(path)!r} is not a file")
    suffix = path.suffix.lower()
    if suffix not in (".txt", ".jsonl", ".csv"):
        raise UserError(f"unknown prompt file type {suffix or '(none)'!r} (choose from: .txt, .jsonl, .csv)")
    raw = path.read_bytes()
    items: list[PromptItem] = []
    rejected: list[Rejected] = []
    lines = raw.split(b"\n")
    if suffix == ".csv":
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as error:
            raise UserError(f"{path.name} is not UTF-8 text (byte {error.start})") from None
        reader = csv.DictReader(io.StringIO(text))
        if reader.fieldnames is None or "prompt" not in reader.fieldnames:
            raise UserError(f"{path.name}: the header row must name a 'prompt' column")
        entries = [(reader.line_num, row) for row in reader]
    else:
        entries = [(n, line) for n, line in enumerate(lines, start=1)]
    for line_number, entry in entries:
        try:
            if suffix == ".csv":
                record = _csv_record(entry)
            else:
                try:
                    text = entry.decode("utf-8").strip()
                except UnicodeDecodeError:
                    raise ValueError("not UTF-8 text") from None
                if not text:
                    continue  # blank lines separate nothing
                if suffix == ".txt":
                    record = {"prompt": text}
                else:
                    try:
                        record = json.loads(text)
                    except json.JSONDecodeError as error:
                        raise ValueError(f"bad JSON ({error.msg})") from None
                    if not isinstance(record, dict):
                        raise ValueError("a JSON line must be an object")
            items.append(_item(record, line_number))
        except ValueError as error:
            rejected.append(Rejected(line_number, str(error)))
    seen: dict[str, int] = {}
    for item in items:
        if item.id in seen:
            raise UserError(f"{path.name}: duplicate id {item.id!r} on lines {seen[item.id]} and {item.line}")
        seen[item.id] = item.line
    return items, rejected
