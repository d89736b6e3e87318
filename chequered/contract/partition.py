"""Which of N projectors owns a race: a stable hash of the race id.

Every projector of a set computes the same owner for a race with no
coordination, on any machine and in any Python (``hash()`` is salted per
process, so CRC-32 of the id's bytes is used). A race always goes whole to one
projector: its events stay in order, as round-robin shared subscriptions would
not keep them.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

MAX_PARTITIONS = 1024
"""Most projectors one set may be split into: far above any machine's cores."""


def owner(race: str, count: int) -> int:
    """The index (0-based) of the partition of ``count`` that owns ``race``."""
    return zlib.crc32(race.encode()) % count


@dataclass(frozen=True, slots=True)
class Partition:
    """Partition ``index`` (0-based) of ``count``."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_PARTITIONS:
            raise ValueError(f"the count must be 1 to {MAX_PARTITIONS}, not {self.count}")
        if not 0 <= self.index < self.count:
            raise ValueError(f"the index must be 0 to {self.count - 1}, not {self.index}")

    def owns(self, race: str) -> bool:
        return owner(race, self.count) == self.index

    def label(self) -> str:
        """``I/N`` as the command line takes it, 1-based."""
        return f"{self.index + 1}/{self.count}"


def parse(text: str) -> Partition:
    """``I/N`` (1-based: ``1/2`` and ``2/2`` are the two halves); ``ValueError`` saying why not."""
    index, slash, count = text.partition("/")
    if not slash or not index.strip().isdigit() or not count.strip().isdigit():
        raise ValueError(f"{text!r} is not I/N (for example 1/2)")
    n = int(count)
    i = int(index)
    if not 1 <= i <= n:
        raise ValueError(f"{text!r}: I must be 1 to N")
    return Partition(i - 1, n)
