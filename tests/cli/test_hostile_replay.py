"""``chequered replay`` with faults: the labels on the side topic, the status, the summary.

The command runs as a process against a private Mosquitto; a reader on the
broker sees the labels as they are published and the last status; the record
written with ``--injected-out`` and the summary printed at the end say the same.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import msgspec
import pytest

from broker.bus import connect
from broker.mosquitto import Mosquitto
from chequered.cli.main import main
from chequered.contract import control, topics
from chequered.contract.injected import Injected

RECORDING = "alms-2013-monterey-race"
WAIT_S = 60.0


async def test_replay_with_faults_labels_them_counts_them_and_sums_them_up(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    race = RECORDING
    labels: list[Injected] = []
    statuses: list[control.Status] = []
    record = tmp_path / "injected.json"
    argv = [sys.executable, "-m", "chequered", "replay", RECORDING, "--broker", mosquitto.url,
            "--speed", "max", "--exit-at-end", "--fault-seed", "11", "--duplicate", "0.3",
            "--drop", "0.2", "--malformed", "0.3", "--injected-out", str(record)]  # fmt: skip
    async with connect(mosquitto.url, client_id="label-reader") as bus:
        await bus.subscribe(topics.topic(race, topics.INJECTED), qos=1)
        await bus.subscribe(topics.topic(race, topics.STATUS), qos=1)
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        try:

            async def read() -> None:
                async for message in bus.messages():
                    if topics.leaf_of(message.topic) == topics.INJECTED:
                        labels.append(msgspec.json.decode(message.payload, type=Injected))
                    elif message.payload:
                        statuses.append(control.decode_status(message.payload))
                    if statuses and statuses[-1].state == "offline":
                        return  # the clean stop's last word

            await asyncio.wait_for(read(), WAIT_S)
            _, stderr = await asyncio.wait_for(proc.communicate(), WAIT_S)
            err = stderr.decode()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 0, err
    written = json.loads(record.read_text())
    assert len(written) == 1 and written[0]["race"] == race
    assert [msgspec.convert(r, Injected) for r in written[0]["record"]] == labels
    counts = written[0]["injected"]
    assert counts and set(counts) <= {"duplicate", "drop", "malformed"}
    assert sum(counts.values()) == len(labels)
    # The last status (offline, from the clean stop) carries the counts.
    assert statuses[-1].injected == counts
    line = next(x for x in err.splitlines() if x.startswith(f"{race}: injected "))
    assert all(f"{kind} {n}" in line for kind, n in counts.items())
    assert f"{written[0]['expected']['duplicates']} duplicates" in line


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [("--reorder-window", "0", "--reorder-window 0: give 1 to 64"),
     ("--stall-s", "-1", "--stall-s: give seconds, above 0, to 3600"),
     ("--max-seeks", "-2", "--max-seeks -2: must not be negative")],
)  # fmt: skip
def test_bad_fault_settings_are_one_line_naming_the_flag(
    flag: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["replay", RECORDING, "--drop", "0.1", flag, value]) == 2
    err = capsys.readouterr().err
    assert err == f"chequered replay: {message}\n"


def test_a_rate_outside_0_to_1_is_refused_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["replay", RECORDING, "--drop", "1.5"])
    assert exit_.value.code == 2
    assert "--drop: 1.5 is not a rate from 0 to 1" in capsys.readouterr().err
