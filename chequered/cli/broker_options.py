"""The broker options every live command shares: ``--broker`` and the TLS files of mqtts://.

One definition for the feed's commands (replay, control, status) and the
consumers' (project, serve); the address is checked, files included, before
anything connects, so a typo is a one-line error instead of a reconnect loop.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

from broker import credentials
from broker.bus import BrokerAddress, BrokerUrlError, parse_url
from chequered import log
from chequered.cli.main import UserError

_log = log.get(__name__)

DEFAULT_BROKER = "mqtt://127.0.0.1:1883"
BROKER_ENV = "CHEQUERED_BROKER"
"""Environment variable that gives the feed's commands their default broker."""

_TLS_FLAGS = (("ca_file", "--ca-file"), ("cert_file", "--cert-file"), ("key_file", "--key-file"))


def broker_options(*, required: bool = False) -> argparse.ArgumentParser:
    """A parent parser with ``--broker``, ``--ca-file``, ``--cert-file`` and ``--key-file``.

    ``required``: ``--broker`` must be given; otherwise it defaults to
    ``$CHEQUERED_BROKER``, else the loopback broker on 1883.
    """
    parser = argparse.ArgumentParser(add_help=False)
    url_help = "mqtt://[user:pass@]host[:port], mqtts://... or memory://name"
    if required:
        parser.add_argument("--broker", required=True, help=url_help)
    else:
        parser.add_argument(
            "--broker",
            default=os.environ.get(BROKER_ENV, DEFAULT_BROKER),
            help=f"{url_help} (default ${BROKER_ENV} or {DEFAULT_BROKER})",
        )
    parser.add_argument(
        "--broker-password-file",
        metavar="FILE",
        help="the broker password, for a --broker URL that names only its user (else"
        f" ${credentials.PASSWORD_ENV}); a password in the URL shows in ps",
    )
    parser.add_argument("--ca-file", metavar="FILE", help="CA certificates for mqtts:// (PEM)")
    parser.add_argument("--cert-file", metavar="FILE", help="client certificate for mqtts:// (PEM)")
    parser.add_argument("--key-file", metavar="FILE", help="client key for mqtts:// (PEM)")
    return parser


def broker_address(args: argparse.Namespace, url: str | None = None) -> BrokerAddress:
    """The broker of ``--broker`` (or ``url``) with its TLS files; UserError if unusable."""
    url = url or args.broker
    files = {name: getattr(args, name, None) for name, _ in _TLS_FLAGS}
    try:
        address = parse_url(url, **files)
    except BrokerUrlError as exc:
        raise UserError(f"--broker {exc}") from None
    for name, flag in _TLS_FLAGS:
        path = files[name]
        if path is None:
            continue
        if address.scheme != "mqtts":
            raise UserError(f"{flag} {path}: only for mqtts:// brokers, not {address.url()}")
        if not Path(path).is_file():
            raise UserError(f"{flag} {path}: no such file")
        if not os.access(path, os.R_OK):
            raise UserError(f"{flag} {path}: not readable")
    if address.key_file is not None and address.cert_file is None:
        raise UserError(f"--key-file {address.key_file}: give the certificate too (--cert-file)")
    address = _with_password(address, getattr(args, "broker_password_file", None))
    if credentials.is_development_password(address.password) and not credentials.is_loopback(
        address.host
    ):
        _log.warning(
            "broker.development_password", broker=address.url(), user=address.username,
            hint="this password is public (broker/secure/README.md): set your own",
        )  # fmt: skip
    return address


def _with_password(address: BrokerAddress, path: str | None) -> BrokerAddress:
    """The password from ``--broker-password-file``, else the URL's, else the environment's."""
    if path is not None:
        if address.username is None:
            raise UserError(f"--broker-password-file {path}: the --broker URL names no user")
        if address.password is not None:
            raise UserError(
                f"--broker-password-file {path}: the --broker URL has a password too; give one"
            )
        try:
            with open(path, "rb") as file:
                data = file.read(credentials.MAX_PASSWORD_FILE_BYTES + 1)
        except OSError as exc:
            raise UserError(f"--broker-password-file {path}: {exc.strerror}") from None
        if len(data) > credentials.MAX_PASSWORD_FILE_BYTES:
            raise UserError(f"--broker-password-file {path}: too large for a password file")
        try:
            password = credentials.password_from_file_text(data.decode())
        except UnicodeDecodeError:
            raise UserError(f"--broker-password-file {path}: not UTF-8 text") from None
        if not password:
            raise UserError(f"--broker-password-file {path}: the file is empty")
        return dataclasses.replace(address, password=password)
    from_env = os.environ.get(credentials.PASSWORD_ENV)
    if from_env and address.username is not None and address.password is None:
        return dataclasses.replace(address, password=from_env)
    return address
