"""The night driver: replays a night through the gateway as the OCS and the camera would.

    async with Client(url, token=token) as client:
        driver = NightDriver(client, night_dir, staging_dir, speed=20.0, on_progress=show)
        summary = await driver.run()

Every event of :func:`summit.night.night_events` is sent at its wall-clock offset (``speed``
compresses time). The raws of a visit are delivered to the camera's DAQ staging area
(``<staging>/<imageName>/``) during its readout: pre-rendered raws are hard-linked (or copied),
otherwise the camera simulator renders them in a worker thread from ``nextVisit`` on, so the
event loop keeps its timing. ``endReadout`` lists them with their sha256. A raw that cannot be
delivered is logged, left out of ``images`` and reported in :class:`DriveSummary.problems`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from state.errors import DmcsError, InvalidInputError, StorageError
from summit.camera import CameraSimulator
from summit.night import NightEvent, night_events
from summit.night_files import (
    NightSource,
    StagedImage,
    check_staging,
    open_night,
    render_raw,
    stage_raw,
    staged_path,
)
from summit.raw_check import confined_path
from summit.readout_records import write_record
from summit.schedule import Visit

log = logging.getLogger("dmcs.night_driver")

#: Seconds the driver waits for its first event to come back from the bus.
HANDSHAKE_TIMEOUT = 10.0


class OcsSender(Protocol):
    """What the driver needs of :class:`commands.client.Client`."""

    async def send_telemetry(self, topic: str, **data: Any) -> None: ...
    async def send_camera_event(self, name: str, **data: Any) -> None: ...
    def subscribe(
        self, components: Any = None, topics: Any = None, *, snapshot: bool = True
    ) -> Any: ...


@dataclass(frozen=True)
class DriveProgress:
    """Handed to ``on_progress`` after every event sent."""

    events_sent: int
    events_total: int
    visits_sent: int  # visits whose endReadout went out
    visits_total: int
    ccds_staged: int
    topic: str
    tai_mjd: float  # simulated time of the event just sent
    lateness_s: float  # how late it went out against the schedule


@dataclass
class DriveSummary:
    night: str
    staging: str
    camera: str
    speed: float
    rendered_on_the_fly: bool
    visits_total: int
    ccds_expected: int
    visits_sent: int = 0
    events_sent: int = 0
    telemetry_sent: int = 0
    ccds_staged: int = 0
    max_lateness_s: float = 0.0  # the most any send was behind its scheduled wall time
    mean_lateness_s: float = 0.0
    duration_s: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and self.ccds_staged == self.ccds_expected

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


@dataclass
class _Delivery:
    images: list[StagedImage] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


BUFFER = "SummitBuffer"


async def buffer_raw_folders(client: Any, buffer: str = BUFFER) -> tuple[Path, list[Path]] | None:
    """The running SummitBuffer's staging area and every folder it takes raws from (None: it
    does not say, e.g. it is unreachable or not part of the system)."""
    try:
        detail = await client.component_detail(buffer)
    except DmcsError:
        return None
    if "stagingDir" not in detail:
        return None
    return Path(detail["stagingDir"]), [Path(f) for f in detail.get("rawFolders", [])]


def staging_for_buffer(
    staging: Path | None, folders: tuple[Path, list[Path]] | None, fallback: Path
) -> Path:
    """Where to stage raws: ``staging`` if given, else the buffer's staging area (``fallback``
    in a system without a SummitBuffer). A staging area outside every folder the buffer takes
    raws from is refused: each raw would be."""
    if folders is None:
        return staging or fallback
    own, allowed = folders
    if staging is None:
        return own
    try:
        confined_path(staging.absolute().as_uri(), allowed, f"the {BUFFER} takes raws from")
    except InvalidInputError as e:
        raise InvalidInputError(
            f"staging area {staging}: {e}; every raw would be refused: leave out --staging to"
            " stage into the buffer's own area, or add the folder to its accept_dirs"
        ) from e
    return staging


def check_speed(speed: float) -> float:
    """``speed``, or ``InvalidInputError`` unless it is a finite time compression > 0."""
    if not 0 < speed < math.inf:
        raise InvalidInputError(f"speed must be > 0 (1 = real time), not {speed}")
    return speed


class NightDriver:
    """Drives one night; everything is checked on construction, before anything is sent."""

    def __init__(
        self,
        client: OcsSender,
        night: Path | NightSource,
        staging: Path,
        *,
        speed: float = 1.0,
        visits: int | None = None,
        camera: str | None = None,
        seed: int | None = None,
        telemetry_s: float = 10.0,
        lead_s: float = 20.0,
        on_progress: Callable[[DriveProgress], None] | None = None,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:
        check_speed(speed)
        if isinstance(night, NightSource) and (visits, camera, seed) != (None, None, None):
            raise InvalidInputError("visits, camera and seed go to open_night, not with a source")
        self.client = client
        self.source = (
            night
            if isinstance(night, NightSource)
            else open_night(Path(night), visits=visits, camera=camera, seed=seed)
        )
        self.staging = check_staging(staging)
        self.speed = speed
        self.on_progress = on_progress
        self.handshake_timeout = handshake_timeout
        self.events: list[NightEvent] = list(
            night_events(
                self.source.camera,
                self.source.visits,
                speed=speed,
                lead_s=lead_s,
                telemetry_s=telemetry_s,
                seed=self.source.seed,
            )
        )
        self._visits = {v.visit_id: v for v in self.source.visits}
        self._render = self.source.raws_root is None
        self._sim: CameraSimulator | None = self.source.simulator() if self._render else None
        #: what has been done so far; ``run`` returns it (readable while it runs, or after a
        #: cancelled or failed run)
        self.summary = self.summary_template()

    def summary_template(self) -> DriveSummary:
        return DriveSummary(
            night=str(self.source.path),
            staging=str(self.staging),
            camera=self.source.camera.name,
            speed=self.speed,
            rendered_on_the_fly=self._render,
            visits_total=len(self.source.visits),
            ccds_expected=len(self.source.visits) * len(self.source.camera.detectors),
        )

    # ------------------------------------------------------------------ delivery
    def _deliver_ccd(self, visit: Visit, detector: int) -> StagedImage:
        dest = staged_path(self.staging, self.source.camera, visit, detector)
        if self._sim is not None:
            return render_raw(self._sim, visit, detector, dest)
        return stage_raw(self.source.raw(visit, detector), dest, detector)

    async def _deliver(
        self, visit: Visit, pool: concurrent.futures.ThreadPoolExecutor
    ) -> _Delivery:
        loop = asyncio.get_running_loop()
        done = _Delivery()
        for det in self.source.camera.detectors:
            try:
                image = await loop.run_in_executor(pool, self._deliver_ccd, visit, det.id)
            except (DmcsError, OSError, ValueError) as e:
                what = "render" if self._render else "stage"
                problem = f"visit {visit.visit_id} detector {det.id}: cannot {what} the raw: {e}"
                log.error("%s", problem)
                done.problems.append(problem)
            else:
                done.images.append(image)
        return done

    # ----------------------------------------------------------------------- run
    async def _send(self, event: NightEvent, payload: dict[str, Any]) -> None:
        if event.kind == "telemetry":
            await self.client.send_telemetry(event.name, **payload)
        else:
            await self.client.send_camera_event(event.name, **payload)

    async def _handshake(self, first: NightEvent) -> None:
        """Send the first event and see it come back, so a refused token fails loudly."""
        events = await self.client.open_subscription(
            ["OCS", "Camera"], [first.name], snapshot=False
        )
        echo = asyncio.ensure_future(anext(events))
        try:
            await self._send(first, first.payload)
            async with asyncio.timeout(self.handshake_timeout):
                await echo
        except TimeoutError as e:
            raise InvalidInputError(
                f"the gateway did not publish the driver's {first.name!r} within "
                f"{self.handshake_timeout:g} s; does the token belong to an OCS identity?"
            ) from e
        finally:
            echo.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await echo
            await events.aclose()

    async def run(self) -> DriveSummary:
        """Replay the night; returns what was sent, staged and how late, and any problem."""
        summary = self.summary
        loop = asyncio.get_running_loop()
        began = time.monotonic()
        first, *rest = self.events
        await self._handshake(first)
        start = loop.time() - first.wall_s
        self._count(summary, first, 0.0)
        pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="dmcs-camera")
        deliveries: dict[int, asyncio.Task[_Delivery]] = {}
        try:
            async with asyncio.TaskGroup() as tg:
                for event in rest:
                    target = start + event.wall_s
                    await asyncio.sleep(max(0.0, target - loop.time()))
                    payload = await self._prepare(event, deliveries, tg, pool, summary)
                    await self._send(event, payload)
                    self._count(summary, event, max(0.0, loop.time() - target))
        except ExceptionGroup as group:
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from group
            raise
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
            summary.duration_s = time.monotonic() - began
        return summary

    def _count(self, summary: DriveSummary, event: NightEvent, late: float) -> None:
        n = summary.events_sent
        summary.mean_lateness_s = (summary.mean_lateness_s * n + late) / (n + 1)
        summary.max_lateness_s = max(summary.max_lateness_s, late)
        summary.events_sent += 1
        summary.telemetry_sent += event.kind == "telemetry"
        summary.visits_sent += event.name == "endReadout"
        if self.on_progress is not None:
            self.on_progress(
                DriveProgress(
                    summary.events_sent,
                    len(self.events),
                    summary.visits_sent,
                    summary.visits_total,
                    summary.ccds_staged,
                    event.name,
                    event.tai_mjd,
                    late,
                )
            )

    async def _prepare(
        self,
        event: NightEvent,
        deliveries: dict[int, asyncio.Task[_Delivery]],
        tg: asyncio.TaskGroup,
        pool: concurrent.futures.ThreadPoolExecutor,
        summary: DriveSummary,
    ) -> dict[str, Any]:
        """Start a visit's delivery when its data exist; at endReadout, list what it staged."""
        if event.kind != "camera":
            return event.payload
        visit_id = int(event.payload["visit"])
        visit = self._visits[visit_id]
        starts = "nextVisit" if self._render else "endIntegration"
        if event.name == starts:
            deliveries[visit_id] = tg.create_task(self._deliver(visit, pool))
        if event.name != "endReadout":
            return event.payload
        task = deliveries.pop(visit_id)
        if not task.done():
            log.warning("visit %d: raws not delivered at endReadout time; waiting", visit_id)
        done = await task
        summary.ccds_staged += len(done.images)
        summary.problems.extend(done.problems)
        payload = {**event.payload, "images": [image.as_payload() for image in done.images]}
        # The camera's record of the readout: what a buffer that misses the event reads.
        try:
            await asyncio.to_thread(write_record, self.staging, payload)
        except StorageError as e:
            log.warning("visit %d: %s", visit_id, e)
            summary.problems.append(str(e))
        return payload
