"""Adapters of the image service: the process pool, source fetching and output storage."""
