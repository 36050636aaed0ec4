"""Image sources: stored files by id for the job's tenant, and https URLs over real TLS.

A small HTTPS server (a throwaway self-signed certificate made with `openssl`)
serves photos, redirects, errors, oversize and stalled bodies, so the
download rules are checked against a real TLS connection: size limit,
timeouts, each redirect hop re-checked, 4xx permanent, 429/5xx transient.
"""

import asyncio
import shutil
import ssl
import subprocess
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from offload_contracts import JobStatus
from offload_contracts.jobs import ImageSource
from offload_image.adapters.sources import ImageSources
from offload_image.app import ImageDeps
from offload_runtime.errors import PermanentError, TransientError
from offload_runtime.url_guard import guarded_transport
from tests.integration.test_image_worker import ImageRig, jpeg_bytes
from tests.support.infra import Infra

PHOTO = jpeg_bytes(320, 200)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make the test server's certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    yield cert, key


class PhotoServer:
    """HTTPS on 127.0.0.1 with a route per behaviour; `hits` counts requests per path."""

    def __init__(self, cert: Path, key: Path) -> None:
        self._tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._tls.load_cert_chain(cert, key)
        self.hits: Counter[str] = Counter()
        self._handlers: set[asyncio.Task[Any]] = set()
        self._closing = asyncio.Event()

    async def __aenter__(self) -> "PhotoServer":
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self._tls)
        self.port = self._server.sockets[0].getsockname()[1]
        self.base = f"https://127.0.0.1:{self.port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        self._closing.set()  # ends a stalled answer; endless ones end with their client
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            path = head.split(" ", 2)[1]
            self.hits[path] += 1
            await self._answer(path, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            self._handlers.discard(task)
            writer.close()

    @staticmethod
    def _head(status: str, headers: dict[str, str]) -> bytes:
        lines = [
            f"HTTP/1.1 {status}",
            "Connection: close",
            *(f"{k}: {v}" for k, v in headers.items()),
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    async def _answer(self, path: str, writer: asyncio.StreamWriter) -> None:
        head = self._head
        if path == "/photo.jpg" or (path == "/flaky.jpg" and self.hits[path] > 1):
            writer.write(
                head("200 OK", {"Content-Type": "image/jpeg", "Content-Length": str(len(PHOTO))})
            )
            writer.write(PHOTO)
        elif path == "/flaky.jpg":
            writer.write(
                head("503 Service Unavailable", {"Content-Length": "0", "Retry-After": "0"})
            )
        elif path == "/moved":
            writer.write(head("302 Found", {"Location": "/photo.jpg", "Content-Length": "0"}))
        elif path == "/to-http":
            location = f"http://127.0.0.1:{self.port}/photo.jpg"
            writer.write(
                head("301 Moved Permanently", {"Location": location, "Content-Length": "0"})
            )
        elif path == "/loop":
            writer.write(head("302 Found", {"Location": "/loop", "Content-Length": "0"}))
        elif path == "/busy":
            writer.write(head("429 Too Many Requests", {"Retry-After": "7", "Content-Length": "0"}))
        elif path == "/huge":
            writer.write(head("200 OK", {"Content-Length": str(10**9)}))
        elif path == "/endless":
            writer.write(head("200 OK", {"Content-Type": "image/jpeg"}))
            while True:  # no Content-Length: only the running count can stop it
                writer.write(b"\xff" * 65536)
                await writer.drain()
        elif path == "/stall":
            writer.write(head("200 OK", {"Content-Length": "1000"}))
            await writer.drain()
            await self._closing.wait()
        else:
            writer.write(head("404 Not Found", {"Content-Length": "0"}))
        await writer.drain()


@pytest.fixture
async def server(certificate: tuple[Path, Path]) -> AsyncIterator[PhotoServer]:
    async with PhotoServer(*certificate) as running:
        yield running


@pytest.fixture
async def trusting_http(certificate: tuple[Path, Path]) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client set up like the worker's (`source_client`), trusting the test certificate."""
    tls = ssl.create_default_context(cafile=str(certificate[0]))
    async with httpx.AsyncClient(
        transport=guarded_transport(allow_private=True, verify=tls),
        timeout=httpx.Timeout(0.5, connect=1),
        follow_redirects=False,
        trust_env=False,
    ) as client:
        yield client


@pytest.fixture
async def rig(infra: Infra, tmp_path: Path) -> AsyncIterator[ImageRig]:
    rig = ImageRig(infra, tmp_path / "storage")
    yield rig
    await rig.close()


def sources(rig: ImageRig, http: httpx.AsyncClient, **overrides: Any) -> ImageSources:
    options: dict[str, Any] = {
        "max_bytes": 1_000_000,
        "allow_private": True,
        "max_redirects": 2,
        "total_timeout_s": 5,
    }
    options.update(overrides)
    return ImageSources(rig.files, http, **options)


async def fetch(adapter: ImageSources, url: str) -> bytes:
    async with adapter.open(ImageSource(url=url), "acme") as path:
        return path.read_bytes()


# ---------------------------------------------------------------------- URLs, adapter level


async def test_a_url_is_downloaded_and_the_copy_removed_after_the_job(
    rig: ImageRig, server: PhotoServer, trusting_http: httpx.AsyncClient
) -> None:
    adapter = sources(rig, trusting_http)
    async with adapter.open(ImageSource(url=f"{server.base}/photo.jpg"), "acme") as path:
        assert path.read_bytes() == PHOTO
        assert path.is_relative_to(rig.files.scratch_dir)
    assert not path.exists()


async def test_a_url_by_host_name_is_fetched_over_verified_tls_through_the_guard(
    rig: ImageRig, server: PhotoServer, trusting_http: httpx.AsyncClient
) -> None:
    # The guard resolves the name itself and connects to an address it checked
    # (`localhost` may answer ::1 first, where nothing listens: the next address is
    # tried); TLS still verifies the certificate.
    url = server.base.replace("127.0.0.1", "localhost") + "/photo.jpg"
    assert await fetch(sources(rig, trusting_http), url) == PHOTO


async def test_a_redirect_is_followed_after_checking_the_next_hop(
    rig: ImageRig, server: PhotoServer, trusting_http: httpx.AsyncClient
) -> None:
    assert await fetch(sources(rig, trusting_http), f"{server.base}/moved") == PHOTO
    assert server.hits["/moved"] == 1 and server.hits["/photo.jpg"] == 1


async def test_a_redirect_to_plain_http_is_refused(
    rig: ImageRig, server: PhotoServer, trusting_http: httpx.AsyncClient
) -> None:
    with pytest.raises(PermanentError, match="source URL refused: URL scheme must be one of https"):
        await fetch(sources(rig, trusting_http), f"{server.base}/to-http")
    assert server.hits["/photo.jpg"] == 0


async def test_too_many_redirects_is_a_permanent_error(
    rig: ImageRig, server: PhotoServer, trusting_http: httpx.AsyncClient
) -> None:
    with pytest.raises(PermanentError, match="redirected more than 2 times"):
        await fetch(sources(rig, trusting_http), f"{server.base}/loop")
    assert server.hits["/loop"] == 3


async def test_a_private_address_is_refused_unless_allowed(
    rig: ImageRig, server: PhotoServer, trusting_http: httpx.AsyncClient
) -> None:
    adapter = sources(rig, trusting_http, allow_private=False)
    with pytest.raises(PermanentError, match=r"source URL refused: .*non-public address"):
        await fetch(adapter, f"{server.base}/photo.jpg")
    assert server.hits["/photo.jpg"] == 0  # refused before connecting


async def test_a_4xx_is_permanent_and_a_429_transient_with_its_retry_after(
    rig: ImageRig, server: PhotoServer, trusting_http: httpx.AsyncClient
) -> None:
    adapter = sources(rig, trusting_http)
    with pytest.raises(PermanentError, match="source URL answered 404"):
        await fetch(adapter, f"{server.base}/gone")
    with pytest.raises(TransientError, match="source URL answered 429") as busy:
        await fetch(adapter, f"{server.base}/busy")
    assert busy.value.retry_after == 7


async def test_a_source_over_the_size_limit_is_refused_declared_or_streamed(
    rig: ImageRig, server: PhotoServer, trusting_http: httpx.AsyncClient
) -> None:
    adapter = sources(rig, trusting_http, max_bytes=200_000)
    with pytest.raises(
        PermanentError, match="serves 1,000,000,000 bytes, over the limit of 200,000"
    ):
        await fetch(adapter, f"{server.base}/huge")
    with pytest.raises(PermanentError, match="sent more than the limit of 200,000 bytes"):
        await fetch(adapter, f"{server.base}/endless")
    assert rig.scratch_files() == []  # the partial download was removed


async def test_a_stalled_download_times_out_as_a_transient_error(
    rig: ImageRig, server: PhotoServer, trusting_http: httpx.AsyncClient
) -> None:
    with pytest.raises(TransientError, match="source URL timed out"):
        await fetch(sources(rig, trusting_http), f"{server.base}/stall")
    with pytest.raises(TransientError, match=r"took longer than 0\.2s"):
        await fetch(sources(rig, trusting_http, total_timeout_s=0.2), f"{server.base}/stall")
    assert rig.scratch_files() == []


# ---------------------------------------------------------------------- stored files


async def test_a_stored_file_is_used_in_place_for_its_own_tenant_only(
    rig: ImageRig, trusting_http: httpx.AsyncClient
) -> None:
    mine = await rig.files.save_bytes("acme", PHOTO, "image/jpeg")
    adapter = sources(rig, trusting_http)
    async with adapter.open(ImageSource(file_id=mine.id), "acme") as path:
        assert path == Path(mine.path) and path.read_bytes() == PHOTO
    assert await asyncio.to_thread(Path(mine.path).exists)  # the stored file stays
    with pytest.raises(PermanentError, match=f"source file {mine.id} not found"):
        async with adapter.open(ImageSource(file_id=mine.id), "globex"):
            pass
    small = sources(rig, trusting_http, max_bytes=100)
    with pytest.raises(PermanentError, match=r"source file is [\d,]+ bytes, over the limit of 100"):
        async with small.open(ImageSource(file_id=mine.id), "acme"):
            pass


# ---------------------------------------------------------------------- through the broker


async def test_a_url_job_retries_a_503_then_completes(
    rig: ImageRig, server: PhotoServer, trusting_http: httpx.AsyncClient
) -> None:
    await rig.start(ImageDeps(http=trusting_http))
    job = await rig.submit(
        {"op": "resize", "width": 160},
        {"op": "convert", "format": "png"},
        url=f"{server.base}/flaky.jpg",
    )
    record = await rig.wait_status(job.id)
    assert record.status == JobStatus.COMPLETED, record.error
    assert record.attempt == 2 and server.hits["/flaky.jpg"] == 2
    image, _ = await rig.output(record.result["file"]["id"])  # type: ignore[index]
    assert (image.format, image.size) == ("PNG", (160, 100))
    assert rig.scratch_files() == []


async def test_a_url_on_a_private_address_fails_by_default(
    infra: Infra, tmp_path: Path, server: PhotoServer, trusting_http: httpx.AsyncClient
) -> None:
    rig = ImageRig(infra, tmp_path / "storage", webhook_allow_private=False)
    try:
        await rig.start(ImageDeps(http=trusting_http))
        job = await rig.submit(url=f"{server.base}/photo.jpg")
        record = await rig.wait_status(job.id)
        assert record.status == JobStatus.FAILED and record.attempt == 1
        assert record.error is not None and "source URL refused" in record.error.message
        assert server.hits["/photo.jpg"] == 0
    finally:
        await rig.close()
