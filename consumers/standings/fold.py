"""The standings fold: race events in, leaderboard state out, and snapshots of it.

Pure and deterministic: ``apply(state, event)`` mutates and returns the
caller's ``RaceState``; the same events give the same standings whether
folded live, resumed from a checkpoint, or all at once. Ordering, gaps and
rows are computed only when a ``Snapshot`` is asked for. Rules: STANDINGS.md.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Final, Literal

import msgspec
from msgspec import UNSET, Struct

from chequered.contract.board import (
    MESSAGES_KEPT,
    CarPatch,
    CarRow,
    CarStatus,
    Delta,
    FastLap,
    RaceMessage,
    SessionView,
    Snapshot,
    add_messages,
    row_patch,
    session_patch,
)
from chequered.contract.events import (
    Clock,
    Event,
    Finish,
    Flag,
    Lap,
    Penalty,
    PitIn,
    PitOut,
    Provisional,
    RaceControl,
    Reset,
    Retire,
    Sector,
    SessionClosed,
    SessionOpened,
)

STATE_VERSION: Final = 2
"""Bumped when ``RaceState`` changes shape; older checkpoints are then ignored."""

MAX_SEQ_JUMP: Final = 100_000
"""An event more than this many seqs ahead of the last one applied is rejected, not
taken as a gap: one forged seq must not make every real event look like a duplicate."""
MAX_RACE_MS: Final = 48 * 3600 * 1000
"""Race time beyond which an event is rejected (twice a 24-hour race)."""
MIN_LAP_MS: Final = 10_000
"""No car completes lap N before N times this: a lap count beyond it is rejected."""
MAX_RACES: Final = 1000
"""Races followed at once by one fold; a new race beyond it is rejected."""
MAX_CARS: Final = 500
"""Entries accepted in one ``session_open``."""
MAX_JOIN_SEQ: Final = 1_000_000
"""A race is joined midway (opened from its meta) only at a seq up to this: a corrupt
seq must not become the race's position, turning every real event into a duplicate."""

Outcome = Literal["applied", "gap", "duplicate", "reset", "joined"]
"""What ``step`` did: applied in order, applied after missing seqs, ignored, reset, or
applied to a race just opened midway from its meta (``Standings.step``)."""
APPLIED: Final[Outcome] = "applied"
GAP: Final[Outcome] = "gap"
DUPLICATE: Final[Outcome] = "duplicate"
RESET: Final[Outcome] = "reset"
JOINED: Final[Outcome] = "joined"


class Rejected(ValueError):
    """An event the fold cannot apply; the state is untouched. The message is the reason."""


class UnknownRace(Rejected):
    """An event of a race with no state, and no meta to open it from: a projector may hold
    it until the race's meta arrives."""


# -- state -------------------------------------------------------------------


class Best(Struct, array_like=True):
    """A fastest lap: who, how fast, which lap, and the seq that set it (for ties)."""

    car: str
    lap_ms: int
    lap: int
    seq: int


class Said(Struct, array_like=True):
    """A race-control message as the state keeps it (compact: every checkpoint holds them)."""

    seq: int
    t_ms: int
    lap: int
    category: str
    text: str
    cars: list[str]
    provenance: str


class CarState(Struct, kw_only=True):
    """Everything the fold knows of one car; rows are derived from it lazily."""

    car: str
    cls: str
    team: str
    driver: str = ""
    grid: int = 0
    """1-based starting slot; 0 when the car is not on the grid."""
    start_rank: int = 0
    """Order before any crossing: grid slot, then entry order for cars off the grid."""
    distance: int = 0
    """Timing lines crossed since the start (``lines`` per lap)."""
    reached_t: int = 0
    """Race time at which ``distance`` was reached."""
    reached_seq: int = 0
    """Seq of that crossing: breaks ties between cars crossing in the same millisecond."""
    ring_d: list[int] = []
    """Distance of the crossing stored in slot ``distance % lines`` (-1: none yet)."""
    ring_t: list[int] = []
    """Race time of that crossing: the last ``lines`` crossings, enough for every gap."""
    laps: int = 0
    sectors: list[int | None] = []
    last_lap_ms: int | None = None
    last_lap: int = 0
    best_lap_ms: int | None = None
    best_lap: int = 0
    best_seq: int = 0
    pit_stops: int = 0
    in_pit: bool = False
    out_lap: bool = False
    stint_laps: int = 0
    status: CarStatus = "running"
    result: Literal["classified", "not_classified", "retired", "disqualified", "dns"] | None = None
    official_position: int = 0
    """Position in the official classification once the session closed, or in the
    provisional one before that (0: not listed)."""
    penalty: str | None = None
    """The car's penalty as its row shows it."""
    penalty_ms: int | None = None


class RaceState(Struct, kw_only=True):
    """The fold's state for one race. Owned and mutated by whoever calls ``apply``."""

    race: str
    version: int = STATE_VERSION
    seq: int = 0
    """Seq of the last event applied (0: none)."""
    rebase: bool = False
    """Just reset: the next event may number from 1 again."""
    opened: bool = False
    name: str = ""
    kind: Literal["race", "qualifying"] = "race"
    lines: int = 1
    duration_ms: int | None = None
    laps_total: int | None = None
    classes: list[str] = []
    flag: Literal["green", "fcy", "red", "chequered"] = "green"
    t_ms: int = 0
    wall: float = 0.0
    speed: float | None = None
    paused: bool = False
    closed: bool = False
    gaps: int = 0
    """Seqs found missing since the session opened."""
    cars: dict[str, CarState] = {}
    fastest: dict[str, Best] = {}
    """Fastest lap per class."""
    overall: Best | None = None
    flag_reason: str | None = None
    messages: list[Said] = []
    """The latest ``MESSAGES_KEPT`` race-control messages, oldest first."""
    message_count: int = 0
    """Race-control messages folded since the session opened."""
    laps_run: int = 0
    laps_neutralised: int = 0
    """Laps completed under a yellow or a red flag, of ``laps_run``."""
    synthesised: bool = False
    provisional: bool = False
    """The provisional classification is folded and the official one not yet."""


def new_race(race: str) -> RaceState:
    return RaceState(race=race)


# -- event handlers: validate first, then mutate ---------------------------------


def _car(state: RaceState, number: str) -> CarState:
    car = state.cars.get(number)
    if car is None:
        if not state.opened:
            raise Rejected(f"race {state.race} has no session_open yet")
        raise Rejected(f"car {number} is not entered in {state.race}")
    return car


def _check_lap(event: Lap | Sector | PitIn | PitOut | Retire | Finish, lap: int) -> None:
    if lap * MIN_LAP_MS > event.t_ms + MIN_LAP_MS:
        raise Rejected(f"lap {lap} at t_ms {event.t_ms} is faster than {MIN_LAP_MS} ms a lap")


def _session_open(state: RaceState, e: SessionOpened) -> None:
    if len(e.entries) > MAX_CARS:
        raise Rejected(f"{len(e.entries)} entries, more than {MAX_CARS}")
    lines = e.session.lines
    state.opened = True
    state.name = e.session.name
    state.kind = e.session.kind
    state.lines = lines
    state.duration_ms = e.session.duration_ms
    state.laps_total = e.session.laps
    state.classes = list(e.classes)
    state.flag = "green"
    state.flag_reason = None
    state.messages = []
    state.message_count = 0
    state.laps_run = 0
    state.laps_neutralised = 0
    state.synthesised = e.session.synthesised
    state.closed = False
    state.provisional = False
    state.gaps = 0
    state.fastest = {}
    state.overall = None
    slot = {number: i for i, number in enumerate(e.grid)}
    cars: dict[str, CarState] = {}
    for i, entry in enumerate(e.entries):
        grid = slot.get(entry.number)
        cars[entry.number] = CarState(
            car=entry.number,
            cls=entry.cls,
            team=entry.team,
            driver=entry.drivers[0] if entry.drivers else "",
            grid=grid + 1 if grid is not None else 0,
            start_rank=grid if grid is not None else len(slot) + i,
            ring_d=[-1] * lines,
            ring_t=[0] * lines,
            sectors=[None] * lines,
            # A race grid names the starters; an entry missing from it did not start.
            status="dns" if e.grid and grid is None and e.session.kind == "race" else "running",
        )
    state.cars = cars


def _cross(state: RaceState, car: CarState, d: int, t: int, seq: int) -> None:
    if d > car.distance:
        car.distance = d
        car.reached_t = t
        car.reached_seq = seq
    i = d % state.lines
    car.ring_d[i] = d
    car.ring_t[i] = t


def _lap(state: RaceState, e: Lap) -> None:
    car = _car(state, e.car)
    lap = e.lap
    _check_lap(e, lap)
    seq = e.seq
    _cross(state, car, lap * state.lines, e.t_ms, seq)
    if lap > car.laps:
        car.laps = lap
    car.last_lap = lap
    ms = car.last_lap_ms = e.lap_ms
    sectors = e.sectors_ms
    lines = state.lines
    if len(sectors) == lines:
        car.sectors = list(sectors)
    else:  # a feed that gives fewer (or more) sector times than lines: keep the shape
        car.sectors = [*sectors[:lines], *([None] * (lines - len(sectors)))]
    car.driver = e.driver
    car.stint_laps += 1
    car.out_lap = False
    state.laps_run += 1
    if e.flag == "fcy" or e.flag == "red":
        state.laps_neutralised += 1
    if ms is None:
        return
    if car.best_lap_ms is None or ms < car.best_lap_ms:
        car.best_lap_ms = ms
        car.best_lap = lap
        car.best_seq = seq
        best = state.fastest.get(car.cls)
        if best is None or ms < best.lap_ms:
            best = state.fastest[car.cls] = Best(car.car, ms, lap, seq)
            overall = state.overall
            if overall is None or ms < overall.lap_ms:
                state.overall = best


def _sector(state: RaceState, e: Sector) -> None:
    car = _car(state, e.car)
    lines = state.lines
    if e.sector >= lines:
        raise Rejected(f"sector {e.sector} is not an intermediate line of {lines} per lap")
    done = e.lap - 1
    _check_lap(e, done)
    _cross(state, car, done * lines + e.sector, e.t_ms, e.seq)
    if done > car.laps:  # a lap crossing the fold did not see (joined midway, a gap)
        car.laps = done
    car.sectors[e.sector - 1] = e.sector_ms


def _pit_in(state: RaceState, e: PitIn) -> None:
    car = _car(state, e.car)
    _check_lap(e, e.lap)
    if car.in_pit:
        return
    car.in_pit = True
    car.pit_stops += 1
    if car.status == "running":
        car.status = "in_pit"


def _pit_out(state: RaceState, e: PitOut) -> None:
    car = _car(state, e.car)
    _check_lap(e, e.lap)
    car.in_pit = False
    car.out_lap = True
    car.stint_laps = 0
    car.driver = e.driver
    if car.status == "in_pit":
        car.status = "running"


def _retire(state: RaceState, e: Retire) -> None:
    car = _car(state, e.car)
    _check_lap(e, e.lap)
    car.status = "retired"
    car.in_pit = False
    car.out_lap = False


def _finish(state: RaceState, e: Finish) -> None:
    car = _car(state, e.car)
    _check_lap(e, e.lap)
    car.status = "finished"
    car.in_pit = False
    car.out_lap = False


def _flag(state: RaceState, e: Flag) -> None:
    state.flag = e.flag
    state.flag_reason = e.reason


def _race_control(state: RaceState, e: RaceControl) -> None:
    if not state.opened:
        raise Rejected(f"race {state.race} has no session_open yet")
    _tell(state, Said(e.seq, e.t_ms, e.lap, e.category, e.text, list(e.cars), e.provenance))


def _tell(state: RaceState, said: Said) -> None:
    messages = state.messages
    messages.append(said)
    if len(messages) > MESSAGES_KEPT:
        del messages[: len(messages) - MESSAGES_KEPT]
    state.message_count += 1


def _provisional(state: RaceState, e: Provisional) -> None:
    if not state.opened:
        raise Rejected(f"race {state.race} has no session_open yet")
    state.provisional = True
    for each in state.cars.values():
        each.official_position = 0
    for row in e.classification:
        car = state.cars.get(row.car)
        if car is not None:
            car.official_position = row.position


def penalty_label(e: Penalty) -> str:
    """What a car's row shows of its penalty: ``+23 s``, ``points forfeited``, ``DSQ``."""
    if e.penalty == "time" and e.penalty_ms is not None:
        seconds = e.penalty_ms / 1000
        return f"+{seconds:g} s"
    if e.penalty == "points":
        return "points forfeited"
    if e.penalty == "disqualification":
        return "DSQ"
    return "penalty"


def _penalty(state: RaceState, e: Penalty) -> None:
    car = _car(state, e.car)
    car.penalty = penalty_label(e)
    car.penalty_ms = e.penalty_ms
    # The decision is also the feed's message: no race_control event repeats it.
    leader = max((c.laps for c in state.cars.values()), default=0)
    _tell(state, Said(e.seq, e.t_ms, leader, "penalty", e.text, [e.car], e.provenance))


def _clock(state: RaceState, e: Clock) -> None:
    state.speed = e.speed
    state.paused = e.paused or e.action == "pause"


_RESULT_STATUS: dict[str, CarStatus] = {
    "classified": "finished",
    "not_classified": "finished",
    "retired": "retired",
    "disqualified": "retired",
    "dns": "dns",
}


def _session_close(state: RaceState, e: SessionClosed) -> None:
    if not state.opened:
        raise Rejected(f"race {state.race} has no session_open yet")
    state.closed = True
    if state.provisional:
        # The official order replaces the provisional one whole.
        state.provisional = False
        for known in state.cars.values():
            known.official_position = 0
    lines = state.lines
    for row in e.classification:
        car = state.cars.get(row.car)
        if car is None:
            # Listed but not on the entry list (a car that did not start): it
            # joins the board so that the board is the whole classification.
            if len(state.cars) >= MAX_CARS:
                continue
            car = state.cars[row.car] = CarState(
                car=row.car,
                cls=row.cls,
                team="",
                start_rank=len(state.cars),
                ring_d=[-1] * lines,
                ring_t=[0] * lines,
                sectors=[None] * lines,
                laps=row.laps,
            )
        if row.laps > car.laps:
            # Crossings the fold never saw (a race joined midway, a gap): the official
            # count fills them in, and the gaps in laps to the cars ahead with it.
            car.laps = row.laps
            car.distance = max(car.distance, row.laps * lines)
        car.result = row.status
        car.official_position = row.position
        car.in_pit = False
        car.out_lap = False
        status = _RESULT_STATUS[row.status]
        # A classified car that stopped before the flag is shown as finished:
        # the official word wins over what the stream could tell.
        car.status = status


def join(state: RaceState, meta: SessionOpened, event: Event) -> None:
    """Open ``state`` from the race's retained ``session_open`` (``meta``) so that ``event``,
    the first of its stream the fold sees, and what follows can be folded.

    For a race joined midway. ``state`` is fresh, or holds only a ``clock`` or
    ``reset`` (then its seq, gaps, speed and pause are kept and ``step`` counts
    what lies between). Of a fresh state, every seq before ``event``'s counts as
    missing except the meta's own: the producer retains its session_open, seq 1.
    Raises ``Rejected`` for a meta or seq the fold cannot take (``state`` may be
    half-changed then: join a copy).
    """
    seq = event.seq
    if seq > MAX_JOIN_SEQ:
        raise Rejected(f"seq {seq} is beyond {MAX_JOIN_SEQ}: too far to join race {state.race}")
    if meta.race != state.race:
        raise Rejected(f"meta of race {meta.race} opened for {state.race}")
    fresh = state.seq == 0
    gaps = state.gaps
    _session_open(state, meta)
    if fresh:
        state.seq = seq - 1
        state.gaps = seq - 1 - (1 if meta.seq < seq else 0)
    else:
        state.gaps = gaps
    # The flag of the moment is unknown until the next flag event; a crossing says it.
    if isinstance(event, Lap):
        state.flag = event.flag


def _reset(state: RaceState, e: Reset) -> None:
    speed, paused = state.speed, state.paused
    fresh = RaceState(race=state.race, speed=speed, paused=paused)
    for name in RaceState.__struct_fields__:
        setattr(state, name, getattr(fresh, name))


_HANDLERS: dict[type, Callable[[RaceState, Event], None]] = {
    SessionOpened: _session_open,  # type: ignore[dict-item]
    Flag: _flag,  # type: ignore[dict-item]
    Sector: _sector,  # type: ignore[dict-item]
    Lap: _lap,  # type: ignore[dict-item]
    PitIn: _pit_in,  # type: ignore[dict-item]
    PitOut: _pit_out,  # type: ignore[dict-item]
    Retire: _retire,  # type: ignore[dict-item]
    Finish: _finish,  # type: ignore[dict-item]
    SessionClosed: _session_close,  # type: ignore[dict-item]
    Clock: _clock,  # type: ignore[dict-item]
    Reset: _reset,  # type: ignore[dict-item]
    RaceControl: _race_control,  # type: ignore[dict-item]
    Provisional: _provisional,  # type: ignore[dict-item]
    Penalty: _penalty,  # type: ignore[dict-item]
}


# -- the fold --------------------------------------------------------------------


def step(state: RaceState, event: Event) -> Outcome:
    """Apply one event of ``state.race``; say what happened.

    Seqs at or below the last applied are duplicates (ignored). Missing seqs
    are counted in ``state.gaps`` and the event is applied anyway. Raises
    ``Rejected`` (state untouched) for an event that cannot be applied.
    """
    seq = event.seq
    last = state.seq
    if seq <= last:
        # After a Reset the producer may number the new stream from 1 again.
        if not (state.rebase and seq == 1):
            return DUPLICATE
        last = 0
    elif seq - last > MAX_SEQ_JUMP:
        raise Rejected(f"seq {seq} is more than {MAX_SEQ_JUMP} ahead of {last}")
    if event.race != state.race:
        raise Rejected(f"event of race {event.race} folded into {state.race}")
    t = event.t_ms
    if t > MAX_RACE_MS:
        raise Rejected(f"t_ms {t} is beyond {MAX_RACE_MS}")
    _HANDLERS[type(event)](state, event)
    state.seq = seq
    state.wall = event.wall
    if type(event) is Reset:
        state.rebase = True
        return RESET
    state.rebase = False
    if t > state.t_ms:
        state.t_ms = t
    if seq - last > 1 and last:
        state.gaps += seq - last - 1
        return GAP
    return APPLIED


def apply(state: RaceState, event: Event) -> RaceState:
    """Fold one event into ``state`` (mutated in place and returned).

    Deterministic; duplicates and rejected events leave the state as it was.
    """
    # try/except rather than contextlib.suppress: this is the hot path.
    try:  # noqa: SIM105
        step(state, event)
    except Rejected:
        pass
    return state


class Standings:
    """Every race followed: routes each event to its race's state, creating it on open,
    or midway from the race's meta (its retained ``session_open``) when one is known."""

    def __init__(self, races: dict[str, RaceState] | None = None) -> None:
        self.races: dict[str, RaceState] = races if races is not None else {}
        self.metas: dict[str, SessionOpened] = {}
        """Per race, its retained session_open: what a race joined midway is opened from."""

    def remember(self, meta: SessionOpened) -> None:
        """Keep a race's meta; it opens the race if an event of it comes with no state."""
        if meta.race not in self.metas and len(self.metas) >= MAX_RACES:
            raise Rejected(f"meta of race {meta.race} is one more than {MAX_RACES} races")
        self.metas[meta.race] = meta

    def forget(self, race: str) -> None:
        """Drop a race's meta (its retained meta was cleared)."""
        self.metas.pop(race, None)

    def step(self, event: Event) -> Outcome:
        race = event.race
        state = self.races.get(race)
        kind = type(event)
        if state is not None and (state.opened or kind is SessionOpened or kind is Reset):
            return step(state, event)
        meta = self.metas.get(race) if kind is not SessionOpened and kind is not Reset else None
        if meta is not None:
            return self._join(state, meta, event)
        if state is not None:
            return step(state, event)
        if kind is not SessionOpened and kind is not Clock and kind is not Reset:
            raise UnknownRace(f"race {race} is unknown: no session_open folded and no meta")
        if len(self.races) >= MAX_RACES:
            raise Rejected(f"race {race} is one more than {MAX_RACES} races")
        state = new_race(race)
        outcome = step(state, event)
        if kind is Clock:
            # A race first seen at a clock event: every seq before it is unseen.
            state.gaps = event.seq - 1
        self.races[race] = state
        return outcome

    def _join(self, state: RaceState | None, meta: SessionOpened, event: Event) -> Outcome:
        """Open the race from its meta and fold ``event``; nothing changes if either fails."""
        race = event.race
        if state is None:
            if len(self.races) >= MAX_RACES:
                raise Rejected(f"race {race} is one more than {MAX_RACES} races")
            joined = new_race(race)
        else:
            # join() replaces the containers it fills, so a shallow copy leaves
            # ``state`` untouched if the event is then rejected.
            joined = msgspec.structs.replace(state)
        join(joined, meta, event)
        if step(joined, event) == DUPLICATE:
            return DUPLICATE
        self.races[race] = joined
        return JOINED


# -- snapshots -------------------------------------------------------------------


SESSION_ONLY: Final = (Flag, Clock)
"""Events that change no car's row, only the session."""


def touch(touched: set[str] | None, event: Event) -> set[str] | None:
    """``touched`` (the cars whose state may have changed, for ``Board.snapshot``) after
    ``event`` was applied: its car added, or None (any car may have changed) for an
    event without a car that is more than the session's (open, close, reset)."""
    if touched is None:
        return None
    car = getattr(event, "car", None)
    if isinstance(car, str):
        touched.add(car)
        return touched
    return touched if isinstance(event, SESSION_ONLY) else None


_GROUP: dict[str, int] = {"running": 0, "in_pit": 0, "finished": 0, "retired": 1, "dns": 2}


def _race_key(car: CarState) -> tuple[int, int, int, int, int]:
    # Running and finished cars by distance then time at it; retired cars
    # behind them by the same rule; cars that did not start last.
    return (
        _GROUP[car.status],
        -car.distance,
        car.reached_t,
        car.reached_seq if car.distance else car.start_rank,
        car.start_rank,
    )


def _qualifying_key(car: CarState) -> tuple[int, int, int, int]:
    if car.best_lap_ms is None:
        return (1 if car.status != "dns" else 2, 0, 0, car.start_rank)
    return (0, car.best_lap_ms, car.best_seq, car.start_rank)


def order(state: RaceState) -> list[CarState]:
    """Cars in overall order.

    Race: (distance desc, time reaching it asc), retired cars behind the
    running ones, non-starters last; once closed, the official classification
    order (before that, from a ``provisional`` event, the provisional one), with
    cars it does not list behind in that order. Qualifying: best lap.
    """
    cars = list(state.cars.values())
    key = _qualifying_key if state.kind == "qualifying" else _race_key
    cars.sort(key=key)
    if state.closed or state.provisional:
        # Stable: cars missing from the classification keep their folded order.
        cars.sort(key=lambda c: (c.official_position == 0, c.official_position))
    return cars


def _behind(lines: int, car: CarState, ref: CarState) -> tuple[int | None, int]:
    """(ms, laps) that ``car`` is behind ``ref``, from their crossings of the same line."""
    diff = ref.distance - car.distance
    if diff >= lines:
        return None, diff // lines
    if diff < 0:
        return None, 0
    d = car.distance
    stop = max(d - lines, 0)
    while d > stop:
        i = d % lines
        if car.ring_d[i] == d and ref.ring_d[i] == d:
            # A car passed between two lines reads 0 until the next line.
            return max(0, car.ring_t[i] - ref.ring_t[i]), 0
        d -= 1
    return None, 0


def _best_behind(car: CarState, ref: CarState) -> tuple[int | None, int]:
    if car.best_lap_ms is None or ref.best_lap_ms is None:
        return None, 0
    return car.best_lap_ms - ref.best_lap_ms, 0


def _behind_fn(state: RaceState) -> Callable[[CarState, CarState], tuple[int | None, int]]:
    return _best_behind if state.kind == "qualifying" else partial(_behind, state.lines)


_NONE_BEHIND: Final[tuple[int | None, int]] = (None, 0)


Gaps = tuple[tuple[int | None, int], tuple[int | None, int], tuple[int | None, int],
             tuple[int | None, int]]  # fmt: skip
"""(gap, interval, class gap, class interval) of a row, each as (ms, laps)."""
_Place = tuple[CarState | None, CarState | None, CarState | None, CarState | None, int]
"""Of a place in the order: the leader, the car ahead, the class leader, the car ahead
in class, and the class position."""


def _gaps(
    car: CarState,
    i: int,
    leader: CarState | None,
    prev: CarState | None,
    cleader: CarState | None,
    cprev: CarState | None,
    behind: Callable[[CarState, CarState], tuple[int | None, int]],
) -> Gaps:
    """What a row owes to the cars it is measured against: the leader, the car ahead, the
    class leader and the car ahead in class (the only way they enter its row)."""
    gap = behind(car, leader) if leader is not None and i else _NONE_BEHIND
    interval = behind(car, prev) if prev is not None else _NONE_BEHIND
    if cprev is not None and cleader is not None:
        return gap, interval, behind(car, cleader), behind(car, cprev)
    return gap, interval, _NONE_BEHIND, _NONE_BEHIND


def _regap(
    car: CarState,
    i: int,
    place: _Place,
    gaps: Gaps,
    touched: set[str],
    behind: Callable[[CarState, CarState], tuple[int | None, int]],
) -> Gaps:
    """``gaps`` of an untouched car that kept its ``place``, measured again against the
    cars of it that were touched."""
    leader, prev, cleader, cprev, _ = place
    gap, interval, cgap, cinterval = gaps
    if i and leader is not None and leader.car in touched:
        gap = behind(car, leader)
    if prev is not None and prev.car in touched:
        interval = behind(car, prev)
    if cprev is not None and cleader is not None:
        if cleader.car in touched:
            cgap = behind(car, cleader)
        if cprev.car in touched:
            cinterval = behind(car, cprev)
    return gap, interval, cgap, cinterval


def _row(state: RaceState, car: CarState, i: int, cpos: int, gaps: Gaps) -> CarRow:
    """The row of ``car`` at position ``i + 1`` (class position ``cpos``), from its own
    state and its ``gaps``: all a row depends on, besides the fastest laps and the
    session's kind."""
    gap, interval, cgap, cinterval = gaps
    cls = car.cls
    last = car.last_lap
    best_cls = state.fastest.get(cls)
    overall = state.overall
    return CarRow(
        car=car.car,
        cls=cls,
        position=i + 1,
        class_position=cpos,
        team=car.team,
        driver=car.driver,
        laps=car.laps,
        gap_ms=gap[0],
        gap_laps=gap[1],
        interval_ms=interval[0],
        interval_laps=interval[1],
        class_gap_ms=cgap[0],
        class_gap_laps=cgap[1],
        class_interval_ms=cinterval[0],
        class_interval_laps=cinterval[1],
        last_lap_ms=car.last_lap_ms,
        best_lap_ms=car.best_lap_ms,
        best_lap=car.best_lap or None,
        last_is_personal_best=car.last_lap_ms is not None and car.best_lap == last,
        last_is_class_best=best_cls is not None
        and best_cls.car == car.car
        and best_cls.lap == last,
        last_is_overall_best=overall is not None and overall.car == car.car and overall.lap == last,
        sectors_ms=list(car.sectors),
        pit_stops=car.pit_stops,
        in_pit=car.in_pit,
        out_lap=car.out_lap,
        stint_laps=car.stint_laps,
        gained=car.grid - (i + 1) if car.grid and state.kind != "qualifying" else 0,
        status=car.status,
        result=car.result,
        penalty=car.penalty,
        penalty_ms=car.penalty_ms,
    )


def rows(state: RaceState, ordered: list[CarState] | None = None) -> list[CarRow]:
    """Leaderboard rows in overall order, with gaps, intervals and class positions."""
    ordered = order(state) if ordered is None else ordered
    behind = _behind_fn(state)
    class_leader: dict[str, CarState] = {}
    class_prev: dict[str, CarState] = {}
    class_count: dict[str, int] = {}
    out: list[CarRow] = []
    leader = ordered[0] if ordered else None
    prev: CarState | None = None
    for i, car in enumerate(ordered):
        cls = car.cls
        cpos = class_count[cls] = class_count.get(cls, 0) + 1
        cprev = class_prev.get(cls)
        if cprev is None:
            class_leader[cls] = car
        gaps = _gaps(car, i, leader, prev, class_leader[cls], cprev, behind)
        out.append(_row(state, car, i, cpos, gaps))
        class_prev[cls] = car
        prev = car
    return out


class Board:
    """One race's rows kept from one snapshot to the next, so that a car's row is
    rebuilt only when it changed.

    A row depends on its car, its position and class position, its gaps to the cars it
    is measured against (the leader, the car ahead, the class leader, the car ahead in
    class: ``_gaps``), and the fastest laps and the session's kind and lines. A row is
    kept when its car was not touched since the last snapshot, it holds the same
    positions behind the same cars as then, and, where one of those cars was touched,
    its gaps to them come out the same (a car that crosses a line moves no gap of the
    cars behind it until they cross it too); everything is rebuilt when anything else
    changed. When no car changed places, only the touched cars and the cars measured
    against them are looked at. ``snapshot`` then equals ``standings.snapshot`` (tests
    compare them over whole races); ``rebuilt`` is how many rows the last one built.
    """

    __slots__ = (
        "_fastest", "_gaps", "_index", "_members", "_messages", "_ordered", "_out",
        "_overall", "_places", "_rows", "_shape", "_state", "rebuilt",
    )  # fmt: skip

    def __init__(self) -> None:
        self._state: RaceState | None = None
        self._rows: dict[str, tuple[tuple[object, ...], Gaps, CarRow]] = {}
        self._fastest: dict[str, Best] = {}
        self._overall: Best | None = None
        self._shape: tuple[object, ...] = ()
        self._messages: tuple[tuple[int, int, int], list[RaceMessage]] = ((-1, -1, -1), [])
        self._ordered: list[CarState] = []
        """The order of the last snapshot, and per place in it:"""
        self._out: list[CarRow] = []
        self._gaps: list[Gaps] = []
        self._places: list[_Place] = []
        self._index: dict[str, int] = {}
        """Car number to its place."""
        self._members: dict[str, list[int]] = {}
        """Per class, the places of its cars."""
        self.rebuilt = 0

    def snapshot(self, state: RaceState, touched: set[str] | None) -> Snapshot:
        """The snapshot of ``state``; ``touched`` names every car whose state may have
        changed since the last call (None: anything may have)."""
        shape = (state.kind, state.lines, state.closed, state.provisional, len(state.cars))
        cache = self._rows
        if (
            touched is None
            or state is not self._state
            or shape != self._shape
            or state.overall != self._overall
            or state.fastest != self._fastest
        ):
            cache = {}
            touched = set()
            self._state = state
            self._shape = shape
            self._overall = state.overall
            self._fastest = dict(state.fastest)
        ordered = order(state)
        if cache and ordered == self._ordered:
            out = self._in_place(state, touched)
        else:
            out = self._rebuild(state, ordered, cache, touched)
        return Snapshot(
            race=state.race,
            seq=state.seq,
            session=session_view(state, ordered),
            cars=out,
            wall=state.wall,
            messages=self._said(state),
        )

    def _in_place(self, state: RaceState, touched: set[str]) -> list[CarRow]:
        """The rows when every car kept its place: those of the touched cars rebuilt, and
        of the cars measured against them where their gaps moved."""
        ordered, index, members = self._ordered, self._index, self._members
        whole: set[int] = set()
        check: set[int] = set()
        for number in touched:
            t = index.get(number)
            if t is None:
                continue
            whole.add(t)
            if t == 0:
                check.update(range(1, len(ordered)))  # everyone's gap to the leader
                continue
            check.add(t + 1)  # the interval of the car behind
            mates = members[ordered[t].cls]
            if mates[0] == t:
                check.update(mates)  # the class gaps
            else:
                at = mates.index(t) + 1
                if at < len(mates):
                    check.add(mates[at])  # the class interval of the car behind in class
        out, gaps_at, places = self._out, self._gaps, self._places
        behind = _behind_fn(state)
        rebuilt = 0
        last = len(ordered)
        for t in whole | check:
            if t >= last:
                continue
            car = ordered[t]
            place = places[t]
            if t in whole:
                leader, prev, cleader, cprev, _ = place
                gaps = _gaps(car, t, leader, prev, cleader, cprev, behind)
            else:
                gaps = _regap(car, t, place, gaps_at[t], touched, behind)
            if t in whole or gaps != gaps_at[t]:
                cpos = place[4]
                if rebuilt == 0:
                    out = list(out)
                out[t] = _row(state, car, t, cpos, gaps)
                gaps_at[t] = gaps
                number = car.car
                self._rows[number] = (self._rows[number][0], gaps, out[t])
                rebuilt += 1
        self._out = out
        self.rebuilt = rebuilt
        return out

    def _rebuild(
        self,
        state: RaceState,
        ordered: list[CarState],
        cache: dict[str, tuple[tuple[object, ...], Gaps, CarRow]],
        touched: set[str],
    ) -> list[CarRow]:
        """The rows when cars changed places (or nothing is kept): each car's row kept
        if its place, the cars it is measured against and its gaps to them are the same."""
        behind = _behind_fn(state)
        class_leader: dict[str, CarState] = {}
        class_prev: dict[str, CarState] = {}
        class_count: dict[str, int] = {}
        members: dict[str, list[int]] = {}
        fresh: dict[str, tuple[tuple[object, ...], Gaps, CarRow]] = {}
        out: list[CarRow] = []
        gaps_at: list[Gaps] = []
        places: list[_Place] = []
        leader = ordered[0] if ordered else None
        lead = leader.car if leader is not None else None
        lead_touched = lead in touched
        prev: CarState | None = None
        rebuilt = 0
        for i, car in enumerate(ordered):
            cls = car.cls
            cpos = class_count[cls] = class_count.get(cls, 0) + 1
            cprev = class_prev.get(cls)
            if cprev is None:
                class_leader[cls] = car
                members[cls] = [i]
            else:
                members[cls].append(i)
            cleader = class_leader[cls]
            number = car.car
            key = (
                i,
                cpos,
                lead,
                prev.car if prev is not None else None,
                cleader.car,
                cprev.car if cprev is not None else None,
            )
            kept = cache.get(number)
            if kept is not None and kept[0] == key and number not in touched:
                gaps = kept[1]
                row = kept[2]
                if lead_touched or key[3] in touched or key[4] in touched or key[5] in touched:
                    gaps = _regap(car, i, (leader, prev, cleader, cprev, cpos), gaps, touched,
                                  behind)  # fmt: skip
                    if gaps != kept[1]:
                        row = _row(state, car, i, cpos, gaps)
                        rebuilt += 1
            else:
                gaps = _gaps(car, i, leader, prev, cleader, cprev, behind)
                row = _row(state, car, i, cpos, gaps)
                rebuilt += 1
            fresh[number] = (key, gaps, row)
            out.append(row)
            gaps_at.append(gaps)
            places.append((leader, prev, cleader, cprev, cpos))
            class_prev[cls] = car
            prev = car
        self._rows = fresh
        self._ordered = ordered
        self._out = out
        self._gaps = gaps_at
        self._places = places
        self._index = {car.car: i for i, car in enumerate(ordered)}
        self._members = members
        self.rebuilt = rebuilt
        return out

    def _said(self, state: RaceState) -> list[RaceMessage]:
        """``messages(state)``, built again only when a message was added or the feed
        started again."""
        said = state.messages
        mark = (state.message_count, len(said), said[-1].seq if said else 0)
        if mark != self._messages[0]:
            self._messages = (mark, messages(state))
        return self._messages[1]


def messages(state: RaceState) -> list[RaceMessage]:
    """The race-control messages a snapshot of ``state`` shows, oldest first."""
    return [
        RaceMessage(
            seq=m.seq,
            t_ms=m.t_ms,
            lap=m.lap,
            category=m.category,
            text=m.text,
            cars=list(m.cars),
            provenance=m.provenance,
        )
        for m in state.messages
    ]


def session_view(state: RaceState, ordered: list[CarState] | None = None) -> SessionView:
    ordered = order(state) if ordered is None else ordered
    return SessionView(
        name=state.name,
        kind=state.kind,
        flag=state.flag,
        t_ms=state.t_ms,
        remaining_ms=max(0, state.duration_ms - state.t_ms)
        if state.duration_ms is not None
        else None,
        leader_laps=ordered[0].laps if ordered else 0,
        laps_total=state.laps_total,
        fastest={
            cls: FastLap(car=best.car, lap_ms=best.lap_ms, lap=best.lap)
            for cls, best in state.fastest.items()
        },
        finished=state.closed,
        speed=state.speed,
        paused=state.paused,
        classes=list(state.classes),
        gaps=state.gaps,
        flag_reason=state.flag_reason,
        laps_run=state.laps_run,
        laps_neutralised=state.laps_neutralised,
        messages=state.message_count,
        synthesised=state.synthesised,
        provisional=state.provisional,
    )


def snapshot(state: RaceState) -> Snapshot:
    """The whole leaderboard of a race as published (overall order; classes by ``cls``)."""
    ordered = order(state)
    return Snapshot(
        race=state.race,
        seq=state.seq,
        session=session_view(state, ordered),
        cars=rows(state, ordered),
        wall=state.wall,
        messages=messages(state),
    )


def delta(previous: Snapshot, current: Snapshot) -> Delta | None:
    """What changed from ``previous`` to ``current``: per changed car and for the session,
    the fields that changed.

    None when the two cannot be chained by a delta: another race, seq not
    advanced, the set of cars or a car's class differs, or the message feed started
    again (after a reset): publish a snapshot. New race-control messages go in
    ``messages``.
    """
    if previous.race != current.race or current.seq <= previous.seq:
        return None
    cars = _changed(previous.cars, current.cars)
    if cars is None:
        return None
    said = previous.messages[-1].seq if previous.messages else 0
    new = [m for m in current.messages if m.seq > said]
    if add_messages(previous.messages, new) != current.messages:
        return None  # the feed started again (a reset): only a snapshot can say so
    return Delta(
        race=current.race,
        seq=current.seq,
        prev_seq=previous.seq,
        session=session_patch(previous.session, current.session),
        cars=cars,
        wall=current.wall,
        messages=new,
    )


def _changed(before: list[CarRow], after: list[CarRow]) -> list[CarPatch] | None:
    """The patches of the rows, in their new order; None when the set of cars differs or
    a car changed class. Rows kept from one board to the next are the same objects, and
    most cars keep their places: compared by place first, by car where they moved."""
    if before is after:
        return []
    if len(before) != len(after):
        return None
    by_car: dict[str, CarRow] | None = None
    changed: list[CarPatch] = []
    for old, row in zip(before, after, strict=True):
        if old is row:
            continue
        if old.car != row.car:
            if by_car is None:
                by_car = {r.car: r for r in before}
            found = by_car.get(row.car)
            if found is None:
                return None
            if found is row:
                continue
            old = found
        patch = row_patch(old, row)
        if patch is not None:
            if patch.cls is not UNSET:
                return None  # a class view would gain a car that a patch cannot give whole
            changed.append(patch)
    return changed
