"""Stream ids as clients send them back (`Last-Event-ID`): what Redis would take, nothing else."""

import pytest

from offload_runtime.stream_ids import MAX_PART, canonical, stream_id


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("1700000000000-3", (1700000000000, 3)),
        ("5", (5, 0)),
        (" 0-0 ", (0, 0)),
        (f"{MAX_PART}-{MAX_PART}", (MAX_PART, MAX_PART)),
        ("0007-01", (7, 1)),
    ],
)
def test_a_stream_id_within_64_bits_is_read(text: str, parsed: tuple[int, int]) -> None:
    assert stream_id(text) == parsed


@pytest.mark.parametrize(
    "text",
    [
        "1-99999999999999999999",  # the sequence past 2^64: Redis says "Invalid stream ID"
        "99999999999999999999-0",
        f"{MAX_PART + 1}-0",
        f"0-{MAX_PART + 1}",
        "1" * 10_000,
        "garbage",
        "-1",
        "1-",
        "-",
        "",
        "$",
        "+",
        "1-2-3",
        "1.5-0",
        "\u0661-\u0660",  # Arabic-Indic digits: int() reads them, Redis does not
        "\u00b2-0",  # a superscript two: isdigit() says yes
    ],
)
def test_anything_redis_would_refuse_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        stream_id(text)


def test_the_canonical_form_is_what_redis_writes() -> None:
    assert canonical(" 0007-01 ") == "7-1"
    assert canonical("5") == "5-0"
