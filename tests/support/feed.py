"""Small hand-made races and a reference fold for the live feed's tests.

``tiny_race`` builds a coherent event list (session open, green flag, sector
and lap crossings with running positions, finishes, classification) without
the timeline builder; ``reference_fold`` is the least a consumer must
reconstruct, restarting at every ``reset``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from broker.bus import Bus
from chequered.contract import events as ev
from chequered.contract.events import Event
from simulator.timeline.assemble import assemble


def tiny_race(
    race: str = "tiny",
    *,
    cars: int = 3,
    laps: int = 5,
    lap_ms: int = 60_000,
    lines: int = 3,
) -> list[Event]:
    """A race of ``cars`` cars over ``laps`` laps; car i is i * 500 ms a lap slower."""
    numbers = [str(i + 1) for i in range(cars)]
    opened = ev.SessionOpened(
        race=race,
        seq=1,
        t_ms=0,
        session=ev.SessionInfo(
            name="Tiny Grand Prix",
            series="TEST",
            season=2013,
            kind="race",
            circuit="Test Ring",
            lap_km=3.6,
            lines=lines,
            laps=laps,
        ),
        classes=["P1"],
        entries=[
            ev.EntryInfo(number=n, cls="P1", team=f"Team {n}", drivers=[f"D{n}"]) for n in numbers
        ],
        grid=numbers,
    )
    drafts: list[Event] = [ev.Flag(race=race, seq=1, t_ms=0, flag="green")]
    end = 0
    for i, car in enumerate(numbers):
        pace = lap_ms + 500 * i
        for lap in range(1, laps + 1):
            start = (lap - 1) * pace
            sector_ms = pace // lines
            for s in range(1, lines):
                drafts.append(
                    ev.Sector(race=race, seq=1, t_ms=start + s * sector_ms, car=car, lap=lap,
                              sector=s, sector_ms=sector_ms, position=1)
                )  # fmt: skip
            drafts.append(
                ev.Lap(race=race, seq=1, t_ms=lap * pace, car=car, lap=lap, lap_ms=pace,
                       sectors_ms=[sector_ms] * lines, position=1, driver=f"D{car}")
            )  # fmt: skip
        drafts.append(ev.Finish(race=race, seq=1, t_ms=laps * pace, car=car, lap=laps))
        end = max(end, laps * pace)
    drafts.append(ev.Flag(race=race, seq=1, t_ms=laps * lap_ms, flag="chequered"))
    rows = [
        ev.ResultRow(position=i + 1, car=car, cls="P1", class_position=i + 1, laps=laps,
                     status="classified")
        for i, car in enumerate(numbers)
    ]  # fmt: skip
    drafts.append(ev.SessionClosed(race=race, seq=1, t_ms=end + 1000, classification=rows))
    return assemble([opened, *drafts], race=race, lines=lines)


@dataclass
class Fold:
    """The least a leaderboard needs: each car's laps, flag, and whether it finished."""

    laps: dict[str, int] = field(default_factory=dict)
    positions: dict[str, int] = field(default_factory=dict)
    flag: str | None = None
    finished: set[str] = field(default_factory=set)
    closed: bool = False
    resets: int = 0

    def key(self) -> tuple[object, ...]:
        return (
            sorted(self.laps.items()),
            sorted(self.positions.items()),
            self.flag,
            sorted(self.finished),
            self.closed,
        )


def reference_fold(stream: list[Event]) -> Fold:
    fold = Fold()
    for event in stream:
        if isinstance(event, ev.Reset):
            fold = Fold(resets=fold.resets + 1)
        elif isinstance(event, ev.Lap):
            fold.laps[event.car] = event.lap
            fold.positions[event.car] = event.position
        elif isinstance(event, ev.Sector):
            fold.positions[event.car] = event.position
        elif isinstance(event, ev.Flag):
            fold.flag = event.flag
        elif isinstance(event, ev.Finish):
            fold.finished.add(event.car)
        elif isinstance(event, ev.SessionClosed):
            fold.closed = True
    return fold


def timeline_fold(timeline: list[Event], upto_ms: float) -> Fold:
    return reference_fold([e for e in timeline if e.t_ms <= upto_ms])


@dataclass
class Collector:
    """Events of one race as a subscriber sees them, duplicates dropped by seq."""

    race: str
    events: list[Event] = field(default_factory=list)
    duplicates: int = 0
    messages: int = 0
    batches: int = 0

    @property
    def last_seq(self) -> int:
        return self.events[-1].seq if self.events else 0

    def add(self, payload: bytes) -> None:
        message = ev.decode(payload)
        self.messages += 1
        self.batches += isinstance(message, ev.Batch)
        for event in ev.unbatch(message):
            if event.seq <= self.last_seq:
                self.duplicates += 1
                continue
            assert event.seq == self.last_seq + 1, f"gap: {self.last_seq} -> {event.seq}"
            self.events.append(event)


async def collect_until(
    bus: Bus,
    handlers: dict[str, Callable[[bytes], None]],
    done: Callable[[], bool],
    within_s: float,
) -> None:
    """Feed each message to the handler of its topic until ``done()``; fail after ``within_s``."""

    async def run() -> None:
        async for message in bus.messages():
            handler = handlers.get(message.topic)
            if handler is not None:
                handler(message.payload)
            if done():
                return

    await asyncio.wait_for(run(), within_s)
