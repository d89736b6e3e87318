"""Leaderboard subscribers for Locust: the load test's client behaviour on many machines.

Each simulated user opens one websocket to a gateway, subscribes to one race
(round-robin over ``CHEQUERED_RACES``), checks the ``prev_seq`` chain of what
it receives and reports every delta to Locust as a request whose response
time is the latency from the event's emission (``wall``) to its receipt.
Gaps, duplicates and disconnects are reported as failures.

Run (Locust and websocket-client are not dependencies of chequered):

    pip install locust websocket-client
    CHEQUERED_RACES=100 locust -f bench/locustfile.py --host ws://GATEWAY:8765 \
        --users 2000 --spawn-rate 200 --run-time 60s --headless

Latency across machines is only as good as their clocks: synchronise them
(chrony/NTP) or read the figure as an upper bound. See docs/LOADTEST.md.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from typing import Any

try:
    import gevent
    import websocket  # websocket-client
    from locust import User, constant, events, task
except ImportError as exc:  # pragma: no cover - only under Locust
    raise ImportError(
        "bench/locustfile.py runs under Locust: pip install locust websocket-client"
    ) from exc

RACE_PREFIX = os.environ.get("CHEQUERED_RACE_PREFIX", "load-")
RACES = int(os.environ.get("CHEQUERED_RACES", "1"))
"""Races ``load-0001`` .. ``load-<RACES>``, as ``chequered loadtest`` names them."""
RACE_IDS = [r for r in os.environ.get("CHEQUERED_RACE_IDS", "").split(",") if r]
"""Explicit race ids; they override the prefix and count."""
CLASS = os.environ.get("CHEQUERED_CLASS") or None
WS_PATH = os.environ.get("CHEQUERED_WS_PATH", "/ws")
CONNECT_TIMEOUT_S = float(os.environ.get("CHEQUERED_CONNECT_TIMEOUT", "10"))
PING_EVERY_S = float(os.environ.get("CHEQUERED_PING_EVERY", "30"))

_counter = itertools.count()
_counter_lock = threading.Lock()


def _races() -> list[str]:
    return RACE_IDS or [f"{RACE_PREFIX}{i:04d}" for i in range(1, RACES + 1)]


class LeaderboardUser(User):  # type: ignore[misc]
    """One websocket leaderboard subscriber."""

    wait_time = constant(PING_EVERY_S)

    def on_start(self) -> None:
        with _counter_lock:
            index = next(_counter)
        races = _races()
        self.race = races[index % len(races)]
        self.last_seq: int | None = None
        url = self.host.rstrip("/") + WS_PATH
        started = time.perf_counter()
        try:
            self.ws = websocket.create_connection(url, timeout=CONNECT_TIMEOUT_S)
        except Exception as exc:
            self._fire("connect", started, 0, exc)
            raise
        self._fire("connect", started, 0, None)
        self.ws.settimeout(None)
        request: dict[str, Any] = {"op": "subscribe", "race": self.race}
        if CLASS:
            request["class"] = CLASS
        self.ws.send(json.dumps(request))
        self.reader = gevent.spawn(self._receive)

    def on_stop(self) -> None:
        self.reader.kill(block=False)
        self.ws.close()

    @task
    def ping(self) -> None:
        started = time.perf_counter()
        try:
            self.ws.send(json.dumps({"op": "ping"}))
        except Exception as exc:
            self._fire("ping", started, 0, exc)

    def _receive(self) -> None:
        while True:
            try:
                payload = self.ws.recv()
            except Exception as exc:
                self._fire("disconnect", time.perf_counter(), 0, exc)
                return
            now = time.time()
            try:
                frame = json.loads(payload)
            except ValueError as exc:
                self._fire("bad frame", time.perf_counter(), len(payload), exc)
                continue
            kind = frame.get("type")
            seq = int(frame.get("seq", 0))
            if kind == "snapshot":
                self.last_seq = seq if self.last_seq is None else max(seq, self.last_seq)
            elif kind == "delta":
                self._delta(frame, seq, now, len(payload))

    def _delta(self, frame: dict[str, Any], seq: int, now: float, size: int) -> None:
        prev = int(frame.get("prev_seq", 0))
        fault: Exception | None = None
        if self.last_seq is not None:
            if seq <= self.last_seq:
                fault = RuntimeError(f"duplicate seq {seq} after {self.last_seq}")
            elif prev > self.last_seq:
                fault = RuntimeError(f"gap: seqs {self.last_seq + 1}..{prev} missing")
        if fault is None or "gap" in str(fault):
            self.last_seq = seq
        latency_ms = max(0.0, (now - float(frame.get("wall", now))) * 1000)
        events.request.fire(
            request_type="WS",
            name="delta",
            response_time=latency_ms,
            response_length=size,
            exception=fault,
            context={"race": self.race},
        )

    def _fire(self, name: str, started: float, size: int, exc: Exception | None) -> None:
        events.request.fire(
            request_type="WS",
            name=name,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=size,
            exception=exc,
            context={"race": getattr(self, "race", "")},
        )
