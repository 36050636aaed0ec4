"""SSRF: webhook URLs and image source URLs aimed at the inside are refused by default,
and link-local or cloud metadata ones even where private targets are allowed.

Two layers, both tested: the gateway checks a webhook URL when the job is
submitted (422, nothing recorded) and the contract takes only `https://`
image sources; then, at call time, the notifier checks each webhook attempt
and the image worker each source hop, because DNS can change between submit
and call. A TCP listener on 127.0.0.1 and [::1] counts connections, so
"refused" means that no connection was ever made.

A redirect from a public host to a private one cannot be staged offline (no
host here resolves to a public address); what is shown instead is that the
HTTP clients never follow a redirect by themselves: the notifier counts a 3xx
as a failed attempt, and the image worker passes every hop through the same
guard (a hop to plain http, to a URL with credentials or to another scheme is
refused before any connection).

DNS rebinding (a name that answers a public address at the check and an inside
one when the client connects) is staged by wrapping the guard's resolver: the
image worker's client checks the very address it connects to.
"""

import asyncio
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from offload_contracts.jobs import ImageSource
from offload_image.adapters.sources import ImageSources
from offload_image.app import source_client
from offload_image.settings import ImageSettings
from offload_runtime import url_guard
from offload_runtime.errors import PermanentError
from offload_runtime.keys import RedisKeys
from offload_runtime.redis import connect_redis
from offload_runtime.storage import FileStore
from offload_runtime.url_guard import UnsafeURL, guarded_transport
from tests.security.conftest import ConnectionCounter
from tests.security.report import record
from tests.support.gateway import (
    RunningGateway,
    ai_job,
    assert_problem,
    poll_job,
    running_gateway,
)
from tests.support.infra import Infra
from tests.support.notifier import (
    NotifierSpace,
    Receiver,
    notifier_space,
    running_notifier,
    serve,
)
from tests.support.waiting import wait_until


def inside_targets(port: int) -> dict[str, str]:
    """Host parts that all land inside: loopback, private, link-local, and names for them."""
    targets = {
        "127.0.0.1": f"127.0.0.1:{port}",
        "10.0.0.1": "10.0.0.1",
        "169.254.169.254 (cloud metadata)": "169.254.169.254",
        "[::1]": f"[::1]:{port}",
        "localhost (a name for loopback)": f"localhost:{port}",
        "[::ffff:127.0.0.1] (IPv4-mapped)": f"[::ffff:127.0.0.1]:{port}",
        "2130706433 (127.0.0.1 as one number)": f"2130706433:{port}",
        "0.0.0.0": f"0.0.0.0:{port}",
        "[fd00:ec2::254] (IPv6 metadata, ULA)": "[fd00:ec2::254]",
        "100.64.0.1 (carrier-grade NAT)": "100.64.0.1",
        "[2002:7f00:1::1] (6to4 of 127.0.0.1)": f"[2002:7f00:1::1]:{port}",
        "[2002:a9fe:a9fe::1] (6to4 of 169.254.169.254)": "[2002:a9fe:a9fe::1]",
    }
    hostname = socket.gethostname()
    try:
        # This machine's own name: it resolves to one of its own (non-public) addresses.
        socket.getaddrinfo(hostname, port)
        targets[f"{hostname} (this machine's name)"] = f"{hostname}:{port}"
    except socket.gaierror:
        pass
    return targets


# ---------------------------------------------------------------------- at submit time


async def test_the_gateway_refuses_inside_webhook_urls_at_submit_time(
    guarded: RunningGateway, counter: ConnectionCounter
) -> None:
    port = counter.servers[0].sockets[0].getsockname()[1]
    targets = inside_targets(port)
    others = {
        "file:///etc/passwd": "file:///etc/passwd",
        "gopher://": f"gopher://127.0.0.1:{port}/_INFO",
        "credentials in the URL": "http://user:pass@example.com/hook",
        "ip6-localhost (no such name here)": f"http://ip6-localhost:{port}/hook",
    }
    async with guarded.client() as http:
        before = (await http.get("/v1/jobs")).json()["items"]
        for name, host in targets.items():
            url = f"http://{host}/latest/meta-data/"
            answer = await http.post("/v1/jobs", json={**ai_job(), "webhook": {"url": url}})
            body = assert_problem(answer, 422)
            assert body["errors"][0]["loc"] == ["body", "webhook", "url"], (name, body)
            assert "non-public address" in body["detail"], (name, body["detail"])
        for url in others.values():
            answer = await http.post("/v1/jobs", json={**ai_job(), "webhook": {"url": url}})
            assert_problem(answer, 422)
        # An image source must be https: plain http is refused by the contract.
        for host in ("127.0.0.1", "169.254.169.254"):
            job = {
                "type": "image.process",
                "input": {"source": {"url": f"http://{host}/x.png"}, "operations": []},
            }
            assert_problem(await http.post("/v1/jobs", json=job), 422)
        assert (await http.get("/v1/jobs")).json()["items"] == before  # nothing recorded
    assert counter.connections == 0
    record(
        "SSRF at submit time (gateway, webhook.url)",
        f"{len(targets)} inside hosts ({', '.join(targets)}) + file://, gopher://, "
        "credentials, an unresolvable name; http image sources",
        f"{len(targets) + len(others) + 2} × 422 naming the field; 0 jobs recorded; "
        "0 connections made",
    )


# ---------------------------------------------------------------------- image worker, call time


async def test_the_image_worker_refuses_inside_source_urls_at_fetch_time(
    guarded: RunningGateway, counter: ConnectionCounter
) -> None:
    # The gateway takes any https source (it does not resolve it); the worker checks
    # the host when it fetches, since that is when the address is used.
    port = counter.servers[0].sockets[0].getsockname()[1]
    targets = inside_targets(port)
    async with guarded.client() as http:
        jobs = {}
        for name, host in targets.items():
            job = {
                "type": "image.process",
                "input": {"source": {"url": f"https://{host}/x.png"}, "operations": []},
            }
            answer = await http.post("/v1/jobs", json=job)
            assert answer.status_code == 202, (name, answer.text)
            jobs[name] = answer.json()["id"]
        for name, job_id in jobs.items():
            job = await poll_job(http, job_id, timeout=30)
            assert job["status"] == "failed", (name, job)
            assert job["attempt"] == 1 and job["error"]["retryable"] is False, (name, job)
            assert "source URL refused" in job["error"]["message"], (name, job["error"])
            assert "non-public address" in job["error"]["message"], (name, job["error"])
    assert counter.connections == 0
    record(
        "SSRF at fetch time (image worker, source.url)",
        f"{len(targets)} image.process jobs with https sources on inside hosts",
        f"{len(jobs)} jobs failed permanently on attempt 1 ('source URL refused: … "
        "non-public address'); 0 connections made",
    )


# ---------------------------------------------------------------------- notifier, call time


@pytest.fixture
async def space(infra: Infra) -> AsyncIterator[NotifierSpace]:
    async with notifier_space(infra) as space:
        yield space


async def test_the_notifier_refuses_inside_webhook_urls_at_delivery_time(
    space: NotifierSpace, counter: ConnectionCounter
) -> None:
    # Jobs recorded with inside webhook URLs (as if their DNS changed after submit, or
    # an older gateway let them in): the notifier checks again before each attempt.
    port = counter.servers[0].sockets[0].getsockname()[1]
    targets = inside_targets(port)
    async with running_notifier(space, webhook_allow_private=False) as notifier:
        jobs = {}
        for name, host in targets.items():
            job = await space.jobs.create(webhook={"url": f"http://{host}/hook"})
            await space.jobs.start(job)
            await space.jobs.complete(job)
            jobs[name] = job.id

        async def all_refused() -> bool:
            for job_id in jobs.values():
                records = await notifier.parts.deliveries.outcomes(job_id)
                if not records or any(r["outcome"] != "refused" for r in records.values()):
                    return False
            return True

        await wait_until(
            all_refused, timeout=20, what="every delivery to be refused", interval=0.02
        )
        errors = [
            str(r["error"])
            for job_id in jobs.values()
            for r in (await notifier.parts.deliveries.outcomes(job_id)).values()
        ]
    assert all("non-public address" in error for error in errors), errors
    assert counter.connections == 0
    record(
        "SSRF at delivery time (notifier, webhook)",
        f"{len(targets)} jobs whose recorded webhook URL is an inside host, "
        "OFFLOAD_WEBHOOK_ALLOW_PRIVATE=false",
        f"{len(errors)} deliveries recorded 'refused' (parked in the dead queue); "
        "0 connections made",
    )


async def test_the_notifier_never_follows_a_redirect(
    space: NotifierSpace, counter: ConnectionCounter
) -> None:
    port = counter.servers[0].sockets[0].getsockname()[1]
    hooks = Receiver()
    async with serve(hooks.app) as base:
        targets = {
            "to-inside": f"{base}/internal-admin",
            "to-metadata": f"http://[::1]:{port}/latest/meta-data/",
        }
        for path, location in targets.items():
            hooks.script(path, [(302, {"Location": location})])  # then 200
        # Loopback is allowed here, so the receiver can be reached at all: the redirect
        # targets would be reachable too, and still nothing follows them.
        async with running_notifier(space, webhook_allow_private=True) as notifier:
            jobs = {}
            for path in targets:
                job = await space.jobs.create(webhook={"url": f"{base}/{path}"})
                await space.jobs.start(job)
                await space.jobs.complete(job)
                jobs[path] = job.id

            async def delivered() -> bool:
                for job_id in jobs.values():
                    records = await notifier.parts.deliveries.outcomes(job_id)
                    if [r["outcome"] for r in records.values()] != ["delivered"]:
                        return False
                return True

            await wait_until(
                delivered, timeout=20, what="deliveries after the redirects", interval=0.02
            )
            attempts = [
                r["attempts"]
                for job_id in jobs.values()
                for r in (await notifier.parts.deliveries.outcomes(job_id)).values()
            ]
    # The 302 was a failed attempt, retried to the same URL: never a request elsewhere.
    assert [len(hooks.at(path)) for path in targets] == [2, 2]
    assert attempts == [2, 2]
    assert hooks.at("internal-admin") == []
    assert counter.connections == 0
    record(
        "webhook redirect (notifier)",
        "receivers answering 302 → a loopback admin path and 302 → [::1] metadata path, once",
        "each 302 counted a failed attempt, retried to the same URL, delivered on attempt 2; "
        "0 requests to the redirect targets",
    )


# ---------------------------------------------------------------------- private targets allowed

METADATA_HOSTS = {
    "169.254.169.254": "169.254.169.254",
    "[fe80::1] (link-local)": "[fe80::1]",
    "[fd00:ec2::254] (AWS over IPv6)": "[fd00:ec2::254]",
    "100.100.100.200 (Alibaba Cloud)": "100.100.100.200",
    "[::ffff:169.254.169.254] (IPv4-mapped)": "[::ffff:169.254.169.254]",
    "[64:ff9b::a9fe:a9fe] (NAT64)": "[64:ff9b::a9fe:a9fe]",
}


async def test_with_private_targets_allowed_metadata_is_still_refused_everywhere(
    infra: Infra, space: NotifierSpace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # OFFLOAD_WEBHOOK_ALLOW_PRIVATE=true, as `make run` sets it: loopback and private
    # networks are reachable for local development, cloud metadata never.
    urls = {name: f"http://{host}/latest/meta-data/" for name, host in METADATA_HOSTS.items()}
    async with (
        running_gateway(infra, webhook_allow_private=True) as gateway,
        gateway.client() as http,
    ):
        for name, url in urls.items():
            answer = await http.post("/v1/jobs", json={**ai_job(), "webhook": {"url": url}})
            body = assert_problem(answer, 422)
            assert "always refused" in body["detail"], (name, body["detail"])
        loopback = {"url": "http://127.0.0.1:9/hook"}
        answer = await http.post("/v1/jobs", json={**ai_job(), "webhook": loopback})
        assert answer.status_code == 202, answer.text  # what the switch is for

    async with running_notifier(space, webhook_allow_private=True) as notifier:
        jobs = {}
        for name, url in urls.items():
            job = await space.jobs.create(webhook={"url": url})
            await space.jobs.start(job)
            await space.jobs.complete(job)
            jobs[name] = job.id

        async def all_refused() -> bool:
            for job_id in jobs.values():
                records = await notifier.parts.deliveries.outcomes(job_id)
                if not records or any(r["outcome"] != "refused" for r in records.values()):
                    return False
            return True

        await wait_until(
            all_refused, timeout=20, what="every delivery to be refused", interval=0.02
        )
        errors = [
            str(r["error"])
            for job_id in jobs.values()
            for r in (await notifier.parts.deliveries.outcomes(job_id)).values()
        ]
    assert all("always refused" in error for error in errors), errors

    client = connect_redis(infra.redis_url)
    http = source_client(ImageSettings(webhook_allow_private=True))
    adapter = image_sources(infra, tmp_path, client, http, allow_private=True)
    sources: dict[str, str] = {}
    try:
        for name, host in METADATA_HOSTS.items():
            with pytest.raises(PermanentError) as refused:
                async with adapter.open(ImageSource(url=f"https://{host}/x.png"), "acme"):
                    pass
            sources[name] = str(refused.value)
        # At connect time too: a name that resolves to the metadata address only then.
        monkeypatch.setattr(url_guard, "_resolve", _answers(["93.184.216.34"], ["169.254.169.254"]))
        with pytest.raises(PermanentError) as rebound:
            async with adapter.open(ImageSource(url="https://rebinding.example/x.png"), "acme"):
                pass
    finally:
        await http.aclose()
        await client.aclose()
    assert all("always refused" in error for error in sources.values()), sources
    assert "always refused" in str(rebound.value)
    record(
        "SSRF with OFFLOAD_WEBHOOK_ALLOW_PRIVATE=true (the make run default)",
        f"{len(METADATA_HOSTS)} link-local / cloud metadata hosts as webhook URLs (gateway, "
        "notifier) and image sources (worker, and a name rebinding to 169.254.169.254)",
        f"{len(urls)} × 422, {len(errors)} deliveries refused, {len(sources) + 1} sources "
        "refused, all 'always refused'; a loopback webhook still accepted",
    )


def _answers(*answers: list[str]) -> Callable[[str, int], Awaitable[list[str]]]:
    """A resolver that gives these answers in turn (the last one from then on)."""
    given = list(answers)

    async def resolve(host: str, port: int) -> list[str]:
        return given.pop(0) if len(given) > 1 else given[0]

    return resolve


# ---------------------------------------------------------------------- image source redirects


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


async def redirecting_server(
    cert: Path, key: Path, locations: dict[str, str]
) -> tuple[asyncio.Server, str]:
    """HTTPS on 127.0.0.1 answering `302 Location: locations[path]` for each path."""
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            location = locations.get(head.split(" ", 2)[1], "/")
            writer.write(
                f"HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=tls)
    return server, f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"


def image_sources(
    infra: Infra,
    tmp_path: Path,
    client: "aioredis.Redis",
    http: httpx.AsyncClient,
    *,
    allow_private: bool,
) -> ImageSources:
    """The image worker's source adapter over this test's file store and HTTP client."""
    return ImageSources(
        FileStore(tmp_path, client, RedisKeys(f"{infra.redis_prefix}ssrf:")),
        http,
        max_bytes=1_000_000,
        allow_private=allow_private,
        max_redirects=3,
        total_timeout_s=5,
    )


async def test_an_image_source_redirect_is_checked_hop_by_hop_never_followed_blindly(
    infra: Infra,
    tmp_path: Path,
    certificate: tuple[Path, Path],
    counter: ConnectionCounter,
) -> None:
    port = counter.servers[0].sockets[0].getsockname()[1]
    locations = {
        "/to-http": f"http://127.0.0.1:{port}/latest/meta-data/",
        "/to-credentials": f"https://admin:hunter2@127.0.0.1:{port}/",
        "/to-file": "file:///etc/passwd",
        "/to-gopher": f"gopher://127.0.0.1:{port}/_stats",
    }
    server, base = await redirecting_server(*certificate, locations)
    client = connect_redis(infra.redis_url)
    tls = ssl.create_default_context(cafile=str(certificate[0]))
    http = httpx.AsyncClient(verify=tls, follow_redirects=False, trust_env=False, timeout=5)
    # Loopback allowed, so that the first hop (this test's server) can be reached at all.
    adapter = image_sources(infra, tmp_path, client, http, allow_private=True)
    errors: dict[str, str] = {}
    try:
        for path in locations:
            with pytest.raises(PermanentError) as refused:
                async with adapter.open(ImageSource(url=f"{base}{path}"), "acme"):
                    pass
            errors[path] = str(refused.value)
    finally:
        server.close()
        await server.wait_closed()
        await http.aclose()
        await client.aclose()
    assert all("source URL refused" in error for error in errors.values()), errors
    assert "credentials" in errors["/to-credentials"]
    assert counter.connections == 0  # no hop after a refused one was ever called
    record(
        "image source redirect",
        "https source answering 302 to http://, to https://user:pass@…, to file://, to gopher://",
        f"{len(errors)} permanent 'source URL refused' errors at the second hop; "
        "0 connections to the redirect targets",
    )


# ---------------------------------------------------------------------- DNS rebinding


@pytest.fixture
def rebinding(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """DNS rebinding, staged: a name's first answer is a public address, later ones the truth.

    That is what an attacker's DNS server does: the URL passes the check, then the
    client's own lookup, moments later, lands inside. Returns the hosts looked up.
    """
    real = url_guard._resolve
    asked: list[str] = []

    async def first_public_then_real(host: str, port: int) -> list[str]:
        asked.append(host)
        return ["93.184.216.34"] if len(asked) == 1 else await real(host, port)

    monkeypatch.setattr(url_guard, "_resolve", first_public_then_real)
    return asked


async def test_the_guarded_transport_checks_the_address_it_connects_to(
    counter: ConnectionCounter,
) -> None:
    port = counter.servers[0].sockets[0].getsockname()[1]
    targets = [f"127.0.0.1:{port}", f"[::1]:{port}", f"localhost:{port}"]
    async with httpx.AsyncClient(transport=guarded_transport(allow_private=False)) as http:
        for host in targets:
            with pytest.raises(UnsafeURL, match="non-public address"):
                await http.get(f"http://{host}/latest/meta-data/")
    assert counter.connections == 0
    # The same client allowed private addresses does connect: the listener is reachable.
    async with httpx.AsyncClient(transport=guarded_transport(allow_private=True)) as http:
        with pytest.raises(httpx.TransportError):  # the listener hangs up without answering
            await http.get(f"http://127.0.0.1:{port}/")
    assert counter.connections == 1


async def test_an_image_source_whose_dns_turns_inside_after_the_check_is_refused(
    infra: Infra, tmp_path: Path, counter: ConnectionCounter, rebinding: list[str]
) -> None:
    port = counter.servers[0].sockets[0].getsockname()[1]
    client = connect_redis(infra.redis_url)
    http = source_client(ImageSettings(webhook_allow_private=False))
    adapter = image_sources(infra, tmp_path, client, http, allow_private=False)
    try:
        with pytest.raises(PermanentError, match=r"source URL refused.*non-public") as refused:
            async with adapter.open(ImageSource(url=f"https://localhost:{port}/x.png"), "acme"):
                pass
    finally:
        await http.aclose()
        await client.aclose()
    assert rebinding == ["localhost", "localhost"]  # checked, then resolved again to connect
    assert counter.connections == 0
    record(
        "DNS rebinding (image worker, source.url)",
        "a source host whose DNS answers a public address at the check, loopback at connect",
        f"permanent error at connect time ({str(refused.value)[:60]}…); 0 connections made",
    )


async def test_a_webhook_whose_dns_turns_inside_after_the_check_is_refused(
    space: NotifierSpace, counter: ConnectionCounter, rebinding: list[str]
) -> None:
    port = counter.servers[0].sockets[0].getsockname()[1]
    async with running_notifier(space, webhook_allow_private=False) as notifier:
        job = await space.jobs.create(webhook={"url": f"http://localhost:{port}/hook"})
        await space.jobs.start(job)
        await space.jobs.complete(job)

        async def refused() -> bool:
            records = await notifier.parts.deliveries.outcomes(job.id)
            return bool(records) and all(r["outcome"] == "refused" for r in records.values())

        await wait_until(refused, timeout=20, what="the delivery to be refused", interval=0.02)
        [outcome] = (await notifier.parts.deliveries.outcomes(job.id)).values()
    assert rebinding[:2] == ["localhost", "localhost"]  # checked, then resolved to connect
    assert outcome["attempts"] == 1 and "non-public address" in str(outcome["error"])
    assert counter.connections == 0
    record(
        "DNS rebinding (notifier, webhook)",
        "a webhook host whose DNS answers a public address at the check, loopback at connect",
        "the first attempt refused at connect time (parked in the dead queue); 0 connections made",
    )
