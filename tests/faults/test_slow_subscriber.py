"""A subscriber that reads nothing for a while loses nothing: the broker queues, never drops.

Mosquitto's default ``max_queued_messages`` (1000) silently discards QoS 1
messages for a client that falls behind; ``broker/mosquitto.conf`` lifts the
count and bounds the queue by bytes instead. The tests stall a persistent QoS 1
subscriber (offline, or connected but not reading its socket), publish far more
than 1000 messages, then let it read: every message arrives and the broker log
has no drop. A control run with a small queue limit shows the check can fail.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from broker.mosquitto import Mosquitto
from tests.conftest import requires_mosquitto

pytestmark = [requires_mosquitto, pytest.mark.slow]

TOPIC = "chequered/v2/slow-sub/events"
MESSAGES = 5000
"""Five times Mosquitto's default queue limit."""
PAYLOAD_PAD = 200
WAIT_S = 60.0
END_MARK = 0
DROP_LINES = ("dropped", "Outgoing messages are being dropped")


def _wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


class SlowSubscriber:
    """A paho client whose network loop the test drives by hand: no loop, no reading."""

    def __init__(self, port: int, client_id: str) -> None:
        self.port = port
        self.received: list[int] = []
        self.subscribed = threading.Event()
        self.connected = threading.Event()
        self.session_present = False
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False
        )
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = lambda c, u, m: self.received.append(
            int(m.payload.split(b":", 1)[0])
        )

    def _on_connect(
        self, client: mqtt.Client, u: object, flags: object, rc: object, p: object
    ) -> None:
        self.session_present = bool(getattr(flags, "session_present", False))
        self.connected.set()

    def pump(self, until: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not until():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            self.client.loop(timeout=0.05)

    def connect(self) -> None:
        self.connected.clear()
        # A long keepalive: while stalled the client sends no PINGREQ either.
        self.client.connect("127.0.0.1", self.port, keepalive=120)
        self.pump(self.connected.is_set, 10, "CONNACK")

    def subscribe(self) -> None:
        self.client.subscribe(TOPIC, qos=1)
        self.pump(self.subscribed.is_set, 10, "SUBACK")

    def disconnect(self) -> None:
        self.client.disconnect()
        self.client.loop(timeout=0.05)


def _publish(port: int, n: int, *, first: int = 1) -> None:
    """Publish n numbered QoS 1 messages and wait until the broker acknowledged each."""
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}")
    pub.max_inflight_messages_set(100)
    pub.max_queued_messages_set(0)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    try:
        pad = b"x" * PAYLOAD_PAD
        infos = [pub.publish(TOPIC, b"%d:" % i + pad, qos=1) for i in range(first, first + n)]
        for info in infos:
            info.wait_for_publish(timeout=WAIT_S)
            assert info.is_published()
    finally:
        pub.disconnect()
        pub.loop_stop()


def _run(broker: Mosquitto, mode: str, n: int) -> SlowSubscriber:
    sub = SlowSubscriber(broker.port, f"slow-{mode}-{uuid.uuid4().hex[:8]}")
    sub.connect()
    sub.subscribe()
    if mode.startswith("offline"):
        sub.disconnect()
    # "stalled": connected, but nobody calls loop(): the socket is not read.
    _publish(broker.port, n)
    if mode == "offline-restart":
        # The queued messages survive a broker restart (persistence on).
        broker.stop()
        broker.start()
    if mode.startswith("offline"):
        sub.connect()
        assert sub.session_present, "the persistent session was not kept"
        # An end marker behind the queued messages: once it arrives, everything
        # the broker kept has been delivered (per-publisher order, QoS 1).
        _publish(broker.port, 1, first=END_MARK)

    def done() -> bool:
        return len(set(sub.received) - {END_MARK}) >= n or END_MARK in sub.received

    sub.pump(done, WAIT_S, f"{n} messages")
    sub.disconnect()
    return sub


@pytest.mark.parametrize("mode", ["offline", "stalled", "offline-restart"])
def test_a_slow_persistent_subscriber_gets_every_message(tmp_path: Path, mode: str) -> None:
    broker = Mosquitto(workdir=tmp_path / "mosquitto", persistence=True).start()
    try:
        sub = _run(broker, mode, MESSAGES)
    finally:
        broker.stop()
    missing = set(range(1, MESSAGES + 1)) - set(sub.received)
    assert not missing, f"{len(missing)} of {MESSAGES} messages lost, first {sorted(missing)[:5]}"
    log = broker.log()
    assert not [line for line in log.splitlines() if any(d in line for d in DROP_LINES)]


def test_the_check_sees_drops_under_a_small_queue_limit(tmp_path: Path) -> None:
    """Control: with Mosquitto's stock queue limit back in place, the same run loses messages."""
    broker = Mosquitto(
        workdir=tmp_path / "mosquitto", extra_config="max_queued_messages 100\n"
    ).start()
    try:
        sub = _run(broker, "offline", 1000)
    finally:
        broker.stop()
    assert len(set(sub.received)) < 1000
    assert "Outgoing messages are being dropped" in broker.log()
