"""The MQTT topic tree, versioned with the event contract.

Every topic of a race sits under ``chequered/v1/<race>/``. Build topic names
here and nowhere else, so that a version bump is one edit.
"""

from __future__ import annotations

from chequered.contract.events import CONTRACT_VERSION

ROOT = f"chequered/v{CONTRACT_VERSION}"

META = "meta"
EVENTS = "events"
STATUS = "status"
CONTROL = "control"
STANDINGS = "standings"
STANDINGS_DELTA = "standings/delta"
DEAD_LETTER = "deadletter"


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
