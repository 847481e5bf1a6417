"""What the tool can update, as data: one frozen `Resource` per Graph collection (issue 16).

DESIGN.md ("Growing"): a resource is data, not a branch. Everything that differs between
autopilot events and Autopilot device identities lives in one description each — `EVENTS` and
`DEVICES`, looked up by name with `resource("events" | "devices")` — and every stage reads it
instead of testing a resource name. `batch.schema` takes the events' property table from here
(`schema.PROPERTIES` holds the very `Property` objects of `EVENTS.properties`), so events keep
behaving as before.

Decisions worth knowing:

* **Events** (`deviceManagementAutopilotEvent`, beta) are described exactly as the code has
  always treated them: PATCH of the entity at `/deviceManagement/autopilotEvents/{id}`, a 204
  (or the docs' 200 with the object), permission `DeviceManagementManagedDevices.ReadWrite.All`
  (`batch.auth.REQUIRED_PERMISSION`), `--key deviceSerialNumber | managedDeviceName` with
  `--pick latest` by `eventDateTime`, the non-legacy properties as export columns, JSON null for
  the null token, `$select` safe.
* **Devices** (`windowsAutopilotDeviceIdentity`, beta): the write is
  `POST …/windowsAutopilotDeviceIdentities/{id}/updateDeviceProperties` answering 204 with any of
  `userPrincipalName`, `addressableUserName`, `groupTag`, `displayName` and (beta) the Surface
  Hub / Teams device account fields; a PATCH of the entity is refused by Intune (400 "No OData
  route exists that match template ~/singleton/navigation/key with http verb PATCH",
  msgraph-sdk-powershell#892, microsoft-graph-docs-contrib#4235). Permission
  `DeviceManagementServiceConfig.ReadWrite.All`. Every other property of the entity is
  read-only here (`writable=False`): a file may carry it (a device export fed back), it is
  never sent. Rows are matched by `id` or by `serialNumber`.
* **Clearing a device value.** The portal clears a group tag or assigned user by sending an
  empty string, and the service answers `""` for an absent group tag: the null token becomes
  `null_value` (`""`) on the wire (`Resource.wire_null`).
* **No `$select` on devices** (`select_safe=False`). `$select` on
  windowsAutopilotDeviceIdentities answers 500 InternalServerError — with any property, on v1.0
  and beta — in reports from 2020 (microsoft-graph-docs-contrib#5193), 2021 (#2756) and July 2026
  (ugurkocde/DeviceOffboardingManager#65, "currently returns HTTP 500 whenever a `$select`
  projection is used"). A probe-then-fall-back would spend a request per walk and cannot tell
  that 500 from an outage; the entity is about 27 short fields, so reading it whole costs
  little. The graph client simply never sends `$select` for such a resource.
* **`deviceAccountPassword`** is writable but secret: never an export column, never read back
  (`secrets`), so it has no before-image and `--verify` cannot check it.
* **Budgets.** Microsoft Graph's throttling-limits page
  (https://learn.microsoft.com/graph/throttling-limits, source
  microsoftgraph/microsoft-graph-docs-contrib `concepts/throttling-limits.md`, read December
  2026), section "Intune enrollment service limits" — the service behind
  `windowsAutopilotDeviceIdentity` (its docs live under `intune-enrollment-*`, and its errors
  name `DeviceEnrollmentFE`; the section's resource list does not spell the entity out, so the
  attribution is ours): POST, PUT, DELETE, PATCH **100 requests per 20 seconds per app per
  tenant**, 200 per 20 seconds per tenant for all apps; any request 1000 / 2000 per 20 seconds.
  The same figures as the Intune troubleshooting service that serves autopilot events, but a
  separate service: a device write does not use an event write's budget.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from batch.model import JSON, Rate

__all__ = [
    "DEVICES",
    "DEVICE_ENUMS",
    "EVENTS",
    "EVENT_ENUMS",
    "RESOURCES",
    "EdmType",
    "Property",
    "Resource",
    "Write",
    "normalize_header",
    "resource",
]


class EdmType:
    """The EDM type names used in the tables (plain strings, as Graph's metadata spells them)."""

    STRING: Final = "String"
    INT32: Final = "Int32"
    DATETIMEOFFSET: Final = "DateTimeOffset"
    DURATION: Final = "Duration"
    ENUM: Final = "Enum"


@dataclass(frozen=True, slots=True)
class Property:
    """One property of a resource: its EDM type, whether it may be null or written, its aliases.

    `key` marks the id (it goes in the URL, never in a body). `writable` says whether a write
    may carry it; `aliases` are other header spellings admins' files use for it (matched like
    every header: case, spaces, `_` and `-` ignored). `members` are the enum's members in wire
    spelling (empty for non-enums).
    """

    name: str
    edm: str
    nullable: bool
    enum_type: str | None = None
    legacy: bool = False
    key: bool = False
    description: str = ""
    writable: bool = True
    aliases: tuple[str, ...] = ()
    members: tuple[str, ...] = ()

    @property
    def type_name(self) -> str:
        """The type as Graph's metadata names it (the enum type name for enums)."""
        return self.enum_type or self.edm


@dataclass(frozen=True, slots=True)
class Write:
    """How one entity is written: `method` on the entity path, or on `{id}/{action}`."""

    method: str
    action: str | None = None


_HEADER_JUNK = re.compile(r"[\s_\-]+")


def normalize_header(text: str) -> str:
    """Fold a header for matching: case-insensitive, ignoring spaces, `_` and `-`."""
    return _HEADER_JUNK.sub("", text).casefold()


@dataclass(frozen=True, kw_only=True)
class Resource:
    """Everything the tool needs to know about one Graph collection it updates.

    Paths are relative to the Graph version (`/beta`). `answers`: the success statuses the
    service is documented or seen to give (the client accepts any 2xx). `write_limit` and its
    siblings are the documented service limits (module docstring), the defaults of the
    limiter and of the emulator.
    """

    name: str
    entity_type: str
    noun: str
    version: str
    collection: str
    properties: Mapping[str, Property]
    enums: Mapping[str, tuple[str, ...]]
    write: Write
    answers: tuple[int, ...]
    permission: str
    read_permission: str
    keys: tuple[str, ...]
    newest_by: str | None
    export_columns: tuple[str, ...]
    write_limit: Rate
    tenant_write_limit: Rate
    read_limit: Rate
    tenant_read_limit: Rate
    null_value: JSON
    select_safe: bool
    ignored_columns: tuple[str, ...] = ()
    secrets: frozenset[str] = field(default_factory=frozenset)
    # Folded words admins use for a property (`serial`, `upn`): only ever offered as a
    # suggestion for an unknown header, or taken by `--key`; never applied to a column.
    hints: Mapping[str, str] = field(default_factory=dict)
    # What its columns are called in a message ("Autopilot event"), e.g. when a file of one
    # resource is read as the other.
    title: str = ""

    @property
    def type_name(self) -> str:
        """The entity type without its namespace (`windowsAutopilotDeviceIdentity`)."""
        return self.entity_type.rpartition(".")[2]

    @property
    def writable(self) -> tuple[str, ...]:
        """The properties a write may carry, in table order."""
        return tuple(name for name, prop in self.properties.items() if prop.writable)

    @property
    def aliases(self) -> dict[str, str]:
        """Folded alias header → property name (names themselves are not in it)."""
        return {
            normalize_header(alias): prop.name
            for prop in self.properties.values()
            for alias in prop.aliases
        }

    @property
    def headers(self) -> dict[str, str]:
        """Folded header → property name, for names and aliases alike."""
        return {normalize_header(name): name for name in self.properties} | self.aliases

    def property_for(self, header: str) -> Property | None:
        """The property a file's header means, by name or alias; None when it means none."""
        name = self.headers.get(normalize_header(header))
        return self.properties[name] if name is not None else None

    def ignored(self, header: str, *, key: str | None = None) -> bool:
        """Whether a header is a column ignored with a warning: one that is no property
        (`ignored_columns`), or a property this tool cannot write — so a portal file or a
        device export can be fed back as it is. `key` (the `--key` property) is not ignored:
        it identifies the row."""
        if normalize_header(header) in {normalize_header(c) for c in self.ignored_columns}:
            return True
        prop = self.property_for(header)
        return prop is not None and not prop.writable and not prop.key and prop.name != key

    def wire_null(self, value: JSON) -> JSON:
        """The value to send for a coerced cell: the null token's None becomes `null_value`."""
        return self.null_value if value is None else value


def _table(
    rows: tuple[Property, ...], enums: Mapping[str, tuple[str, ...]]
) -> Mapping[str, Property]:
    """The rows keyed by name, each enum property carrying its members."""
    out: dict[str, Property] = {}
    for row in rows:
        if row.enum_type is not None:
            row = Property(
                row.name,
                row.edm,
                row.nullable,
                row.enum_type,
                row.legacy,
                row.key,
                row.description,
                row.writable,
                row.aliases,
                enums[row.enum_type],
            )
        out[row.name] = row
    return MappingProxyType(out)


_S, _I, _T, _D, _E = (
    EdmType.STRING,
    EdmType.INT32,
    EdmType.DATETIMEOFFSET,
    EdmType.DURATION,
    EdmType.ENUM,
)

# Intune's documented service limits (module docstring; GRAPH.md, "Throttling").
_INTUNE_WRITES: Final = Rate(100, 20)
_INTUNE_TENANT_WRITES: Final = Rate(200, 20)
_INTUNE_READS: Final = Rate(1000, 20)
_INTUNE_TENANT_READS: Final = Rate(2000, 20)

_ENROLLMENT_STATE: Final = (
    "unknown",
    "enrolled",
    "pendingReset",
    "failed",
    "notContacted",
    "blocked",
)

# --- autopilot events --------------------------------------------------------------------------

EVENT_ENUMS: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {
        "windowsAutopilotEnrollmentType": (
            "unknown",
            "azureADJoinedWithAutopilotProfile",
            "offlineDomainJoined",
            "azureADJoinedUsingDeviceAuthWithAutopilotProfile",
            "azureADJoinedUsingDeviceAuthWithoutAutopilotProfile",
            "azureADJoinedWithOfflineAutopilotProfile",
            "azureADJoinedWithWhiteGlove",
            "offlineDomainJoinedWithWhiteGlove",
            "offlineDomainJoinedWithOfflineAutopilotProfile",
        ),
        "enrollmentState": _ENROLLMENT_STATE,
        "windowsAutopilotDeploymentState": (
            "unknown",
            "success",
            "inProgress",
            "failure",
            "successWithTimeout",
            "notAttempted",
            "disabled",
            "successOnRetry",
        ),
    }
)


def _e(
    name: str,
    edm: str,
    nullable: bool,
    description: str,
    *,
    enum_type: str | None = None,
    legacy: bool = False,
    key: bool = False,
    aliases: tuple[str, ...] = (),
) -> Property:
    # Every event property but the id may be PATCHed (GRAPH.md, "The resource").
    return Property(name, edm, nullable, enum_type, legacy, key, description, not key, aliases)


_EVENT_ROWS: Final = (
    _e(
        "id",
        _S,
        False,
        "The event id; goes in the URL, never in the body",
        key=True,
        # CONTRACT.md, "Input files": the id column's other names.
        aliases=("eventId", "deviceManagementAutopilotEventId"),
    ),
    _e("deviceId", _S, True, "Device id"),
    _e("eventDateTime", _T, False, "Time the event occurred"),
    _e("deviceRegisteredDateTime", _T, False, "Device registration date"),
    _e("enrollmentStartDateTime", _T, False, "Device enrollment start date"),
    _e(
        "enrollmentType",
        _E,
        False,
        "Enrollment type",
        enum_type="windowsAutopilotEnrollmentType",
    ),
    _e("deviceSerialNumber", _S, True, "Device serial number"),
    _e("managedDeviceName", _S, True, "Managed device name"),
    _e("userPrincipalName", _S, True, "User principal name used to enroll the device"),
    _e("userId", _S, True, "User id (current schema only)"),
    _e(
        "windowsAutopilotDeploymentProfileDisplayName",
        _S,
        True,
        "Autopilot profile name",
    ),
    _e("enrollmentState", _E, False, "Enrollment state", enum_type="enrollmentState"),
    _e(
        "windows10EnrollmentCompletionPageConfigurationDisplayName",
        _S,
        True,
        "Enrollment Status Page profile name",
    ),
    _e(
        "windows10EnrollmentCompletionPageConfigurationId",
        _S,
        True,
        "Enrollment Status Page profile id",
    ),
    _e(
        "deploymentState",
        _E,
        False,
        "Deployment state",
        enum_type="windowsAutopilotDeploymentState",
    ),
    _e(
        "deviceSetupStatus",
        _E,
        False,
        "Device setup status",
        enum_type="windowsAutopilotDeploymentState",
    ),
    _e(
        "accountSetupStatus",
        _E,
        False,
        "Account setup status",
        enum_type="windowsAutopilotDeploymentState",
    ),
    _e("osVersion", _S, True, "Device operating system version"),
    _e("deploymentDuration", _D, False, "Autopilot deployment duration"),
    _e("deploymentTotalDuration", _D, False, "Total deployment duration"),
    _e(
        "devicePreparationDuration",
        _D,
        False,
        "Time spent in device enrollment (legacy)",
        legacy=True,
    ),
    _e("deviceSetupDuration", _D, False, "Time spent in device ESP"),
    _e("accountSetupDuration", _D, False, "Time spent in user ESP"),
    _e("deploymentStartDateTime", _T, False, "Deployment start time"),
    _e("deploymentEndDateTime", _T, False, "Deployment end time"),
    _e("targetedAppCount", _I, False, "Count of applications targeted (legacy)", legacy=True),
    _e("targetedPolicyCount", _I, False, "Count of policies targeted (legacy)", legacy=True),
    _e("enrollmentFailureDetails", _S, True, "Enrollment failure details"),
)

_EVENT_PROPERTIES: Final = _table(_EVENT_ROWS, EVENT_ENUMS)

EVENTS: Final = Resource(
    name="events",
    entity_type="microsoft.graph.deviceManagementAutopilotEvent",
    noun="event",
    version="beta",
    collection="/deviceManagement/autopilotEvents",
    properties=_EVENT_PROPERTIES,
    enums=EVENT_ENUMS,
    write=Write("PATCH"),
    # Intune answers 204; the docs page still promises 200 with the object (GRAPH.md).
    answers=(204, 200),
    permission="DeviceManagementManagedDevices.ReadWrite.All",
    read_permission="DeviceManagementManagedDevices.Read.All",
    keys=("deviceSerialNumber", "managedDeviceName"),
    newest_by="eventDateTime",
    export_columns=tuple(n for n, p in _EVENT_PROPERTIES.items() if not p.legacy),
    write_limit=_INTUNE_WRITES,
    tenant_write_limit=_INTUNE_TENANT_WRITES,
    read_limit=_INTUNE_READS,
    tenant_read_limit=_INTUNE_TENANT_READS,
    null_value=None,
    select_safe=True,
    hints=MappingProxyType(
        {
            "serial": "deviceSerialNumber",
            "serialnumber": "deviceSerialNumber",
            "upn": "userPrincipalName",
            "devicename": "managedDeviceName",
            "computername": "managedDeviceName",
            "hostname": "managedDeviceName",
            "profile": "windowsAutopilotDeploymentProfileDisplayName",
        }
    ),
    title="Autopilot event",
)

# --- Autopilot device identities ---------------------------------------------------------------

# learn.microsoft.com intune-enrollment-windowsautopilotdeviceidentity (beta), "Properties".
DEVICE_ENUMS: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {
        "windowsAutopilotProfileAssignmentStatus": (
            "unknown",
            "assignedInSync",
            "assignedOutOfSync",
            "assignedUnkownSyncState",  # sic: Graph's spelling
            "notAssigned",
            "pending",
            "failed",
        ),
        "windowsAutopilotProfileAssignmentDetailedStatus": (
            "none",
            "hardwareRequirementsNotMet",
            "surfaceHubProfileNotSupported",
            "holoLensProfileNotSupported",
            "windowsPcProfileNotSupported",
            "surfaceHub2SProfileNotSupported",
            "unknownFutureValue",
        ),
        "enrollmentState": _ENROLLMENT_STATE,
        "windowsAutopilotDeviceRemediationState": (
            "unknown",
            "noRemediationRequired",
            "automaticRemediationRequired",
            "manualRemediationRequired",
            "unknownFutureValue",
        ),
        "windowsAutopilotUserlessEnrollmentStatus": (
            "unknown",
            "allowed",
            "blocked",
            "unknownFutureValue",
        ),
    }
)


def _d(
    name: str,
    edm: str,
    description: str,
    *,
    writable: bool = False,
    enum_type: str | None = None,
    key: bool = False,
    aliases: tuple[str, ...] = (),
) -> Property:
    # Strings are nullable on the entity; enums and dates are not (the metadata's nullability).
    nullable = edm == EdmType.STRING and not key
    return Property(name, edm, nullable, enum_type, False, key, description, writable, aliases)


_DEVICE_ROWS: Final = (
    _d(
        "id",
        _S,
        "The device identity's id; goes in the URL, never in the body",
        key=True,
        aliases=("windowsAutopilotDeviceIdentityId",),
    ),
    _d(
        "serialNumber",
        _S,
        "Serial number (the natural key: --key serialNumber)",
        aliases=("Serial number", "Device Serial Number"),
    ),
    _d(
        "groupTag",
        _S,
        "Group tag (Entra physicalIds [OrderID]:<tag>, used by dynamic groups)",
        writable=True,
        aliases=("Group tag", "Group Tag", "OrderID", "Order ID"),
    ),
    _d(
        "userPrincipalName",
        _S,
        "Assigned user",
        writable=True,
        aliases=("Assigned user", "Assigned User", "User Principal Name"),
    ),
    _d(
        "addressableUserName",
        _S,
        "Addressable user name (the greeting shown during setup)",
        writable=True,
        aliases=("Addressable user name", "User friendly name"),
    ),
    _d(
        "displayName",
        _S,
        "Display name (the device name applied during setup)",
        writable=True,
        aliases=("Display name", "Device name"),
    ),
    _d("deviceAccountUpn", _S, "Surface Hub / Teams device account UPN (beta)", writable=True),
    _d(
        "deviceAccountPassword",
        _S,
        "Surface Hub / Teams device account password (beta; write-only here)",
        writable=True,
    ),
    _d("deviceFriendlyName", _S, "Surface Hub / Teams device friendly name (beta)", writable=True),
    _d(
        "purchaseOrderIdentifier",
        _S,
        "Purchase order identifier",
        aliases=("Purchase order", "Purchase order ID"),
    ),
    _d("productKey", _S, "Product key", aliases=("Windows Product ID", "Product ID")),
    _d("manufacturer", _S, "OEM manufacturer", aliases=("Manufacturer name",)),
    _d("model", _S, "Model name", aliases=("Device model",)),
    _d("enrollmentState", _E, "Intune enrollment state", enum_type="enrollmentState"),
    _d("lastContactedDateTime", _T, "Last contact with Intune", aliases=("Last contacted",)),
    _d(
        "deploymentProfileAssignmentStatus",
        _E,
        "Profile assignment status",
        enum_type="windowsAutopilotProfileAssignmentStatus",
        aliases=("Profile status",),
    ),
    _d(
        "deploymentProfileAssignmentDetailedStatus",
        _E,
        "Profile assignment detailed status",
        enum_type="windowsAutopilotProfileAssignmentDetailedStatus",
    ),
    _d("deploymentProfileAssignedDateTime", _T, "When the profile was assigned"),
    _d("resourceName", _S, "Resource name"),
    _d("skuNumber", _S, "SKU number"),
    _d("systemFamily", _S, "System family"),
    _d("azureActiveDirectoryDeviceId", _S, "Entra device id (to be deprecated)"),
    _d("azureAdDeviceId", _S, "Entra device id"),
    _d("managedDeviceId", _S, "Intune managed device id"),
    _d(
        "remediationState",
        _E,
        "Device remediation state",
        enum_type="windowsAutopilotDeviceRemediationState",
    ),
    _d("remediationStateLastModifiedDateTime", _T, "When the remediation state was set"),
    _d(
        "userlessEnrollmentStatus",
        _E,
        "Enrollment status for userless enrollments",
        enum_type="windowsAutopilotUserlessEnrollmentStatus",
    ),
)

DEVICES: Final = Resource(
    name="devices",
    entity_type="microsoft.graph.windowsAutopilotDeviceIdentity",
    noun="device",
    version="beta",
    collection="/deviceManagement/windowsAutopilotDeviceIdentities",
    properties=_table(_DEVICE_ROWS, DEVICE_ENUMS),
    enums=DEVICE_ENUMS,
    write=Write("POST", "updateDeviceProperties"),
    answers=(204,),
    permission="DeviceManagementServiceConfig.ReadWrite.All",
    read_permission="DeviceManagementServiceConfig.Read.All",
    keys=("serialNumber",),
    # Serial numbers are unique per tenant in practice: several matches are invalid, never
    # picked (issue 16).
    newest_by=None,
    export_columns=(
        "id",
        "serialNumber",
        "groupTag",
        "userPrincipalName",
        "displayName",
        "addressableUserName",
        "manufacturer",
        "model",
        "purchaseOrderIdentifier",
        "enrollmentState",
        "lastContactedDateTime",
    ),
    write_limit=_INTUNE_WRITES,
    tenant_write_limit=_INTUNE_TENANT_WRITES,
    read_limit=_INTUNE_READS,
    tenant_read_limit=_INTUNE_TENANT_READS,
    null_value="",
    select_safe=False,
    # Columns of the portal's import file (and its device list export) that are no property
    # of the entity; the read-only properties above are ignored the same way.
    ignored_columns=("Hardware Hash", "Profile", "Date assigned", "Intune device", "Entra device"),
    secrets=frozenset({"deviceAccountPassword"}),
    hints=MappingProxyType(
        {
            "serial": "serialNumber",
            "upn": "userPrincipalName",
            "user": "userPrincipalName",
            "tag": "groupTag",
            "computername": "displayName",
            "hostname": "displayName",
        }
    ),
    title="device identity",
)

RESOURCES: Final[Mapping[str, Resource]] = MappingProxyType(
    {EVENTS.name: EVENTS, DEVICES.name: DEVICES}
)


def resource(name: str) -> Resource:
    """The description named `name` ("events" or "devices"); ValueError naming the choices."""
    found = RESOURCES.get(name.strip().casefold())
    if found is None:
        raise ValueError(f"the resource must be {' or '.join(RESOURCES)}, not {name!r}")
    return found
