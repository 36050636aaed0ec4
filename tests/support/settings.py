"""Which OFFLOAD_* variables a service reads, from its settings classes.

The deployment files (docker-compose.yml, deploy/kubernetes) are checked
against this, so a variable that no service reads (a typo, a removed setting)
fails a test instead of being silently ignored by pydantic-settings.
"""

import importlib
import inspect

from pydantic_settings import BaseSettings


def service_variables(service: str) -> set[str]:
    """Every environment variable the settings classes of `offload_<service>` read."""
    module = importlib.import_module(f"offload_{service}.settings")
    names: set[str] = set()
    for _, cls in inspect.getmembers(module, inspect.isclass):
        if issubclass(cls, BaseSettings) and cls is not BaseSettings:
            prefix = str(cls.model_config.get("env_prefix", ""))
            names |= {f"{prefix}{field}".upper() for field in cls.model_fields}
    return names
