"""Pub/Sub names and clients, the same for both programs.

In emulator mode (PUBSUB_EMULATOR_HOST) the official client builds a plain channel that keeps
gRPC's 4 MB receive limit, while Pub/Sub messages reach 10 MB: a pulled batch over 4 MB would
fail forever. The clients here get a channel without that limit.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from google.cloud import pubsub_v1

if TYPE_CHECKING:
    from google.pubsub_v1 import PublisherClient as PublisherApi
    from google.pubsub_v1 import SubscriberAsyncClient as SubscriberAsyncApi

_UNLIMITED = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]


def full_name(kind: str, name: str, project: str) -> str:
    """`projects/P/{kind}/ID` from a full path or a short ID plus the project."""
    if name.startswith("projects/"):
        return name
    if not project:
        raise ValueError(f"{name!r} is a short {kind[:-1]} ID: set GOOGLE_CLOUD_PROJECT")
    return f"projects/{project}/{kind}/{name}"


def project_of(path: str) -> str:
    return path.split("/")[1]


def _emulator_host() -> str:
    return os.environ.get("PUBSUB_EMULATOR_HOST", "")


def subscriber_client() -> pubsub_v1.SubscriberClient:
    """A subscriber; in emulator mode on a channel without the 4 MB receive limit."""
    channel = _emulator_channel()
    if channel is None:
        return pubsub_v1.SubscriberClient()
    from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

    return pubsub_v1.SubscriberClient(transport=SubscriberGrpcTransport(channel=channel))


def publisher_client(**kwargs: Any) -> pubsub_v1.PublisherClient:
    """The client library's batching publisher (one thread per batch; for occasional messages)."""
    channel = _emulator_channel()
    if channel is None:
        return pubsub_v1.PublisherClient(**kwargs)
    from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport

    return pubsub_v1.PublisherClient(transport=PublisherGrpcTransport(channel=channel), **kwargs)


def publisher_api(emulator_host: str = "") -> PublisherApi:
    """The generated Publisher client: one RPC per call, with its default retry and timeout
    (to `emulator_host` if given, else as PUBSUB_EMULATOR_HOST says)."""
    from google.pubsub_v1 import PublisherClient as Api

    channel = _emulator_channel(emulator_host)
    if channel is None:
        return Api()
    from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport

    return Api(transport=PublisherGrpcTransport(channel=channel))


def subscriber_async_api() -> SubscriberAsyncApi:
    """The generated Subscriber client on grpc.aio (create it inside the loop that uses it)."""
    from google.pubsub_v1 import SubscriberAsyncClient as Api

    host = _emulator_host()
    if not host:
        return Api()
    import grpc
    from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcAsyncIOTransport

    channel = grpc.aio.insecure_channel(host, options=_UNLIMITED)
    return Api(transport=SubscriberGrpcAsyncIOTransport(channel=channel))


def _emulator_channel(host: str = "") -> Any:
    host = host or _emulator_host()
    if not host:
        return None
    import grpc

    return grpc.insecure_channel(host, options=_UNLIMITED)
