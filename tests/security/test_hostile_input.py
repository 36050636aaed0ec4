"""Hostile input to the gateway over real HTTP: every bad request a clear 4xx, never a 5xx,
nothing stored, nothing read outside storage, and the gateway still serving afterwards.

Requests that httpx would refuse to send or would clean up (`..` segments, raw
bytes in headers, a body larger than anything sane, sent without a declared
size) go through `tests.support.rawhttp`, byte for byte.
"""

import gzip
import hashlib
import json
import uuid
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.security.report import record
from tests.support.gateway import PROBLEM, RunningGateway, ai_job, assert_problem, running_gateway
from tests.support.infra import Infra
from tests.support.rawhttp import RawAnswer, raw_request, stream_until_answered

MB = 1024 * 1024
ADMIN_KEY = f"admin-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
async def gateway(infra: Infra) -> AsyncIterator[RunningGateway]:
    async with running_gateway(infra, admin_keys=ADMIN_KEY) as gw:
        yield gw


async def still_serving(gw: RunningGateway) -> None:
    """The gateway answers, and accepts a good job, after whatever the test threw at it."""
    async with gw.client() as http:
        assert (await http.get("/healthz")).status_code == 200
        answer = await http.post("/v1/jobs", json=ai_job("still fine?"))
        assert answer.status_code == 202, answer.text


async def jobs_of(gw: RunningGateway, tenant: str = "acme") -> int:
    indexes = [gw.keys.tenant_jobs(tenant, shard) for shard in gw.keys.all_shards]
    return sum([int(await gw.deps.redis.zcard(index)) for index in indexes])


def stored_files(gw: RunningGateway) -> list[Path]:
    root = gw.settings.storage_dir
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def auth(gw: RunningGateway, tenant: str = "acme") -> dict[str, str]:
    return gw.headers(tenant)


def assert_raw_problem(answer: RawAnswer, *statuses: int) -> dict[str, Any]:
    assert answer.status in statuses, (answer.status, answer.head, answer.body[:500])
    assert answer.header("content-type") == PROBLEM, answer.head
    body: dict[str, Any] = json.loads(answer.body)
    assert body["status"] == answer.status and body["detail"]
    return body


# ---------------------------------------------------------------------- oversized bodies


async def test_a_json_body_past_the_limit_is_413_before_it_is_read(gateway: RunningGateway) -> None:
    limit = gateway.settings.max_json_bytes
    before = await jobs_of(gateway)
    prompt = "x" * (10 * MB)  # a 10 MB prompt: past the body limit
    async with gateway.client() as http:
        declared = await http.post("/v1/jobs", json=ai_job(prompt))
    assert f"{limit}" in assert_problem(declared, 413)["detail"]

    # Declared 1 GB, body never sent: refused on the header alone, at once.
    head_only = await stream_until_answered(
        gateway.base_url,
        "POST /v1/jobs HTTP/1.1",
        {**auth(gateway), "Content-Type": "application/json", "Content-Length": str(1024 * MB)},
        chunk=b" " * 65536,
        total=0,
        chunked=False,
    )
    assert head_only.answer.status == 413
    # No size declared (chunked): counted while it streams, refused just past the limit;
    # the other 1 GB is never read.
    streamed = await stream_until_answered(
        gateway.base_url,
        "POST /v1/jobs HTTP/1.1",
        {**auth(gateway), "Content-Type": "application/json"},
        chunk=b"[" * 65536,
        total=1024 * MB,
    )
    assert streamed.answer.status == 413, streamed.answer.body
    assert streamed.sent < limit + 32 * MB, streamed.sent  # socket buffers, not the body
    assert await jobs_of(gateway) == before
    await still_serving(gateway)
    record(
        "JSON body past the limit (POST /v1/jobs)",
        f"10 MB prompt; 1 GB declared; 1 GB chunked (limit {limit // MB} MiB)",
        f"413 ×3; chunked refused after {streamed.sent / MB:.1f} MB sent of 1024; "
        "0 jobs recorded; gateway serving",
    )


async def test_an_upload_past_the_limit_is_413_and_leaves_no_file(infra: Infra) -> None:
    limit = 1 * MB
    async with running_gateway(infra, max_upload_bytes=limit) as gw:
        streamed = await stream_until_answered(
            gw.base_url,
            "POST /v1/files HTTP/1.1",
            {**auth(gw), "Content-Type": "application/octet-stream"},
            chunk=b"\0" * 65536,
            total=1024 * MB,
        )
        assert_raw_problem(streamed.answer, 413)
        assert streamed.sent < limit + 32 * MB, streamed.sent
        assert stored_files(gw) == []  # neither a file nor a half-written temp file
        assert await gw.deps.redis.keys(f"{gw.settings.redis_prefix}file:*") == []
        await still_serving(gw)
    record(
        "upload past max_upload_bytes",
        "1 GB chunked body, limit 1 MiB",
        f"413 after {streamed.sent / MB:.1f} MB sent; 0 files on disk or in Redis",
    )


# ---------------------------------------------------------------------- JSON shapes


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"[" * 10_000 + b"]" * 10_000, id="10k-nested-arrays"),
        pytest.param(b'{"a":' * 10_000 + b"1" + b"}" * 10_000, id="10k-nested-objects"),
        pytest.param(
            b'{"type":"ai.generate","input":{"prompt":' + b"[" * 10_000 + b"]" * 10_000 + b"}}",
            id="10k-nested-inside-input",
        ),
        pytest.param(b"[" * 100_000, id="100k-unclosed"),
    ],
)
async def test_deeply_nested_json_is_a_4xx_and_the_gateway_carries_on(
    gateway: RunningGateway, body: bytes
) -> None:
    before = await jobs_of(gateway)
    async with gateway.client() as http:
        answer = await http.post(
            "/v1/jobs", content=body, headers={"Content-Type": "application/json"}
        )
    assert 400 <= answer.status_code < 500, (answer.status_code, answer.text[:300])
    assert answer.headers["content-type"] == PROBLEM
    assert len(answer.content) < 4096  # the error does not echo the input back
    assert await jobs_of(gateway) == before
    await still_serving(gateway)


async def test_nesting_and_odd_numbers_on_every_json_route(gateway: RunningGateway) -> None:
    """The admin API's JSON body goes through the same parser: same answers."""
    nested = b'{"all":' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    statuses = []
    async with gateway.client(None) as http:
        for path, headers in [
            ("/v1/jobs", auth(gateway)),
            ("/v1/admin/dead-letters/ai.dead/replay", {"Authorization": f"Bearer {ADMIN_KEY}"}),
        ]:
            for body in (
                nested,
                b'{"type":"ai.generate","input":{"prompt":"x","max_tokens":1'
                + b"0" * 100_000
                + b"}}",
                b'{"type":"ai.generate","input":{"prompt":"x","temperature":NaN}}',
                b'{"type":"ai.generate","input":{"prompt":"x","temperature":1e999999}}',
            ):
                answer = await http.post(
                    path, content=body, headers={**headers, "Content-Type": "application/json"}
                )
                statuses.append(answer.status_code)
                assert 400 <= answer.status_code < 500, (path, body[:80], answer.text[:300])
    await still_serving(gateway)
    record(
        "deeply nested JSON, huge and non-finite numbers",
        "10,000-level arrays/objects (also inside `input`), 100,000 unclosed, "
        "a 100,000-digit integer, NaN, 1e999999; on POST /v1/jobs and the admin replay",
        f"statuses {sorted(set(statuses))} (no 5xx); 0 jobs recorded; gateway serving",
    )


async def test_a_huge_string_under_the_body_limit_is_a_422_that_does_not_echo_it(
    gateway: RunningGateway,
) -> None:
    prompt = "A" * (MB // 2)  # under the body limit, over the contract's 100,000 characters
    async with gateway.client() as http:
        answer = await http.post("/v1/jobs", json=ai_job(prompt))
        body = assert_problem(answer, 422)
        assert body["errors"][0]["loc"][-1] == "prompt"
        assert len(answer.content) < 4096
    # Long query and path: the app's 422/404 while they fit the HTTP parser's limits,
    # the parser's own 400 past them (a 100 KB request line, a 1 MiB header).
    cursor = await raw_request(
        gateway.base_url, f"GET /v1/jobs?cursor={'c' * 10_000} HTTP/1.1", auth(gateway)
    )
    assert_raw_problem(cursor, 422)
    # A 10,000-character id or path: the 404 says how long it was, and repeats only its start.
    for target in (f"/v1/jobs/{'j' * 10_000}", f"/v1/files/{'f' * 10_000}", f"/{'p' * 10_000}"):
        path = await raw_request(gateway.base_url, f"GET {target} HTTP/1.1", auth(gateway))
        problem = assert_raw_problem(path, 404)
        assert len(path.body) < 1024, problem
        assert problem["detail"].endswith(" characters)"), problem
    line = await raw_request(gateway.base_url, f"GET /v1/jobs?cursor={'c' * 100_000} HTTP/1.1")
    assert line.status == 400, line.head
    # uvicorn's httptools parser sets no limit on a header's size (upstream: it cannot be
    # configured); a 1 MiB header reaches the app, which answers it like any other.
    header = await raw_request(
        gateway.base_url, "GET /v1/jobs HTTP/1.1", {**auth(gateway), "X-Big": "h" * MB}
    )
    assert header.status == 200, header.head
    await still_serving(gateway)
    record(
        "huge strings",
        "a 512 KiB prompt (limit 100,000 chars); 10 KB cursor and job id; "
        "a 100 KB request line; a 1 MiB header",
        "422, 422, 404 (the prompt not echoed: answer < 4 KiB; the id's first 80 characters "
        "and its length, answer < 1 KiB); the HTTP parser's 400 for "
        "the request line; the 1 MiB header is read whole (no header limit in uvicorn's "
        "httptools parser); no 5xx",
    )


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b'{"type":"ai.generate","input":{"prompt":"\xff\xfe"}}', id="invalid-byte"),
        pytest.param(b'{"type":"ai.generate","input":{"prompt":"\xc0\xaf"}}', id="overlong"),
        pytest.param(b'{"type":"ai.generate","input":{"prompt":"\xed\xa0\x80"}}', id="surrogate"),
        pytest.param(
            b'{"type":"ai.generate","input":{"prompt":"\\ud800 lone"}}', id="escaped-lone-surrogate"
        ),
        pytest.param('{"type":"ai.generate"}'.encode("utf-16"), id="utf-16"),
        pytest.param(b"\x00" * 64, id="nul-bytes"),
    ],
)
async def test_bytes_that_are_not_utf8_json_are_a_4xx(gateway: RunningGateway, raw: bytes) -> None:
    before = await jobs_of(gateway)
    async with gateway.client() as http:
        answer = await http.post(
            "/v1/jobs", content=raw, headers={"Content-Type": "application/json"}
        )
    assert answer.status_code in (400, 422), (answer.status_code, answer.text[:300])
    assert answer.headers["content-type"] == PROBLEM
    assert await jobs_of(gateway) == before


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
        "application/jsonx",
        "json",
        "application/json\u00e9".encode().decode("latin-1"),
    ],
)
async def test_a_job_not_sent_as_json_is_415(
    gateway: RunningGateway, content_type: str | None
) -> None:
    headers = [(b"Authorization", auth(gateway)["Authorization"].encode())]
    if content_type is not None:
        headers.append((b"Content-Type", content_type.encode("latin-1")))
    answer = await raw_request(
        gateway.base_url, "POST /v1/jobs HTTP/1.1", headers, json.dumps(ai_job()).encode()
    )
    assert_raw_problem(answer, 415)


# ---------------------------------------------------------------------- path traversal


TRAVERSALS = [
    "/v1/files/../../../../etc/passwd",
    "/v1/files/..%2f..%2f..%2f..%2fetc%2fpasswd",
    "/v1/files/%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/v1/files/%2e%2e",
    "/v1/files/..",
    "/v1/files/%2fetc%2fpasswd",
    "/v1/files//etc/passwd",
    "/v1/files/..%5c..%5c..%5cetc%5cpasswd",
    "/v1/files/%c0%ae%c0%ae%c0%af%c0%ae%c0%ae%c0%afetc%c0%afpasswd",
    "/v1/files/passwd%00",
    "/v1/files/%00",
    "/v1/files/*",
    "/v1/files/.upload-x",
    "/dashboard/..%2f..%2fsettings.py",
    "/dashboard/%2e%2e%2fpages.py",
    "/asyncapi/..%2f..%2f..%2fetc%2fpasswd",
]


async def test_path_traversal_in_file_ids_is_404_and_reads_nothing(
    gateway: RunningGateway,
) -> None:
    # A file next to the storage root, and one inside its scratch directory: neither
    # is a stored file, so neither may ever be served.
    root = gateway.settings.storage_dir
    marker = f"SENTINEL-{uuid.uuid4().hex}"
    outside = root.parent / f"offload-secret-{uuid.uuid4().hex[:8]}.txt"
    scratch = root / ".scratch" / "leftover.txt"
    scratch.parent.mkdir(parents=True, exist_ok=True)
    outside.write_text(marker)
    scratch.write_text(marker)
    targets = [
        *TRAVERSALS,
        f"/v1/files/..%2f..%2f{outside.name}",
        f"/v1/files/%2e%2e%2f{outside.name}",
        "/v1/files/" + str(outside).replace("/", "%2f"),  # its absolute path
        "/v1/files/.scratch%2fleftover.txt",
        "/v1/files/..%2f.scratch%2fleftover.txt",
    ]
    try:
        statuses = set()
        for target in targets:
            answer = await raw_request(gateway.base_url, f"GET {target} HTTP/1.1", auth(gateway))
            statuses.add(answer.status)
            assert answer.status in (400, 404), (target, answer.status, answer.body[:200])
            assert marker.encode() not in answer.body, target
            assert b"root:" not in answer.body, target
        # The same ids in a job: refused by the contract, nothing queued.
        async with gateway.client() as http:
            for file_id in ("../../etc/passwd", "/etc/passwd", "a\x00b", "..", "a/b"):
                job = {
                    "type": "image.process",
                    "input": {"source": {"file_id": file_id}, "operations": []},
                }
                assert_problem(await http.post("/v1/jobs", json=job), 422)
    finally:
        outside.unlink(missing_ok=True)
        scratch.unlink(missing_ok=True)
    record(
        "path traversal in file ids",
        f"{len(targets)} raw paths (../, %2e%2e%2f, %5c, overlong UTF-8, absolute, NUL, "
        "the scratch dir, dashboard/asyncapi names) + 5 image source ids",
        f"statuses {sorted(statuses)}; the sentinel outside storage never served; image ids 422",
    )


# ---------------------------------------------------------------------- header injection


INJECTED = "X-Injected"


def assert_not_reflected(answer: RawAnswer, *needles: str) -> None:
    head = answer.head.decode("latin-1").lower()
    assert INJECTED.lower() not in head, answer.head
    for needle in needles:
        assert needle.lower() not in head, (needle, answer.head)


async def test_cr_lf_and_nul_in_headers_are_never_reflected_into_response_headers(
    gateway: RunningGateway,
) -> None:
    body = json.dumps(ai_job()).encode()
    key = auth(gateway)["Authorization"].encode()
    json_type = (b"Content-Type", b"application/json")
    statuses: dict[str, int] = {}
    before = await jobs_of(gateway)

    # Raw control characters inside a header value: the HTTP parser refuses the request.
    for name, value in [
        (b"Idempotency-Key", b"abc\rX-Injected: yes"),
        (b"Idempotency-Key", b"abc\nX-Injected: yes"),
        (b"Idempotency-Key", b"abc\x00X-Injected: yes"),
        (b"traceparent", b"00-abc\rX-Injected: yes"),
    ]:
        answer = await raw_request(
            gateway.base_url,
            "POST /v1/jobs HTTP/1.1",
            [(b"Authorization", key), json_type, (name, value)],
            body,
        )
        statuses[f"raw {value[3:4]!r} in {name.decode()}"] = answer.status
        assert 400 <= answer.status < 500, (name, value, answer.head)
        assert_not_reflected(answer)

    # Obs-fold (a continuation line) and encoded CR/LF reach the app as text: refused
    # by the header's pattern (Idempotency-Key is printable ASCII only), never echoed.
    for name, value in [
        (b"Idempotency-Key", b"abc\r\n X-Injected: yes"),
        (b"Idempotency-Key", b"abc%0d%0aX-Injected:%20yes"),
        (b"Idempotency-Key", "clé-é".encode()),
        (b"Idempotency-Key", b"a b"),
    ]:
        answer = await raw_request(
            gateway.base_url,
            "POST /v1/jobs HTTP/1.1",
            [(b"Authorization", key), json_type, (name, value)],
            body,
        )
        statuses[f"{value!r} in {name.decode()}"] = answer.status
        assert answer.status in (400, 422, 202), (value, answer.head)
        assert_not_reflected(answer, "%0d%0a")

    # CR/LF encoded into the path: a 404 whose headers carry none of it.
    for target in (
        "/v1/jobs/x%0d%0aX-Injected:%20yes",
        "/v1/files/x%0d%0aX-Injected:%20yes",
        "/v1/jobs/x%0aLocation:%20http://evil.example/",
    ):
        answer = await raw_request(gateway.base_url, f"GET {target} HTTP/1.1", auth(gateway))
        statuses[target] = answer.status
        assert answer.status == 404, (target, answer.head)
        assert_not_reflected(answer, "evil.example")

    # A forged Host never makes it into Location: the gateway's links are relative.
    answer = await raw_request(
        gateway.base_url,
        "POST /v1/jobs HTTP/1.1",
        [(b"Host", b"evil.example"), (b"Authorization", key), json_type],
        body,
    )
    assert answer.status == 202, answer.head
    assert (answer.header("location") or "").startswith("/v1/jobs/")
    assert_not_reflected(answer, "evil.example")

    # An upload's Content-Type is served back on download: a folded or odd one is refused.
    for content_type in (b"image/png\r\n X-Injected: yes", b'text/html; x="\r\n"', b"a/b c"):
        answer = await raw_request(
            gateway.base_url,
            "POST /v1/files HTTP/1.1",
            [(b"Authorization", key), (b"Content-Type", content_type)],
            b"bytes",
        )
        statuses[f"upload Content-Type {content_type!r}"] = answer.status
        assert 400 <= answer.status < 500, (content_type, answer.head)
        assert_not_reflected(answer)
    # Recorded: only the forged-Host job and the one whose key was printable ("%0d%0a…").
    assert await jobs_of(gateway) == before + 2
    await still_serving(gateway)
    record(
        "header injection",
        f"{len(statuses) + 1} requests: raw CR, LF, NUL, obs-fold and %0d%0a in Idempotency-Key, "
        "traceparent, path, Host and upload Content-Type",
        f"statuses {sorted(set(statuses.values()))}; no injected header in any response; "
        "Location relative",
    )


# ---------------------------------------------------------------------- compression bombs


async def test_a_gzip_bomb_is_stored_as_sent_and_never_inflated(infra: Infra) -> None:
    inflated = 1024 * MB  # 1 GiB of zeros...
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # ...as a gzip stream of ~1 MB
    block = b"\0" * MB
    bomb = b"".join(compressor.compress(block) for _ in range(inflated // MB)) + compressor.flush()
    assert len(bomb) < 2 * MB
    limit = 4 * MB  # far below the inflated size: an inflating gateway would refuse it
    async with running_gateway(infra, max_upload_bytes=limit) as gw, gw.client() as http:
        upload = await http.post(
            "/v1/files",
            content=bomb,
            headers={"Content-Type": "application/gzip", "Content-Encoding": "gzip"},
        )
        assert upload.status_code == 201, upload.text
        ref = upload.json()
        assert ref["bytes"] == len(bomb)
        assert ref["sha256"] == hashlib.sha256(bomb).hexdigest()
        [stored] = stored_files(gw)
        assert stored.stat().st_size == len(bomb)
        # Served back as the same bytes, not announced as gzip-encoded content.
        download = await http.get(ref["url"], headers={"Accept-Encoding": "identity"})
        assert "content-encoding" not in download.headers
        assert len(download.content) == len(bomb)

        # A job body that claims gzip is not inflated either: it is not JSON.
        before = await jobs_of(gw)
        job = await http.post(
            "/v1/jobs",
            content=gzip.compress(json.dumps(ai_job()).encode()),
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )
        assert job.status_code in (400, 415), job.text
        bomb_job = await http.post(
            "/v1/jobs",
            content=bomb,
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )
        assert bomb_job.status_code in (400, 415), bomb_job.text
        assert await jobs_of(gw) == before
        await still_serving(gw)
    record(
        "zip-style bomb (Content-Encoding: gzip)",
        f"{len(bomb) / MB:.1f} MB gzip of 1 GiB zeros, upload limit 4 MiB; the same as a job body",
        f"upload stored as the {len(bomb):,} compressed bytes (sha256 of what was sent), never "
        f"inflated; job bodies {job.status_code}/{bomb_job.status_code}",
    )
