"""The race partition of a set of projectors: stable, whole races, every race owned once."""

from __future__ import annotations

import subprocess
import sys

import pytest

from chequered.contract.partition import MAX_PARTITIONS, Partition, owner, parse


def test_every_race_has_exactly_one_owner_and_the_races_spread() -> None:
    races = [f"load-{i:04d}" for i in range(1, 401)]
    for count in (1, 2, 3, 8):
        parts = [Partition(i, count) for i in range(count)]
        for race in races:
            assert sum(p.owns(race) for p in parts) == 1
        sizes = [sum(p.owns(r) for r in races) for p in parts]
        # A hash, not a round robin: each share within a third of the even share.
        assert min(sizes) > len(races) / count * 2 / 3, sizes


def test_the_owner_is_the_same_in_another_process() -> None:
    # Python's own hash() is salted per process: the owner must not depend on it.
    code = "from chequered.contract.partition import owner; print(owner('load-0007', 5))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout) == owner("load-0007", 5)


def test_i_of_n_reads_one_based() -> None:
    assert parse("1/2") == Partition(0, 2)
    assert parse("2/2").label() == "2/2"


@pytest.mark.parametrize("text", ["0/2", "3/2", "2", "a/b", "1/0", f"1/{MAX_PARTITIONS + 1}", "/2"])
def test_a_bad_partition_says_why(text: str) -> None:
    with pytest.raises(ValueError, match=r"\S"):
        parse(text)
