"""The dead letter: what the projector publishes for a payload or event it would not fold.

Published on ``chequered/v2/<race>/deadletter`` so that an operator can see what
was refused and why; documented by ``docs/schema/deadletter.schema.json``.
"""

from __future__ import annotations

from msgspec import Struct


class DeadLetter(Struct, kw_only=True, omit_defaults=True):
    """What the projector publishes for a message or event it would not fold."""

    reason: str
    topic: str
    payload: str
    """The rejected payload (or event), decoded as UTF-8 with replacement, cut short."""
    truncated: bool = False
    race: str | None = None
    seq: int | None = None
    wall: float = 0.0
    """When the projector rejected it (Unix seconds)."""
