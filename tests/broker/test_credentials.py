"""Broker passwords from a file or the environment, never needed on the command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest
import structlog

from broker import credentials
from broker.mosquitto import Mosquitto
from chequered.cli.broker_options import broker_address, broker_options
from chequered.cli.main import UserError
from tests.broker.test_secure import PASSWORDS, secure_config
from tests.conftest import REPO, requires_mosquitto


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(parents=[broker_options()])
    return parser.parse_args(list(argv))


def test_a_password_file_completes_a_url_that_names_only_its_user(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret:with@odd/chars\n")
    address = broker_address(
        _args("--broker", "mqtt://projector@127.0.0.1:1884", "--broker-password-file", str(secret))
    )
    assert (address.username, address.password) == ("projector", "s3cret:with@odd/chars")


def test_the_environment_gives_the_password_when_the_url_has_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(credentials.PASSWORD_ENV, "from-env")
    assert broker_address(_args("--broker", "mqtt://gateway@127.0.0.1")).password == "from-env"
    # A URL's own password stays; a URL with no user gets none.
    assert broker_address(_args("--broker", "mqtt://gateway:own@127.0.0.1")).password == "own"
    assert broker_address(_args("--broker", "mqtt://127.0.0.1")).password is None


@pytest.mark.parametrize(
    ("url", "content", "error"),
    [
        ("mqtt://127.0.0.1", "x", "the --broker URL names no user"),
        ("mqtt://gateway:pw@127.0.0.1", "x", "the --broker URL has a password too"),
        ("mqtt://gateway@127.0.0.1", "", "the file is empty"),
        ("mqtt://gateway@127.0.0.1", None, "No such file or directory"),
    ],
)
def test_a_password_file_that_cannot_be_used_is_one_clear_error(
    tmp_path: Path, url: str, content: str | None, error: str
) -> None:
    secret = tmp_path / "secret"
    if content is not None:
        secret.write_text(content)
    with pytest.raises(UserError, match=error) as caught:
        broker_address(_args("--broker", url, "--broker-password-file", str(secret)))
    assert str(caught.value).startswith(f"--broker-password-file {secret}: ")


@pytest.mark.parametrize(
    ("host", "warned"), [("broker.example", True), ("10.0.0.7", True), ("127.0.0.1", False),
                         ("localhost", False), ("[::1]", False)],
)  # fmt: skip
def test_a_development_password_off_loopback_is_warned_of(host: str, warned: bool) -> None:
    with structlog.testing.capture_logs() as logs:
        broker_address(_args("--broker", f"mqtt://gateway:gateway-dev-only@{host}:1883"))
    events = [entry["event"] for entry in logs]
    assert events == (["broker.development_password"] if warned else [])
    if warned:
        assert "dev-only" not in json.dumps(logs)  # the warning never repeats the password


def test_the_development_passwords_are_those_of_the_secure_profile() -> None:
    assert set(PASSWORDS.values()) == credentials.DEVELOPMENT_PASSWORDS
    readme = (REPO / "broker" / "secure" / "README.md").read_text()
    assert all(f"`{pw}`" in readme for pw in credentials.DEVELOPMENT_PASSWORDS)


@requires_mosquitto
async def test_the_projector_takes_its_password_from_a_file_and_ps_never_shows_it(
    tmp_path: Path,
) -> None:
    broker = Mosquitto(workdir=tmp_path, base_config=secure_config(tmp_path))
    broker.start()
    secret = tmp_path / "projector.password"
    secret.write_text(PASSWORDS["projector"] + "\n")
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "chequered", "--log-level", "info", "--log-json", "project",
            "--broker", f"mqtt://projector@127.0.0.1:{broker.sessions_port}",
            "--broker-password-file", str(secret),
            cwd=REPO, stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
            env={k: v for k, v in os.environ.items() if k != credentials.PASSWORD_ENV},
        )  # fmt: skip
        assert proc.stderr is not None
        try:
            while True:  # its log says when it is in: subscribed with the password
                line = await asyncio.wait_for(proc.stderr.readline(), 30)
                assert line, "the projector exited"
                event = json.loads(line)["event"]
                assert event not in ("broker_lost",), line
                if event == "projector_subscribed":
                    break
            cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()  # noqa: ASYNC240
            assert PASSWORDS["projector"].encode() not in cmdline
        finally:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 30)
    finally:
        broker.stop()
    assert "as projector (" in broker.log()
