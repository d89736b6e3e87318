"""docs/asyncapi.yaml: valid AsyncAPI 3.0, every reference resolves, every event kind is there.

The official AsyncAPI 3.0.0 JSON Schema (from the AsyncAPI Initiative's
``@asyncapi/specs`` package, Apache-2.0) is kept in tests/data/asyncapi/.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest
import yaml

from chequered.contract import schemas, topics
from chequered.contract.control import Pause, Resume, Seek, SetSpeed
from chequered.contract.events import EVENT_TYPES, Batch
from tests.conftest import REPO

DOC_PATH = REPO / "docs" / "asyncapi.yaml"
OFFICIAL = REPO / "tests" / "data" / "asyncapi" / "asyncapi-3.0.0.schema.json"
LEAVES = {
    "meta": topics.META,
    "events": topics.EVENTS,
    "status": topics.STATUS,
    "control": topics.CONTROL,
    "standings": topics.STANDINGS,
    "standingsDelta": topics.STANDINGS_DELTA,
    "deadletter": topics.DEAD_LETTER,
    "injected": topics.INJECTED,
}


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(DOC_PATH.read_text(encoding="utf-8"))
    return loaded


def resolve_local(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def resolve_file(ref: str) -> Any:
    """A reference from the document to a generated schema: ``./schema/x.json#/$defs/Y``."""
    path, _, pointer = ref.partition("#")
    node: Any = json.loads((DOC_PATH.parent / path).read_text(encoding="utf-8"))
    for part in [p for p in pointer.split("/") if p]:
        node = node[part]
    return node


def deref(doc: dict[str, Any], node: Any) -> Any:
    while isinstance(node, dict) and set(node) == {"$ref"}:
        node = resolve_local(doc, node["$ref"])
    return node


def test_the_document_is_valid_against_the_official_asyncapi_3_schema(doc: dict[str, Any]) -> None:
    schema = json.loads(OFFICIAL.read_text(encoding="utf-8"))
    assert schema["$id"] == "http://asyncapi.com/definitions/3.0.0/asyncapi.json"
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message[:300]}" for e in errors)


def test_the_official_schema_catches_what_is_wrong(doc: dict[str, Any]) -> None:
    """The validation above can fail: a broken copy of the document is refused."""
    validator = jsonschema.Draft7Validator(json.loads(OFFICIAL.read_text(encoding="utf-8")))
    broken = json.loads(json.dumps(doc))
    broken["operations"]["publishEvents"]["action"] = "publish"  # AsyncAPI 2 wording
    assert not validator.is_valid(broken)
    del broken["operations"]
    broken["asyncapi"] = "3.0"
    assert not validator.is_valid(broken)


def test_the_required_shape_by_hand(doc: dict[str, Any]) -> None:
    assert doc["asyncapi"] == "3.0.0"
    assert doc["info"]["title"] and doc["info"]["version"]
    assert doc["components"]["messages"]
    for name, channel in doc["channels"].items():
        assert channel["address"] and channel["messages"], name
        for message in channel["messages"].values():
            assert "payload" in deref(doc, message), name
    for name, operation in doc["operations"].items():
        assert operation["action"] in ("send", "receive"), name
        channel_ref = operation["channel"]["$ref"]
        channel = resolve_local(doc, channel_ref)
        for message in operation.get("messages", []):
            # AsyncAPI 3: an operation's messages are messages of its own channel.
            assert message["$ref"].startswith(channel_ref + "/messages/"), (name, message)
            resolve_local(doc, message["$ref"])
        if "reply" in operation:
            resolve_local(doc, operation["reply"]["channel"]["$ref"])
        assert channel in doc["channels"].values()


def test_every_topic_of_the_tree_is_a_channel_with_the_right_address(doc: dict[str, Any]) -> None:
    addresses = {name: channel["address"] for name, channel in doc["channels"].items()}
    assert addresses == {name: topics.topic("{race}", leaf) for name, leaf in LEAVES.items()}


def test_every_event_kind_and_command_has_a_message_with_its_generated_schema(
    doc: dict[str, Any],
) -> None:
    events = doc["channels"]["events"]["messages"]
    kinds: list[type[msgspec.Struct]] = [*EVENT_TYPES, Batch]
    for cls in kinds:
        kind = cls.__struct_config__.tag
        assert kind in events, f"event kind {kind} missing from the events channel"
        message = deref(doc, events[kind])
        assert message["name"] == kind
        assert message["payload"]["$ref"] == f"./schema/events.schema.json#/$defs/{cls.__name__}"
        assert resolve_file(message["payload"]["$ref"])["properties"]["kind"]["enum"] == [kind]
    commands = doc["channels"]["control"]["messages"]
    for cls in (Pause, Resume, SetSpeed, Seek):
        tag = cls.__struct_config__.tag
        payload = deref(doc, commands[tag])["payload"]["$ref"]
        assert resolve_file(payload)["properties"]["cmd"]["enum"] == [tag]


def test_every_payload_reference_resolves_to_a_generated_schema(doc: dict[str, Any]) -> None:
    refs = [m["payload"]["$ref"] for m in doc["components"]["messages"].values()]
    assert refs
    for ref in refs:
        target = resolve_file(ref)
        assert isinstance(target, dict) and ("properties" in target or "$ref" in target), ref
    used = {Path(ref.partition("#")[0]).name for ref in refs}
    assert used == set(schemas.SCHEMAS)  # every MQTT payload schema, and only those
