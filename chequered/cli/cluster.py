"""Several projector or gateway processes under one command, for every core.

``chequered project --processes N`` runs N projectors, each owning a stable-hash
partition of the races (``chequered.contract.partition``) with its own client
id and checkpoint folder; ``chequered serve --workers M`` runs M gateways on
one port (SO_REUSEPORT: the kernel spreads the connections). A process that
dies is started again: a projector resumes from its checkpoints and its
persistent session, a gateway from the retained snapshots.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import signal
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chequered import log
from chequered.contract.partition import Partition

if TYPE_CHECKING:
    from broker.bus import BrokerAddress
    from consumers.gateway.core.settings import GatewaySettings

_log = log.get(__name__)

RESTART_WAIT_S = 1.0
"""Wait before starting a dead process again: a crash loop costs one start a second."""
STOP_WAIT_S = 15.0
"""Longest wait for a process to stop after SIGTERM (a projector saves its checkpoints)."""
USER_ERROR = 2
"""A process that exits with this status met an error of the user's: every one stops."""


def partition_names(count: int, client_id: str, checkpoint_dir: Path | None) -> list[
    tuple[Partition, str, Path | None]
]:  # fmt: skip
    """Partition, client id and checkpoint folder of each projector of a set of ``count``."""
    out = []
    for index in range(count):
        part = Partition(index, count)
        tag = f"{index + 1}of{count}"
        folder = checkpoint_dir / tag if checkpoint_dir is not None else None
        out.append((part, f"{client_id}-{tag}", folder))
    return out


def _child_main(logs: tuple[str, bool | None], run: Callable[..., Any], *args: Any) -> None:
    """In the child: run ``run(stop, *args)`` until SIGINT or SIGTERM; exit 2 on a user error."""
    import asyncio

    # A spawned process starts afresh: it logs as the command was told to.
    log.configure(logs[0], json=logs[1])

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run(stop, *args)

    try:
        asyncio.run(main())
    except OSError as exc:
        print(f"chequered: {exc}", file=sys.stderr)
        sys.exit(USER_ERROR)


async def _projector(
    stop: Any,
    address: BrokerAddress | str,
    partition: Partition,
    client_id: str,
    checkpoint_dir: Path | None,
    metrics_port: int | None,
) -> None:
    from consumers.projector.service import run_projector

    await run_projector(
        address,
        checkpoint_dir=checkpoint_dir,
        client_id=client_id,
        stop=stop,
        metrics_port=metrics_port,
        partition=partition,
    )


async def _gateway(
    stop: Any, address: BrokerAddress | str, host: str, port: int, settings: GatewaySettings
) -> None:
    from consumers.gateway.server import run_gateway

    await run_gateway(address, host=host, port=port, stop=stop, settings=settings, reuse_port=True)


def _offset(port: int | None, index: int) -> int | None:
    # One metrics listener per process: the first on the port given, the next on the next.
    return None if port is None else port + index


def run_projectors(
    address: BrokerAddress | str,
    count: int,
    *,
    client_id: str,
    checkpoint_dir: Path | None,
    metrics_port: int | None,
    logs: tuple[str, bool | None] = ("warning", None),
) -> int:
    """``count`` projectors, one per partition, until interrupted; the exit status."""
    specs: list[tuple[str, Callable[..., Any], tuple[Any, ...]]] = []
    for index, (part, cid, folder) in enumerate(partition_names(count, client_id, checkpoint_dir)):
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
        args = (address, part, cid, folder, _offset(metrics_port, index))
        specs.append((f"projector {part.label()}", _projector, args))
    return supervise(specs, logs)


def run_gateways(
    address: BrokerAddress | str,
    workers: int,
    *,
    host: str,
    port: int,
    settings: GatewaySettings,
    logs: tuple[str, bool | None] = ("warning", None),
) -> int:
    """``workers`` gateways on one port, until interrupted; the exit status."""
    specs: list[tuple[str, Callable[..., Any], tuple[Any, ...]]] = []
    for index in range(workers):
        mine = dataclasses.replace(settings, metrics_port=_offset(settings.metrics_port, index))
        specs.append((f"gateway {index + 1}/{workers}", _gateway, (address, host, port, mine)))
    return supervise(specs, logs)


def supervise(
    specs: list[tuple[str, Callable[..., Any], tuple[Any, ...]]],
    logs: tuple[str, bool | None] = ("warning", None),
) -> int:
    """Run each ``(name, run, args)`` in a process of its own; start a dead one again.

    Returns when SIGINT or SIGTERM arrives (0, after every process stopped), or
    when a process exits with ``USER_ERROR`` (2, every other one stopped).
    """
    ctx = multiprocessing.get_context("spawn")
    stopping = [False]

    def on_signal(signum: int, _frame: object) -> None:
        stopping[0] = True

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    procs: dict[int, BaseProcess] = {}
    restarts: dict[int, float] = {}

    def start(i: int) -> None:
        name, run, args = specs[i]
        proc = ctx.Process(target=_child_main, args=(logs, run, *args), name=name)
        proc.start()
        procs[i] = proc
        _log.info("process_started", name=name, pid=proc.pid)

    status = 0
    try:
        for i in range(len(specs)):
            start(i)
        while not stopping[0]:
            wait([p.sentinel for p in procs.values() if p.is_alive()], timeout=0.2)
            now = time.monotonic()
            for i, proc in list(procs.items()):
                if proc.is_alive() or stopping[0]:
                    continue
                if proc.exitcode == USER_ERROR:
                    stopping[0] = True
                    status = USER_ERROR
                    break
                due = restarts.setdefault(i, now + RESTART_WAIT_S)
                if now >= due:
                    _log.warning("process_died", name=specs[i][0], exitcode=proc.exitcode)
                    del restarts[i]
                    start(i)
    finally:
        for proc in procs.values():
            if proc.is_alive():
                proc.terminate()
        deadline = time.monotonic() + STOP_WAIT_S
        for proc in procs.values():
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return status
