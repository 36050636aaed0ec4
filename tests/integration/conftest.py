from collections.abc import AsyncIterator

import pytest

from tests.support.harness import Harness
from tests.support.infra import Infra


@pytest.fixture
async def harness(infra: Infra) -> AsyncIterator[Harness]:
    h = Harness(infra)
    await h.open()
    yield h
    await h.close()
