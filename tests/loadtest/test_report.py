"""The load test's report: each stage's share of the CPU, cost per unit, and the verdict."""

from __future__ import annotations

from typing import Any

import pytest

from consumers.projector.service import ProjectorSettings
from loadtest import run


def _processes(**cpu: float) -> dict[str, Any]:
    return {name: {"pids": [1], "cpu_s": s, "cpu_percent": 0.0} for name, s in cpu.items()}


def test_shares_name_the_stages_and_the_load_generator_and_add_up() -> None:
    share = run.cpu_share(_processes(producer=1, projector=2, gateway=3, clients=3, loadtest=1))
    assert share["load generator (clients)"] == 30.0
    assert share["load generator (harness)"] == 10.0
    assert share["projector"] == 20.0
    assert sum(share.values()) == pytest.approx(100.0)


def test_unit_costs_divide_each_stage_by_its_own_work() -> None:
    procs = _processes(producer=0.2, projector=0.6, gateway=1.0, clients=0.5, mosquitto=0.1)
    cost = run.unit_costs(procs, produced=10_000, folded=10_000, frames=100_000)
    assert cost == {
        "producer_per_event": 20.0,
        "projector_per_event": 60.0,
        "gateway_per_frame": 10.0,
        "clients_per_frame": 5.0,
        "broker_per_event": 10.0,
    }
    assert run.unit_costs(procs, produced=0, folded=0, frames=0)["producer_per_event"] is None
    # The kernel's share, from the system time of each process where it was measured.
    procs["gateway"]["cpu_system_s"] = 0.4
    system = run.unit_costs(
        procs, produced=10_000, folded=10_000, frames=100_000, column="cpu_system_s"
    )
    assert system["gateway_per_frame"] == 4.0 and system["projector_per_event"] is None


def _report(
    races: int = 100, clients: int = 2000, p99: float = 40.0, **loss: int
) -> dict[str, Any]:
    counts = {"gaps": 0, "duplicates": 0, "clients_behind": 0} | loss
    return {
        "config": {"races": races, "speed": 60.0, "clients": clients, "duration_s": 60.0},
        "loss": counts,
        "latency_ms": {"p99": p99},
        "websocket": {"connected": clients},
    }


def test_the_verdict_is_one_line_that_says_met_or_why_not() -> None:
    met = run.verdict(_report())
    assert met["met"] and met["line"].startswith("TARGET MET")
    slow = run.verdict(_report(p99=48_500.0, clients_behind=2000))
    assert not slow["met"]
    assert slow["line"].startswith("TARGET NOT MET")
    assert "2000 clients behind" in slow["line"] and "p99 48,500.0 ms" in slow["line"]
    small = run.verdict(_report(races=25, clients=200))
    assert not small["met"] and small["line"].startswith("not the target load")
    assert "\n" not in small["line"]


def test_metrics_of_several_processes_add_up() -> None:
    merged = run.sum_metrics([{"applied": 3, "seqs": {"a": 1}}, {"applied": 4, "seqs": {"b": 2}}])
    assert merged == {"applied": 7, "seqs": {"a": 1, "b": 2}}


def test_projector_settings_are_read_as_their_defaults_types() -> None:
    settings = run.projector_settings(
        ProjectorSettings, (("flush_delay_s", "0.025"), ("ack_window", "64"))
    )
    assert settings.flush_delay_s == 0.025 and settings.ack_window == 64
    with pytest.raises(run.LoadTestError, match="no such projector setting"):
        run.projector_settings(ProjectorSettings, (("nope", "1"),))
    with pytest.raises(run.LoadTestError, match="not a whole number"):
        run.projector_settings(ProjectorSettings, (("ack_window", "many"),))


def test_a_child_runs_on_the_event_loop_it_was_told(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from loadtest import client

    seen: list[str] = []

    async def main() -> None:
        seen.append(type(asyncio.get_running_loop()).__module__.split(".")[0])

    monkeypatch.setenv(client.LOOP_ENV, "uvloop")
    client.run_child(main())
    monkeypatch.setenv(client.LOOP_ENV, "asyncio")
    client.run_child(main())
    assert seen == ["uvloop", "asyncio"]


def test_a_client_process_runs_on_its_own_loop_whatever_the_others_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncio

    from loadtest import client

    seen: list[str] = []

    async def main() -> None:
        seen.append(type(asyncio.get_running_loop()).__module__.split(".")[0])

    monkeypatch.setenv(client.LOOP_ENV, "asyncio")
    client.run_child(main(), "uvloop")
    monkeypatch.setenv(client.LOOP_ENV, "uvloop")
    client.run_child(main(), "asyncio")
    assert seen == ["uvloop", "asyncio"]


@pytest.mark.parametrize(
    ("event_loop", "client_loop", "clients"),
    [
        ("asyncio", None, "uvloop"),  # the load generator's own default, uvloop installed
        ("asyncio", "asyncio", "asyncio"),
        ("uvloop", None, "uvloop"),
        ("uvloop", "asyncio", "asyncio"),
    ],
)
def test_the_clients_loop_is_uvloop_unless_told_otherwise(
    event_loop: str, client_loop: str | None, clients: str
) -> None:
    config = run.LoadConfig(event_loop=event_loop, client_loop=client_loop)  # type: ignore[arg-type]
    assert config.clients_loop == clients
