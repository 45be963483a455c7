"""The Event contract: original field numbers, JSON shape and wire compatibility."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import pytest
from google.protobuf import json_format
from grpc_tools import protoc
from telemetry.v1 import (
    enrich_service_pb2,
    event_pb2,
    ingest_service_pb2,
    query_service_pb2,
)

HERE = Path(__file__).parent

# One event as the Swift client sends it.
SWIFT_EVENT = {
    "event_id": "7f9c2ba4-e88f-11ed-a05b-0242ac120002",
    "session_id": "sess-42",
    "user_id": "user-123",
    "event_name": "item_purchased",
    "client_timestamp": "2023-10-26T10:00:00.250Z",
    "app_version": "2.3.1",
    "device_os": "iOS 17.2",
    "metadata": {"item_id": "sku-991", "price": "19.99", "note": "crème brûlée ☕"},
}

ORIGINAL_NUMBERS = {
    "event_id": 1,
    "session_id": 2,
    "user_id": 3,
    "event_name": 4,
    "client_timestamp": 5,
    "metadata": 6,
    "app_version": 7,
    "device_os": 8,
}


def test_event_keeps_the_original_field_numbers_and_types() -> None:
    fields = {f.name: f for f in event_pb2.Event.DESCRIPTOR.fields}
    assert {name: f.number for name, f in fields.items()} == ORIGINAL_NUMBERS
    assert fields["client_timestamp"].message_type.full_name == "google.protobuf.Timestamp"
    assert fields["metadata"].message_type.GetOptions().map_entry
    batch = event_pb2.EventBatch.DESCRIPTOR.fields_by_name["events"]
    assert batch.number == 1
    assert batch.message_type is event_pb2.Event.DESCRIPTOR


def test_swift_json_maps_to_event_and_back_losslessly() -> None:
    event = json_format.ParseDict(SWIFT_EVENT, event_pb2.Event())
    assert event.client_timestamp.seconds == 1698314400
    assert event.client_timestamp.nanos == 250_000_000
    back = json_format.MessageToDict(event, preserving_proto_field_name=True)
    assert back == SWIFT_EVENT


@pytest.fixture(scope="module")
def legacy(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    """The first contract, compiled at test time into a private package."""
    out = tmp_path_factory.mktemp("legacy")
    include = str(Path(protoc.__file__).parent / "_proto")
    (out / "legacy").mkdir()
    (out / "legacy" / "__init__.py").touch()
    (out / "legacy" / "telemetry.proto").write_text((HERE / "legacy_telemetry.proto").read_text())
    code = protoc.main(
        ["protoc", f"-I{out}", f"-I{include}", f"--python_out={out}", "legacy/telemetry.proto"]
    )
    assert code == 0
    sys.path.insert(0, str(out))
    try:
        return importlib.import_module("legacy.telemetry_pb2")
    finally:
        sys.path.remove(str(out))


def test_payloads_of_the_first_contract_decode_unchanged(legacy: ModuleType) -> None:
    old_event = json_format.ParseDict(SWIFT_EVENT, legacy.Event())
    payload = legacy.EventBatch(events=[old_event, old_event]).SerializeToString()

    batch = event_pb2.EventBatch.FromString(payload)
    assert json_format.MessageToDict(batch.events[0], preserving_proto_field_name=True) == (
        SWIFT_EVENT
    )
    # What travels on the raw subject is a superset: an old payload is a RawBatch without context.
    raw = event_pb2.RawBatch.FromString(payload)
    assert len(raw.events) == 2
    assert not raw.HasField("context")
    assert raw.events[1] == batch.events[1]
    # And the new encoding reads back with the old contract.
    assert legacy.EventBatch.FromString(batch.SerializeToString()) == legacy.EventBatch.FromString(
        payload
    )


def test_services_and_methods_exist() -> None:
    methods = {
        service.full_name: sorted(m.name for m in service.methods)
        for module in (ingest_service_pb2, enrich_service_pb2, query_service_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
    }
    assert methods["telemetry.v1.IngestService"] == ["IngestEvents"]
    assert methods["telemetry.v1.EnrichService"] == ["EnrichEvents"]
    assert {"QueryEvents", "AggregateEvents"} <= set(methods["telemetry.v1.QueryService"])


def test_enums_start_with_unspecified_zero() -> None:
    enums = [
        enum
        for module in (event_pb2, query_service_pb2)
        for enum in module.DESCRIPTOR.enum_types_by_name.values()
    ]
    assert enums
    for enum in enums:
        zero = enum.values_by_number[0].name
        assert zero.endswith("_UNSPECIFIED"), enum.full_name
