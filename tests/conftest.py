"""Session-wide fixtures: this run's RabbitMQ vhost and Redis prefix."""

from collections.abc import Iterator

import pytest

from offload_runtime.settings import RuntimeSettings
from tests.support.infra import Infra, InfraUnavailable, start_infra, stop_infra


@pytest.fixture(scope="session")
def infra() -> Iterator[Infra]:
    # OFFLOAD_RABBITMQ_URL / OFFLOAD_REDIS_URL choose the servers (DESIGN §7);
    # every test then works in this run's own vhost and key prefix.
    base = RuntimeSettings()
    try:
        found, containers, ctl = start_infra(base.rabbitmq_url, base.redis_url)
    except InfraUnavailable as exc:
        pytest.exit(str(exc), returncode=3)
    yield found
    stop_infra(found, containers, ctl)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-snapshots", action="store_true", help="rewrite contract schema snapshots"
    )
