"""Offload sandbox service."""
