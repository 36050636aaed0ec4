"""The video service's adapters: the provider over HTTP, partial files on the storage volume."""
