"""The image service's job handler: decode, call the domain, return."""

from offload_contracts import POLICIES, ImageProcessRequest, ImageProcessResult
from offload_image.processing import ImageProcessor
from offload_runtime.ports import JobContext
from offload_runtime.runner import JobHandler


def image_process_handler(processor: ImageProcessor) -> JobHandler[ImageProcessRequest]:
    """`image.process` with its default policy (3 attempts, 60 s)."""

    async def on_image_requested(
        request: ImageProcessRequest, ctx: JobContext
    ) -> ImageProcessResult:
        return await processor.process(request.input, tenant=request.tenant, progress=ctx.progress)

    return JobHandler(ImageProcessRequest, on_image_requested, POLICIES["image.process"])
