"""Shared compressed frames: every client inflates exactly what it was sent, in any order."""

from __future__ import annotations

import json
import zlib

from hypothesis import given, settings
from hypothesis import strategies as st

from consumers.gateway.core.deflate import SharedDeflate, Stream


class Browser:
    """A client's side of permessage-deflate: one inflater, kept unless it asked otherwise."""

    def __init__(self, deflate: SharedDeflate, window_bits: int = 15, takeover: bool = True):
        self.window_bits = window_bits
        self.takeover = takeover
        self.stream: Stream = deflate.stream(window_bits, takeover)
        self.inflater = zlib.decompressobj(-window_bits)

    def read(self, frame: bytes) -> bytes:
        assert frame[0] == 0xC1, "a final text frame with RSV1 set"
        n = frame[1]
        offset = 2
        if n == 126:
            n, offset = int.from_bytes(frame[2:4], "big"), 4
        elif n == 127:
            n, offset = int.from_bytes(frame[2:10], "big"), 10
        data = frame[offset:]
        assert len(data) == n
        if not self.takeover:
            self.inflater = zlib.decompressobj(-self.window_bits)
        return self.inflater.decompress(data + b"\x00\x00\xff\xff")


def delta(race: int, seq: int) -> bytes:
    cars = [{"car": str(c), "gap_ms": seq * 997 + c * 31, "laps": seq} for c in range(6)]
    return json.dumps({"type": "delta", "race": f"r{race}", "seq": seq, "cars": cars}).encode()


def test_clients_in_step_share_one_compression_per_message() -> None:
    deflate = SharedDeflate()
    clients = [Browser(deflate) for _ in range(20)]
    payloads = [delta(0, seq) for seq in range(30)]
    for payload in payloads:
        for client in clients:
            assert client.read(deflate.frame(client.stream, payload)) == payload
    assert deflate.counts.deflated.value == len(payloads)
    assert deflate.counts.deflate_shared.value == len(payloads) * (len(clients) - 1)
    # Context takeover pays: later messages refer back to earlier ones.
    alone = sum(len(zlib.compress(payload)) for payload in payloads)
    assert deflate.counts.deflate_out_bytes.value < 0.8 * alone * len(clients)


def test_a_client_out_of_step_gets_its_own_chain_and_meets_the_others_at_the_next_tick() -> None:
    deflate = SharedDeflate()
    steady, late = Browser(deflate), Browser(deflate)
    for seq in range(5):
        payload = delta(0, seq)
        assert steady.read(deflate.frame(steady.stream, payload)) == payload
    own = delta(0, 99)  # a snapshot of its own, say
    assert late.read(deflate.frame(late.stream, own)) == own
    payload = delta(0, 5)
    assert steady.read(deflate.frame(steady.stream, payload)) == payload
    assert late.read(deflate.frame(late.stream, payload)) == payload
    assert late.stream.node is not steady.stream.node
    ends = [late.stream.node, steady.stream.node]
    assert all(node is not None and node.compressor is not None for node in ends)
    deflate.tick()
    # The old chains take nothing more: their compressors are freed at once.
    assert all(node is not None and node.compressor is None for node in ends)
    before = deflate.counts.deflated.value
    payload = delta(0, 6)
    assert steady.read(deflate.frame(steady.stream, payload)) == payload
    assert late.read(deflate.frame(late.stream, payload)) == payload
    assert late.stream.node is steady.stream.node
    assert deflate.counts.deflated.value == before + 1


Step = tuple[str, int, int]


@settings(max_examples=200, deadline=None)
@given(
    clients=st.lists(
        st.tuples(st.sampled_from([9, 12, 13, 15]), st.booleans()), min_size=1, max_size=5
    ),
    steps=st.lists(
        st.tuples(
            st.sampled_from(["next", "own", "skip", "tick"]),
            st.integers(0, 4),
            st.integers(0, 2),
        ),
        max_size=60,
    ),
)
def test_every_client_inflates_what_it_was_sent(
    clients: list[tuple[int, bool]], steps: list[Step]
) -> None:
    """Clients with any agreed window and takeover, on any of three races, skipping messages
    (sent them uncompressed), getting messages of their own, across generations."""
    deflate = SharedDeflate()
    browsers = [Browser(deflate, bits, takeover) for bits, takeover in clients]
    races = [[delta(race, seq) for seq in range(40)] for race in range(3)]
    at = [[0] * 3 for _ in browsers]
    for action, who, race in steps:
        if action == "tick":
            deflate.tick()
            continue
        i = who % len(browsers)
        browser = browsers[i]
        if action == "own":
            payload = delta(race, 1000 + at[i][race])
        else:
            payload = races[race][at[i][race] % 40]
            at[i][race] += 1
            if action == "skip":
                continue  # went uncompressed, through the library: not in the window
        assert browser.read(deflate.frame(browser.stream, payload)) == payload
