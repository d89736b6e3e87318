"""A private NATS cluster speaking MQTT: the clustered broker chequered is tested against.

``NatsCluster(workdir, nodes=3).start()`` runs ``nats-server`` nodes on free
loopback ports, routed into one cluster, each with JetStream (NATS keeps MQTT
sessions and retained messages in JetStream streams, replicated over the
nodes) and an MQTT listener. A node can be killed and restarted on the same
ports and store, as a broker node is lost and comes back in production.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from broker.mosquitto import free_port

START_TIMEOUT_S = 60.0
"""Longest wait for a node's JetStream to be ready (cluster meta leader elected)."""
STOP_TIMEOUT_S = 10.0
CLUSTER_NAME = "chequered"
MAX_ACK_PENDING = 16384
"""Unacknowledged QoS 1 messages NATS lets one MQTT session hold (its limit is 65535)."""


class NatsError(RuntimeError):
    pass


def binary() -> str | None:
    """The nats-server executable, or None where it is not installed."""
    return shutil.which("nats-server") or (
        "/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None
    )


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
