"""The image service's job handlers: decode, call the domain, return."""

from offload_contracts import IMAGE_PROCESS, ImageProcessInput, ImageProcessResult, JobRequestBase
from offload_image.processing import ImageProcessor
from offload_runtime.ports import JobContext
from offload_runtime.runner import JobHandler
from offload_runtime.worker import job_handler


def on_image_process(processor: ImageProcessor) -> JobHandler[JobRequestBase[ImageProcessInput]]:
    """`image.process` → `ImageProcessor.process` over the source, the pool and the storage."""

    async def run(
        request: JobRequestBase[ImageProcessInput], ctx: JobContext
    ) -> ImageProcessResult:
        return await processor.process(request.input, tenant=request.tenant, progress=ctx.progress)

    return job_handler(IMAGE_PROCESS, run)
