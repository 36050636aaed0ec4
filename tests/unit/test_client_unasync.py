"""The blocking client is generated from the asyncio one, and the copy in the tree is current.

`client/unasync.py` derives `client.py` from `async_client.py`; a change made to
one file only, or a substitution that no longer matches, fails here.
"""

import runpy
from pathlib import Path

UNASYNC = Path(__file__).resolve().parents[2] / "client" / "unasync.py"


def test_client_py_is_what_unasync_writes_from_async_client_py() -> None:
    unasync = runpy.run_path(str(UNASYNC))
    wanted = unasync["sync_source"](unasync["SOURCE"].read_text())

    assert unasync["TARGET"].read_text() == wanted, "client.py is stale: run `make unasync`"


def test_the_generated_client_has_no_asyncio_left() -> None:
    unasync = runpy.run_path(str(UNASYNC))
    text = unasync["TARGET"].read_text()

    for word in ("async ", "await ", "asyncio", "AsyncOffload", "aclose", "aiter_"):
        assert word not in text, word
