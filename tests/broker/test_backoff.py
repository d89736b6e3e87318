"""The reconnect wait: doubling from the first wait, capped, full jitter, reset on success."""

from __future__ import annotations

import itertools

import pytest

from broker.backoff import Backoff, ceiling_s, delay_s, delays


def test_ceiling_doubles_from_the_first_wait_up_to_the_cap() -> None:
    got = [ceiling_s(n, 0.1, 1.0) for n in range(1, 7)]
    assert got == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])


def test_a_long_run_of_failures_stays_at_the_cap() -> None:
    assert ceiling_s(5000, 0.1, 5.0) == 5.0
    assert delay_s(5000, 0.1, 5.0, lambda: 0.5) == 2.5


def test_full_jitter_spans_zero_to_the_ceiling() -> None:
    assert delay_s(3, 0.1, 5.0, lambda: 0.0) == 0.0
    assert delay_s(3, 0.1, 5.0, lambda: 0.999) == pytest.approx(0.3996)


def test_delays_run_without_end() -> None:
    got = list(itertools.islice(delays(1.0, 4.0, lambda: 1.0), 5))
    assert got == [1.0, 2.0, 4.0, 4.0, 4.0]


def test_reset_starts_again_from_the_first_wait() -> None:
    backoff = Backoff(0.5, 8.0, rand=lambda: 1.0)
    assert [backoff.next() for _ in range(4)] == [0.5, 1.0, 2.0, 4.0]
    assert backoff.attempt == 4
    backoff.reset()
    assert backoff.next() == 0.5


def test_the_default_random_source_stays_within_the_ceiling() -> None:
    backoff = Backoff(0.2, 1.0)
    waits = [backoff.next() for _ in range(50)]
    assert all(0.0 <= w <= 1.0 for w in waits)
    assert len(set(waits)) > 1  # jittered: not every wait the same


@pytest.mark.parametrize(("first", "cap"), [(0.0, 1.0), (-1.0, 1.0), (2.0, 1.0)])
def test_a_bad_pair_of_settings_is_refused_at_once(first: float, cap: float) -> None:
    with pytest.raises(ValueError, match="first_s"):
        Backoff(first, cap)


def test_attempts_count_from_one() -> None:
    with pytest.raises(ValueError, match="attempt"):
        ceiling_s(0, 0.1, 1.0)
