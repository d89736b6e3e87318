"""A stand-in projector for gateway tests: a small race whose standings change every step.

It publishes what the projector publishes (a retained ``Snapshot`` and a chain
of ``Delta`` messages), so that the gateway can be attacked and restarted
without a whole replay running behind it.
"""

from __future__ import annotations

import time

from broker.bus import Bus
from chequered.contract import board, topics

CLASSES = ["P1", "P2", "GT"]
CARS = [("6", "P1"), ("16", "P1"), ("552", "P2"), ("01", "P2"), ("56", "GT"), ("4", "GT")]


class Ticker:
    """Standings of one race: every ``step`` a car passes the one ahead and a lap is counted."""

    def __init__(self, race: str, *, padding: int = 0) -> None:
        self.race = race
        self.padding = padding
        """Extra characters in each team name, to make frames as large as a real field's;
        the name then holds the car's place too, so that a delta carries it for every car
        moved."""
        self.seq = 1
        self.order = [car for car, _ in CARS]
        self.cls = dict(CARS)
        self.laps = dict.fromkeys(self.order, 0)
        self.rows = self._rows()

    def _rows(self) -> dict[str, board.CarRow]:
        rows: dict[str, board.CarRow] = {}
        in_class: dict[str, int] = {}
        for position, car in enumerate(self.order, start=1):
            cls = self.cls[car]
            in_class[cls] = in_class.get(cls, 0) + 1
            rows[car] = board.CarRow(
                car=car,
                cls=cls,
                position=position,
                class_position=in_class[cls],
                team=f"Team {car}" + (f" P{position}" + "." * self.padding if self.padding else ""),
                laps=self.laps[car],
            )
        return rows

    def session(self) -> board.SessionView:
        return board.SessionView(
            name=f"Fault race {self.race}", t_ms=self.seq * 1000, classes=CLASSES
        )

    def snapshot(self) -> board.Snapshot:
        return board.Snapshot(
            race=self.race,
            seq=self.seq,
            session=self.session(),
            cars=sorted(self.rows.values(), key=lambda r: r.position),
            wall=time.time(),
        )

    def step(self) -> board.Delta:
        k = 1 + self.seq % (len(self.order) - 1)
        self.order[k - 1], self.order[k] = self.order[k], self.order[k - 1]
        self.laps[self.order[k - 1]] += 1
        session = self.session()
        prev, self.seq = self.seq, self.seq + 1
        before, self.rows = self.rows, self._rows()
        in_order = sorted(self.rows.values(), key=lambda r: r.position)
        changed = [board.row_patch(before[row.car], row) for row in in_order]
        return board.Delta(
            race=self.race,
            seq=self.seq,
            prev_seq=prev,
            session=board.session_patch(session, self.session()),
            cars=[patch for patch in changed if patch is not None],
            wall=time.time(),
        )

    async def publish_snapshot(self, bus: Bus) -> None:
        """The retained snapshot, as the projector keeps it after every delta."""
        snapshot = self.snapshot()
        await bus.publish(
            topics.topic(self.race, topics.STANDINGS), board.encode(snapshot), retain=True
        )

    async def publish_step(self, bus: Bus) -> board.Delta:
        """One delta, then the retained snapshot it leads to (the projector's order)."""
        delta = self.step()
        await bus.publish(topics.topic(self.race, topics.STANDINGS_DELTA), board.encode(delta))
        await self.publish_snapshot(bus)
        return delta
