"""`/v1/files` over real HTTP: streamed uploads (raw and multipart), ranged downloads, limits."""

import hashlib
import io
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.support.gateway import RunningGateway, assert_problem, running_gateway
from tests.support.infra import Infra

MB = 1024 * 1024
BIG = 50 * MB


def chunk(index: int) -> bytes:
    """The `index`-th MiB of the test file: pseudo-random, reproducible, not compressible."""
    return random.Random(index).randbytes(MB)


async def big_file() -> AsyncIterator[bytes]:
    for index in range(BIG // MB):
        yield chunk(index)


def big_sha256() -> str:
    digest = hashlib.sha256()
    for index in range(BIG // MB):
        digest.update(chunk(index))
    return digest.hexdigest()


def peak_rss_reset() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def current_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def gateway_overrides() -> dict[str, Any]:
    return {"max_upload_bytes": 60 * MB}


async def test_a_50_mb_upload_streams_and_its_ranges_download(gateway: RunningGateway) -> None:
    expected_sha = big_sha256()
    async with gateway.client() as http:
        rss_before = current_rss_bytes()
        peak_rss_reset()
        uploaded = await http.post(
            "/v1/files", content=big_file(), headers={"Content-Type": "video/mp4"}
        )
        peak_growth = peak_rss_bytes() - rss_before
        assert uploaded.status_code == 201, uploaded.text
        ref = uploaded.json()
        assert ref["bytes"] == BIG
        assert ref["sha256"] == expected_sha
        assert ref["content_type"] == "video/mp4"
        assert ref["url"] == f"/v1/files/{ref['id']}" == uploaded.headers["location"]
        # Streamed through, never held whole: the process grew far less than the file.
        assert peak_growth < 25 * MB, f"peak RSS grew by {peak_growth / MB:.1f} MB"

        # The whole file, streamed back.
        digest = hashlib.sha256()
        async with http.stream("GET", ref["url"]) as download:
            assert download.status_code == 200
            assert download.headers["etag"] == f'"{expected_sha}"'
            assert download.headers["accept-ranges"] == "bytes"
            assert download.headers["content-type"] == "video/mp4"
            assert int(download.headers["content-length"]) == BIG
            async for piece in download.aiter_bytes():
                digest.update(piece)
        assert digest.hexdigest() == expected_sha

        # A range in the middle, spanning two MiB chunks.
        start, end = 10 * MB - 1000, 11 * MB + 999
        part = await http.get(ref["url"], headers={"Range": f"bytes={start}-{end}"})
        assert part.status_code == 206
        assert part.headers["content-range"] == f"bytes {start}-{end}/{BIG}"
        assert part.content == (chunk(9) + chunk(10) + chunk(11))[MB - 1000 : 2 * MB + 1000]

        tail = await http.get(ref["url"], headers={"Range": "bytes=-100"})
        assert tail.status_code == 206 and tail.content == chunk(49)[-100:]

        outside = await http.get(ref["url"], headers={"Range": f"bytes={BIG}-"})
        assert_problem(outside, 416)
        assert outside.headers["content-range"] == f"bytes */{BIG}"
        assert_problem(await http.get(ref["url"], headers={"Range": "lines=1-2"}), 400)

        cached = await http.get(ref["url"], headers={"If-None-Match": f'"{expected_sha}"'})
        assert cached.status_code == 304 and cached.content == b""


async def test_a_multipart_upload_keeps_the_parts_type(gateway: RunningGateway) -> None:
    data = random.Random(7).randbytes(300_000)
    async with gateway.client() as http:
        answer = await http.post(
            "/v1/files",
            data={"note": "ignored"},
            files={"file": ("photo.png", data, "image/png")},
        )
        assert answer.status_code == 201, answer.text
        ref = answer.json()
        assert ref["bytes"] == len(data)
        assert ref["sha256"] == hashlib.sha256(data).hexdigest()
        assert ref["content_type"] == "image/png"
        download = await http.get(ref["url"])
        assert download.content == data
        assert download.headers["content-type"] == "image/png"


async def test_bad_uploads_are_refused_clearly(gateway: RunningGateway) -> None:
    async with gateway.client() as http:
        no_file = await http.post("/v1/files", data={"note": "x"}, files={"other": b"abc"})
        assert "file" in assert_problem(no_file, 422)["detail"]
        no_boundary = await http.post(
            "/v1/files", content=b"abc", headers={"Content-Type": "multipart/form-data"}
        )
        assert "boundary" in assert_problem(no_boundary, 400)["detail"]
        truncated = await http.post(
            "/v1/files",
            content=b'--xyz\r\nContent-Disposition: form-data; name="file"\r\n\r\nabc',
            headers={"Content-Type": "multipart/form-data; boundary=xyz"},
        )
        assert_problem(truncated, 400)
        empty = await http.post(
            "/v1/files", content=b"", headers={"Content-Type": "application/octet-stream"}
        )
        assert "empty" in assert_problem(empty, 422)["detail"]
        odd = await http.post("/v1/files", content=b"abc", headers={"Content-Type": "a/b c"})
        assert_problem(odd, 415)


def jpeg() -> bytes:
    out = io.BytesIO()
    Image.linear_gradient("L").resize((64, 48)).convert("RGB").save(out, "JPEG")
    return out.getvalue()


@pytest.mark.parametrize(
    "label",
    # None: no Content-Type; curl's --data-binary says form-urlencoded unless told otherwise.
    [None, "application/octet-stream", "application/x-www-form-urlencoded"],
)
async def test_an_upload_the_client_does_not_label_gets_the_type_of_its_bytes(
    gateway: RunningGateway, label: str | None
) -> None:
    headers = {"Content-Type": label} if label else {}
    async with gateway.client() as http:
        raw = await http.post("/v1/files", content=jpeg(), headers=headers)
        assert raw.status_code == 201, raw.text
        assert raw.json()["content_type"] == "image/jpeg"
        download = await http.get(raw.json()["url"])
        assert download.headers["content-type"] == "image/jpeg"
        assert download.content == jpeg()

        form = await http.post(
            "/v1/files", files={"file": ("upload", jpeg(), label or "application/octet-stream")}
        )
        assert form.status_code == 201, form.text
        assert form.json()["content_type"] == "image/jpeg"

        unknown = await http.post("/v1/files", content=b"plain words", headers=headers)
        assert unknown.json()["content_type"] == "application/octet-stream"


async def test_a_type_the_client_states_is_kept(gateway: RunningGateway) -> None:
    async with gateway.client() as http:
        stated = await http.post("/v1/files", content=jpeg(), headers={"Content-Type": "x/y"})
    assert stated.json()["content_type"] == "x/y"


async def test_files_over_the_limit_are_413_and_leave_nothing(infra: Infra) -> None:
    async with running_gateway(infra, max_upload_bytes=1000) as gw, gw.client() as http:
        declared = await http.post("/v1/files", content=b"x" * 5000)
        assert "1000 bytes" in assert_problem(declared, 413)["detail"]

        async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: caught while streaming
            for _ in range(10):
                yield b"y" * 500

        streamed = await http.post("/v1/files", content=chunked())
        assert_problem(streamed, 413)
        multipart = await http.post("/v1/files", files={"file": ("a.bin", b"z" * 5000)})
        assert_problem(multipart, 413)

        exactly = await http.post("/v1/files", content=b"w" * 1000)
        assert exactly.status_code == 201
        stored = [p for p in gw.settings.storage_dir.rglob("*") if p.is_file()]
        assert [p.name for p in stored] == [exactly.json()["id"]]


async def test_another_tenants_file_is_404(gateway: RunningGateway) -> None:
    async with gateway.client("acme") as acme, gateway.client("globex") as globex:
        ref = (await acme.post("/v1/files", content=b"secret bytes")).json()
        assert_problem(await globex.get(ref["url"]), 404)
        assert_problem(await acme.get("/v1/files/no-such-file"), 404)
        assert (await acme.get(ref["url"])).content == b"secret bytes"
    async with gateway.client(None) as anonymous:
        assert_problem(await anonymous.get(ref["url"]), 401)
        assert_problem(await anonymous.post("/v1/files", content=b"x"), 401)
