"""Outgoing HTTP for webhooks: the receiver's transport, the signer, the SSRF check."""

import uuid
from collections.abc import Callable, Mapping

import httpx
from opentelemetry.sdk.trace import TracerProvider

from offload_contracts.webhooks import OpsAlert
from offload_notifier.webhooks import USER_AGENT, Answer, TransportError
from offload_runtime import telemetry
from offload_runtime.url_guard import check_url, guarded_transport
from offload_runtime.webhook_secrets import WebhookSecrets, sign, signature_header

Clock = Callable[[], float]


class HttpxTransport:
    """POSTs with one shared connection pool; never follows a redirect (each hop could be
    an address the SSRF guard would refuse). With a tracer provider, each request is a
    client span and carries the current trace in its `traceparent` header.

    With `allow_private` set (users' webhook URLs), every connection goes through the
    runtime's `guarded_transport`: it connects only to an address the SSRF guard
    accepts, checked at connect time, so a DNS answer that changed since the
    delivery's `check_url` (DNS rebinding) is refused too. Without it (the operator's
    own alert URL, which may well be internal) connections are not checked."""

    def __init__(
        self,
        *,
        timeout_s: float,
        max_connections: int,
        allow_private: bool | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self._client = httpx.AsyncClient(
            transport=(
                None
                if allow_private is None
                else guarded_transport(allow_private=allow_private, limits=limits)
            ),
            follow_redirects=False,
            timeout=httpx.Timeout(timeout_s),
            limits=limits,
            trust_env=False,
        )
        telemetry.instrument_httpx(self._client, tracer_provider)

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Answer:
        try:
            response = await self._client.post(url, content=body, headers=dict(headers))
        except httpx.TimeoutException as exc:
            raise TransportError(f"no answer within the time limit ({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            raise TransportError(f"{type(exc).__name__}: {exc}") from exc
        return Answer(response.status_code, response.headers.get("retry-after"))

    async def aclose(self) -> None:
        await self._client.aclose()


class SecretsSigner:
    """Signs with every secret of the tenant that signs now (both during a rotation)."""

    def __init__(self, secrets: WebhookSecrets) -> None:
        self._secrets = secrets

    async def signature(self, tenant: str, message_id: str, timestamp: int, body: bytes) -> str:
        return signature_header(await self._secrets.signing(tenant), message_id, timestamp, body)


class GuardedURLs:
    """The runtime's SSRF guard, with this deployment's `webhook_allow_private`."""

    def __init__(self, *, allow_private: bool) -> None:
        self._allow_private = allow_private

    async def __call__(self, url: str) -> None:
        await check_url(url, allow_private=self._allow_private)


class HttpOpsWebhook:
    """POSTs dead-letter alerts to the operations webhook, signed when a secret is set."""

    def __init__(
        self, client: HttpxTransport, url: str, *, secret: str | None, clock: Clock
    ) -> None:
        self._client = client
        self._url = url
        self._secret = secret
        self._clock = clock

    async def send(self, alert: OpsAlert) -> None:
        body = alert.model_dump_json(exclude_none=True).encode()
        message_id = f"alert_{uuid.uuid4().hex}"
        timestamp = int(self._clock())
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
        }
        if self._secret:
            headers["webhook-signature"] = sign(self._secret, message_id, timestamp, body)
        answer = await self._client.post(self._url, body, headers)
        if not 200 <= answer.status < 300:
            raise TransportError(f"operations webhook answered HTTP {answer.status}")
