"""Gateway settings that contradict each other are refused at start, saying why."""

import pytest
from pydantic import ValidationError

from offload_gateway.settings import GatewaySettings


def test_the_sweeps_longest_wait_may_not_be_shorter_than_its_first() -> None:
    with pytest.raises(ValidationError, match=r"sweep_backoff_max .* must be at least sweep_after"):
        GatewaySettings(sweep_after="10m", sweep_backoff_max="1m")

    settings = GatewaySettings(sweep_after="10m", sweep_backoff_max="10m")
    assert settings.sweep_backoff_max_s == settings.sweep_after_s == 600
