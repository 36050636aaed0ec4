from collections.abc import AsyncIterator, Iterator

import pytest

from tests.reliability import outcomes
from tests.support.dedicated import DedicatedRabbit
from tests.support.harness import Harness
from tests.support.infra import Infra


@pytest.fixture(scope="session")
def rabbit() -> Iterator[DedicatedRabbit]:
    """A RabbitMQ node of this run's own, which tests may stop and start."""
    node = DedicatedRabbit()
    node.start()
    yield node
    node.shutdown()


@pytest.fixture
async def harness(infra: Infra) -> AsyncIterator[Harness]:
    h = Harness(infra, concurrency=10, shutdown_grace_s=5)
    await h.open()
    yield h
    await h.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if outcomes.RESULTS:
        terminalreporter.section("reliability outcomes")
        terminalreporter.write_line(outcomes.table())
