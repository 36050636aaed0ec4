"""Offload image service."""
