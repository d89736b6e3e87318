"""The floor plan holds: imports run one way, with the flow, and the pure core does no I/O.

Rules (docs/ARCHITECTURE.md, "Import rules"):

1. ``chequered.contract`` imports nothing of ours.
2. ``broker`` imports nothing of ours but the contract.
3. ``simulator`` and ``consumers`` never import each other, the command line or
   the load test; only ``chequered.cli`` and ``loadtest`` wire stages together.
4. Nothing outside ``broker`` imports the MQTT client library (aiomqtt, paho):
   the rest of the code speaks to the broker through the Bus and its BusError.
5. Pure modules (the contract's types, recordings, importers, the timeline, the
   clock and feed, the standings fold and codec, the services' sans-I/O cores)
   import no asyncio, sockets, processes, threads or MQTT/websocket library, and
   call no file I/O.

Every import is read from the source with ``ast``, including imports inside
functions, so that a lazy import cannot hide a violation.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO

OURS = ("chequered", "simulator", "consumers", "broker", "loadtest")

PURE = (
    "chequered.contract.board",
    "chequered.contract.control",
    "chequered.contract.deadletter",
    "chequered.contract.injected",
    "chequered.contract.events",
    "chequered.contract.topics",
    "simulator.recording.format",
    "simulator.recording.validate",
    "simulator.importers",
    "simulator.timeline",
    "simulator.live.clock",
    "simulator.live.feed",
    "simulator.live.faults",
    "consumers.standings",
    "consumers.projector.intake",
    "consumers.projector.core",
    "consumers.gateway.core",
    "chequered.watch.view",
    "consumers.rmonitor.encoder",
)
"""Modules (or whole packages) that must stay free of I/O."""

IO_MODULES = (
    "asyncio",
    "socket",
    "selectors",
    "ssl",
    "subprocess",
    "threading",
    "multiprocessing",
    "tempfile",
    "shutil",
    "http",
    "urllib",
    "aiomqtt",
    "paho",
    "websockets",
    "broker",
    "structlog",
)
MQTT_LIBRARIES = ("aiomqtt", "paho")
"""The MQTT client and its internals stay behind broker/'s Bus: nothing else imports them."""
IO_CALLS = frozenset(
    {"open", "read_text", "write_text", "read_bytes", "write_bytes", "unlink", "mkdir"}
)


@dataclass(frozen=True)
class Import:
    module: str
    target: str
    line: int


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files() -> Iterator[Path]:
    for top in OURS:
        yield from sorted((REPO / top).rglob("*.py"))


def imports_of(path: Path) -> Iterator[Import]:
    name = module_name(path)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(name, alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield Import(name, node.module, node.lineno)
            for alias in node.names:
                yield Import(name, f"{node.module}.{alias.name}", node.lineno)


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def is_pure(module: str) -> bool:
    return any(within(module, pure) for pure in PURE)


def violation(imp: Import) -> str | None:
    """Why this import breaks a rule, or None."""
    src, dst = imp.module, imp.target
    if not within(src, "broker") and any(within(dst, lib) for lib in MQTT_LIBRARIES):
        return f"{dst} used outside broker/ (use the Bus and BusError)"
    if not dst.startswith(OURS):
        if is_pure(src) and any(within(dst, io) for io in IO_MODULES):
            return f"pure module imports {dst}"
        return None
    if within(src, "chequered.contract") and not within(dst, "chequered.contract"):
        return f"the contract imports {dst}"
    if within(src, "broker") and not (within(dst, "broker") or within(dst, "chequered.contract")):
        return f"broker imports {dst}"
    for side, other in (("simulator", "consumers"), ("consumers", "simulator")):
        if within(src, side):
            for banned in (other, "loadtest", "chequered.cli"):
                if within(dst, banned):
                    return f"{side} imports {dst}"
    if is_pure(src) and within(dst, "broker"):
        return f"pure module imports {dst}"
    return None


def io_calls(path: Path) -> Iterator[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            called = (
                func.id
                if isinstance(func, ast.Name)
                else func.attr
                if isinstance(func, ast.Attribute)
                else ""
            )
            if called in IO_CALLS:
                yield node.lineno, called


def test_every_import_runs_with_the_flow() -> None:
    problems = []
    for path in source_files():
        for imp in imports_of(path):
            why = violation(imp)
            if why:
                problems.append(f"{path.relative_to(REPO)}:{imp.line}: {why}")
    assert problems == []


def test_pure_modules_do_no_file_io() -> None:
    problems = []
    for path in source_files():
        if is_pure(module_name(path)):
            for line, called in io_calls(path):
                problems.append(f"{path.relative_to(REPO)}:{line}: calls {called}()")
    assert problems == []


def test_every_pure_entry_names_real_code() -> None:
    # A renamed module must not silently drop out of the rules.
    names = {module_name(path) for path in source_files()}
    missing = [p for p in PURE if not any(within(n, p) for n in names)]
    allowed_later = {"consumers.projector.core", "consumers.gateway.core"}
    assert [p for p in missing if p not in allowed_later] == []


@pytest.mark.parametrize(
    ("module", "target", "rule"),
    [
        ("chequered.contract.events", "consumers.standings.fold", "the contract imports"),
        ("simulator.live.producer", "consumers.gateway.server", "simulator imports"),
        ("consumers.projector.service", "simulator.timeline.build", "consumers imports"),
        ("consumers.gateway.server", "loadtest.run", "consumers imports"),
        ("broker.bus", "simulator.live.feed", "broker imports"),
        ("simulator.timeline.synth", "asyncio", "pure module imports"),
        ("consumers.standings.fold", "aiomqtt.client", "aiomqtt.client used outside broker/"),
        ("consumers.gateway.server", "aiomqtt", "aiomqtt used outside broker/"),
        ("chequered.cli.live", "paho.mqtt.client", "paho.mqtt.client used outside broker/"),
    ],
)
def test_the_check_catches_each_kind_of_violation(module: str, target: str, rule: str) -> None:
    why = violation(Import(module, target, 1))
    assert why is not None and why.startswith(rule)


@pytest.mark.parametrize(
    ("module", "target"),
    [
        ("chequered.cli.demo", "consumers.projector.service"),
        ("chequered.cli.demo", "simulator.live.producer"),
        ("loadtest.run", "simulator.timeline.build"),
        ("consumers.projector.service", "chequered.contract.events"),
        ("simulator.live.producer", "broker.bus"),
        ("consumers.projector.service", "asyncio"),
    ],
)
def test_the_check_allows_the_wiring(module: str, target: str) -> None:
    assert violation(Import(module, target, 1)) is None
