"""Redis stream entry ids (`<ms>-<seq>`), parsed before any of them reaches Redis.

Both parts are unsigned 64-bit integers. An id a client sends back
(`Last-Event-ID`) must be checked against that range here: Redis answers
`Invalid stream ID` to anything outside it, and that error surfaces in the
middle of a stream that has already answered 200.
"""

MAX_PART = 2**64 - 1
_MAX_DIGITS = len(str(MAX_PART))


def stream_id(text: str) -> tuple[int, int]:
    """`"1700000000000-3"` → `(1700000000000, 3)`; `"5"` → `(5, 0)`.

    Raises ValueError for anything Redis would not take as an entry id: other
    characters (ASCII digits only), an empty part, or a part past 2**64 - 1.
    """
    ms, sep, seq = text.strip().partition("-")
    if not _digits(ms) or (sep and not _digits(seq)):
        raise ValueError(f"not a stream id: {text[:40]!r}")
    parsed = int(ms), int(seq) if sep else 0
    if parsed[0] > MAX_PART or parsed[1] > MAX_PART:
        raise ValueError(f"stream id out of range: {text[:40]!r}")
    return parsed


def canonical(text: str) -> str:
    """The id in the form Redis writes it (`"0007"` → `"7-0"`); ValueError as `stream_id`."""
    ms, seq = stream_id(text)
    return f"{ms}-{seq}"


def _digits(part: str) -> bool:
    # isdigit() alone takes "²" and Arabic-Indic digits, which int() reads but Redis refuses.
    return 0 < len(part) <= _MAX_DIGITS and part.isascii() and part.isdigit()
