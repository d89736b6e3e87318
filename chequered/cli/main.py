"""The ``chequered`` command line: one entry point, one module per group of commands.

Each command module exposes ``register(subparsers)``; a command's handler
takes the parsed arguments and returns the exit status. Errors a user can
cause are printed as one line naming the input, with exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from chequered import __version__, heap
from chequered import log as logsetup

# Modules that contribute commands, in the order their commands are listed.
COMMAND_MODULES = (
    "chequered.cli.recordings",  # import, races, validate
    "chequered.cli.timeline",  # timeline, lapchart
    "chequered.cli.timing",  # import-timing
    "chequered.cli.rmonitor",  # import-rmonitor, rmonitor
    "chequered.cli.live",  # replay, control, demo
    "chequered.cli.services",  # project, serve
    "chequered.cli.watch",  # watch
    "loadtest.cli",  # loadtest
)

Handler = Callable[[argparse.Namespace], int]


class UserError(Exception):
    """An error the user can fix; printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chequered",
        description="Event-sourced live timing simulator for endurance sports-car racing.",
    )
    parser.add_argument("--version", action="version", version=f"chequered {__version__}")
    parser.add_argument("--log-level", default="warning", help="debug, info, warning, error")
    parser.add_argument("--log-json", action="store_true", help="log JSON lines even on a terminal")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        # Every command module is part of the package: a missing one is a broken
        # install, and must fail loudly rather than drop its commands.
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logsetup.configure(args.log_level, json=True if args.log_json else None)
    heap.calm()
    handler: Handler = args.handler
    try:
        return handler(args)
    except UserError as exc:
        print(f"chequered {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
