"""Offload research service."""
