"""Offload client."""
