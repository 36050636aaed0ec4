"""Decompression bombs through image.process: a small file declaring a huge image fails at once,
permanently, with a clear message, and the worker goes on to complete the next job.

The bombs are PNGs written by hand, row block by row block through zlib, so
the test never holds the image it describes: a 1-bit 30000×30000 PNG is
~110 KB on disk and 900 million pixels (112 MB packed, ~900 MB as Pillow
decodes it) once opened.
"""

import io
import struct
import time
import zlib

import pytest
from PIL import Image

from tests.e2e.test_image_e2e import photo, submit, upload
from tests.security.report import record
from tests.support.gateway import RunningGateway, poll_job

MB = 1024 * 1024


def png_declaring(width: int, height: int) -> bytes:
    """A valid 1-bit greyscale PNG of `width`×`height`, all black, as small as zlib makes it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    per_block = max(1, MB // len(row))
    compressor = zlib.compressobj(9)
    data = []
    left = height
    while left:
        rows = min(left, per_block)
        data.append(compressor.compress(row * rows))
        left -= rows
    data.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", b"".join(data))
        + chunk(b"IEND", b"")
    )


def small_png(width: int = 100, height: int = 100) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), "teal").save(buffer, "PNG")
    return buffer.getvalue()


async def test_a_decompression_bomb_fails_permanently_and_the_worker_carries_on(
    guarded: RunningGateway,
) -> None:
    limit = 100_000_000  # the image service's default image_max_pixels
    bombs = {
        "30000×30000": png_declaring(30_000, 30_000),  # 9× the limit: Pillow's bomb error
        "12000×12000": png_declaring(12_000, 12_000),  # 1.44×: Pillow's warning, made an error
    }
    for name, data in bombs.items():
        assert len(data) < 200_000, (name, len(data))
        # Pillow itself sees the bomb in the header (a warning, below twice its limit).
        with pytest.raises((Image.DecompressionBombError, Image.DecompressionBombWarning)):
            Image.open(io.BytesIO(data)).load()

    outcomes = {}
    async with guarded.client() as http:
        jobs = {}
        for name, data in bombs.items():
            file_id = await upload(http, data, "image/png")
            jobs[name] = await submit(http, {"file_id": file_id}, {"op": "resize", "width": 64})
        # An output bomb: a small source asked to grow to 20000×20000 (400 M pixels).
        small = await upload(http, small_png(), "image/png")
        jobs["resize to 20000×20000"] = await submit(
            http, {"file_id": small}, {"op": "resize", "width": 20_000, "height": 20_000}
        )
        began = time.monotonic()
        for name, job_id in jobs.items():
            job = await poll_job(http, job_id, timeout=30)
            outcomes[name] = job
            assert job["status"] == "failed", (name, job)
            assert job["attempt"] == 1, (name, job)  # permanent: never retried
            assert job["error"]["retryable"] is False
            assert "decompression bomb protection" in job["error"]["message"], job["error"]
            assert f"{limit:,}" in job["error"]["message"]
        failed_within = time.monotonic() - began

        # The worker is unharmed: the next job completes.
        after = await poll_job(
            http,
            await submit(
                http,
                {"file_id": await upload(http, photo(400, 300))},
                {"op": "resize", "width": 40},
            ),
            timeout=30,
        )
        assert after["status"] == "completed", after
        assert (after["result"]["width"], after["result"]["height"]) == (40, 30)
    sizes = ", ".join(f"{name} in {len(data) // 1024} KiB" for name, data in bombs.items())
    record(
        "image decompression bomb",
        f"1-bit PNGs declaring {sizes}; a 100×100 PNG resized to 20000×20000",
        f"3 jobs failed permanently on attempt 1 ('… over the limit of {limit:,} "
        f"(decompression bomb protection)') within {failed_within:.1f} s; "
        "the next job completed",
    )
