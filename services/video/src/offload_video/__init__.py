"""Offload video service."""
