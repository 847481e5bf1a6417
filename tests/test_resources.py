"""The resource descriptions (issue 16): events as the code treats them, devices as Intune."""

from __future__ import annotations

import dataclasses

import pytest

from batch import schema
from batch.auth import REQUIRED_PERMISSION
from batch.emulator.config import GRAPH_READ_LIMIT, GRAPH_TENANT_WRITE_LIMIT, GRAPH_WRITE_LIMIT
from batch.graph import EVENTS_PATH
from batch.mapper import KEY_PROPERTIES, template_columns
from batch.model import Rate
from batch.resources import DEVICES, EVENTS, RESOURCES, EdmType, normalize_header, resource

# --- events: the description is today's behaviour ------------------------------------------------


def test_schema_reads_the_events_table_from_the_description() -> None:
    assert dict(EVENTS.properties) == schema.PROPERTIES
    assert all(schema.PROPERTIES[n] is p for n, p in EVENTS.properties.items())
    assert schema.WRITABLE == EVENTS.writable == tuple(n for n in schema.PROPERTIES if n != "id")
    assert dict(EVENTS.enums) == schema.ENUMS
    assert schema.Property is type(EVENTS.properties["id"])
    assert schema.EdmType is EdmType and schema.normalize_header is normalize_header


def test_events_id_aliases_are_the_contract_ones() -> None:
    # CONTRACT.md: the id column may be called eventId or deviceManagementAutopilotEventId.
    assert (
        schema.ALIASES
        == EVENTS.aliases
        == {
            "eventid": "id",
            "devicemanagementautopiloteventid": "id",
        }
    )
    assert EVENTS.property_for("Event ID") is EVENTS.properties["id"]
    assert EVENTS.property_for("device_serial-number") is EVENTS.properties["deviceSerialNumber"]
    assert EVENTS.property_for("Serial") is None  # a hint in the mapper, never an alias


def test_events_enum_members_come_with_their_properties() -> None:
    for prop in EVENTS.properties.values():
        assert prop.members == (EVENTS.enums[prop.enum_type] if prop.enum_type else ())
    assert schema.PROPERTIES["deploymentState"].members[-1] == "successOnRetry"


def test_events_write_keys_columns_and_budget_match_the_code() -> None:
    assert (EVENTS.write.method, EVENTS.write.action) == ("PATCH", None)
    assert EVENTS.collection == EVENTS_PATH == "/deviceManagement/autopilotEvents"
    assert EVENTS.version == "beta"
    assert EVENTS.permission == REQUIRED_PERMISSION
    assert EVENTS.keys == KEY_PROPERTIES
    assert EVENTS.newest_by == "eventDateTime"  # --pick latest
    assert list(EVENTS.export_columns) == template_columns()
    # CONTRACT.md: `--write-limit` defaults to 100/20, the documented per-app limit.
    assert EVENTS.write_limit == Rate(100, 20)
    assert EVENTS.write_limit == GRAPH_WRITE_LIMIT
    assert EVENTS.tenant_write_limit == GRAPH_TENANT_WRITE_LIMIT
    assert EVENTS.read_limit == GRAPH_READ_LIMIT
    assert EVENTS.null_value is None and EVENTS.wire_null(None) is None
    assert EVENTS.select_safe
    assert 204 in EVENTS.answers and 200 in EVENTS.answers
    # Nothing of an event file is ignored: every property but the id is writable.
    assert not any(EVENTS.ignored(name) for name in EVENTS.properties)


# --- devices -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "name"),
    [
        pytest.param("Serial number", "serialNumber", id="export"),
        pytest.param("Device Serial Number", "serialNumber", id="import"),
        pytest.param("Group tag", "groupTag", id="export-tag"),
        pytest.param("Group Tag", "groupTag", id="import-tag"),
        pytest.param("OrderID", "groupTag", id="orderid"),
        pytest.param("Assigned user", "userPrincipalName", id="export-user"),
        pytest.param("Assigned User", "userPrincipalName", id="import-user"),
        pytest.param("User Principal Name", "userPrincipalName", id="upn"),
        pytest.param("Display name", "displayName", id="display"),
        pytest.param("Device name", "displayName", id="device-name"),
        pytest.param("group_tag", "groupTag", id="folded-name"),
        pytest.param("Windows Product ID", "productKey", id="product-id"),
    ],
)
def test_device_headers_from_the_portal(header: str, name: str) -> None:
    prop = DEVICES.property_for(header)
    assert prop is not None and prop.name == name


def test_device_writable_properties_are_the_action_parameters() -> None:
    assert DEVICES.writable == (
        "groupTag",
        "userPrincipalName",
        "addressableUserName",
        "displayName",
        "deviceAccountUpn",
        "deviceAccountPassword",
        "deviceFriendlyName",
    )
    assert (DEVICES.write.method, DEVICES.write.action) == ("POST", "updateDeviceProperties")
    assert DEVICES.answers == (204,)
    assert DEVICES.permission == "DeviceManagementServiceConfig.ReadWrite.All"
    assert DEVICES.keys == ("serialNumber",) and DEVICES.newest_by is None
    assert DEVICES.collection == "/deviceManagement/windowsAutopilotDeviceIdentities"
    assert DEVICES.entity_type == "microsoft.graph.windowsAutopilotDeviceIdentity"


def test_portal_import_columns_that_cannot_be_updated_are_ignored() -> None:
    for header in ("Windows Product ID", "Hardware Hash", "Manufacturer", "Model", "Profile"):
        assert DEVICES.ignored(header), header
    for header in ("Group Tag", "Assigned User", "Display name", "id"):
        assert not DEVICES.ignored(header), header
    # The serial number identifies the row with --key serialNumber; by id it is only context.
    assert not DEVICES.ignored("Device Serial Number", key="serialNumber")
    assert DEVICES.ignored("Device Serial Number")
    assert not DEVICES.ignored("Favourite colour")  # unknown: an error, not a quiet skip


def test_device_null_clears_with_an_empty_string() -> None:
    assert DEVICES.wire_null(None) == ""
    assert DEVICES.wire_null("Sales") == "Sales"
    assert all(DEVICES.properties[n].nullable for n in DEVICES.writable)


def test_device_budget_is_the_enrollment_service_limit_and_no_select() -> None:
    assert DEVICES.write_limit == Rate(100, 20)
    assert DEVICES.tenant_write_limit == Rate(200, 20)
    assert DEVICES.read_limit == Rate(1000, 20)
    assert not DEVICES.select_safe
    assert "deviceAccountPassword" in DEVICES.secrets
    assert not DEVICES.secrets & set(DEVICES.export_columns)
    assert DEVICES.export_columns[0] == "id"
    assert set(DEVICES.export_columns) <= set(DEVICES.properties)


def test_device_enum_and_date_properties_are_typed() -> None:
    status = DEVICES.properties["deploymentProfileAssignmentStatus"]
    assert status.edm == EdmType.ENUM and "assignedUnkownSyncState" in status.members
    assert DEVICES.properties["lastContactedDateTime"].edm == EdmType.DATETIMEOFFSET
    assert not DEVICES.properties["enrollmentState"].nullable


def test_lookup_by_name() -> None:
    assert resource("events") is EVENTS and resource(" Devices ") is DEVICES
    assert set(RESOURCES) == {"events", "devices"}
    with pytest.raises(ValueError, match="events or devices"):
        resource("users")


def test_descriptions_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEVICES.write_limit = Rate(1, 1)  # type: ignore[misc]
    with pytest.raises(TypeError):
        DEVICES.properties["groupTag"] = DEVICES.properties["model"]  # type: ignore[index]
