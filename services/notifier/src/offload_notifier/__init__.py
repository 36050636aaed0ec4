"""Offload notifier service."""
