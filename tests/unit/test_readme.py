"""The README documents every setting (DESIGN §8: every OFFLOAD_* variable, in the README)."""

import importlib
import inspect
import pkgutil
import re
import subprocess
from pathlib import Path

from pydantic_settings import BaseSettings

import offload
from offload_contracts.topology import WORKER_SERVICES

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("runtime", "gateway", "notifier", "sandbox", *WORKER_SERVICES)


def settings_classes() -> set[type[BaseSettings]]:
    """Every pydantic-settings class in Offload's packages and the client."""
    found: set[type[BaseSettings]] = set()
    packages = [importlib.import_module(f"offload_{name}") for name in PACKAGES] + [offload]
    for package in packages:
        for module_info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            if not module_info.name.endswith("settings") and ".llm." not in module_info.name:
                continue
            module = importlib.import_module(module_info.name)
            for _, cls in inspect.getmembers(module, inspect.isclass):
                if issubclass(cls, BaseSettings) and cls is not BaseSettings:
                    found.add(cls)
    return found


def test_every_setting_is_documented_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    classes = settings_classes()
    assert len(classes) >= 10  # the runtime's, each service's, the LLM's, the client's
    variables = {
        f"{cls.model_config.get('env_prefix', '')}{field}".upper()
        for cls in classes
        for field in cls.model_fields
    }
    assert "OFFLOAD_RABBITMQ_URL" in variables and "OFFLOAD_API_KEY" in variables
    missing = sorted(variable for variable in variables if f"`{variable}`" not in readme)
    assert not missing, f"add these to the README's Configuration section: {missing}"


def test_no_tracked_text_file_holds_merge_conflict_markers() -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "*.md", "*.py", "*.toml", "*.yaml", "*.yml", "Makefile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    marked = [
        name
        for name in tracked
        if re.search(r"^(<{7}|>{7}) ", (ROOT / name).read_text(errors="replace"), re.MULTILINE)
    ]
    assert marked == []
