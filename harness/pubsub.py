"""A real Pub/Sub server for tests and benchmarks: the official emulator or the stand-in.

Every Pub/Sub test and benchmark of the project runs against a real gRPC server in a subprocess:
Google's official emulator when it is installed, otherwise the stand-in in ``harness/standin.py``.
``TABULAR_TEST_PUBSUB=standin`` forces the stand-in, ``TABULAR_TEST_PUBSUB=emulator`` forces the
emulator (an error when it is missing). The pytest fixtures over these classes are in
``tests/pubsub_fixture.py``; ``bench/pubsub.py`` uses the classes directly.

Clients are built with :func:`make_subscriber` / :func:`make_publisher` over a channel without
gRPC's 4 MB receive limit (:func:`make_channel_options`).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1
from google.cloud.pubsub_v1.subscriber.message import Message
from google.pubsub_v1.services.publisher.transports.grpc import PublisherGrpcTransport
from google.pubsub_v1.services.subscriber.transports.grpc import SubscriberGrpcTransport
from google.pubsub_v1.types import ReceivedMessage

ENV_CHOICE = "TABULAR_TEST_PUBSUB"
KINDS = ("emulator", "standin")
DEFAULT_PROJECT = "tabular-test"
STANDIN_SCRIPT = Path(__file__).with_name("standin.py")
EMULATOR_PACKAGE = "google-cloud-cli-pubsub-emulator"
_KNOWN_LAUNCHERS = (
    "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator",
    "/usr/share/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator",
    "/opt/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator",
)
START_TIMEOUT = 60.0
RPC_TIMEOUT = 30.0

# Kinds of server started during this session, for the terminal summary.
_STARTED: dict[str, str] = {}
_NAMES = itertools.count(1)


# --------------------------------------------------------------------------- helpers


def make_channel_options() -> list[tuple[str, Any]]:
    """gRPC channel options for emulator-mode clients: no 4 MB cap (messages reach 10 MB)."""
    return [
        ("grpc.max_receive_message_length", -1),
        ("grpc.max_send_message_length", -1),
    ]


def make_publisher(host: str, **kwargs: Any) -> pubsub_v1.PublisherClient:
    """A real PublisherClient on an insecure channel to ``host`` without message-size caps."""
    channel = grpc.insecure_channel(host, options=make_channel_options())
    return pubsub_v1.PublisherClient(transport=PublisherGrpcTransport(channel=channel), **kwargs)


def make_subscriber(host: str, **kwargs: Any) -> pubsub_v1.SubscriberClient:
    """A real SubscriberClient on an insecure channel to ``host`` without message-size caps."""
    channel = grpc.insecure_channel(host, options=make_channel_options())
    return pubsub_v1.SubscriberClient(transport=SubscriberGrpcTransport(channel=channel), **kwargs)


def close_clients(clients: list[Any]) -> None:
    """Close publisher/subscriber clients and their channels, ignoring errors."""
    for client in clients:
        with contextlib.suppress(Exception):
            if isinstance(client, pubsub_v1.PublisherClient):
                client.stop()
                client.transport.grpc_channel.close()
            else:
                client.close()


@functools.cache
def find_emulator() -> list[str] | None:
    """The command that starts the official emulator's launcher, or None when not installed."""
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        return None
    candidates: list[str] = []
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["dpkg", "-L", EMULATOR_PACKAGE], capture_output=True, text=True, timeout=10
        ).stdout
        candidates += [
            line for line in out.splitlines() if line.endswith("/bin/cloud-pubsub-emulator")
        ]
    candidates += list(_KNOWN_LAUNCHERS)
    found = shutil.which("cloud-pubsub-emulator")
    if found:
        candidates.append(found)
    for path in candidates:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return [path]
    return None


def requested_kind() -> str | None:
    """The kind forced by ``TABULAR_TEST_PUBSUB`` (None when unset or ``auto``)."""
    value = os.environ.get(ENV_CHOICE, "").strip().lower()
    if value in ("", "auto"):
        return None
    if value not in KINDS:
        raise ValueError(f"{ENV_CHOICE} must be 'emulator', 'standin' or unset, not {value!r}")
    return value


def default_kind() -> str:
    """The kind this session uses: forced by the environment, else the emulator when present."""
    forced = requested_kind()
    if forced is not None:
        return forced
    return "emulator" if find_emulator() is not None else "standin"


def kind_unavailable(kind: str) -> str | None:
    """Why ``kind`` cannot run here (a skip reason), or None when it can."""
    if kind == "emulator":
        if requested_kind() == "standin":
            return f"{ENV_CHOICE}=standin: official emulator not used"
        if find_emulator() is None:
            return (
                "official Pub/Sub emulator not installed "
                f"(Debian package {EMULATOR_PACKAGE} with java)"
            )
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unique_name(prefix: str = "t") -> str:
    """A short unique resource id (Pub/Sub ids need >= 3 characters and a leading letter)."""
    return f"{prefix}-{os.getpid()}-{next(_NAMES)}-{uuid.uuid4().hex[:6]}"


# --------------------------------------------------------------------------- the server


class PubSubServer:
    """The official emulator or the stand-in, in its own process group on a loopback port."""

    def __init__(
        self, kind: str | None = None, project: str = DEFAULT_PROJECT, port: int | None = None
    ) -> None:
        self.kind: str = kind or default_kind()
        if self.kind not in KINDS:
            raise ValueError(f"unknown Pub/Sub server kind {self.kind!r}")
        self.project = project
        self.port = port or free_port()
        self.host = f"127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(
            prefix=f"pubsub-{self.kind}-", suffix=".log", delete=False
        )
        self._admin_pub: pubsub_v1.PublisherClient | None = None
        self._admin_sub: pubsub_v1.SubscriberClient | None = None
        self._clients: list[Any] = []

    # ------------------------------------------------------------- process control
    def command(self) -> list[str]:
        if self.kind == "standin":
            return [
                sys.executable,
                str(STANDIN_SCRIPT),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ]
        launcher = find_emulator()
        if launcher is None:
            raise RuntimeError(kind_unavailable("emulator") or "emulator not found")
        return [*launcher, "--host=127.0.0.1", f"--port={self.port}"]

    def start(self, timeout: float = START_TIMEOUT) -> PubSubServer:
        """Start the process and wait until it answers gRPC calls."""
        if self.running:
            return self
        env = dict(os.environ)
        env.pop("PUBSUB_EMULATOR_HOST", None)
        self._log.seek(0)
        self._log.truncate()
        self._proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
        self._wait_ready(timeout)
        _STARTED.setdefault(self.kind, self.command()[0 if self.kind == "emulator" else 1])
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        probe = f"projects/{self.project}/topics/readiness-probe"
        while True:
            if self._proc is None or self._proc.poll() is not None:
                raise RuntimeError(f"Pub/Sub {self.kind} exited during start:\n{self.log_text()}")
            channel = grpc.insecure_channel(self.host)
            try:
                get_topic = channel.unary_unary(
                    "/google.pubsub.v1.Publisher/GetTopic",
                    request_serializer=lambda b: b,
                    response_deserializer=lambda b: b,
                )
                get_topic(_get_topic_request(probe), timeout=2.0)
                return
            except grpc.RpcError as err:
                if err.code() == grpc.StatusCode.NOT_FOUND:
                    return
            finally:
                channel.close()
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"Pub/Sub {self.kind} not ready after {timeout}s:\n{self.log_text()}"
                )
            time.sleep(0.2)

    def _signal(self, sig: signal.Signals) -> None:
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, sig)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM to its process group, SIGKILL if it lingers)."""
        self._close_clients()
        proc = self._proc
        if proc is None:
            return
        self._signal(signal.SIGCONT)
        self._signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            proc.wait(timeout)
        self._kill_group_leftovers(proc.pid)
        self._proc = None

    def kill(self) -> None:
        """SIGKILL the whole process group (the emulator's java child included)."""
        proc = self._proc
        if proc is None:
            return
        self._signal(signal.SIGKILL)
        proc.wait(10)
        self._kill_group_leftovers(proc.pid)
        self._proc = None

    @staticmethod
    def _kill_group_leftovers(pgid: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)

    def restart(self, timeout: float = START_TIMEOUT) -> PubSubServer:
        """Kill and start again on the same port: topics, subscriptions and messages are lost."""
        self.kill()
        self._drop_admin_clients()  # fresh channels, no reconnect backoff; callers' stay open
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.start(timeout=max(1.0, deadline - time.monotonic()))
            except RuntimeError:
                if time.monotonic() > deadline:  # e.g. the port is not free again yet
                    raise
                time.sleep(0.5)

    def pause(self) -> None:
        """SIGSTOP the process group: connections stay open, nothing answers."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT the process group."""
        self._signal(signal.SIGCONT)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def ensure_running(self) -> None:
        """Resume a paused server; restart one that died (reporting an unexpected death)."""
        if self.running:
            self.resume()
            return
        proc = self._proc
        if proc is not None:  # not stopped through stop()/kill(): it died
            sys.stderr.write(
                f"Pub/Sub {self.kind} on {self.host} exited with {proc.returncode}; restarting. "
                f"Its output:\n{self.log_text()}\n"
            )
        self.restart()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def log_text(self) -> str:
        """What the server wrote to stdout/stderr so far."""
        self._log.flush()
        try:
            return Path(self._log.name).read_text(errors="replace")[-20_000:]
        except OSError:
            return ""

    def close(self) -> None:
        """Stop the server and remove its log file."""
        self.stop()
        self._log.close()
        with contextlib.suppress(OSError):
            os.unlink(self._log.name)

    def __enter__(self) -> PubSubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PubSubServer(kind={self.kind!r}, host={self.host!r}, running={self.running})"

    # ------------------------------------------------------------- clients
    def env(self) -> dict[str, str]:
        """Variables that point a process (the worker, a client) at this server."""
        return {"PUBSUB_EMULATOR_HOST": self.host, "GOOGLE_CLOUD_PROJECT": self.project}

    def publisher(self, **kwargs: Any) -> pubsub_v1.PublisherClient:
        """A new PublisherClient for this server (closed by stop())."""
        client = make_publisher(self.host, **kwargs)
        self._clients.append(client)
        return client

    def subscriber(self, **kwargs: Any) -> pubsub_v1.SubscriberClient:
        """A new SubscriberClient for this server (closed by stop())."""
        client = make_subscriber(self.host, **kwargs)
        self._clients.append(client)
        return client

    def _close_clients(self) -> None:
        clients, self._clients = self._clients, []
        self._admin_pub = self._admin_sub = None
        close_clients(clients)

    def _drop_admin_clients(self) -> None:
        admin = [c for c in (self._admin_pub, self._admin_sub) if c is not None]
        self._clients = [c for c in self._clients if all(c is not a for a in admin)]
        self._admin_pub = self._admin_sub = None
        close_clients(admin)

    @property
    def admin_publisher(self) -> pubsub_v1.PublisherClient:
        if self._admin_pub is None:
            self._admin_pub = self.publisher()
        return self._admin_pub

    @property
    def admin_subscriber(self) -> pubsub_v1.SubscriberClient:
        if self._admin_sub is None:
            self._admin_sub = self.subscriber()
        return self._admin_sub

    # ------------------------------------------------------------- resources
    def topic_path(self, name: str) -> str:
        return name if name.startswith("projects/") else f"projects/{self.project}/topics/{name}"

    def subscription_path(self, name: str) -> str:
        if name.startswith("projects/"):
            return name
        return f"projects/{self.project}/subscriptions/{name}"

    def create_topic(self, name: str) -> str:
        """Create a topic (short id or full path); returns its full path."""
        path = self.topic_path(name)
        self.admin_publisher.create_topic(name=path, timeout=RPC_TIMEOUT)
        return path

    def create_subscription(
        self,
        name: str,
        topic: str,
        ack_deadline: int = 10,
        dead_letter_topic: str | None = None,
        max_delivery_attempts: int = 5,
        enable_exactly_once: bool = False,
        enable_message_ordering: bool = False,
    ) -> str:
        """Create a pull subscription; returns its full path."""
        path = self.subscription_path(name)
        request: dict[str, Any] = {
            "name": path,
            "topic": self.topic_path(topic),
            "ack_deadline_seconds": ack_deadline,
            "enable_exactly_once_delivery": enable_exactly_once,
            "enable_message_ordering": enable_message_ordering,
        }
        if dead_letter_topic is not None:
            request["dead_letter_policy"] = {
                "dead_letter_topic": self.topic_path(dead_letter_topic),
                "max_delivery_attempts": max_delivery_attempts,
            }
        self.admin_subscriber.create_subscription(request=request, timeout=RPC_TIMEOUT)
        return path

    def delete_topic(self, name: str) -> None:
        with contextlib.suppress(gexc.NotFound):
            self.admin_publisher.delete_topic(topic=self.topic_path(name), timeout=RPC_TIMEOUT)

    def delete_subscription(self, name: str) -> None:
        with contextlib.suppress(gexc.NotFound):
            self.admin_subscriber.delete_subscription(
                subscription=self.subscription_path(name), timeout=RPC_TIMEOUT
            )

    # ------------------------------------------------------------- messages
    def publish(self, topic: str, data: bytes, **attrs: str) -> str:
        """Publish one message through the real client; returns its message id."""
        future = self.admin_publisher.publish(self.topic_path(topic), data, **attrs)
        return str(future.result(timeout=RPC_TIMEOUT))

    def pull_all(
        self, subscription: str, expected: int, timeout: float = 30.0, *, ack: bool = True
    ) -> list[ReceivedMessage]:
        """Pull (Pull RPC) until ``expected`` messages arrived or ``timeout`` passed.

        Returns what was received (possibly fewer or more than expected: assert on it), acking
        each batch unless ``ack=False``.
        """
        path = self.subscription_path(subscription)
        got: list[ReceivedMessage] = []
        deadline = time.monotonic() + timeout
        while len(got) < expected:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            got += self._pull_once(path, min(left, 10.0), ack=ack, max_messages=1000)
        return got

    def drain(
        self, subscription: str, wait: float = 1.0, *, ack: bool = True
    ) -> list[ReceivedMessage]:
        """Everything that arrives on ``subscription`` within ``wait`` seconds (acked)."""
        path = self.subscription_path(subscription)
        got: list[ReceivedMessage] = []
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            got += self._pull_once(path, left, ack=ack, max_messages=1000)
        return got

    def _pull_once(
        self, path: str, timeout: float, *, ack: bool, max_messages: int
    ) -> list[ReceivedMessage]:
        # Both servers hold an empty Pull until about 1 s before the call's deadline: give it
        # that extra second, and treat DEADLINE_EXCEEDED as "nothing arrived".
        try:
            response = self.admin_subscriber.pull(
                subscription=path, max_messages=max_messages, timeout=timeout + 1.0
            )
        except gexc.DeadlineExceeded:
            return []
        received = list(response.received_messages)
        if received and ack:
            self.admin_subscriber.acknowledge(
                subscription=path, ack_ids=[m.ack_id for m in received], timeout=RPC_TIMEOUT
            )
        return received


def _get_topic_request(topic: str) -> bytes:
    from google.pubsub_v1.types import GetTopicRequest

    return bytes(GetTopicRequest.serialize(GetTopicRequest(topic=topic)))


# --------------------------------------------------------------------------- per-test resources


class PubSubEnv:
    """Unique topics and subscriptions for one test, on ``server``.

    Full paths: ``jobs_topic``, ``jobs_subscription`` (dead-letter policy to ``dead_letter_topic``,
    ``max_delivery_attempts``), ``results_topic``, ``results_subscription``,
    ``dead_letter_topic``, ``dead_letter_subscription``; the same names with ``_id`` are short ids.
    """

    def __init__(
        self,
        server: PubSubServer,
        prefix: str | None = None,
        *,
        ack_deadline: int = 10,
        max_delivery_attempts: int = 5,
    ) -> None:
        self.server = server
        self.project = server.project
        self.prefix = prefix or unique_name("tab")
        self.ack_deadline = ack_deadline
        self.max_delivery_attempts = max_delivery_attempts
        p = self.prefix
        self.jobs_topic_id = f"{p}-jobs"
        self.jobs_subscription_id = f"{p}-jobs-sub"
        self.results_topic_id = f"{p}-results"
        self.results_subscription_id = f"{p}-results-sub"
        self.dead_letter_topic_id = f"{p}-dead-letter"
        self.dead_letter_subscription_id = f"{p}-dead-letter-sub"
        self.jobs_topic = server.topic_path(self.jobs_topic_id)
        self.jobs_subscription = server.subscription_path(self.jobs_subscription_id)
        self.results_topic = server.topic_path(self.results_topic_id)
        self.results_subscription = server.subscription_path(self.results_subscription_id)
        self.dead_letter_topic = server.topic_path(self.dead_letter_topic_id)
        self.dead_letter_subscription = server.subscription_path(self.dead_letter_subscription_id)
        self._clients: list[Any] = []

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def kind(self) -> str:
        return self.server.kind

    def env(self) -> dict[str, str]:
        """Variables a worker subprocess needs (short ids; GOOGLE_CLOUD_PROJECT qualifies them)."""
        return {
            **self.server.env(),
            "TABULAR_JOBS_SUBSCRIPTION": self.jobs_subscription_id,
            "TABULAR_RESULTS_TOPIC": self.results_topic_id,
            "TABULAR_JOBS_TOPIC": self.jobs_topic_id,
            "TABULAR_DEAD_LETTER_TOPIC": self.dead_letter_topic_id,
        }

    def create(self, *, exist_ok: bool = False) -> PubSubEnv:
        """Create the three topics and three subscriptions."""
        s = self.server

        def attempt(fn: Any, *args: Any, **kwargs: Any) -> None:
            try:
                fn(*args, **kwargs)
            except gexc.AlreadyExists:
                if not exist_ok:
                    raise

        for topic in (self.jobs_topic, self.results_topic, self.dead_letter_topic):
            attempt(s.create_topic, topic)
        attempt(
            s.create_subscription,
            self.jobs_subscription,
            self.jobs_topic,
            ack_deadline=self.ack_deadline,
            dead_letter_topic=self.dead_letter_topic,
            max_delivery_attempts=self.max_delivery_attempts,
        )
        attempt(s.create_subscription, self.results_subscription, self.results_topic)
        attempt(s.create_subscription, self.dead_letter_subscription, self.dead_letter_topic)
        return self

    def recreate(self) -> PubSubEnv:
        """Create whatever is missing (e.g. after ``server.restart()`` lost all state)."""
        return self.create(exist_ok=True)

    def delete(self) -> None:
        """Delete this test's subscriptions and topics (missing ones are fine)."""
        if not self.server.running:
            return
        for sub in (
            self.jobs_subscription,
            self.results_subscription,
            self.dead_letter_subscription,
        ):
            self.server.delete_subscription(sub)
        for topic in (self.jobs_topic, self.results_topic, self.dead_letter_topic):
            self.server.delete_topic(topic)

    # ------------------------------------------------------------- clients and messages
    def publisher(self, **kwargs: Any) -> pubsub_v1.PublisherClient:
        """A new PublisherClient, closed when the test ends."""
        client = make_publisher(self.server.host, **kwargs)
        self._clients.append(client)
        return client

    def subscriber(self, **kwargs: Any) -> pubsub_v1.SubscriberClient:
        """A new SubscriberClient, closed when the test ends."""
        client = make_subscriber(self.server.host, **kwargs)
        self._clients.append(client)
        return client

    def publish(self, topic: str, data: bytes, **attrs: str) -> str:
        return self.server.publish(topic, data, **attrs)

    def pull_all(
        self, subscription: str, expected: int, timeout: float = 30.0, *, ack: bool = True
    ) -> list[ReceivedMessage]:
        return self.server.pull_all(subscription, expected, timeout, ack=ack)

    def drain(
        self, subscription: str, wait: float = 1.0, *, ack: bool = True
    ) -> list[ReceivedMessage]:
        return self.server.drain(subscription, wait, ack=ack)

    def publish_job(self, data: bytes, **attrs: str) -> str:
        """Publish to the jobs topic; returns the message id."""
        return self.server.publish(self.jobs_topic, data, **attrs)

    def pull_results(self, expected: int, timeout: float = 30.0) -> list[ReceivedMessage]:
        """Pull (and ack) ``expected`` messages from the results subscription."""
        return self.server.pull_all(self.results_subscription, expected, timeout)

    def pull_dead_letters(self, expected: int, timeout: float = 30.0) -> list[ReceivedMessage]:
        """Pull (and ack) ``expected`` messages from the dead-letter subscription."""
        return self.server.pull_all(self.dead_letter_subscription, expected, timeout)

    def close(self) -> None:
        """Close the clients made by :meth:`publisher` / :meth:`subscriber`."""
        clients, self._clients = self._clients, []
        close_clients(clients)

    def __repr__(self) -> str:
        return f"PubSubEnv(kind={self.kind!r}, host={self.host!r}, prefix={self.prefix!r})"


class StreamCollector:
    """Run a real streaming-pull subscriber (``subscribe()``) and record every delivery.

    ``decide(message, n)`` gets each delivery and how many times that message id has been seen
    (1 for the first delivery) and returns ``"ack"``, ``"nack"`` or ``"ignore"``; the default acks.
    Use as a context manager; leaving it cancels the stream and waits for it to close.
    """

    def __init__(
        self,
        subscriber: pubsub_v1.SubscriberClient,
        subscription: str,
        decide: Callable[[Message, int], str] | None = None,
        flow_control: pubsub_v1.types.FlowControl | None = None,
    ) -> None:
        self.subscriber = subscriber
        self.subscription = subscription
        self.decide = decide or (lambda _msg, _n: "ack")
        self.flow_control = flow_control or pubsub_v1.types.FlowControl()
        self.deliveries: list[Message] = []
        self.seen: collections.Counter[str] = collections.Counter()
        self.errors: list[BaseException] = []
        self._cond = threading.Condition()
        self.future: Any = None

    def _callback(self, message: Message) -> None:
        with self._cond:
            self.deliveries.append(message)
            self.seen[message.message_id] += 1
            n = self.seen[message.message_id]
            self._cond.notify_all()
        try:
            action = self.decide(message, n)
        except BaseException as err:  # a failing decide must not hang the test
            with self._cond:
                self.errors.append(err)
            action = "nack"
        if action == "ack":
            message.ack()
        elif action == "nack":
            message.nack()

    def start(self) -> StreamCollector:
        self.future = self.subscriber.subscribe(
            self.subscription, self._callback, flow_control=self.flow_control
        )
        return self

    def stop(self, timeout: float = 30.0) -> None:
        if self.future is not None:
            self.future.cancel()
            with contextlib.suppress(Exception):
                self.future.result(timeout=timeout)

    def wait_until(self, predicate: Callable[[StreamCollector], bool], timeout: float) -> bool:
        """Wait until ``predicate(self)`` holds (checked on every delivery); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.5))
            return True

    def wait_for(self, count: int, timeout: float) -> bool:
        """Wait until ``count`` distinct messages have been delivered."""
        return self.wait_until(lambda c: len(c.seen) >= count, timeout)

    def wait_deliveries(self, count: int, timeout: float) -> bool:
        """Wait until ``count`` deliveries (redeliveries included) happened."""
        return self.wait_until(lambda c: len(c.deliveries) >= count, timeout)

    def duplicates(self) -> dict[str, int]:
        """Message ids delivered more than once, with their delivery counts."""
        with self._cond:
            return {mid: n for mid, n in self.seen.items() if n > 1}

    def __enter__(self) -> StreamCollector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class KindUnavailable(RuntimeError):
    """The server kind asked for cannot run on this machine (a test skips)."""


class PubSubServerPool:
    """At most one running server per kind for the session; started on first use."""

    def __init__(self, project: str = DEFAULT_PROJECT) -> None:
        self.project = project
        self._servers: dict[str, PubSubServer] = {}

    def get(self, kind: str | None = None) -> PubSubServer:
        kind = kind or default_kind()
        reason = kind_unavailable(kind)
        if reason is not None:
            if requested_kind() == kind:
                raise RuntimeError(f"{ENV_CHOICE}={kind}, but {reason}")
            raise KindUnavailable(reason)
        server = self._servers.get(kind)
        if server is None or not server.running:
            if server is not None:
                server.close()
            server = PubSubServer(kind, self.project).start()
            self._servers[kind] = server
        return server

    def close(self) -> None:
        for server in self._servers.values():
            server.close()
        self._servers.clear()
