"""Shared fixtures: a private Mosquitto per test (or per module) on a free port.

Tests never use a broker that happens to run on the machine: each starts its
own, so that fault tests can stop, kill and restart it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

# The shared checks in tests/support/ report their failed assertions as fully as
# the tests' own do.
pytest.register_assert_rewrite("tests.support")

import structlog  # noqa: E402

from broker.mosquitto import Mosquitto, binary  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
REPLAYS = REPO / "replays"
SHARED = REPO.parent / "shared"
TESTS_DATA = REPO / "tests" / "data"

requires_mosquitto = pytest.mark.skipif(binary() is None, reason="mosquitto is not installed")


@pytest.fixture(autouse=True)
def _isolated_logging() -> Iterator[None]:
    """Each test starts from structlog's defaults: a command run earlier in the process
    (``chequered ...`` sets its own level, even from a module-scoped fixture) must not
    filter this test's log lines."""
    structlog.reset_defaults()
    try:
        yield
    finally:
        structlog.reset_defaults()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A fresh Mosquitto (development config) for one test."""
    if binary() is None:
        pytest.skip("mosquitto is not installed")
    broker = Mosquitto(workdir=tmp_path / "mosquitto")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="module")
def module_mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """One Mosquitto shared by the tests of a module (tests must use distinct race ids)."""
    if binary() is None:
        pytest.skip("mosquitto is not installed")
    broker = Mosquitto(workdir=tmp_path_factory.mktemp("mosquitto"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
