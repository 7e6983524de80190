"""What components publish: the generic events every component sends and each component's own
topics (docs/events.md). ``Controller.publish`` holds every payload to these.

The component topics are typed and bounded field by field, but every field may be absent: a
consumer reads what is there (the dashboard counts what it cannot use as malformed)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from state.events import PROMPT_STAGES

from .base import Contract
from .values import Detector, Finite, Int64, Name, NonNegInt, Seconds, TaiSeconds, Text

#: A byte count (a float is accepted: sizes are often computed).
Size = Annotated[float, Field(ge=0.0, le=2.0**63, allow_inf_nan=False, strict=True)]
Position = Annotated[list[Finite], Field(min_length=2, max_length=2)]
StateName = Literal["OFFLINE", "STANDBY", "DISABLED", "ENABLED", "FAULT"]
AlarmSeverity = Literal["NONE", "WARNING", "SERIOUS", "CRITICAL"]
#: The prompt-processing stages of ``state.events.PROMPT_STAGES``, as a closed set.
Stage = Literal[PROMPT_STAGES]  # type: ignore[valid-type]


class Heartbeat(Contract):
    topic = "heartbeat"
    state: StateName
    stateCode: Int64
    heartbeatInterval: Annotated[float, Field(gt=0.0, le=3600.0, allow_inf_nan=False)]


class SummaryState(Contract):
    topic = "summaryState"
    summaryState: StateName
    stateCode: Int64
    commandedState: StateName
    restartCount: NonNegInt


class ErrorCode(Contract):
    topic = "errorCode"
    errorCode: Int64
    errorReport: Text
    traceback: Text = ""


class LogMessage(Contract):
    topic = "logMessage"
    level: Int64
    message: Text = ""
    traceback: Text = ""
    context: dict[str, Text] = Field(default_factory=dict)


class LogLevel(Contract):
    topic = "logLevel"
    level: Int64
    subsystem: Name = ""


class SoftwareVersions(Contract):
    topic = "softwareVersions"
    cscVersion: Name
    subsystemVersions: Text = ""


class ConfigurationApplied(Contract):
    topic = "configurationApplied"
    configurations: Text
    version: Name
    url: Text = ""
    otherInfo: Text = ""


class ConfigurationsAvailable(Contract):
    topic = "configurationsAvailable"
    overrides: Text
    version: Name
    url: Text = ""
    schemaVersion: Name = ""


# ------------------------------------------------------------------ component topics
class LargeFileObjectAvailable(Contract):
    topic = "largeFileObjectAvailable"
    url: Text | None = None
    checksum: Name | None = None
    checksumAlgorithm: Name | None = None
    byteSize: NonNegInt | None = None
    mimeType: Name | None = None
    id: Name | None = None
    generator: Name | None = None
    version: Name | None = None


class ImageInBuffer(Contract):
    topic = "imageInBuffer"
    imageName: Name | None = None
    visit: NonNegInt | None = None
    detector: Detector | None = None
    checksum: Name | None = None
    byteSize: NonNegInt | None = None


class ImageRefused(Contract):
    """A raw the buffer will never hold (unreadable, malformed): its CCD is lost at the summit."""

    topic = "imageRefused"
    imageName: Name | None = None
    visit: NonNegInt | None = None
    detector: Detector | None = None
    reason: Text | None = None


class ImageTransferred(Contract):
    topic = "imageTransferred"
    imageName: Name | None = None
    visit: NonNegInt | None = None
    detector: Detector | None = None
    checksum: Name | None = None
    transferSeconds: Seconds | None = None


class BufferAlarm(Contract):
    topic = "bufferAlarm"
    severity: AlarmSeverity | None = None
    fillFraction: Finite | None = None
    reason: Text | None = None


class OverloadAlarm(Contract):
    """A CCD processor fell behind its latency budget and defers CCDs (or recovered: NONE)."""

    topic = "overloadAlarm"
    severity: AlarmSeverity | None = None
    reason: Text | None = None
    ccdsDeferred: NonNegInt | None = None
    backlogSeconds: Finite | None = None


class BufferStatus(Contract):
    topic = "bufferStatus"
    bytesUsed: Size | None = None
    capacityBytes: Size | None = None
    fillFraction: Finite | None = None
    backlogCount: NonNegInt | None = None
    backlogBytes: Size | None = None
    oldestUnsentAgeSeconds: Finite | None = None
    linkState: Literal["up", "down"] | None = None
    linkBandwidthMBps: Finite | None = None


class ImageIngested(Contract):
    topic = "imageIngested"
    camera: Name | None = None
    imageName: Name | None = None
    visit: NonNegInt | None = None
    detector: Detector | None = None
    statusCode: Int64 | None = None
    description: Text = ""
    checksum: Name | None = None


class IngestStatus(Contract):
    topic = "ingestStatus"
    ingestedCount: NonNegInt | None = None
    failedCount: NonNegInt | None = None
    pendingHeaders: NonNegInt | None = None
    lagSeconds: Finite | None = None


class CcdStage(Contract):
    topic = "ccdStage"
    visit: NonNegInt | None = None
    detector: Detector | None = None
    stage: Stage | None = None
    stageTai: TaiSeconds | None = None


class CcdProcessed(Contract):
    topic = "ccdProcessed"
    visit: NonNegInt | None = None
    detector: Detector | None = None
    statusCode: Int64 | None = None
    reason: Text | None = None
    nDiaSources: NonNegInt | None = None
    attempt: NonNegInt | None = None
    status: Name | None = None
    failureType: Name | None = None


class AlertsPublished(Contract):
    topic = "alertsPublished"
    visit: NonNegInt | None = None
    detector: Detector | None = None
    nAlerts: NonNegInt | None = None
    latencySeconds: Finite | None = None
    positions: Annotated[list[Position], Field(max_length=50)] | None = None
    stages: dict[str, Finite | None] | None = None


class VisitLatency(Contract):
    topic = "visitLatency"
    visit: NonNegInt | None = None
    nAlerts: NonNegInt | None = None
    nCcds: NonNegInt | None = None
    nFailed: NonNegInt | None = None
    latencySeconds: Finite | None = None
    withinBudget: bool | None = None


class ProcessingStatus(Contract):
    """Component-specific counters: any safe map."""

    topic = "processingStatus"


class Alarm(Contract):
    topic = "alarm"
    name: Name | None = None
    component: Name | None = None
    severity: AlarmSeverity | None = None
    maxSeverity: AlarmSeverity | None = None
    reason: Text | None = None
    acknowledged: bool | None = None
    acknowledgedBy: Name | None = None
    mutedSeverity: AlarmSeverity | None = None
    mutedBy: Name | None = None
    timestampUnmute: Finite | None = None
    stale: bool | None = None
    muted: bool | None = None
    counts: dict[str, Any] | None = None


class NodeLost(Contract):
    """A Ray node of the cluster died (``dmcs replay --kill-node-at``; source ``Cluster``)."""

    topic = "nodeLost"
    nodeId: Name | None = None
    role: Literal["summit", "base", "batch"] | None = None
    visit: Int64 | None = None
    actors: Annotated[list[Name], Field(max_length=1000)] | None = None
    ccdsInterrupted: NonNegInt | None = None


class ComponentStatus(Contract):
    topic = "componentStatus"
    components: list[dict[str, Any]] | None = None


GENERIC_CONTRACTS: tuple[type[Contract], ...] = (
    Heartbeat,
    SummaryState,
    ErrorCode,
    LogMessage,
    LogLevel,
    SoftwareVersions,
    ConfigurationApplied,
    ConfigurationsAvailable,
)
COMPONENT_CONTRACTS: tuple[type[Contract], ...] = (
    LargeFileObjectAvailable,
    ImageInBuffer,
    ImageRefused,
    ImageTransferred,
    BufferAlarm,
    BufferStatus,
    OverloadAlarm,
    ImageIngested,
    IngestStatus,
    CcdStage,
    CcdProcessed,
    AlertsPublished,
    VisitLatency,
    ProcessingStatus,
    Alarm,
    ComponentStatus,
    NodeLost,
)
