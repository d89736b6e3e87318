"""``chequered watch``: the terminal timing screen (``chequered.watch``).

It follows a race on the websocket gateway (``--gateway``, or the widget's own
URL as the demo prints it) and, given ``--broker``, sends replay commands.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any
from urllib.parse import parse_qs, urlsplit

from chequered.cli.broker_options import broker_address
from chequered.cli.main import UserError

GATEWAY_ENV = "CHEQUERED_GATEWAY"
"""Environment variable that gives ``watch`` its default gateway."""


def register(subparsers: Any) -> None:
    from chequered.watch.client import DEFAULT_GATEWAY

    p = subparsers.add_parser(
        "watch",
        help="a live timing screen in the terminal",
        description="Follow a race on the websocket gateway in a full-screen leaderboard: "
        "class tabs, flag, gaps and intervals, last and best laps, pit state. With --broker, "
        "keys pause, resume, change speed and seek the replay (press ? for the keys).",
    )
    p.add_argument(
        "race", metavar="RACE", nargs="?", help="race id (default: the URL's ?race=, else the "
        "first race on air)"
    )  # fmt: skip
    p.add_argument(
        "--gateway",
        default=os.environ.get(GATEWAY_ENV, DEFAULT_GATEWAY),
        help="ws://host:port/ws, or the widget's http:// URL as `chequered demo` prints it "
        f"(default ${GATEWAY_ENV} or {DEFAULT_GATEWAY})",
    )
    p.add_argument("--token", help="the gateway's access token, when it asks for one")
    p.add_argument("--class", dest="cls", metavar="CLASS", help="start on this class's tab")
    p.add_argument(
        "--broker",
        help="MQTT broker of the replay (mqtt://host:port): enables the control keys",
    )
    p.add_argument(
        "--no-spoilers",
        action="store_true",
        help="spoiler-safe: a race whose replay has already finished stays hidden until you "
        "seek back or press r",
    )
    p.add_argument("--ca-file", metavar="FILE", help="CA certificates for mqtts:// (PEM)")
    p.add_argument("--cert-file", metavar="FILE", help="client certificate for mqtts:// (PEM)")
    p.add_argument("--key-file", metavar="FILE", help="client key for mqtts:// (PEM)")
    p.set_defaults(handler=run_watch)


def target(gateway: str, race: str | None, cls: str | None) -> tuple[str, str | None, str | None]:
    """The race and class from the arguments, else from the URL's ``?race=&class=``."""
    return gateway, race or _query(gateway, "race"), cls or _query(gateway, "class")


def _query(url: str, name: str) -> str | None:
    values = parse_qs(urlsplit(url).query).get(name)
    return values[0] if values else None


def run_watch(args: argparse.Namespace) -> int:
    from chequered.contract import topics
    from chequered.watch.app import WatchApp
    from chequered.watch.client import GatewayUrlError, gateway_url

    gateway, race, cls = target(args.gateway, args.race, args.cls)
    token = args.token or _query(gateway, "token")
    try:
        url = gateway_url(gateway.split("?", 1)[0], token)
    except GatewayUrlError as exc:
        raise UserError(f"--gateway {exc}") from None
    if race is not None:
        try:
            topics.check_race_id(race)
        except ValueError as exc:
            raise UserError(f"RACE {exc}") from None
    broker = broker_address(args) if args.broker else None
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        # Textual draws a full screen and reads keys: piped, it would show nothing useful.
        raise UserError("needs a terminal (standard input and output are not one)")
    app = WatchApp(url, race, broker=broker, cls=cls, spoilers=not args.no_spoilers)
    return app.run() or 0
