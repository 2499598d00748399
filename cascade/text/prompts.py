"""Prompt validation and the once-per-encoder truncation warning.

Bad prompts raise :class:`~cascade.errors.UserError` with a one-line message that says
which prompt and what is wrong: an empty or whitespace-only prompt, bytes that are not
UTF-8, a string holding lone surrogates (undecodable bytes smuggled in by
``errors="surrogateescape"``), or something that is not text at all.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from cascade.errors import UserError

_PREVIEW = 40
#: No encoder reads more than this; a longer "prompt" is a mistake (a file pasted in), not a prompt.
MAX_PROMPT_CHARS = 10_000


class TruncationWarning(UserWarning):
    """A prompt was longer than the encoder's context and was cut."""


def _preview(text: str) -> str:
    return repr(text if len(text) <= _PREVIEW else text[:_PREVIEW] + "...")


def decode_prompt(raw: bytes, where: str) -> str:
    """Decode UTF-8 bytes strictly; ``where`` names the prompt in the error (e.g. ``"prompt 3"``)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        bad = raw[error.start : error.start + 1].hex()
        raise UserError(f"{where} is not valid UTF-8 (byte 0x{bad} at position {error.start})") from None


def validate_prompt(prompt: object, where: str) -> str:
    """Check one prompt and return it as ``str`` (bytes are decoded as UTF-8, text is unchanged).

    :raises UserError: if it is not ``str``/``bytes``, is empty or whitespace only, or is not
        valid UTF-8.
    """
    if isinstance(prompt, (bytes, bytearray)):
        prompt = decode_prompt(bytes(prompt), where)
    if not isinstance(prompt, str):
        raise UserError(f"{where} must be text, got {type(prompt).__name__}")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as error:
        raise UserError(
            f"{where} is not valid UTF-8 (undecodable byte {prompt[error.start]!r} at position {error.start})"
        ) from None
    if not prompt.strip():
        raise UserError(f"{where} is empty" + (" (whitespace only)" if prompt else ""))
    if len(prompt) > MAX_PROMPT_CHARS:
        raise UserError(f"{where} is {len(prompt)} characters long; at most {MAX_PROMPT_CHARS} are allowed")
    return prompt


def validate_prompts(prompts: Sequence[str | bytes]) -> list[str]:
    """Check a batch of prompts (see :func:`validate_prompt`); returns them as a list of ``str``.

    :raises UserError: on a bad prompt, an empty batch, or a single string passed instead
        of a list (which would otherwise be read one character at a time).
    """
    if isinstance(prompts, (str, bytes, bytearray)):
        raise UserError("expected a list of prompts, got a single prompt (wrap it in a list)")
    texts = [validate_prompt(p, f"prompt {i}") for i, p in enumerate(prompts)]
    if not texts:
        raise UserError("no prompts given")
    return texts


class TruncationNotice:
    """Counts truncated prompts for one encoder and warns the first time only."""

    def __init__(self, encoder_name: str) -> None:
        self.encoder_name = encoder_name
        self.count = 0

    def report(self, prompts: Sequence[str], lengths: Sequence[int], max_length: int) -> None:
        """Record a batch: ``lengths[i]`` is prompt i's untruncated length in tokens."""
        cut = [(n, p) for n, p in zip(lengths, prompts) if n > max_length]
        if not cut:
            return
        first_time = self.count == 0
        self.count += len(cut)
        if first_time:
            n, prompt = cut[0]
            warnings.warn(
                f"text encoder {self.encoder_name}: prompt {_preview(prompt)} has {n} tokens, more than "
                f"its maximum of {max_length}; it was truncated to {max_length} (later truncations by "
                "this encoder are counted, not reported)",
                TruncationWarning,
                stacklevel=4,
            )
