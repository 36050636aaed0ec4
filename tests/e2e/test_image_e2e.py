"""image.process through the gateway over HTTP, with the real image worker (issue 4's "done when").

A user uploads a photo, asks for a 320×240 webp and a set of thumbnails, polls
the job and downloads the outputs; every bad input gets its clear error:
impossible parameters a 422 at the gateway, bad images a failed job with a
permanent error, at once.
"""

import io
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from PIL import Image

from offload_image.app import build_app as build_image
from offload_image.settings import ImageSettings
from tests.support.gateway import RunningGateway, assert_problem, poll_job, submit_job
from tests.support.infra import Infra


@pytest.fixture(scope="module")
async def image_worker(infra: Infra, gateway: RunningGateway) -> AsyncIterator[None]:
    """An image worker sharing the gateway's Redis prefix and storage."""
    worker = build_image(
        ImageSettings(
            rabbitmq_url=infra.rabbitmq_url,
            redis_url=infra.redis_url,
            redis_prefix=gateway.settings.redis_prefix,
            storage_dir=gateway.settings.storage_dir,
            retry_tiers=gateway.settings.retry_tiers,
            image_pool_size=2,
            shutdown_grace_s=1,
            log_level="warning",
        )
    )
    await worker.app.start()
    yield
    await worker.app.stop()


def photo(width: int = 1200, height: int = 900, *, orientation: int | None = None) -> bytes:
    """A JPEG "photo": gradients and a little noise, optionally stored sideways (EXIF)."""
    gradient = Image.linear_gradient("L").resize((width, height))
    noise = Image.effect_noise((width // 4, height // 4), 30).resize((width, height))
    image = Image.merge("RGB", (gradient, noise, gradient.transpose(Image.Transpose.ROTATE_180)))
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=88, exif=exif)
    return buffer.getvalue()


async def upload(http: httpx.AsyncClient, data: bytes, content_type: str = "image/jpeg") -> str:
    answer = await http.post("/v1/files", files={"file": ("photo.jpg", data, content_type)})
    assert answer.status_code == 201, answer.text
    file_id: str = answer.json()["id"]
    return file_id


async def submit(http: httpx.AsyncClient, source: dict[str, Any], *operations: Any) -> str:
    return await submit_job(
        http, "image.process", {"source": source, "operations": list(operations)}
    )


async def download(http: httpx.AsyncClient, file: dict[str, Any]) -> Image.Image:
    answer = await http.get(f"/v1/files/{file['id']}")
    assert answer.status_code == 200, answer.text
    assert len(answer.content) == file["bytes"]
    assert answer.headers["content-type"].startswith(file["content_type"])
    image = Image.open(io.BytesIO(answer.content))
    image.load()
    return image


async def test_upload_a_photo_get_a_320x240_webp_and_thumbnails(
    gateway: RunningGateway, image_worker: None
) -> None:
    async with gateway.client("acme") as http:
        # 1200×900 on disk, stored sideways: upright it is 900×1200.
        file_id = await upload(http, photo(orientation=6))
        job_id = await submit(
            http,
            {"file_id": file_id},
            {"op": "auto_orient"},
            {
                "op": "thumbnails",
                "sizes": [
                    {"width": 400, "height": 400},
                    {"width": 150, "height": 150},
                    {"width": 64, "height": 64},
                ],
            },
            {"op": "fit", "width": 320, "height": 240, "mode": "cover"},
            {"op": "convert", "format": "webp"},
            {"op": "quality", "quality": 80},
            {"op": "strip_metadata"},
        )
        job = await poll_job(http, job_id)

        assert job["status"] == "completed", job
        assert job["attempt"] == 1 and job["progress"]["percent"] > 0
        result = job["result"]
        assert (result["width"], result["height"], result["format"]) == (320, 240, "webp")
        main = await download(http, result["file"])
        assert (main.format, main.size) == ("WEBP", (320, 240))
        assert result["file"]["content_type"] == "image/webp"
        thumbs = [await download(http, entry["file"]) for entry in result["files"]]
        assert [(t.format, t.size) for t in thumbs] == [
            ("WEBP", (300, 400)),
            ("WEBP", (112, 150)),
            ("WEBP", (48, 64)),
        ]
        assert [(e["width"], e["height"], e["format"]) for e in result["files"]] == [
            (300, 400, "webp"),
            (112, 150, "webp"),
            (48, 64, "webp"),
        ]
        # The outputs are the tenant's own files: another tenant cannot fetch them.
        async with gateway.client("globex") as other:
            answer = await other.get(f"/v1/files/{result['file']['id']}")
            assert_problem(answer, 404)


@pytest.mark.parametrize(
    ("operations", "where"),
    [
        ([{"op": "resize", "width": 0}], "width"),
        ([{"op": "resize"}], "resize needs width, height or both"),
        ([{"op": "fit", "width": -5, "height": 10}], "width"),
        ([{"op": "crop", "left": 10, "top": 0, "right": 5, "bottom": 5}], "right > left"),
        ([{"op": "sharpen"}], "op"),
        ([{"op": "convert", "format": "bmp"}], "format"),
    ],
)
async def test_impossible_parameters_are_a_422_and_nothing_is_queued(
    gateway: RunningGateway, operations: list[dict[str, Any]], where: str
) -> None:
    async with gateway.client("acme") as http:
        before = await http.get("/v1/jobs", params={"type": "image.process", "limit": 100})
        answer = await http.post(
            "/v1/jobs",
            json={
                "type": "image.process",
                "input": {"source": {"file_id": "abc"}, "operations": operations},
            },
        )
        body = assert_problem(answer, 422)
        assert where in answer.text, body
        after = await http.get("/v1/jobs", params={"type": "image.process", "limit": 100})
        assert after.json()["items"] == before.json()["items"]  # no job was recorded


async def test_bad_images_fail_at_once_with_a_clear_message(
    gateway: RunningGateway, image_worker: None
) -> None:
    async with gateway.client("acme") as http:
        not_image = await upload(http, b"%PDF-1.7 quarterly report", "application/pdf")
        whole = photo(400, 300)
        truncated = await upload(http, whole[: len(whole) // 2])
        good = await upload(http, whole)
        cases = {
            "the source is not an image Offload can read": (
                await submit(http, {"file_id": not_image})
            ),
            "the source image is truncated or corrupt": await submit(http, {"file_id": truncated}),
            "crop box (0, 0, 401, 10) lies outside the 400×300 image": await submit(
                http,
                {"file_id": good},
                {"op": "crop", "left": 0, "top": 0, "right": 401, "bottom": 10},
            ),
            "source file nosuchfile not found": await submit(http, {"file_id": "nosuchfile"}),
        }
        for expected, job_id in cases.items():
            job = await poll_job(http, job_id)
            assert job["status"] == "failed", job
            assert job["attempt"] == 1
            assert job["error"]["retryable"] is False
            assert expected in job["error"]["message"], job["error"]
        # And the worker carries on.
        job = await poll_job(
            http, await submit(http, {"file_id": good}, {"op": "resize", "width": 40})
        )
        assert job["status"] == "completed"
        assert (job["result"]["width"], job["result"]["height"]) == (40, 30)
