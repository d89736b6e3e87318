"""When a NATS cluster can lose a node: judged from each node's /jsz report, by the leaders."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from broker import nats
from broker.nats import not_whole

NODES = ("n1", "n2", "n3")


def cluster(leader: str, *, current: tuple[str, ...] = NODES) -> dict[str, Any]:
    """A group's cluster block as ``node`` would report it if ``leader`` leads it."""
    return {
        "leader": leader,
        "replicas": [{"name": n, "current": n in current} for n in NODES if n != leader],
    }


def follower(leader: str, me: str) -> dict[str, Any]:
    # A follower sees the other followers as not current, whatever they are.
    return {
        "leader": leader,
        "replicas": [{"name": n, "current": n == leader} for n in NODES if n != me],
    }


def report(
    me: str,
    streams: Mapping[str, tuple[str, tuple[str, ...]]],
    consumers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """``me``'s /jsz: per stream its leader and the replicas current (as the leader sees)."""

    def block(leader: str, current: tuple[str, ...]) -> dict[str, Any]:
        return cluster(leader, current=current) if leader == me else follower(leader, me)

    details = []
    for name, (leader, current) in streams.items():
        detail: dict[str, Any] = {"name": name, "cluster": block(leader, current)}
        detail["consumer_detail"] = [
            {"name": c, "cluster": block(c_leader, NODES)}
            for c, c_leader in (consumers or {}).items()
        ]
        details.append(detail)
    return {
        "meta_cluster": block("n3", NODES),
        "account_details": [{"name": "$G", "stream_detail": details}],
    }


def test_a_cluster_whose_leaders_see_every_replica_current_is_whole() -> None:
    streams = {"$MQTT_msgs": ("n3", NODES), "$MQTT_sess": ("n2", NODES)}
    reports = {me: report(me, streams, {"session-a": "n1"}) for me in NODES}
    # The followers' own views say "not current" for each other: they are not asked.
    assert not_whole(reports) is None


def test_a_replica_behind_its_leader_is_named() -> None:
    streams = {"$MQTT_msgs": ("n3", ("n1", "n3")), "$MQTT_sess": ("n2", NODES)}
    reports = {me: report(me, streams) for me in NODES}
    assert not_whole(reports) == "stream $MQTT_msgs: n2 not current (led by n3)"


def test_a_consumer_behind_is_named() -> None:
    streams = {"$MQTT_msgs": ("n3", NODES)}
    reports = {me: report(me, streams, {"session-a": "n1"}) for me in NODES}
    reports["n1"]["account_details"][0]["stream_detail"][0]["consumer_detail"][0]["cluster"] = (
        cluster("n1", current=("n1", "n3"))
    )
    assert not_whole(reports) == "consumer $MQTT_msgs > session-a: n2 not current (led by n1)"


def test_a_group_without_a_leader_or_with_two_is_not_whole() -> None:
    streams = {"$MQTT_msgs": ("n3", NODES)}
    reports = {me: report(me, streams) for me in NODES}
    reports["n1"]["account_details"][0]["stream_detail"][0]["cluster"]["leader"] = ""
    assert not_whole(reports) == "stream $MQTT_msgs: no agreed leader (members name n3, none)"
    reports["n1"]["account_details"][0]["stream_detail"][0]["cluster"]["leader"] = "n2"
    assert not_whole(reports) == "stream $MQTT_msgs: no agreed leader (members name n2, n3)"


def test_a_leader_that_does_not_report_its_group_is_waited_for() -> None:
    streams = {"$MQTT_msgs": ("n3", NODES)}
    reports = {me: report(me, streams) for me in NODES}
    reports["n3"]["account_details"] = []  # restarted, its streams not loaded yet
    assert not_whole(reports) == "stream $MQTT_msgs: its leader n3 does not report it"


def test_the_meta_group_counts_too() -> None:
    reports = {me: report(me, {}) for me in NODES}
    reports["n3"]["meta_cluster"] = cluster("n3", current=("n2",))
    assert not_whole(reports) == "meta: n1 not current (led by n3)"


def test_a_member_that_does_not_report_the_group_yet_is_waited_for() -> None:
    streams = {"$MQTT_msgs": ("n3", NODES)}
    reports = {me: report(me, streams) for me in NODES}
    reports["n2"]["account_details"] = []  # restarted: the leader still counts it current
    assert not_whole(reports) == "stream $MQTT_msgs: n2 does not report it yet"


@pytest.mark.parametrize(
    ("text", "release"),
    [("nats-server: v2.15.1\n", (2, 15, 1)), ("nats-server: v2.9.10", (2, 9, 10))],
)
def test_the_release_is_read_from_the_version_line(text: str, release: tuple[int, ...]) -> None:
    assert nats.parse_release(text) == release


def test_a_version_line_without_a_release_is_named() -> None:
    with pytest.raises(nats.NatsError, match="no nats-server release number in 'garbage'"):
        nats.parse_release("garbage\n")


def test_the_installed_nats_server_is_a_steady_release() -> None:
    executable = nats.binary()
    if executable is None:
        pytest.skip("nats-server is not installed")
    assert nats.release(executable)[:2] >= nats.STEADY_RELEASE
