"""Offload ai service."""
