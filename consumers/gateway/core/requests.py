"""The client protocol: one request frame in, its answer (or a named error) out.

``Requests.receive`` checks a client's rate limits, decodes the frame, and
answers ``list``, ``subscribe``, ``unsubscribe`` and ``ping`` through the
session; a frame it refuses is answered with an error that names the fault,
and the connection stays open (only a flood closes it).
"""

from __future__ import annotations

from typing import Any

import msgspec

from consumers.gateway.core.cache import Races, status_frame
from consumers.gateway.core.session import (
    CLOSE_POLICY,
    Frame,
    Port,
    Session,
    Subscription,
    clip,
)

_json = msgspec.json.Encoder()
MAX_ID_CHARS = 64
MAX_NAME_CHARS = 64
OPS = ("list", "subscribe", "unsubscribe", "ping")


class ClientFault(Exception):
    """A client message the gateway refuses; answered with an error frame."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def reply(kind: str, request_id: object = None, **fields: object) -> bytes:
    body: dict[str, object] = {"type": kind}
    if request_id is not None:
        body["id"] = request_id
    body.update(fields)
    return _json.encode(body)


def decode(text: str | bytes) -> Any:
    """JSON, or ClientFault ``invalid_json`` (nesting too deep for the decoder included)."""
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        raise ClientFault("invalid_json", f"frame is not JSON: {exc}") from None
    except RecursionError:
        # msgspec's own guard against arrays nested thousands deep: bad JSON like any other.
        raise ClientFault("invalid_json", "frame is not JSON: nested too deep") from None


def parse_request(text: str) -> dict[str, Any]:
    """Decode and check one client frame; raises ClientFault naming the fault."""
    message = decode(text)
    if not isinstance(message, dict):
        raise ClientFault("invalid_message", "frame must be a JSON object with an `op` field")
    request_id = message.get("id")
    if request_id is not None and not (
        (isinstance(request_id, str) and len(request_id) <= MAX_ID_CHARS)
        or (isinstance(request_id, int) and not isinstance(request_id, bool))
    ):
        raise ClientFault("invalid_field", f"`id` must be a string of at most {MAX_ID_CHARS}")
    op = message.get("op")
    if op is None:
        raise ClientFault("missing_op", "frame has no `op`; one of " + ", ".join(OPS))
    if op not in OPS:
        # The detail goes back to the client and into the log: never the whole of a long op.
        shown = clip(op, MAX_NAME_CHARS)
        raise ClientFault("unknown_op", f"unknown op {shown!r}; one of " + ", ".join(OPS))
    if op in ("subscribe", "unsubscribe"):
        race = message.get("race")
        if race is None:
            raise ClientFault("missing_race", f"`{op}` needs `race`")
        if not isinstance(race, str) or not 0 < len(race) <= MAX_NAME_CHARS:
            raise ClientFault("invalid_field", "`race` must be a race id string")
        cls = message.get("class")
        if cls is not None and (not isinstance(cls, str) or not 0 < len(cls) <= MAX_NAME_CHARS):
            raise ClientFault("invalid_field", "`class` must be a class name string or null")
    return message


def unknown_race(race: str) -> ClientFault:
    return ClientFault("unknown_race", f"no race {race!r}; `list` names the races")


class Requests:
    """Answers the requests of every session from one race cache."""

    def __init__(self, races: Races) -> None:
        self.races = races
        self.counts = races.counts
        self.grace = False
        """While set, a subscribe to a race not seen yet waits for it (``startup_grace_s``)."""

    def session(self, address: str, port: Port, now: float) -> Session:
        """A new client's session; ``now`` is the monotonic clock."""
        session = Session(address, port, self.races.settings, self.counts, now)
        session.fresh = self.races.fresh
        return session

    def receive(
        self, session: Session, message: str | bytes, *, now: float, wall: float
    ) -> ClientFault | None:
        """Answer one client frame; returns the fault refused (for the log), else None.

        ``now`` is a monotonic clock (the rate limits), ``wall`` the time of day (``pong``).
        """
        if session.closing:
            return None  # draining, so that the client's close frame gets read
        if not session.frames.take(now):
            self.counts.errors["rate_limited"] += 1
            session.close(CLOSE_POLICY, "rate limit exceeded")
            return ClientFault("rate_limited", "more frames than the rate limit")
        try:
            if isinstance(message, bytes):
                raise ClientFault("binary_frame", "frames must be JSON text")
            request = parse_request(message)
            self._answer(session, request, now, wall)
        except ClientFault as fault:
            request_id = None
            if isinstance(message, str) and fault.code not in ("invalid_json", "invalid_field"):
                parsed = decode(message)  # it decoded once already
                request_id = parsed.get("id") if isinstance(parsed, dict) else None
            self.error(session, fault, request_id)
            return fault
        return None

    def error(self, session: Session, fault: ClientFault, request_id: object = None) -> None:
        self.counts.errors[fault.code] += 1
        session.send(
            Frame("reply", reply("error", request_id, error=fault.code, detail=fault.detail))
        )

    def _answer(self, session: Session, message: dict[str, Any], now: float, wall: float) -> None:
        op = message["op"]
        request_id = message.get("id")
        if op == "ping":
            session.send(Frame("reply", reply("pong", request_id, t=wall)))
        elif op == "list":
            session.send(Frame("reply", reply("races", request_id, races=self.races.race_list())))
        elif op == "subscribe":
            self._subscribe(session, message["race"], message.get("class"), request_id, now)
        elif op == "unsubscribe":
            race = message["race"]
            if race not in session.subs:
                raise ClientFault("not_subscribed", f"not subscribed to race {race!r}")
            del session.subs[race]
            cache = self.races.get(race)
            if cache is not None:
                cache.subscribers.discard(session)
            session.outbox.drop_race(race)
            session.send(Frame("reply", reply("unsubscribed", request_id, race=race)))

    def _subscribe(
        self, session: Session, race: str, cls: str | None, request_id: object, now: float
    ) -> None:
        races = self.races
        cache = races.get(race)
        known = cache is not None and cache.known()
        if not known and not (self.grace and races.may_hold(race)):
            raise unknown_race(race)
        classes = cache.classes() if cache is not None else []
        if cls is not None and classes and cls not in classes:
            raise ClientFault(
                "unknown_class", f"race {race!r} has no class {cls!r}; it has {', '.join(classes)}"
            )
        if race not in session.subs and len(session.subs) >= session.max_subscriptions:
            raise ClientFault(
                "too_many_subscriptions",
                f"at most {session.max_subscriptions} races at once; unsubscribe one first",
            )
        # Only a subscribe that takes effect is charged: it is the one that costs a snapshot.
        if not session.subscribes.take(now):
            raise ClientFault(
                "too_many_subscribes",
                "subscribing faster than the gateway allows (`subscribe_rate_per_s`); "
                "subscribe again only after a gap",
            )
        if cache is None:
            # Held through the startup grace: the race's retained standings may be on the way.
            cache = races.hold(race)
        session.subs[race] = Subscription(cls, request_id=request_id)
        cache.subscribers.add(session)
        if cache.snapshot is not None:
            races.send_snapshot(session, cache)
        else:
            session.outbox.drop_race(race)
            session.send(
                Frame("reply", reply("subscribed", request_id, race=race, waiting=True), race)
            )
        if cache.status is not None:
            session.send(Frame("status", status_frame(cache.status), race))

    def start_grace(self) -> None:
        self.grace = True

    def end_grace(self) -> None:
        """Refuse the held subscribes whose race the broker did not name in time."""
        self.grace = False
        races = self.races
        for race in list(races.held):
            cache = races.races.pop(race)
            races.held.discard(race)
            for session in list(cache.subscribers):
                sub = session.subs.pop(race, None)
                session.outbox.drop_race(race)
                self.error(session, unknown_race(race), None if sub is None else sub.request_id)
