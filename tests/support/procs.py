"""The services as real processes: start, SIGKILL, restart, read their logs and metrics.

Each ``Service`` runs one ``chequered`` command in its own process group
with JSON logs appended to one file across restarts, so that a test can kill
it at any moment and still read everything it said.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.support.wait import wait_for

STOP_TIMEOUT_S = 15.0
SCRAPE_TIMEOUT_S = 5.0


class Service:
    """One ``chequered`` command run as a subprocess, restartable with the same arguments."""

    def __init__(self, name: str, args: list[str], logdir: Path) -> None:
        self.name = name
        self.args = args
        logdir.mkdir(parents=True, exist_ok=True)
        self.log_path = logdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.kills = 0

    def start(self) -> Service:
        assert not self.alive, f"{self.name} is already running"
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f'{{"event": "test.start", "n": {self.starts}}}\n'.encode())
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "chequered",
                    "--log-level",
                    "info",
                    "--log-json",
                    *self.args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL: no cleanup, no last words (the broker publishes the will)."""
        assert self.proc is not None
        self.kills += 1
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(STOP_TIMEOUT_S)

    def stop(self) -> int | None:
        """SIGTERM, as an operator would; returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"{self.name} did not stop on SIGTERM") from None
        return self.proc.returncode

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_events(self) -> list[dict[str, Any]]:
        """Every JSON log line, in order (lines that are not JSON are kept as ``raw``)."""
        out: list[dict[str, Any]] = []
        for line in self.log_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                entry = {"raw": line}
            out.append(entry if isinstance(entry, dict) else {"raw": line})
        return out

    def tracebacks(self) -> list[str]:
        return [line for line in self.log_text().splitlines() if "Traceback" in line]


def scrape(port: int, path: str = "/metrics") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=SCRAPE_TIMEOUT_S) as r:
        body: bytes = r.read()
        return body.decode()


def parse_metrics(text: str) -> dict[str, float]:
    """Samples by name (labels folded in as ``name{k="v"}``), read by the reference parser."""
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def wait_metrics(port: int, timeout: float) -> dict[str, float]:
    """The first successful scrape of a service that is starting."""
    result: dict[str, float] = {}

    def ready() -> bool:
        try:
            result.update(parse_metrics(scrape(port)))
        except OSError:
            return False
        return True

    wait_for(ready, timeout, f"metrics on port {port}")
    return result


def wait_subscribed(port: int, timeout: float) -> None:
    """Until the projector behind metrics ``port`` holds its subscription to the events.

    Its metrics answer before it has subscribed: events published in between
    would never reach a session that does not exist yet.
    """

    def subscribed() -> bool:
        try:
            return parse_metrics(scrape(port)).get("chequered_projector_connected") == 1
        except OSError:
            return False

    wait_for(subscribed, timeout, f"the projector behind port {port} subscribed")
