"""Write the blocking client, `client.py`, from the asyncio one, `async_client.py`.

    python client/unasync.py            # rewrite client/src/offload/client.py
    python client/unasync.py --check    # exit 1 if client.py is not what it would write

The two clients differ only in `await` and in the names of httpx's blocking
methods, so one is written by hand and the other derived from it: a fix lands in
both, and they cannot drift. The derivation is a list of substitutions, each
matched where a word starts, as httpcore does it; then `ruff check --fix-only`
(imports re-sorted, unused ones dropped) and `ruff format` (lines re-wrapped once
`await` is gone). The `unasync` package (over tokens) and `unasyncd` (over the
syntax tree) do the same, but neither fits: `unasync` leaves docstrings untouched,
so the blocking client's would say `async with`, and every `unasyncd` release pins
`rich<14` against the client's `rich>=15`, so it cannot join the workspace.

The output is checked in rather than made at build time, so `uv sync`, an
editable install and `pip install ./client` need no build step, and a reader,
mypy and a traceback all see the real file. `tests/unit/test_client_unasync.py`
fails when it is stale.
"""

import re
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent / "src" / "offload"
SOURCE = PACKAGE / "async_client.py"
TARGET = PACKAGE / "client.py"

# (pattern, replacement), applied in order to every line, each where a word starts.
SUBSTITUTIONS = [
    # Docstrings: what the asyncio wording becomes in the blocking client.
    (
        "asyncio client, for FastAPI views, workers and",
        "blocking client, for Django views, the CLI and",
    ),
    ("follow them, with asyncio", "follow them (blocking calls)"),
    (r"way \(it may be async\)", "way"),
    (
        "`client.py` is generated from this file by `make unasync`: edit only this one.",
        "Generated from `async_client.py` by `make unasync`: edit that file, not this one.",
    ),
    # Code.
    ("import asyncio", "import time"),
    (r"asyncio\.sleep", "time.sleep"),
    (r"AsyncGenerator\[Job, None\]", "Generator[Job, None, None]"),
    (r"Async([A-Z]\w*)", r"\1"),  # AsyncOffload, AsyncClient, AsyncBaseTransport, AsyncIterator
    ("async def", "def"),
    ("async with", "with"),
    ("async for", "for"),
    ("await ", ""),
    ("__aenter__", "__enter__"),
    ("__aexit__", "__exit__"),
    ("aclosing", "closing"),
    ("aclose", "close"),
    ("aconnect_sse", "connect_sse"),
    ("aiter_sse", "iter_sse"),
    ("aiter_bytes", "iter_bytes"),
    ("aread", "read"),
    ("anotify", "notify"),
]
COMPILED = [
    (re.compile(rf"(?<!\w){pattern}"), replacement) for pattern, replacement in SUBSTITUTIONS
]


def ruff(args: list[str], source: str) -> str:
    """Pipe `source` through ruff with the workspace's settings, as if it were `client.py`."""
    command = [sys.executable, "-m", "ruff", *args, "--stdin-filename", str(TARGET), "-"]
    return subprocess.run(command, input=source, capture_output=True, text=True, check=True).stdout


def sync_source(async_source: str) -> str:
    """The blocking client's text, derived from the asyncio client's."""
    used: set[int] = set()
    lines = []
    for line in async_source.splitlines(keepends=True):
        for index, (pattern, replacement) in enumerate(COMPILED):
            line, count = pattern.subn(replacement, line)
            if count:
                used.add(index)
        lines.append(line)
    # A rule that no longer matches anything is stale: say so rather than keep it.
    unused = [SUBSTITUTIONS[i][0] for i in range(len(SUBSTITUTIONS)) if i not in used]
    if unused:
        raise SystemExit(f"unasync: these substitutions matched nothing: {unused}")
    fixed = ruff(["check", "--fix-only", "--quiet"], "".join(lines))
    return ruff(["format", "--quiet"], fixed)


def main() -> int:
    wanted = sync_source(SOURCE.read_text())
    if "--check" in sys.argv[1:]:
        if TARGET.read_text() != wanted:
            print(f"{TARGET} is stale: run `make unasync` (or python client/unasync.py)")
            return 1
        return 0
    TARGET.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
