"""The gateway's adapters: the broker link and the Redis-backed ports."""
