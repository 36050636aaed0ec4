"""Offload gateway service."""
