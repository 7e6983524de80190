"""SummitBuffer: takes every raw from the camera durably and sends it to the base in order.

Camera handoff: the ``endReadout`` event (each ``images`` entry points at the camera's DAQ
staging file) or the ``acceptImage`` command, which acks the handoff (CMD_FAILED and a
``bufferAlarm`` when the buffer is full). Either is read only inside the folders the buffer
is configured to take raws from (:meth:`SummitBuffer.source`). A raw is verified (checksum,
FITS layout), written with fsync and recorded in the manifest before ``imageInBuffer`` goes
out.

Transfer: one loop sends the unsent raws through the summit-base :class:`~summit.link.Link`
to ingest's ``rpc_receive_raw``, visit by visit in acquisition order (up to
``max_in_flight`` detectors of a visit in flight), retrying with backoff while the link or the
base is down and at once when the base reports a checksum mismatch. A raw is deleted only
after the base answered with its checksum (then after ``retention_seconds``). The manifest
survives a crash: a restarted buffer resends whatever was not confirmed (ingest is
idempotent, so nothing is lost or duplicated).

Reconciliation (:mod:`summit.buffer_reconcile`): an ``endReadout`` that went out while the
buffer was down, restarting or not ENABLED is not needed; the buffer takes in every raw the
camera's readout records list that its manifest lacks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

from config.data_path import SummitBufferSettings
from state.clock import tai_now
from state.contracts.data_plane import RawReceipt
from state.contracts.values import ContractError
from state.controller import Controller, SupervisedGroup
from state.durable import map_file
from state.errors import (
    BufferFullError,
    ChecksumMismatchError,
    CommandRejected,
    DmcsError,
    InvalidInputError,
    RetriableError,
    StorageError,
)
from state.events import Event
from state.states import State
from state.waiting import wait_event
from summit.buffer_manifest import Entry
from summit.buffer_reconcile import BufferReconciliation
from summit.buffer_store import BufferStore, Offer
from summit.link import MB, Link
from summit.raw_check import confined_path
from summit.step_times import StepTimes

#: errorCode published when the buffer cannot write to its own storage.
BUFFER_WRITE_FAILED = 200
SEVERITIES = ("NONE", "WARNING", "SERIOUS", "CRITICAL")


class SummitBuffer(Controller, BufferReconciliation):
    event_topics = (
        "imageInBuffer",
        "imageRefused",
        "imageTransferred",
        "bufferAlarm",
        "bufferStatus",
    )
    listen_components = ("Camera",)
    listen_topics = ("endReadout",)
    held_topics = ("imageTransferred",)
    settings_model = SummitBufferSettings
    config: SummitBufferSettings

    def __init__(self, name: str, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.link = Link(self.config.link)
        self.steps = StepTimes()
        self.store = BufferStore(
            self.data_dir.absolute(),
            self.config.capacity_bytes,
            name,
            steps=self.steps,
            hold_bytes=self.config.send_from_memory_bytes,
        )
        self._wake = asyncio.Event()
        self._catchup = asyncio.Lock()
        self._severity = "NONE"
        self.resent = 0
        self.refused = 0
        self._receiving: dict[tuple[int, int], asyncio.Lock] = {}
        self._init_reconciliation(self.data_dir.absolute() / "staging_roots.json")
        #: Records or raws already reported as not taken (reported once, retried quietly).
        self._reported: set[str] = set()
        #: CCDs whose raw was refused for good and said so (``imageRefused``, once each).
        self._refused_ccds: set[tuple[int, int]] = set()

    async def configure(self, override: str) -> dict[str, Any]:
        applied = await super().configure(override)
        self.store.capacity = self.config.capacity_bytes
        self.store.hold_bytes = self.config.send_from_memory_bytes
        self.link.set_bandwidth(self.config.link.bandwidth_mbps)
        return applied

    async def handle_summary_state(self) -> None:
        self._wake.set()
        if self.summary_state == State.ENABLED:
            self._reconcile_now.set()

    async def close(self) -> None:
        await super().close()
        await self.store.close()

    # ------------------------------------------------------------------ handoff
    async def on_event(self, event: Event) -> None:
        if event.topic != "endReadout":
            return
        images = event.data.get("images") or []
        self._learn_roots(images)
        if self.summary_state != State.ENABLED:
            if images:
                self.log_message(
                    logging.WARNING,
                    f"endReadout {event.data.get('imageName')} while {self.summary_state.name}:"
                    f" {len(images)} raws not taken now; the camera keeps them and they are"
                    " taken from its readout record once ENABLED",
                )
            return
        # Raws held in memory at once: those being written plus those being hashed.
        sem = asyncio.Semaphore(self.config.max_in_flight + self.store.hashing_slots)

        async def take(image: dict[str, Any]) -> None:
            async with sem:
                try:
                    offer = self._offer(event, image)
                    self.steps.mark(offer.visit, offer.detector, "endReadout", event.tai)
                    self.steps.mark(offer.visit, offer.detector, "admitted")
                    await self.accept(offer)
                except DmcsError as e:
                    self.log_message(logging.ERROR, f"raw refused: {e}")

        await asyncio.gather(*(take(i) for i in images if isinstance(i, dict)))

    def _offer(self, event: Event, image: dict[str, Any]) -> Offer:
        """The raw an ``endReadout`` image entry hands over; its URL confined as
        ``acceptImage``'s is (InvalidInputError)."""
        data = event.data
        try:
            offer = Offer(
                image_name=str(data["imageName"]),
                visit=int(data["visit"]),
                detector=int(image["detector"]),
                camera=str(data.get("camera", "")),
                url=str(image["url"]),
                checksum=str(image["checksum"]),
                end_readout_tai=event.tai,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise CommandRejected(f"malformed endReadout image entry {image!r}: {e}") from e
        return dataclasses.replace(offer, url=self.source(offer.url).as_uri())

    async def do_acceptImage(
        self,
        *,
        imageName: str,
        visit: int,
        detector: int,
        url: str,
        checksum: str,
        camera: str = "",
    ) -> dict[str, Any]:
        """Take one raw with an ack: CMD_COMPLETE once it is durable, CMD_FAILED otherwise."""
        self.assert_enabled("accept an image")
        try:
            source = self.source(url)
        except InvalidInputError as e:
            raise CommandRejected(f"acceptImage: {e}") from e
        offer = Offer(imageName, visit, detector, camera, source.as_uri(), checksum, tai_now())
        entry, new = await self.accept(offer)
        return {"checksum": entry.checksum, "byteSize": entry.byte_size, "duplicate": not new}

    @property
    def staging_dir(self) -> Path:
        """The camera's staging area: ``staging_dir``, or ``<data_dir>/staging`` when unset."""
        configured = self.config.staging_dir
        return Path(configured).absolute() if configured else self.data_dir.absolute() / "staging"

    @property
    def raw_folders(self) -> list[Path]:
        """The folders the buffer takes raws from: the staging area and ``accept_dirs``."""
        return [self.staging_dir, *(Path(d).absolute() for d in self.config.accept_dirs if d)]

    def source(self, url: str) -> Path:
        """The file of a raw's URL (``endReadout``, ``acceptImage``, a readout record), if it
        lies in a folder the buffer takes raws from (:attr:`raw_folders`); see
        :func:`~summit.raw_check.confined_path`."""
        return confined_path(url, self.raw_folders)

    def snapshot(self) -> dict[str, Any]:
        """The controller's snapshot plus where the camera must stage raws for this buffer
        (``dmcs simulate drive`` reads it to stage where the buffer takes raws from)."""
        return {
            **super().snapshot(),
            "stagingDir": str(self.staging_dir),
            "rawFolders": [str(f) for f in self.raw_folders],
        }

    async def accept(self, offer: Offer, *, offered: bool = True) -> tuple[Entry, bool]:
        """Take one raw; ``offered=False``: a retry from a readout record, whose refusal for a
        full buffer was already counted and alarmed when the camera offered it."""
        key = (offer.visit, offer.detector)
        lock = self._receiving.setdefault(key, asyncio.Lock())
        try:
            async with lock:
                return await self._accept(offer, offered)
        finally:
            if not lock.locked():
                self._receiving.pop(key, None)

    async def _accept(self, offer: Offer, offered: bool) -> tuple[Entry, bool]:
        try:
            entry, new = await self.store.accept(offer)
        except BufferFullError as e:
            if offered:
                self.refused += 1
                self._alarm(reason=str(e), force="CRITICAL")
            raise
        except StorageError as e:
            await self.fault(BUFFER_WRITE_FAILED, str(e))
            raise
        except InvalidInputError as e:
            await self._refused(offer, e)
            raise
        if new:
            self.publish(
                "imageInBuffer",
                {
                    "imageName": entry.image_name,
                    "visit": entry.visit,
                    "detector": entry.detector,
                    "checksum": entry.checksum,
                    "byteSize": entry.byte_size,
                },
            )
            self.steps.mark(entry.visit, entry.detector, "imageInBuffer")
            self._alarm()
            self._wake.set()
        return entry, new

    async def _refused(self, offer: Offer, error: InvalidInputError) -> None:
        """Say once that a raw this buffer does not hold was refused for good (its CCD will
        never be ingested), so that whoever waits for that CCD can count it failed."""
        key = (offer.visit, offer.detector)
        if key in self._refused_ccds or await self.store.find(*key) is not None:
            return
        self._refused_ccds.add(key)
        self.publish(
            "imageRefused",
            {
                "imageName": offer.image_name,
                "visit": offer.visit,
                "detector": offer.detector,
                "reason": str(error)[:1000],
            },
        )

    # ------------------------------------------------------------ fault injection
    async def do_cutLink(self) -> None:
        self.link.cut()
        self.log_message(logging.WARNING, "summit-base link cut")

    async def do_restoreLink(self) -> None:
        self.link.restore()
        self._wake.set()
        self.log_message(logging.INFO, "summit-base link restored")

    async def do_setLinkBandwidth(self, *, mbps: float) -> None:
        """Limit the link to ``mbps`` MB/s (0: unlimited)."""
        if mbps < 0:
            raise CommandRejected(f"mbps must be >= 0, got {mbps}")
        self.link.set_bandwidth(mbps)

    async def do_setCatchupRate(self, *, mbps: float) -> None:
        """Cap the backlog's send rate after an outage to ``mbps`` MB/s (0: no cap)."""
        if mbps < 0:
            raise CommandRejected(f"mbps must be >= 0, got {mbps}")
        self.config = self.config.model_copy(update={"catchup_rate_mbps": mbps})

    async def do_corruptTransfers(self, *, count: int = 1) -> None:
        """Flip a byte in each of the next ``count`` transfers (tests the checksum path)."""
        if count < 1:
            raise CommandRejected(f"count must be >= 1, got {count}")
        self.link.corrupt_next(count)

    # ------------------------------------------------------------------- transfer
    async def run_background(self, tg: SupervisedGroup) -> None:
        recovered = await self.store.recover()
        if recovered:
            self.log.warning("recovered %d raws caught mid-receipt by a crash", len(recovered))
        tg.create_task(self._transfer_loop, name=f"{self.name}-transfer")
        tg.create_task(self._status_loop, name=f"{self.name}-status")
        tg.create_task(self._reconcile_loop, name=f"{self.name}-reconcile")

    def _report_once(self, key: str, message: str) -> None:
        if key not in self._reported:
            self._reported.add(key)
            self.log_message(logging.ERROR, message)

    async def _idle(self, seconds: float) -> None:
        self._wake.clear()
        await wait_event(self._wake, seconds)

    async def _current_visit(self) -> list[Entry]:
        """The unsent raws of the oldest visit that has any (in flight ones included)."""
        unsent = await self.store.unsent()
        return [e for e in unsent if e.visit == unsent[0].visit]

    async def _transfer_loop(self) -> None:
        """A window of ``max_in_flight`` sends over the current visit's raws.

        A raw that becomes buffered while others are in flight starts as soon as a slot is
        free; the next visit starts only when every raw of this one is confirmed.
        """
        delay = self.config.retry_initial
        sending: dict[int, asyncio.Task[str]] = {}
        async with asyncio.TaskGroup() as tg:
            while True:
                if self.summary_state == State.ENABLED and self.link.is_up:
                    for entry in await self._current_visit():
                        if entry.seq not in sending and len(sending) < self.config.max_in_flight:
                            sending[entry.seq] = tg.create_task(self._send(entry))
                if not sending:
                    await self._idle(1.0)
                    continue
                self._wake.clear()
                wake = tg.create_task(self._wake.wait())
                await asyncio.wait([*sending.values(), wake], return_when=asyncio.FIRST_COMPLETED)
                wake.cancel()
                done = [seq for seq, task in sending.items() if task.done()]
                outcomes = [sending.pop(seq).result() for seq in done]
                if "retry" in outcomes:
                    await self._idle(delay)
                    delay = min(delay * 2, self.config.retry_max)
                elif outcomes:
                    delay = self.config.retry_initial

    async def _send(self, entry: Entry) -> str:
        """Send one raw; ``sent``, ``resend`` (corrupted in transit) or ``retry`` (later)."""
        self.steps.mark(entry.visit, entry.detector, "send")
        try:
            data = self.store.held(entry)
            if data is None:
                data = await asyncio.to_thread(map_file, Path(entry.path))
        except OSError as e:
            await self.fault(BUFFER_WRITE_FAILED, f"buffered raw {entry.path} unreadable: {e}")
            return "retry"
        meta = {
            "imageName": entry.image_name,
            "visit": entry.visit,
            "detector": entry.detector,
            "camera": entry.camera,
            "checksum": entry.checksum,
            "byteSize": entry.byte_size,
            "endReadoutTai": entry.end_readout_tai,
        }
        await self._throttle(entry, data.nbytes)
        outcome = await self._attempt(entry, meta, data)
        if outcome != "sent":  # a confirmed send counts its attempt with the confirmation
            await self.store.count_attempt(entry)
        return outcome

    async def _attempt(self, entry: Entry, meta: dict[str, Any], data: Any) -> str:
        started = time.monotonic()
        try:
            reply = await self.link.send(self.peers(self.config.ingest), "receive_raw", meta, data)
        except ChecksumMismatchError as e:
            return await self._mismatched(entry, e)
        except RetriableError as e:
            self.log.info("send of %s deferred: %s", entry.image_name, e)
            return "retry"
        except DmcsError as e:
            self.log_message(logging.ERROR, f"base refused {entry.image_name}: {e}; kept")
            return "retry"
        try:
            confirmed = RawReceipt.parse(reply).checksum
        except ContractError as e:
            self.log_message(logging.ERROR, f"base answered {entry.image_name} with {e}; kept")
            return "retry"
        self.steps.mark(entry.visit, entry.detector, "base_answered")
        if confirmed != entry.checksum:
            self.log_message(
                logging.ERROR, f"base confirmed {entry.image_name} with {confirmed!r}; kept"
            )
            return "retry"
        await self.store.confirmed(entry, keep=self.config.retention_seconds > 0, attempted=True)
        self.steps.mark(entry.visit, entry.detector, "confirmed")
        self.publish(
            "imageTransferred",
            {
                "imageName": entry.image_name,
                "visit": entry.visit,
                "detector": entry.detector,
                "checksum": entry.checksum,
                "transferSeconds": round(time.monotonic() - started, 4),
            },
        )
        self._alarm()
        return "sent"

    async def _mismatched(self, entry: Entry, refusal: ChecksumMismatchError) -> str:
        """The base refused ``entry`` for its checksum: re-send at once when the buffered copy
        is intact (the link corrupted it) or was replaced by the camera's; otherwise keep it
        and say why once (it is retried with backoff, never deleted)."""
        what = f"{entry.image_name} detector {entry.detector}"
        try:
            repaired = await self.store.repair(entry)
        except StorageError as e:
            await self.fault(BUFFER_WRITE_FAILED, str(e))
            return "retry"
        except DmcsError as e:
            self._report_once(
                f"corrupt:{entry.seq}",
                f"{what}: the base refused it ({refusal}); the buffered copy is corrupt and "
                f"the camera's cannot replace it ({e}); kept, not sent",
            )
            return "retry"
        self.resent += 1
        if repaired:
            self.log_message(
                logging.WARNING,
                f"re-sending {what}: the base refused it ({refusal}); the buffered copy was "
                "corrupt and is replaced by the camera's",
            )
        else:
            self.log_message(logging.WARNING, f"re-sending {entry.image_name}: {refusal}")
        return "resend"

    async def _throttle(self, entry: Entry, size: int) -> None:
        """Catch-up pacing: raws older than the newest visit go at ``catchup_rate_mbps``."""
        rate = self.config.catchup_rate_mbps
        if rate <= 0:
            return
        newest = await self.store.newest_unsent()
        if newest is not None and newest.visit != entry.visit:
            async with self._catchup:
                await asyncio.sleep(size / (rate * MB))

    # -------------------------------------------------------- alarms, telemetry
    def _alarm(self, *, reason: str = "", force: str | None = None) -> None:
        usage = self.store.usage()
        fraction = usage.unsent_fraction
        c = self.config
        level = sum(
            fraction >= t for t in (c.warning_fraction, c.serious_fraction, c.critical_fraction)
        )
        severity = force or SEVERITIES[level]
        if severity == self._severity and force is None:
            return
        self._severity = severity
        self.publish(
            "bufferAlarm",
            {
                "severity": severity,
                "fillFraction": round(fraction, 6),
                "reason": reason or f"unsent raws fill {fraction:.1%} of the buffer",
            },
        )

    def status(self) -> dict[str, Any]:
        usage = self.store.usage()
        received = self.store.oldest_unsent_tai()
        oldest = tai_now() - received if received is not None else 0.0
        return {
            "bytesUsed": usage.used_bytes,
            "capacityBytes": usage.capacity,
            "fillFraction": round(usage.used_bytes / usage.capacity, 6),
            "backlogCount": usage.unsent_count,
            "backlogBytes": usage.unsent_bytes,
            "oldestUnsentAgeSeconds": round(max(oldest, 0.0), 3),
            "linkState": self.link.state,
            "linkBandwidthMBps": self.link.bandwidth_mbps,
        }

    async def _status_loop(self) -> None:
        while True:
            await self.store.expire(tai_now() - self.config.retention_seconds)
            if self.summary_state == State.ENABLED:
                self.publish("bufferStatus", self.status(), kind="telemetry")
            await asyncio.sleep(self.config.status_interval)

    async def rpc_status(self) -> dict[str, Any]:
        """Buffer figures for tools and tests (the bufferStatus payload plus counters)."""
        totals = self.store.totals()
        return {
            **self.status(),
            "resent": self.resent,
            "refused": self.refused,
            "reconciled": self.reconciled,
            "states": {k: v[0] for k, v in totals.items()},
            "steps": self.steps.snapshot(),
            "processCpuSeconds": time.process_time(),
        }
