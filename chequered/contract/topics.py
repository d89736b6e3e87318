"""The MQTT topic tree, versioned with the event contract.

Every topic of a race sits under ``chequered/v2/<race>/``. Build topic names
here and nowhere else, so that a version bump is one edit.
"""

from __future__ import annotations

import re

from chequered.contract.events import CONTRACT_VERSION

ROOT = f"chequered/v{CONTRACT_VERSION}"

META = "meta"
EVENTS = "events"
STATUS = "status"
CONTROL = "control"
STANDINGS = "standings"
STANDINGS_DELTA = "standings/delta"
DEAD_LETTER = "deadletter"
INJECTED = "injected"
"""What a hostile feed (the producer run with faults) did to the race's stream."""


RACE_ID_PATTERN = r"[a-z0-9][a-z0-9_-]*"
"""What a race id may be: one topic level with no MQTT wildcard, safe as a file name."""
RACE_ID_MAX = 64
_RACE_ID = re.compile(RACE_ID_PATTERN)


def is_race_id(text: str) -> bool:
    return len(text) <= RACE_ID_MAX and _RACE_ID.fullmatch(text) is not None


def check_race_id(text: str) -> str:
    """``text`` if it is a race id; ``ValueError`` saying why not.

    A wildcard (``+``, ``#``) or a slash would turn a race's topic into a filter
    over other races, so every command that names a race checks it first.
    """
    if not is_race_id(text):
        shown = text if len(text) <= RACE_ID_MAX else text[:RACE_ID_MAX] + "..."
        raise ValueError(
            f"{shown!r} is not a race id (lower-case letters, digits, - and _, "
            f"at most {RACE_ID_MAX} characters; `chequered races` lists them)"
        )
    return text


def topic(race: str, leaf: str) -> str:
    return f"{ROOT}/{race}/{leaf}"


def all_races(leaf: str) -> str:
    """Wildcard subscription for one leaf across every race."""
    return f"{ROOT}/+/{leaf}"


def race_of(topic_name: str) -> str | None:
    """The race id in a topic of this tree, or None for a foreign topic."""
    parts = topic_name.split("/", 3)
    if len(parts) < 4 or f"{parts[0]}/{parts[1]}" != ROOT or not parts[2]:
        return None
    return parts[2]


def leaf_of(topic_name: str) -> str | None:
    parts = topic_name.split("/", 3)
    if len(parts) < 4 or f"{parts[0]}/{parts[1]}" != ROOT:
        return None
    return parts[3]
