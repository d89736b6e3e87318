"""``chequered project`` and ``chequered serve`` as an operator runs them.

The flags reach the services: the projector over mqtts:// with a private CA
and a client certificate, its ``/healthz`` ready only once subscribed; the
gateway's origin allow-list, token (from the environment), connection limit
and TLS certificate, each proved against the real process. Bad flags are one
line naming the flag, exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

from broker.bus import connect
from broker.mosquitto import Mosquitto, free_port
from chequered.cli.main import build_parser, main
from chequered.cli.services import TOKEN_ENV, gateway_settings
from chequered.contract import events as ev
from chequered.contract import topics
from consumers.gateway.core.settings import GatewaySettings
from tests.conftest import REPO, requires_mosquitto
from tests.support.certs import OPENSSL_TIMEOUT_S, Certs, make_certs, openssl
from tests.support.feed import tiny_race
from tests.support.procs import Service, parse_metrics, scrape
from tests.support.wait import wait_for

WAIT_S = 15.0
needs_openssl = pytest.mark.skipif(openssl() is None, reason="openssl is not installed")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def client_cert(certs: Certs, name: str = "projector") -> tuple[Path, Path]:
    """A client certificate signed by the CA of ``certs`` (its key is beside it), and its key."""
    folder = certs.ca.parent

    def _run(*args: str, cwd: Path) -> None:
        subprocess.run([openssl() or "openssl", *args], cwd=cwd, check=True,
                       capture_output=True, timeout=OPENSSL_TIMEOUT_S)  # fmt: skip

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _run("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
         cwd=folder)  # fmt: skip
    (folder / f"{name}.ext").write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=clientAuth\n"
    )
    _run(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
        cwd=folder,
    )  # fmt: skip
    return folder / f"{name}.pem", folder / f"{name}.key"


def get(url: str, context: ssl.SSLContext | None = None) -> tuple[int, bytes]:
    """Status and body of a GET, whatever the status."""
    try:
        with urllib.request.urlopen(url, timeout=5, context=context) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def answering(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        get(url, context)
    except OSError:
        return False
    return True


# -- bad flags ---------------------------------------------------------------------

BROKER = ["--broker", "mqtt://127.0.0.1:1"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["serve", *BROKER, "--tls-cert", "{tmp}/missing.pem"],
         "--tls-cert {tmp}/missing.pem: no such file"),
        (["serve", *BROKER, "--tls-cert", "{tmp}/garbage.pem"],
         "--tls-cert {tmp}/garbage.pem: not a PEM certificate chain and its matching key"),
        (["serve", *BROKER, "--tls-key", "{tmp}/garbage.pem"],
         "--tls-key {tmp}/garbage.pem: give the certificate too (--tls-cert)"),
        (["serve", *BROKER, "--allow-origin", "widget.example"],
         "--allow-origin widget.example: not an origin"),
        (["serve", *BROKER, "--allow-origin", "https://widget.example/page"],
         "--allow-origin https://widget.example/page: an origin is only scheme://host[:port]"),
        (["serve", *BROKER, "--require-origin"], "--require-origin: give the origins"),
        (["serve", *BROKER, "--max-clients", "0"], "--max-clients 0: not a whole number"),
        (["serve", *BROKER, "--max-per-address", "two"], "--max-per-address two: not a whole"),
        (["serve", *BROKER, "--queue-frames", "-1"], "--queue-frames -1: not a whole number"),
        (["serve", *BROKER, "--token", " "], "--token: empty"),
        (["serve", "--broker", "tcp://x"], "--broker tcp://x: broker URL must start with"),
        (["project", *BROKER, "--ca-file", "{tmp}/garbage.pem"],
         "--ca-file {tmp}/garbage.pem: only for mqtts:// brokers, not mqtt://127.0.0.1:1"),
        (["project", "--broker", "mqtts://127.0.0.1:1", "--ca-file", "{tmp}/missing.pem"],
         "--ca-file {tmp}/missing.pem: no such file"),
        (["project", "--broker", "mqtts://127.0.0.1:1", "--key-file", "{tmp}/garbage.pem"],
         "--key-file {tmp}/garbage.pem: give the certificate too (--cert-file)"),
        (["replay", "x", "--broker", "mqtts://127.0.0.1:1", "--cert-file", "{tmp}/missing.pem"],
         "--cert-file {tmp}/missing.pem: no such file"),
    ],
)  # fmt: skip
def test_bad_flags_are_one_line_naming_the_flag(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "garbage.pem").write_text("not a certificate\n")
    argv = [arg.replace("{tmp}", str(tmp_path)) for arg in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"chequered {argv[0]}: " + message.replace("{tmp}", str(tmp_path)))


def test_a_bad_flag_stops_the_real_command_before_it_listens(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "chequered", "serve", *BROKER, "--tls-cert", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr == f"chequered serve: --tls-cert {tmp_path / 'x'}: no such file\n"


def test_serve_flags_become_the_gateway_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = build_parser()
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    plain = gateway_settings(parser.parse_args(["serve", *BROKER]))
    assert plain.allowed_origins is None and plain.token is None and plain.tls_certfile is None
    defaults = GatewaySettings()
    assert plain.max_clients == defaults.max_clients
    assert plain.max_connections_per_address == defaults.max_connections_per_address
    assert plain.allow_cors is None and plain.metrics_port is None
    assert plain.queue_frames == 64 and plain.allow_missing_origin and plain.compression
    args = parser.parse_args(
        ["serve", *BROKER, "--allow-origin", "https://Widget.Example:443",
         "--allow-origin", "http://127.0.0.1:8000", "--allow-origin", "https://widget.example",
         "--require-origin", "--token", "t0k", "--max-per-address", "4", "--max-clients", "500",
         "--queue-frames", "16", "--no-compression"]
    )  # fmt: skip
    settings = gateway_settings(args)
    # As browsers send Origin: lower case, no default port; each once.
    assert settings.allowed_origins == ("https://widget.example", "http://127.0.0.1:8000")
    assert not settings.allow_missing_origin
    assert settings.token == "t0k"
    assert settings.max_connections_per_address == 4
    assert settings.max_clients == 500
    assert settings.queue_frames == 16
    assert not settings.compression
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    assert gateway_settings(parser.parse_args(["serve", *BROKER])).token == "from-env"
    assert gateway_settings(parser.parse_args(["serve", *BROKER, "--token", "x"])).token == "x"


def test_every_serve_and_project_flag_is_in_the_operations_guide() -> None:
    guide = (REPO / "docs" / "OPERATIONS.md").read_text()
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for command in ("serve", "project"):
        sub = commands.choices[command]
        for action in sub._actions:
            for flag in action.option_strings:
                if flag.startswith("--") and flag != "--help":
                    found = re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", guide)
                    assert found, f"{command} {flag}: document it in docs/OPERATIONS.md"


# -- the real processes ------------------------------------------------------------


def compose_health_check(service: str, port: int) -> int:
    """Run ``service``'s docker-compose health check against a projector on ``port``."""
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    command = compose["services"][service]["command"]
    check = compose["services"][service]["healthcheck"]["test"]
    metrics_port = command[command.index("--metrics-port") + 1]
    assert check[:3] == ["CMD", "python", "-c"] and f":{metrics_port}/healthz" in check[3]
    code = check[3].replace(f":{metrics_port}/", f":{port}/")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30).returncode


def connack_over_tls(
    port: int, ca: Path, cert: Path | None = None, key: Path | None = None
) -> bool:
    """Whether the broker answers an MQTT CONNECT over TLS with a CONNACK."""
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(cert, key)
    connect_packet = bytes([0x10, 12, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 60, 0, 0])
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            tls.sendall(connect_packet)
            return tls.recv(4)[:1] == b"\x20"
    except (ssl.SSLError, ConnectionError):
        return False


@requires_mosquitto
@needs_openssl
async def test_project_over_mqtts_with_a_client_certificate(tmp_path: Path, certs: Certs) -> None:
    """The projector shows its client certificate to a broker that requires one."""
    cert, key = client_cert(certs)
    tls_port = free_port()
    broker = Mosquitto(
        workdir=tmp_path / "mosquitto",
        extra_config=(
            f"listener {tls_port} 127.0.0.1\ncafile {certs.ca}\ncertfile {certs.cert}\n"
            f"keyfile {certs.key}\nrequire_certificate true\n"
        ),
    ).start()
    port = free_port()
    projector = Service(
        "projector",
        ["project", "--broker", f"mqtts://127.0.0.1:{tls_port}", "--ca-file", str(certs.ca),
         "--cert-file", str(cert), "--key-file", str(key), "--client-id", "tls-projector",
         "--metrics-port", str(port)],
        tmp_path,
    )  # fmt: skip
    race = "tls-race"
    timeline = tiny_race(race, cars=3, laps=2)
    try:
        # The listener refuses a client without a certificate: getting in proves it was shown.
        assert not connack_over_tls(tls_port, certs.ca)
        assert connack_over_tls(tls_port, certs.ca, cert, key)
        projector.start()
        health = f"http://127.0.0.1:{port}/healthz"
        wait_for(lambda: answering(health) and get(health)[0] == 200, WAIT_S,
                 "the projector subscribed over TLS")  # fmt: skip
        async with connect(broker.url) as pub:  # the plain listener
            for event in timeline:
                await pub.publish(topics.topic(race, topics.EVENTS), ev.encode(event))

        def folded() -> bool:
            status, body = get(health)
            return status == 200 and json.loads(body)["seq"].get(race) == timeline[-1].seq

        wait_for(folded, WAIT_S, "the race folded")
        status, body = get(health)
        assert status == 200
        assert json.loads(body) == {
            "ok": True, "connected": True, "races": 1, "seq": {race: timeline[-1].seq}
        }  # fmt: skip
        assert compose_health_check("projector", port) == 0
        assert projector.stop() == 0
    finally:
        if projector.alive:
            projector.kill()
        broker.stop()
    assert not projector.tracebacks()


def test_project_healthz_is_503_until_subscribed(tmp_path: Path) -> None:
    """/metrics answers at once; /healthz says 503 for as long as no broker takes it."""
    port = free_port()
    projector = Service(
        "projector",
        ["project", "--broker", f"mqtt://127.0.0.1:{free_port()}", "--metrics-port", str(port)],
        tmp_path,
    )
    try:
        projector.start()

        def retried() -> bool:
            try:
                return parse_metrics(scrape(port))["chequered_projector_reconnects_total"] >= 2
            except OSError:
                return False

        wait_for(retried, WAIT_S, "two refused connections")
        status, body = get(f"http://127.0.0.1:{port}/healthz")
        assert status == 503
        assert json.loads(body) == {"ok": False, "connected": False, "races": 0, "seq": {}}
        # docker-compose holds the producer back until the projector is healthy.
        assert compose_health_check("projector", port) != 0
        assert compose_health_check("projector-secure", port) != 0
        assert projector.stop() == 0
    finally:
        if projector.alive:
            projector.kill()


@requires_mosquitto
@needs_openssl
async def test_serve_enforces_origin_token_and_limits_over_tls(
    mosquitto: Mosquitto, tmp_path: Path, certs: Certs, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    origin = "https://widget.example"
    token = "s3cret-from-the-environment"
    gateway = Service(
        "gateway",
        ["serve", "--broker", mosquitto.url, "--port", str(port), "--allow-origin", origin,
         "--max-per-address", "1", "--tls-cert", str(certs.cert), "--tls-key", str(certs.key)],
        tmp_path,
    )  # fmt: skip
    trusted = ssl.create_default_context(cafile=str(certs.ca))
    monkeypatch.setenv(TOKEN_ENV, token)  # not on the command line, where ps shows it
    try:
        gateway.start()
        health = f"https://127.0.0.1:{port}/healthz"
        wait_for(lambda: answering(health, trusted), WAIT_S, "the gateway serving https")
        wss = f"wss://127.0.0.1:{port}/ws"

        async def status_of(url: str, origin: str) -> int:
            try:
                async with (
                    asyncio.timeout(WAIT_S),
                    ws_connect(url, origin=origin, ssl=trusted),  # type: ignore[arg-type]
                ):
                    return 101
            except InvalidStatus as exc:
                return exc.response.status_code

        assert await status_of(wss, origin) == 401  # no token
        assert await status_of(f"{wss}?token=wrong", origin) == 401
        assert await status_of(f"{wss}?token={token}", "https://evil.example") == 403
        async with ws_connect(f"{wss}?token={token}", origin=origin, ssl=trusted):  # type: ignore[arg-type]
            assert await status_of(f"{wss}?token={token}", origin) == 429  # one per address
        assert gateway.stop() == 0
    finally:
        if gateway.alive:
            gateway.kill()
    assert not gateway.tracebacks()


@requires_mosquitto
@needs_openssl
async def test_serve_over_mqtts_with_a_client_certificate(tmp_path: Path, certs: Certs) -> None:
    cert, key = client_cert(certs, "gateway")
    tls_port = free_port()
    broker = Mosquitto(
        workdir=tmp_path / "mosquitto",
        extra_config=(
            f"listener {tls_port} 127.0.0.1\ncafile {certs.ca}\ncertfile {certs.cert}\n"
            f"keyfile {certs.key}\nrequire_certificate true\n"
        ),
    ).start()
    port = free_port()
    gateway = Service(
        "gateway",
        ["serve", "--broker", f"mqtts://127.0.0.1:{tls_port}", "--ca-file", str(certs.ca),
         "--cert-file", str(cert), "--key-file", str(key), "--port", str(port)],
        tmp_path,
    )  # fmt: skip
    try:
        gateway.start()
        health = f"http://127.0.0.1:{port}/healthz"
        wait_for(lambda: answering(health) and get(health)[0] == 200, WAIT_S,
                 "the gateway connected over TLS")  # fmt: skip
        assert json.loads(get(health)[1])["broker_connected"] is True
        assert gateway.stop() == 0
    finally:
        if gateway.alive:
            gateway.kill()
        broker.stop()
