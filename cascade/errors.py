"""The one exception type that means "the user asked for something we cannot do".

Library code raises :class:`UserError` with a one-line message that names the bad
value and what is allowed; the command-line entry point prints that line and exits
with status 2 instead of showing a traceback.
"""


class UserError(ValueError):
    """A problem with the user's input (a name, a number, a path, a file)."""


def choice_error(kind: str, value: object, allowed: "list[str] | tuple[str, ...]") -> UserError:
    """Build the standard error for a name that is not one of ``allowed``.

    >>> str(choice_error("sampler", "foo", ["ddim", "ddpm"]))
    "unknown sampler 'foo' (choose from: ddim, ddpm)"
    """
    return UserError(f"unknown {kind} {value!r} (choose from: {', '.join(allowed)})")
