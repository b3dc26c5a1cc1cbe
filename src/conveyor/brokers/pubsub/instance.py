"""The ``pubsub`` instance: Google Cloud Pub/Sub clients, shared by a flow's source and target.

This is the module that imports google-cloud (with auth.py, errors.py and source.py); the
registry imports it only when a config uses ``type: pubsub``. Clients are built lazily on
first use, in a thread (Application Default Credentials may probe the metadata server).
Every blocking client call runs in a thread with the instance's ``timeout``; every google
exception is mapped by :func:`~conveyor.brokers.pubsub.errors.map_error`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc  # type: ignore[import-untyped]
from google.cloud import pubsub_v1
from google.pubsub_v1 import types as gapic_types
from google.pubsub_v1.services.publisher.transports.grpc import PublisherGrpcTransport
from google.pubsub_v1.services.subscriber.transports.grpc import SubscriberGrpcTransport

from conveyor import traces
from conveyor.brokers.pubsub.auth import build_credentials, refresh
from conveyor.brokers.pubsub.config import PubsubConfig, PubsubSourceConfig, PubsubTargetConfig
from conveyor.brokers.pubsub.errors import map_error, short_error
from conveyor.brokers.pubsub.source import PubsubSource
from conveyor.config.base import SourceConfig
from conveyor.errors import AuthError, ConveyorError, NotFound, Permanent, Rejected
from conveyor.interfaces import Context
from conveyor.payload.payload import Payload

log = logging.getLogger("conveyor.pubsub")
T = TypeVar("T")

MAX_MESSAGE = 10_000_000
"""Pub/Sub's limit on one message's data, in bytes."""
MAX_ATTRIBUTES = 100
MAX_ATTRIBUTE_VALUE = 1024
_CHANNEL_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


class PubsubInstance:
    """One Pub/Sub project: credentials, a subscriber client shared by its sources, publishers for its targets."""

    def __init__(self, name: str, config: PubsubConfig, ctx: Context) -> None:
        self.name = name
        self.config = config
        self.ctx = ctx
        self._creds: Any = None
        self._ready = False
        self._lock = asyncio.Lock()
        self._subscriber: Any = None
        self._admin: Any = None
        self._publishers: list[Any] = []
        ctx.status.add_instance(name, "pubsub", config.describe())

    # -- clients ---------------------------------------------------------------------------------------
    async def connect(self) -> None:
        """Build (and for OAuth / service accounts, refresh) the credentials once."""
        async with self._lock:
            if self._ready:
                return
            self.ctx.status.instance_state(self.name, "connecting")
            try:
                creds = await asyncio.to_thread(build_credentials, self.name, self.config)
                if creds is not None:
                    await asyncio.wait_for(
                        asyncio.to_thread(refresh, self.name, self.config, creds), self.config.timeout
                    )
            except Exception as e:  # CancelledError passes: a stop during the token refresh must stop
                err = map_error(self.name, e)
                self.report(err)
                raise err from None
            self._creds = creds
            self._ready = True

    def client_kwargs(self, kind: str) -> dict[str, Any]:
        """Constructor arguments for a Publisher/SubscriberClient: an insecure channel for an emulator."""
        emu = self.config.emulator()
        if emu:
            channel = grpc.insecure_channel(emu, options=_CHANNEL_OPTIONS)
            transport = PublisherGrpcTransport if kind == "publisher" else SubscriberGrpcTransport
            return {"transport": transport(channel=channel)}
        return {"credentials": self._creds}

    async def subscriber(self) -> Any:
        """The SubscriberClient shared by this instance's sources."""
        await self.connect()
        if self._subscriber is None:
            self._subscriber = pubsub_v1.SubscriberClient(**self.client_kwargs("subscriber"))
        return self._subscriber

    async def admin(self) -> Any:
        """A PublisherClient for topic administration (check, create_subscription)."""
        await self.connect()
        if self._admin is None:
            self._admin = pubsub_v1.PublisherClient(**self.client_kwargs("publisher"))
        return self._admin

    async def publisher(self, cfg: PubsubTargetConfig) -> Any:
        """A new PublisherClient with the target's batching (and ordering when it sets ordering_key)."""
        await self.connect()
        b = cfg.batch
        client = pubsub_v1.PublisherClient(
            batch_settings=pubsub_v1.types.BatchSettings(
                max_messages=b.max_messages, max_bytes=b.max_bytes, max_latency=b.max_latency
            ),
            publisher_options=pubsub_v1.types.PublisherOptions(enable_message_ordering=cfg.ordering_key is not None),
            **self.client_kwargs("publisher"),
        )
        self._publishers.append(client)
        return client

    def topic_path(self, topic: str) -> str:
        """``projects/P/topics/T`` (a full path is kept as given)."""
        return topic if topic.startswith("projects/") else f"projects/{self.config.project}/topics/{topic}"

    def subscription_path(self, sub: str) -> str:
        """``projects/P/subscriptions/S`` (a full path is kept as given)."""
        return sub if sub.startswith("projects/") else f"projects/{self.config.project}/subscriptions/{sub}"

    async def call(self, fn: Callable[..., T], *args: Any, path: str | None = None, **kw: Any) -> T:
        """Run one blocking client call in a thread with the instance timeout; errors mapped."""
        timeout = self.config.timeout
        try:
            return await asyncio.wait_for(asyncio.to_thread(fn, *args, timeout=timeout, **kw), timeout + 5)
        except Exception as e:  # CancelledError passes, as in connect()
            raise map_error(self.name, e, path=path) from None

    # -- status ----------------------------------------------------------------------------------------
    def report(self, error: ConveyorError | None) -> None:
        """Record a connection outcome on the status board."""
        st = self.ctx.status
        if error is None:
            current = st.instances.get(self.name)
            if current is not None and current.state == "up":
                return  # the common case, once per delivery: nothing changed
            st.connect_attempt(self.name, True)
            st.instance_state(self.name, "up")
        else:
            st.connect_attempt(self.name, False)
            st.instance_state(self.name, "down", error, permanent=isinstance(error, Permanent))

    # -- Instance / BrokerInstance ----------------------------------------------------------------
    async def check(self) -> str:
        """Authenticate and list one topic of the project; a one-line description."""
        admin = await self.admin()
        project = f"projects/{self.config.project}"
        note = ""
        try:
            await self.call(
                lambda timeout: next(
                    iter(admin.list_topics(request={"project": project, "page_size": 1}, timeout=timeout)), None
                ),
                path=project,
            )
        except AuthError as e:
            if self._creds is not None and e.message.startswith("permission denied"):
                note = " (credentials accepted; listing topics not permitted)"
            else:
                self.report(e)
                raise
        self.report(None)
        return self.config.describe() + note

    def source(self, flow: str, config: SourceConfig) -> PubsubSource:
        """A streaming-pull consumer for one flow."""
        assert isinstance(config, PubsubSourceConfig)
        return PubsubSource(self, flow, config)

    def target(self, flow: str, config: Any) -> PubsubTarget:
        """A publisher for one flow."""
        assert isinstance(config, PubsubTargetConfig)
        return PubsubTarget(self, flow, config)

    async def close(self) -> None:
        """Flush publishers and close every client."""
        pubs, self._publishers = self._publishers, []
        for p in pubs:
            await asyncio.to_thread(_stop_publisher, p)
        if self._admin is not None:
            await asyncio.to_thread(_stop_publisher, self._admin)
            self._admin = None
        if self._subscriber is not None:
            await asyncio.to_thread(self._subscriber.close)
            self._subscriber = None


def _stop_publisher(client: Any) -> None:
    try:
        client.stop()
    except Exception as e:  # already stopped, or a last batch failed: nothing left to do at close
        log.debug("publisher stop: %s", short_error(e))
    client.transport.close()


class PubsubTarget:
    """Publishes each payload to one topic; ``deliver`` returns once Pub/Sub accepted the message."""

    def __init__(self, instance: PubsubInstance, flow: str, cfg: PubsubTargetConfig) -> None:
        self.instance = instance
        self.flow = flow
        self.cfg = cfg
        self.topic = instance.topic_path(cfg.topic)
        self._client: Any = None
        self._client_lock = asyncio.Lock()

    async def _publisher(self) -> Any:
        async with self._client_lock:
            if self._client is None:
                self._client = await self.instance.publisher(self.cfg)
        return self._client

    async def deliver(self, payload: Payload) -> None:
        """Publish the body with metadata attributes and wait for the server's message id."""
        inst = self.instance
        client = await self._publisher()
        body = payload.body
        if body.size > MAX_MESSAGE:
            raise Rejected(
                f"{body.size} bytes exceed Pub/Sub's {MAX_MESSAGE}-byte message limit",
                instance=inst.name,
                path=self.topic,
            )
        data = body.data() if body.in_memory else await asyncio.to_thread(_read, body.path)
        meta = await payload.metadata()
        ctx = template_context(payload)
        key = self.cfg.ordering_key.format_map(ctx) if self.cfg.ordering_key is not None else ""
        extra = {k: v.format_map(ctx) for k, v in self.cfg.attributes.items()}
        traces.inject(extra)  # this delivery's traceparent, in place of one the message came with
        attrs = build_attributes(payload, meta, extra)
        if not fits(self.topic, data, key, attrs):
            raise Rejected(
                f"{len(data)} bytes with their attributes exceed Pub/Sub's {MAX_MESSAGE}-byte message limit",
                instance=inst.name,
                path=self.topic,
            )
        timeout = self.cfg.timeout or inst.config.timeout
        try:
            future = client.publish(self.topic, data, ordering_key=key, timeout=timeout, **attrs)
            await asyncio.wait_for(asyncio.wrap_future(future), timeout + 5)
        except Exception as e:  # CancelledError passes: a cancelled delivery is not a failed publish
            if key:
                # A failed publish pauses its ordering key; later payloads of the key would fail at once.
                client.resume_publish(self.topic, key)
            err = map_error(inst.name, e, path=self.topic, publishing=True)
            if not isinstance(err, Rejected):
                inst.report(err)
            raise err from None
        inst.report(None)

    async def probe(self) -> str:
        """Whether the topic exists, changing nothing (for ``check --connect``); NotFound when it does not.
        A publisher may lack the right to look a topic up (pubsub.topics.get): that is said, not failed."""
        inst = self.instance
        admin = await inst.admin()
        try:
            await inst.call(admin.get_topic, request={"topic": self.topic}, path=self.topic)
        except NotFound:
            raise NotFound("no such topic", instance=inst.name, path=self.topic) from None
        except AuthError as e:
            if not e.message.startswith("permission denied"):
                raise
            return "not looked up: permission denied for pubsub.topics.get (publishing needs only topics.publish)"
        return "exists"

    async def close(self) -> None:
        """Flush and stop this target's publisher."""
        client, self._client = self._client, None
        if client is not None:
            if client in self.instance._publishers:
                self.instance._publishers.remove(client)
            await asyncio.to_thread(_stop_publisher, client)


def fits(topic: str, data: bytes, key: str, attrs: dict[str, str]) -> bool:
    """Whether a publish of this one message stays within :data:`MAX_MESSAGE`: Pub/Sub (and its
    client, which refuses it before sending) counts the whole request, the body with its
    attributes, ordering key and topic."""
    texts = [topic, key, *attrs, *attrs.values()]
    # Each field adds its bytes and at most 8 of tag and length; the exact size (which builds the
    # request, copying the body) is worked out only for a message that may be near the limit.
    if len(data) + sum(len(t.encode()) for t in texts) + 8 * (len(texts) + 4) <= MAX_MESSAGE:
        return True
    msg = gapic_types.PubsubMessage(data=data, ordering_key=key, attributes=attrs)
    request = gapic_types.PublishRequest(topic=topic, messages=[msg])
    return int(gapic_types.PublishRequest.pb(request).ByteSize()) <= MAX_MESSAGE


def _read(path: Any) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class _Context(dict[str, str]):
    """Template values; an unknown name was refused by the config, so missing means empty."""

    def __missing__(self, key: str) -> str:
        return ""


def template_context(payload: Payload) -> _Context:
    """Values for ``ordering_key`` and attribute templates."""
    name = payload.name or ""
    stem, dot, ext = name.rpartition(".")
    if not dot:
        stem, ext = name, ""
    msg = payload.message or {}
    return _Context(
        id=payload.id, name=name, flow=payload.flow, stem=stem, ext=ext, ordering_key=str(msg.get("ordering_key") or "")
    )


def build_attributes(payload: Payload, meta: dict[str, Any], extra: dict[str, str]) -> dict[str, str]:
    """Attributes for one publish: conveyor's own, the source message's string ones, then ``extra``.

    Pub/Sub allows 100 attributes, values up to 1024 bytes: the metadata JSON is included
    only when it fits, and a source attribute that does not fit is left out.
    """
    attrs: dict[str, str] = {}
    msg = payload.message or {}
    carried = msg.get("attributes") or msg.get("headers") or {}
    for k, v in carried.items():
        if isinstance(v, str) and _fits(k, v) and not k.startswith("goog"):
            attrs[k] = v
    attrs.update(
        {
            "conveyor_id": payload.id,
            "conveyor_flow": payload.flow,
            "conveyor_source": f"{payload.source_type}:{payload.source_instance}",
        }
    )
    if payload.name:
        attrs["name"] = payload.name[:MAX_ATTRIBUTE_VALUE]
    meta_json = json.dumps(meta, separators=(",", ":"), default=str)
    if len(meta_json.encode()) <= MAX_ATTRIBUTE_VALUE:
        attrs["conveyor_meta"] = meta_json
    attrs.update({k: v for k, v in extra.items() if _fits(k, v)})
    if len(attrs) > MAX_ATTRIBUTES:
        own = {k: attrs[k] for k in attrs if k.startswith("conveyor_") or k in extra or k == "name"}
        rest = [k for k in attrs if k not in own][: MAX_ATTRIBUTES - len(own)]
        attrs = {**{k: attrs[k] for k in rest}, **own}
    return attrs


def _fits(key: str, value: str) -> bool:
    return 0 < len(key.encode()) <= 256 and len(value.encode()) <= MAX_ATTRIBUTE_VALUE


__all__ = ["PubsubInstance", "PubsubTarget", "build_attributes", "fits", "template_context"]
