"""The fan-out's reach below websockets' API: checked at start-up, and pinned to tested releases."""

from __future__ import annotations

from importlib.metadata import version

import pytest
from websockets.asyncio.server import ServerConnection

from consumers.gateway import fanout
from consumers.gateway.core.deflate import text_frame


def test_the_installed_websockets_is_a_tested_release() -> None:
    # A release outside TESTED may have moved the internals the fan-out writes through:
    # test it (the suite, the fault tests, bench/bench_fanout.py), then add it to TESTED
    # and to the pin in pyproject.toml.
    installed = version("websockets")
    assert installed.split(".")[0] in fanout.TESTED, (
        f"websockets {installed} is not a release the gateway's fan-out was tested with "
        f"({', '.join(fanout.TESTED)}); see consumers/gateway/fanout.py"
    )


def test_the_start_up_check_passes_on_the_installed_release() -> None:
    fanout.check_websockets()


def test_the_start_up_check_names_what_a_release_lacks(monkeypatch: pytest.MonkeyPatch) -> None:
    class Renamed(ServerConnection):
        """A release where the connection no longer has ``send_data``."""

    monkeypatch.setattr(Renamed, "send_data", None, raising=False)
    monkeypatch.setattr(fanout, "CONNECTION_ATTRIBUTES", ("send_data", "send_in_flight"))
    with pytest.raises(fanout.UnsupportedWebsockets, match=r"ServerConnection\.send_in_flight"):
        fanout.check_websockets(Renamed)
    monkeypatch.setattr(fanout, "PROTOCOL_ATTRIBUTES", ("writes", "pending_writes"))
    with pytest.raises(fanout.UnsupportedWebsockets, match=r"ServerProtocol\.pending_writes"):
        fanout.check_websockets()
    monkeypatch.delattr(fanout.websockets.http11, "MAX_NUM_HEADERS")
    with pytest.raises(fanout.UnsupportedWebsockets, match=r"http11\.MAX_NUM_HEADERS"):
        fanout.check_websockets()


def test_server_frames_are_rfc_6455_text_frames() -> None:
    assert text_frame(b"hi") == b"\x81\x02hi"
    assert text_frame(b"x" * 200)[:4] == b"\x81\x7e\x00\xc8"
    assert text_frame(b"x" * 70000)[:10] == b"\x81\x7f" + (70000).to_bytes(8, "big")
    assert text_frame(b"hi", compressed=True) == b"\xc1\x02hi"  # RSV1: deflated
