"""``chequered serve``: the gateway's own errors end in one line naming the flag, exit 2."""

from __future__ import annotations

import socket

import pytest

from chequered.cli.main import main
from consumers.gateway import fanout


def test_a_metrics_port_in_use_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        argv = ["serve", "--broker", "mqtt://127.0.0.1:1", "--port", "0"]
        assert main([*argv, "--metrics-port", str(busy)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"chequered serve: --metrics-port {busy}: cannot listen")


def test_an_untested_websockets_is_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fanout, "PROTOCOL_ATTRIBUTES", ("writes", "pending_writes"))
    assert main(["serve", "--broker", "mqtt://127.0.0.1:1", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "ServerProtocol.pending_writes" in err and "tested release" in err
