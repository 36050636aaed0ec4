"""How the provider adapter translates HTTP answers into the runtime's error taxonomy."""

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from offload_runtime.errors import PermanentError, TransientError
from offload_video.adapters.provider import raise_for_status, retry_after_of
from offload_video.generation import RangeNotSatisfiable, RenderNotFound


def answer(status: int, headers: dict[str, str] | None = None, **body: object) -> httpx.Response:
    return httpx.Response(status, headers=headers, json=body or {"detail": "nope"})


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504])
def test_busy_or_broken_providers_are_transient(status: int) -> None:
    with pytest.raises(TransientError) as caught:
        raise_for_status(answer(status, {"Retry-After": "7"}), "a status poll")
    assert caught.value.retry_after == 7
    assert f"answered {status} to a status poll: nope" in caught.value.message


@pytest.mark.parametrize("status", [400, 401, 403, 409, 413, 422])
def test_other_client_errors_are_permanent(status: int) -> None:
    with pytest.raises(PermanentError, match="nope"):
        raise_for_status(answer(status), "the submit")


def test_a_missing_render_and_a_bad_range_have_their_own_errors() -> None:
    with pytest.raises(RenderNotFound):
        raise_for_status(answer(404), "a status poll")
    with pytest.raises(RangeNotSatisfiable):
        raise_for_status(answer(416), "the download")


def test_the_providers_error_message_is_kept() -> None:
    with pytest.raises(PermanentError, match="prompt violates policy"):
        raise_for_status(
            answer(400, error={"message": "prompt violates policy", "code": "x"}), "the submit"
        )


def test_success_passes() -> None:
    raise_for_status(answer(200), "a status poll")
    raise_for_status(answer(206), "the download")


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert retry_after_of(answer(503, {"Retry-After": "2.5"})) == 2.5
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 28 <= (retry_after_of(answer(503, {"Retry-After": later})) or 0) <= 30
    assert retry_after_of(answer(503)) is None
    assert retry_after_of(answer(503, {"Retry-After": "soon"})) is None
