"""Rendered images into the file store, owned by the job's tenant."""

from offload_contracts import FileRef
from offload_image.pipeline import RenderedImage
from offload_runtime.storage import FileStore, file_ref


class StoredOutputs:
    """Adopts files the pool wrote under the store's scratch directory (a rename, no copy)."""

    def __init__(self, files: FileStore) -> None:
        self._files = files

    async def adopt(self, tenant: str, image: RenderedImage) -> FileRef:
        """Register `image` as the tenant's file; its checksum was computed in the pool."""
        stored = await self._files.adopt(
            tenant, image.path, image.content_type, sha256=image.sha256
        )
        return file_ref(stored)
