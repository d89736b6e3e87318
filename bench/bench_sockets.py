"""The kernel's share of a websocket frame: one ``send()`` and one woken ``recv()`` over TCP.

The gateway writes each frame to each client with a ``send()`` of its own (one
client, one race, a delta every producer tick: nothing to put together), and
each load-test client is woken and reads it with a ``recv()``. On loopback the
sender also pays for the receiving side of TCP. This measures those system
calls alone, without Python's event loop or any parsing: the floor under the
gateway's and the clients' CPU per frame. Shape of the target load: 200
connections, frames of ``FRAME_BYTES`` sent round-robin in bursts every 10 ms,
``RATE`` frames a second; a forked reader drains them with epoll.
Run: ``python -m bench.bench_sockets [--quick]``.
"""

from __future__ import annotations

import json
import os
import resource
import select
import socket
import sys
import time
from typing import Any

from bench.workload import figure

CONNECTIONS = 200
RATE = 20_000
"""Frames a second, about the target's (2,000 clients, a delta each per 100 ms tick)."""
FRAME_BYTES = 1_000
"""About the target's mean delta frame."""


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _system() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_stime


def _reader(port: int, seconds: float, report: int) -> None:
    """The forked child: connect, then drain every connection until the sender closes it."""
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(CONNECTIONS)]
    poller = select.epoll()
    by_fd = {}
    for sock in socks:
        sock.setblocking(False)
        poller.register(sock.fileno(), select.EPOLLIN)
        by_fd[sock.fileno()] = sock
    buf = bytearray(1 << 16)
    reads = 0
    started = _cpu()
    give_up = time.monotonic() + seconds + 30
    while by_fd and time.monotonic() < give_up:
        for fd, _ in poller.poll(0.5):
            if by_fd[fd].recv_into(buf):
                reads += 1
            else:  # the sender closed it
                poller.unregister(fd)
                by_fd.pop(fd).close()
    spent = _cpu() - started
    os.write(report, json.dumps({"reads": reads, "cpu_s": spent}).encode())
    os._exit(0)


def measure(seconds: float) -> dict[str, float]:
    server = socket.create_server(("127.0.0.1", 0), backlog=CONNECTIONS)
    port = server.getsockname()[1]
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        server.close()
        os.close(read_end)
        _reader(port, seconds, write_end)
    os.close(write_end)
    conns = [server.accept()[0] for _ in range(CONNECTIONS)]
    for conn in conns:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    payload = b"x" * FRAME_BYTES
    burst = RATE // 100
    sent = 0
    started_cpu, started_sys = _cpu(), _system()
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        for _ in range(burst):
            conns[sent % CONNECTIONS].send(payload)
            sent += 1
        time.sleep(max(0.0, started + sent / RATE - time.monotonic()))
    cpu, system = _cpu() - started_cpu, _system() - started_sys
    for conn in conns:
        conn.close()
    server.close()
    _, status = os.waitpid(child, 0)
    with os.fdopen(read_end, "rb") as fh:
        child_report = json.loads(fh.read() or b"{}")
    if status != 0 or not child_report.get("reads"):
        raise RuntimeError(f"the reader failed (status {status}, {child_report})")
    return {
        "sends": sent,
        "send_us": cpu / sent * 1e6,
        "send_system_us": system / sent * 1e6,
        "reads": child_report["reads"],
        "read_us": child_report["cpu_s"] / child_report["reads"] * 1e6,
    }


def run(quick: bool = False) -> dict[str, Any]:
    runs = [measure(2.0 if quick else 5.0) for _ in range(1 if quick else 3)]
    send = min(r["send_us"] for r in runs)
    read = min(r["read_us"] for r in runs)
    system = min(r["send_system_us"] for r in runs)
    figures = [
        figure(
            f"send() of a {FRAME_BYTES}-byte frame over loopback TCP, {RATE:,}/s to "
            f"{CONNECTIONS} connections (sender's CPU; the gateway's floor)",
            send,
            "us",
            higher_is_better=False,
            note=f"of which system time {system:.1f} us",
        ),
        figure(
            "epoll wake-up and recv() of that frame (reader's CPU; a client's floor)",
            read,
            "us",
            higher_is_better=False,
        ),
    ]
    return {"name": "sockets", "runs": runs, "figures": figures}


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=1))
