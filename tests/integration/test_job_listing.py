"""A tenant's jobs listed over every shard: newest first, a page at a time, with a cursor
that neither skips nor repeats a job, even among jobs created in the same millisecond."""

from datetime import UTC, datetime, timedelta

from offload_runtime.keys import RedisKeys
from offload_runtime.listing import JobListing
from offload_runtime.redis import connect_redis
from offload_runtime.store import JobStore, new_id
from tests.support.infra import Infra
from tests.support.testjob import ProbeInput, ProbeRequest


def _request(created_at: datetime, tenant: str = "acme") -> ProbeRequest:
    return ProbeRequest(
        id=new_id(),
        tenant=tenant,
        max_attempts=3,
        created_at=created_at,
        input=ProbeInput(),
    )


async def test_pages_merge_the_shards_in_time_order_with_ties_broken_by_id(infra: Infra) -> None:
    client = connect_redis(infra.redis_url)
    keys = RedisKeys(f"{infra.redis_prefix}listing-{new_id()[:8]}:")
    store = JobStore(client, keys, retention_s=600)
    listing = JobListing(client, keys)
    try:
        moment = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
        # Three milliseconds, eight jobs in each: ties within a shard and across shards.
        made = [_request(moment + timedelta(milliseconds=ms)) for ms in range(3) for _ in range(8)]
        for request in made:
            await store.create(request)
        await store.create(_request(moment, tenant="globex"))
        assert len({keys.shard(request.id) for request in made}) > 8  # spread over shards

        listed: list[str] = []
        cursor = None
        while True:
            page = await listing.list_jobs("acme", limit=5, cursor=cursor)
            listed += [job.id for job in page.jobs]
            cursor = page.next_cursor
            if cursor is None:
                break
        newest_first = sorted(made, key=lambda r: (r.created_at, r.id), reverse=True)
        assert listed == [request.id for request in newest_first]
    finally:
        await client.aclose()
