"""`OFFLOAD_RABBITMQ_URL` with one node or several, and the quorum queues' replica count."""

import pytest
from pydantic import ValidationError

from offload_runtime.broker import default_quorum_size, make_broker, quorum_size_of, work_queue
from offload_runtime.settings import RuntimeSettings, parse_rabbitmq_nodes

THREE = (
    "amqp://u:secret@rabbit-1:5672/offload, amqp://u:secret@rabbit-2:5672/offload,"
    "amqp://u:secret@rabbit-3:5672/offload"
)


def test_one_url_is_one_node_and_a_comma_separated_list_is_a_cluster() -> None:
    assert parse_rabbitmq_nodes("amqp://guest:guest@127.0.0.1:5672/") == (
        "amqp://guest:guest@127.0.0.1:5672/",
    )
    assert parse_rabbitmq_nodes(THREE) == (
        "amqp://u:secret@rabbit-1:5672/offload",
        "amqp://u:secret@rabbit-2:5672/offload",
        "amqp://u:secret@rabbit-3:5672/offload",
    )


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("", "is empty"),
        ("amqp://u:secret@rabbit-1:5672/a,rabbit-2:5672", "node 2 of OFFLOAD_RABBITMQ_URL is not"),
        ("http://u:secret@rabbit-1/", "OFFLOAD_RABBITMQ_URL is not an AMQP URL"),
        ("amqp://u:secret@rabbit-1:port/", "not a valid URL"),
        ("amqp://u:secret@rabbit-1/a,amqp://u:secret@rabbit-2/b", "different vhosts"),
    ],
)
def test_a_bad_url_is_refused_with_a_reason_that_never_shows_the_password(
    url: str, says: str
) -> None:
    with pytest.raises(ValueError, match=says) as refused:
        parse_rabbitmq_nodes(url)
    assert "secret" not in str(refused.value)


def test_the_settings_refuse_a_bad_list_at_start() -> None:
    with pytest.raises(ValidationError, match="node 2 of OFFLOAD_RABBITMQ_URL"):
        RuntimeSettings(rabbitmq_url="amqp://guest:guest@a:5672/,nonsense")
    with pytest.raises(ValidationError):
        RuntimeSettings(rabbitmq_quorum_size=0)


def test_quorum_queues_get_one_replica_per_node_named_unless_set() -> None:
    assert default_quorum_size(THREE) == 3
    # One node: the argument is left out, as on queues declared before it existed.
    assert default_quorum_size("amqp://guest:guest@127.0.0.1:5672/") is None
    assert quorum_size_of(make_broker(THREE, service="t")) == 3
    assert quorum_size_of(make_broker(THREE, service="t", quorum_size=5)) == 5
    assert quorum_size_of(make_broker("amqp://guest:guest@127.0.0.1/", service="t")) is None

    arguments = work_queue("ai", delivery_limit=5, quorum_size=3).arguments or {}
    assert arguments["x-quorum-initial-group-size"] == 3
    single = work_queue("ai", delivery_limit=5).arguments or {}
    assert "x-quorum-initial-group-size" not in single
