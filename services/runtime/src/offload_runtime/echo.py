"""What a client sent, shown back in an error answer: quoted, and cut to a readable length.

An error should say what it refused, but not repeat a 10,000-character id or path
back to the client (and into every log line and proxy that keeps the answer).
"""

ECHO_LIMIT = 80
"""Characters of a client's value an error message shows."""
PATH_LIMIT = 200
"""Characters of the request path a problem's `instance` shows."""


def quoted(value: str, limit: int = ECHO_LIMIT) -> str:
    """`'abc'`; past `limit`, the start and the length: `'abcd…' (10000 characters)`."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit] + '…'!r} ({len(value)} characters)"


def clipped(value: str, limit: int = PATH_LIMIT) -> str:
    """`value` itself, cut to `limit` characters with `…` when longer."""
    return value if len(value) <= limit else value[:limit] + "…"
