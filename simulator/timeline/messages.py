"""Race-control messages a replayed session's own events give: its flags and retirements.

Real timing (an Al Kamel export) records the flag each car saw at the line
and the last lap of a car that stopped, but no causes: the feed says what the
timing says, ``timing`` its provenance. A synthesised race tells its own story
(``simulator.timeline.synth``). Pure: no I/O.
"""

from __future__ import annotations

from msgspec.structs import replace

from chequered.contract.events import Event, Flag, Lap, RaceControl, Retire, SessionOpened

_FLAG_TEXT = {
    "fcy": "Full course yellow",
    "red": "Red flag",
    "green": "Green flag",
    "chequered": "Chequered flag",
}


def told(event: Event) -> RaceControl | None:
    """The message an event of the timing calls for, if any (lap and seq filled later)."""
    if isinstance(event, Flag):
        text = _FLAG_TEXT[event.flag]
        if event.t_ms == 0 and event.flag == "green":
            text = "Green flag: the session is started"
        elif event.reason:
            text = f"{text}: {event.reason}"
        return RaceControl(
            race=event.race, seq=1, t_ms=event.t_ms, lap=0, category="flag", text=text
        )
    if isinstance(event, Retire):
        text = f"#{event.car} retires after {event.lap} laps"
        if event.reason:
            text += f" ({event.reason})"
        return RaceControl(
            race=event.race,
            seq=1,
            t_ms=event.t_ms,
            lap=0,
            category="retirement",
            text=text,
            cars=[event.car],
        )
    return None


def with_messages(events: list[Event]) -> list[Event]:
    """``events`` with the message of each flag and retirement right after it, renumbered
    from 1; a log that already has race-control messages is returned as it is."""
    if any(isinstance(e, RaceControl) for e in events):
        return events
    out: list[Event] = []
    leader = 0
    for event in events:
        if isinstance(event, SessionOpened):
            leader = 0
        if isinstance(event, Lap) and event.lap > leader:
            leader = event.lap
        out.append(replace(event, seq=len(out) + 1))
        message = told(event)
        if message is not None:
            out.append(replace(message, seq=len(out) + 1, lap=leader))
    return out
