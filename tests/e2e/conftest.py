"""Fixtures of the end-to-end tests: the gateway, served over HTTP, one per module.

A module changes what it gets by overriding a small fixture rather than copying
the big one: `gateway_overrides` for the gateway's settings, `gateway_infra` to
serve it in the module's own vhost (`ops_infra`, for tests that count whole queues).
"""

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.support.gateway import RunningGateway, running_gateway
from tests.support.infra import Infra
from tests.support.ops import ADMIN_KEY, own_vhost


@pytest.fixture(scope="module")
async def ops_infra(infra: Infra) -> AsyncIterator[Infra]:
    """The run's servers with a RabbitMQ vhost of the module's own."""
    async with own_vhost(infra) as own:
        yield own


@pytest.fixture(scope="module")
def gateway_infra(infra: Infra) -> Infra:
    """Where the module's gateway works; a module that counts whole queues returns `ops_infra`."""
    return infra


@pytest.fixture(scope="module")
def gateway_overrides() -> dict[str, Any]:
    """Settings the module's gateway has of its own, e.g. `{"max_upload_bytes": ...}`."""
    return {}


@pytest.fixture(scope="module")
async def gateway(
    gateway_infra: Infra, gateway_overrides: dict[str, Any]
) -> AsyncIterator[RunningGateway]:
    """The real gateway for the module; `tests.support.ops.ADMIN_KEY` opens its admin API."""
    settings = {"admin_keys": ADMIN_KEY, **gateway_overrides}
    async with running_gateway(gateway_infra, **settings) as gw:
        yield gw
