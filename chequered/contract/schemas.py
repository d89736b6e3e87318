"""JSON Schemas of the MQTT payloads, generated from the contract's types into docs/schema/.

``python -m chequered.contract.schemas`` writes them; with ``--check`` it exits 1
naming every committed file that no longer matches the types.
"""

from __future__ import annotations

import inspect
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import msgspec

from chequered.contract import board, control, events
from chequered.contract.deadletter import DeadLetter
from chequered.contract.injected import Injected

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "docs" / "schema"
DIALECT = "https://json-schema.org/draft/2020-12/schema"


def _standings() -> dict[str, object]:
    schema: dict[str, object] = msgspec.json.schema(board.Snapshot)
    return schema


def _standings_delta() -> dict[str, object]:
    schema: dict[str, object] = msgspec.json.schema(board.Delta)
    return schema


def _dead_letter() -> dict[str, object]:
    schema: dict[str, object] = msgspec.json.schema(DeadLetter)
    return schema


def _injected() -> dict[str, object]:
    schema: dict[str, object] = msgspec.json.schema(Injected)
    return schema


SCHEMAS: dict[str, tuple[str, Callable[[], dict[str, object]]]] = {
    "events.schema.json": ("A message on chequered/v2/<race>/events", events.json_schema),
    "control.schema.json": ("A command on chequered/v2/<race>/control", control.command_schema),
    "status.schema.json": (
        "The producer's status on chequered/v2/<race>/status",
        control.status_schema,
    ),
    "standings.schema.json": ("The snapshot on chequered/v2/<race>/standings", _standings),
    "standings-delta.schema.json": (
        "A delta on chequered/v2/<race>/standings/delta",
        _standings_delta,
    ),
    "deadletter.schema.json": (
        "A rejected payload on chequered/v2/<race>/deadletter",
        _dead_letter,
    ),
    "injected.schema.json": (
        "A fault a hostile feed injected, on chequered/v2/<race>/injected",
        _injected,
    ),
}
"""File name -> (title, generator)."""


def normalise(node: object) -> object:
    """The schema with every description cleaned as ``inspect.cleandoc`` does.

    msgspec copies docstrings into descriptions, and its releases differ in how
    they clean them (and in whether they add ``$schema``): the committed files
    must depend on our types alone, not on the library's text formatting.
    """
    if isinstance(node, dict):
        out: dict[str, object] = {}
        for key, value in node.items():
            if key == "$schema":
                continue
            if key == "description" and isinstance(value, str):
                out[key] = inspect.cleandoc(value)
            else:
                out[key] = normalise(value)
        return out
    if isinstance(node, list):
        return [normalise(item) for item in node]
    return node


def render(name: str) -> str:
    title, generate = SCHEMAS[name]
    body = normalise(generate())
    assert isinstance(body, dict)
    schema = {"$schema": DIALECT, "title": title, **body}
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def stale(directory: Path = SCHEMA_DIR) -> list[str]:
    """Names of the schema files that are missing or differ from the types."""
    out = []
    for name in SCHEMAS:
        path = directory / name
        if not path.exists() or path.read_text(encoding="utf-8") != render(name):
            out.append(name)
    return out


def write(directory: Path = SCHEMA_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in SCHEMAS:
        path = directory / name
        path.write_text(render(name), encoding="utf-8")
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--check"]:
        names = stale()
        for name in names:
            print(f"{SCHEMA_DIR / name}: out of date; run python -m chequered.contract.schemas")
        return 1 if names else 0
    if args:
        print("usage: python -m chequered.contract.schemas [--check]", file=sys.stderr)
        return 2
    for path in write():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
