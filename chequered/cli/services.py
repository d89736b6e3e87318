"""``chequered project`` (the standings projector) and ``chequered serve`` (the gateway).

Both run until interrupted (Ctrl-C or SIGTERM), then stop cleanly: the
projector writes its checkpoints, the gateway closes its connections.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import ssl
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from chequered.cli.broker_options import broker_address, broker_options
from chequered.cli.main import UserError

if TYPE_CHECKING:
    from consumers.gateway.server import GatewaySettings

TOKEN_ENV = "CHEQUERED_GATEWAY_TOKEN"
"""Environment variable read when ``serve`` gets no ``--token`` (kept out of ``ps``)."""


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port {value} is outside 0..65535")
    return value


def register(subparsers: Any) -> None:
    broker = broker_options(required=True)
    project = subparsers.add_parser(
        "project",
        parents=[broker],
        help="fold race events into standings and publish snapshots and deltas",
        description=(
            "Subscribes to chequered/v2/+/events with a persistent session, folds every "
            "race into standings and publishes a retained snapshot "
            "(chequered/v2/<race>/standings) and deltas (.../standings/delta). Bad payloads "
            "go to chequered/v2/<race>/deadletter. With --checkpoint-dir a restart resumes "
            "where it stopped."
        ),
    )
    project.add_argument(
        "--checkpoint-dir", type=Path, help="folder for per-race checkpoints (created if missing)"
    )
    project.add_argument(
        "--client-id",
        default="chequered-projector",
        help="MQTT client id of the persistent session (default chequered-projector)",
    )
    project.add_argument(
        "--metrics-port",
        type=_port,
        help="serve Prometheus metrics on 127.0.0.1:PORT/metrics, and /healthz (200 once "
        "subscribed to the events, else 503)",
    )
    scale = project.add_mutually_exclusive_group()
    scale.add_argument(
        "--partition",
        metavar="I/N",
        help="be projector I of N: fold only the races a stable hash of the race id gives "
        "to I, subscribing to their events topics alone (use a client id and checkpoint "
        "folder of its own per partition)",
    )
    scale.add_argument(
        "--processes",
        metavar="N",
        help="run N projectors, partition 1/N to N/N, client ids CLIENT-ID-IofN, "
        "checkpoints in CHECKPOINT-DIR/IofN, metrics on METRICS-PORT+I-1; one that dies "
        "is started again from its checkpoints (default 1)",
    )
    project.set_defaults(handler=_project)

    serve = subparsers.add_parser(
        "serve",
        parents=[broker],
        help="serve standings to browsers over websockets, and the widget",
        description=(
            "Reads the retained standings and deltas from the broker and serves them to "
            "websocket clients (/ws), with the leaderboard widget, /healthz and /metrics. "
            "With no access flags any page may connect: put it behind a proxy, or give "
            "--allow-origin, --token and the connection limits."
        ),
    )
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    serve.add_argument("--port", type=_port, default=8080, help="port to listen on (default 8080)")
    serve.add_argument(
        "--workers",
        metavar="M",
        help="run M gateway processes on the one port (SO_REUSEPORT), metrics on "
        "METRICS-PORT+I-1; one that dies is started again (default 1)",
    )
    access = serve.add_argument_group("access and limits")
    access.add_argument(
        "--allow-origin",
        action="append",
        metavar="ORIGIN",
        help="a page origin allowed to open /ws, as scheme://host[:port] (repeatable); "
        "other origins get 403 (default: any)",
    )
    access.add_argument(
        "--require-origin",
        action="store_true",
        help="with --allow-origin, refuse clients that send no Origin (non-browsers) too",
    )
    access.add_argument(
        "--token",
        help=f"require /ws?token=TOKEN, else 401 (default ${TOKEN_ENV}, which keeps it out "
        "of the process list)",
    )
    access.add_argument(
        "--max-per-address",
        metavar="N",
        help="connections from one IP address (websocket or HTTP, counted when accepted); "
        "more get 429 (default 32)",
    )
    access.add_argument(
        "--max-clients",
        metavar="N",
        help="connections in all; more get 503 (default 4096)",
    )
    access.add_argument(
        "--queue-frames",
        metavar="N",
        help="frames waiting for one slow client before its backlog becomes one fresh "
        "snapshot (default 64)",
    )
    access.add_argument(
        "--no-compression",
        action="store_true",
        help="decline permessage-deflate: every frame plain (default: offered; each "
        "compressed frame is made once for every client in step)",
    )
    access.add_argument(
        "--allow-cors",
        metavar="ORIGIN",
        help="send Access-Control-Allow-Origin: ORIGIN with every response, so that pages "
        "of that origin may read them (default: no CORS header)",
    )
    access.add_argument(
        "--metrics-port",
        type=_port,
        help="serve /metrics and /healthz on 127.0.0.1:PORT instead of the public port "
        "(default: /metrics on the public port, to this host only, or with the token)",
    )
    access.add_argument(
        "--tls-cert",
        metavar="FILE",
        type=Path,
        help="certificate chain (PEM): serve wss:// and https:// (TLS 1.2 or later)",
    )
    access.add_argument(
        "--tls-key",
        metavar="FILE",
        type=Path,
        help="private key (PEM) of --tls-cert, when not in that file",
    )
    serve.set_defaults(handler=_serve)


def _check_checkpoint_dir(path: Path | None) -> None:
    if path is None:
        return
    if path.exists() and not path.is_dir():
        raise UserError(f"--checkpoint-dir {path}: exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--checkpoint-dir {path}: cannot create it ({exc.strerror})") from None


def _logs(args: argparse.Namespace) -> tuple[str, bool | None]:
    """The log level and format the command was given, for the processes it starts."""
    return getattr(args, "log_level", "warning"), True if getattr(args, "log_json", False) else None


def _run_until_signal(make: Any) -> int:
    """Run ``make(stop)`` with SIGINT and SIGTERM setting ``stop``."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        coro: Coroutine[Any, Any, None] = make(stop)
        await coro

    asyncio.run(main())
    return 0


def _project(args: argparse.Namespace) -> int:
    from consumers.projector.service import run_projector

    address = broker_address(args)
    _check_checkpoint_dir(args.checkpoint_dir)
    partition = None
    if args.partition is not None:
        from chequered.contract.partition import parse

        try:
            partition = parse(args.partition)
        except ValueError as exc:
            raise UserError(f"--partition {exc}") from None
    processes = _count("--processes", args.processes) or 1
    if processes > 1:
        from chequered.cli.cluster import run_projectors

        return run_projectors(
            address,
            processes,
            client_id=args.client_id,
            checkpoint_dir=args.checkpoint_dir,
            metrics_port=args.metrics_port,
            logs=_logs(args),
        )
    try:
        return _run_until_signal(
            lambda stop: run_projector(
                address,
                checkpoint_dir=args.checkpoint_dir,
                client_id=args.client_id,
                stop=stop,
                metrics_port=args.metrics_port,
                partition=partition,
            )
        )
    except OSError as exc:
        # The broker connection retries on its own: only the metrics port fails here.
        raise UserError(
            f"--metrics-port {args.metrics_port}: cannot listen ({exc.strerror or exc})"
        ) from None


# -- serve -----------------------------------------------------------------------


def _count(flag: str, text: str | None) -> int | None:
    """A whole number of at least 1, or None when the flag was not given."""
    if text is None:
        return None
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"{flag} {text}: not a whole number of at least 1")
    return int(text)


def _origin(text: str) -> str:
    """``scheme://host[:port]`` as a browser sends it in ``Origin``: host in lower case,
    no default port."""
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        raise UserError(f"--allow-origin {text}: bad port") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"--allow-origin {text}: not an origin; write it as https://host[:port]")
    if parts.path or parts.query or parts.fragment or parts.username or parts.password:
        raise UserError(
            f"--allow-origin {text}: an origin is only scheme://host[:port], with no path"
        )
    host = parts.hostname
    if ":" in host:
        host = f"[{host}]"  # an IPv6 address
    default = 443 if parts.scheme == "https" else 80
    return f"{parts.scheme}://{host}" + (f":{port}" if port not in (None, default) else "")


def _cors(text: str | None) -> str | None:
    """``--allow-cors``: an origin as ``--allow-origin`` takes it, or ``*`` for any page."""
    if text is None or text == "*":
        return text
    try:
        return _origin(text)
    except UserError as exc:
        raise UserError(str(exc).replace("--allow-origin", "--allow-cors", 1)) from None


def _token(given: str | None) -> str | None:
    token = given if given is not None else os.environ.get(TOKEN_ENV) or None
    if token is not None and not token.strip():
        raise UserError("--token: empty; give a secret, or leave the flag out for none")
    return token


def _readable(flag: str, path: Path) -> None:
    if not path.is_file():
        raise UserError(f"{flag} {path}: no such file")
    if not os.access(path, os.R_OK):
        raise UserError(f"{flag} {path}: not readable")


def gateway_settings(args: argparse.Namespace) -> GatewaySettings:
    """The ``GatewaySettings`` of ``serve``'s flags; UserError naming a flag that is wrong."""
    from consumers.gateway.server import GatewaySettings, tls_context

    origins = tuple(dict.fromkeys(_origin(o) for o in args.allow_origin or ()))
    if args.require_origin and not origins:
        raise UserError("--require-origin: give the origins to allow with --allow-origin")
    changes: dict[str, Any] = {
        "allowed_origins": origins or None,
        "allow_missing_origin": not args.require_origin,
        "token": _token(args.token),
        "allow_cors": _cors(args.allow_cors),
        "metrics_port": args.metrics_port,
        "tls_certfile": args.tls_cert,
        "tls_keyfile": args.tls_key,
        "compression": not args.no_compression,
    }
    for key, flag, text in (
        ("max_connections_per_address", "--max-per-address", args.max_per_address),
        ("max_clients", "--max-clients", args.max_clients),
    ):
        if text is not None:
            changes[key] = _count(flag, text)
    queue_frames = _count("--queue-frames", args.queue_frames)
    if queue_frames is not None:
        changes["queue_frames"] = queue_frames
    if args.tls_key is not None and args.tls_cert is None:
        raise UserError(f"--tls-key {args.tls_key}: give the certificate too (--tls-cert)")
    settings = GatewaySettings(**changes)
    if args.tls_cert is not None:
        _readable("--tls-cert", args.tls_cert)
        if args.tls_key is not None:
            _readable("--tls-key", args.tls_key)
        try:
            tls_context(settings)  # a key that does not match is found now, not per client
        except (ssl.SSLError, OSError) as exc:
            files = f"--tls-cert {args.tls_cert}" + (
                f" --tls-key {args.tls_key}" if args.tls_key else ""
            )
            reason = getattr(exc, "reason", None) or exc.strerror or exc
            raise UserError(
                f"{files}: not a PEM certificate chain and its matching key ({reason})"
            ) from None
    return settings


def _serve(args: argparse.Namespace) -> int:
    from consumers.gateway.server import MetricsPortError, UnsupportedWebsockets, run_gateway

    address = broker_address(args)
    settings = gateway_settings(args)
    workers = _count("--workers", args.workers) or 1
    if workers > 1:
        if args.port == 0:
            raise UserError("--workers: give the one --port they share (not 0)")
        from chequered.cli.cluster import run_gateways

        return run_gateways(
            address, workers, host=args.host, port=args.port, settings=settings, logs=_logs(args)
        )
    try:
        return _run_until_signal(
            lambda stop: run_gateway(
                address, host=args.host, port=args.port, stop=stop, settings=settings
            )
        )
    except UnsupportedWebsockets as exc:
        raise UserError(str(exc)) from None
    except MetricsPortError as exc:
        raise UserError(f"--metrics-port {args.metrics_port}: cannot listen ({exc})") from None
    except OSError as exc:
        raise UserError(f"--host {args.host} --port {args.port}: cannot listen ({exc})") from None
