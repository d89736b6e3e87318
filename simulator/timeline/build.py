"""The timeline: a session's ordered events from its recording, for a given seed.

A recording with real lap-by-lap timing is replayed as recorded; a
results-only recording is synthesised (``simulator.synth`` for races,
``simulator.synth_qualifying`` for qualifying) so that it ends in the
official classification. Pure and deterministic: the same recording and
seed always give the same events.
"""

from __future__ import annotations

from chequered.contract.events import Event, Flag, Lap, SessionClosed
from simulator.recording.format import Recording
from simulator.timeline import messages, post_race, synth, timing_replay
from simulator.timeline import qualifying as synth_qualifying

ERRORS: tuple[type[Exception], ...] = (synth.SynthesisError, synth_qualifying.QualifyingError)
"""What ``build`` raises when a recording's result cannot be reproduced."""


def build(recording: Recording, *, seed: int = 0, race: str | None = None) -> list[Event]:
    """Ordered events of a session: seq 1..N, from ``session_open`` to ``session_close``."""
    race = race or recording.facts.id
    if recording.laps:
        # The timing's flags and retirements told in the race-control feed.
        return messages.with_messages(timing_replay.replay(recording, race=race))
    if recording.facts.session == "qualifying":
        return synth_qualifying.synthesise(recording, seed=seed, race=race)
    events = synth.synthesise(recording, seed=seed, race=race).events
    # Notes that change the result after the flag: provisional, penalties, official.
    return post_race.amend(recording, events, race=race)


def end_ms(events: list[Event]) -> int:
    """Race time of the last event (the session closing)."""
    return events[-1].t_ms if events else 0


def chequered_ms(events: list[Event]) -> int | None:
    """When the chequered flag fell, if it did."""
    for event in events:
        if isinstance(event, Flag) and event.flag == "chequered":
            return event.t_ms
    return None


def leader_lap_start_ms(events: list[Event], lap: int) -> int:
    """Race time at which the leader started lap ``lap`` (1: the green flag).

    For seeking to a lap: the time the first car completed ``lap - 1`` laps;
    past the last lap, the end of the session.
    """
    if lap <= 1:
        return 0
    for event in events:
        if isinstance(event, Lap) and event.lap == lap - 1:
            return event.t_ms
    return end_ms(events)


def leader_laps(events: list[Event]) -> list[int]:
    """``leader_laps(events)[k]``: race time at which the leader completed lap ``k`` (k >= 1)."""
    out = [0]
    for event in events:
        if isinstance(event, Lap) and event.lap == len(out):
            out.append(event.t_ms)
    return out


def yellow_share(events: list[Event]) -> float | None:
    """Share of all laps completed under a full-course yellow or a red flag (the flag each
    lap carries), None without laps: how much of a race was neutralised."""
    laps = [e for e in events if isinstance(e, Lap)]
    if not laps:
        return None
    return sum(1 for e in laps if e.flag == "fcy" or e.flag == "red") / len(laps)


def classification(events: list[Event]) -> SessionClosed | None:
    """The closing classification carried by the log, if it has one."""
    for event in reversed(events):
        if isinstance(event, SessionClosed):
            return event
    return None
