"""``chequered demo`` end to end: a broker, the producer, the projector and the gateway."""

from __future__ import annotations

import asyncio
import io
import re
import sys
import time
import urllib.error
import urllib.request

import pytest

from broker.mosquitto import binary
from chequered.cli.demo import Demo
from tests.conftest import REPO
from tests.support.feed import tiny_race

# A real race, short enough at 1000x (2 h 42 min of racing in under 10 s) to look at
# the widget while it runs.
RACE = "imsa-2022-laguna-seca-race"


def fetch(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read()


def fetch_healthy(url: str, within_s: float = 10) -> tuple[int, bytes]:
    """/healthz says 503 until the gateway's broker connection is up (it binds first)."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            return fetch(url)
        except urllib.error.HTTPError as exc:
            if exc.code != 503 or time.monotonic() > deadline:
                raise
        time.sleep(0.05)  # polling the condition, bounded by the deadline


async def run_demo(*args: str) -> tuple[int, list[str], list[tuple[int, bytes]]]:
    """Run the demo; fetch the widget and the health page as soon as the URL is printed."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chequered", "demo", RACE, "--speed", "1000", "--exit-at-end", *args,
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdout is not None
    lines: list[str] = []
    pages: list[tuple[int, bytes]] = []
    try:
        async with asyncio.timeout(120):
            async for raw in proc.stdout:
                line = raw.decode().rstrip()
                lines.append(line)
                match = re.match(r"widget: (http://127\.0\.0\.1:\d+)/\?race=(.+)$", line)
                if match:
                    assert match.group(2) == RACE
                    pages.append(await asyncio.to_thread(fetch, f"{match.group(1)}/?race={RACE}"))
                    pages.append(
                        await asyncio.to_thread(fetch_healthy, match.group(1) + "/healthz")
                    )
            code = await proc.wait()
    finally:
        if proc.returncode is None:
            # SIGTERM first: the demo then stops its private broker; SIGKILL would orphan it.
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
    return code, lines, pages


@pytest.mark.slow
@pytest.mark.skipif(binary() is None, reason="mosquitto is not installed")
async def test_the_demo_serves_the_widget_and_ends_with_mosquitto_and_in_process() -> None:
    # Both at once: each takes about ten seconds of wall time at 1000x.
    private, in_process = await asyncio.gather(run_demo(), run_demo("--broker", "memory://demo"))
    for (code, lines, pages), broker in ((private, "private Mosquitto"), (in_process, "memory")):
        assert code == 0, lines
        assert broker in lines[0]
        assert [status for status, _ in pages] == [200, 200], lines
        assert b"<live-leaderboard" in pages[0][1] or b"leaderboard" in pages[0][1]
        assert any(
            re.search(r"\] 2:42:\d\d / 2:42:\d\d  lap 117  1000x  finished", x) for x in lines
        )
        assert lines[-1] == "race finished; winner: #10 Konica Minolta Acura ARX-05 (DPi), 117 laps"


async def test_without_mosquitto_the_demo_runs_on_the_in_process_bus(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("broker.mosquitto.binary", lambda: None)
    out = io.StringIO()
    race = "demo-tiny"
    run = Demo(race=race, events=tiny_race(race), speed=None, exit_at_end=True, out=out)
    assert await asyncio.wait_for(run.run(asyncio.Event()), 60) == 0
    lines = out.getvalue().splitlines()
    assert (
        lines[0] == "broker: Mosquitto is not installed; using the in-process bus (memory://demo)"
    )
    assert re.match(rf"widget: http://127\.0\.0\.1:\d+/\?race={race}$", lines[1])
    assert "lap 5  max  finished" in lines[-2]
    assert lines[-1] == "race finished; winner: #1 Team 1 (P1), 5 laps"
    assert run.progress.standings_seq == len(tiny_race(race)) + 1
