"""Ingest: receives raws from the summit buffer, merges their headers, registers them.

``rpc_receive_raw(meta, data)`` (the summit buffer's data-plane call) answers at once for a raw
it already has (adding nothing); otherwise it verifies the checksum while it writes the raw
with fsync into base storage (:mod:`base.raw_storage`; a mismatch raises
``ChecksumMismatchError``: send again, and leaves nothing), records it in the ledger and
answers with the checksum. Registration follows in the background: wait for the header
service's ``largeFileObjectAvailable`` (up to ``header_timeout`` after the raw arrived), merge
it into the primary header (rule in :mod:`base.header_merge`), insert exposure, detector and
raw rows in PostgreSQL (retried while the database is down), then publish ``imageIngested``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, ParamSpec, TypeVar
from urllib.parse import unquote, urlparse

from astropy.io import fits

from base.header_merge import merged_parts, split_primary
from base.ingest_ledger import Ledger, Received
from base.ingest_records import raw_records
from base.raw_storage import HEAD_BYTES, store_raw
from base.registry import DetectorRecord, ExposureRecord, RawRecord, Repository
from config.data_path import IngestSettings
from state.clock import tai_now
from state.contracts.data_plane import RawTransfer
from state.controller import Controller, SupervisedGroup
from state.durable import sha256_hex, store_parts
from state.durable_sqlite import SqliteThread
from state.errors import (
    ChecksumMismatchError,
    ConfigurationError,
    DmcsError,
    InvalidInputError,
    RetriableError,
    StorageError,
)
from state.events import Event
from state.states import State
from summit.raw_check import confined_path
from summit.step_times import StepTimes

#: errorCode published when ingest cannot write to base storage.
P = ParamSpec("P")
T = TypeVar("T")

INGEST_WRITE_FAILED = 300
_HEADER_CACHE = 4096


class Ingest(Controller):
    event_topics = ("imageIngested", "ingestStatus")
    listen_components = ("HeaderService",)
    listen_topics = ("largeFileObjectAvailable",)
    #: The launcher gives components that say so the system's database DSN (``dsn``).
    uses_database: ClassVar[bool] = True
    settings_model = IngestSettings
    config: IngestSettings

    def __init__(self, name: str, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        root = self.data_dir.absolute()
        self.ledger = Ledger(root / "ledger.sqlite")
        self._ledger_thread = SqliteThread(f"{name}-ledger")
        self.storage = root / "raws"
        self._headers: OrderedDict[str, fits.Header] = OrderedDict()
        self._waiters: dict[str, asyncio.Event] = {}
        self._receiving: dict[tuple[int, int], asyncio.Future[None]] = {}
        self._todo: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
        self._repo: Repository | None = None
        self._repo_lock = asyncio.Lock()
        self._db_down = False
        self._enabled = asyncio.Event()
        self.counters = {"ingested": 0, "failed": 0, "duplicates": 0, "corrupt": 0, "retries": 0}
        self.headers_found = 0
        self._disk_lock = asyncio.Lock()
        self._header_dir = (
            Path(self.config.header_dir).absolute()
            if self.config.header_dir
            else root.parent / "HeaderService" / "headers"
        )
        self.last_lag = 0.0
        self.steps = StepTimes()

    async def _l(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a ledger call on its own thread: its fsync never blocks the event loop."""
        return await self._ledger_thread.run(fn, *args, **kwargs)

    def check_settings(self, config: IngestSettings) -> None:
        if not config.dsn:
            raise ConfigurationError(
                f"{self.name} needs the registry's PostgreSQL DSN (settings.dsn); "
                "`dmcs run` fills it from [database]"
            )

    async def handle_summary_state(self) -> None:
        if self.summary_state == State.ENABLED:
            self._enabled.set()
        else:
            self._enabled.clear()

    async def close(self) -> None:
        await super().close()
        if self._repo is not None:
            await self._repo.close()
        await self._l(self.ledger.close)
        self._ledger_thread.close()

    # ------------------------------------------------------------------ headers
    async def on_event(self, event: Event) -> None:
        if event.topic != "largeFileObjectAvailable":
            return
        name = str(event.data.get("id", ""))
        url, checksum = str(event.data.get("url", "")), str(event.data.get("checksum", ""))
        try:
            url = self._confined(url)
            header = await asyncio.to_thread(_read_header, url, checksum)
            await self._l(self.ledger.add_header, name, url, checksum)
        except DmcsError as e:
            self.log_message(logging.WARNING, f"header of {name!r} unusable: {e}")
            return
        self._remember(name, header)

    def _confined(self, url: str) -> str:
        """The URL of the file ``url`` names once resolved, if it lies in ``header_dir``: that
        file is read and recorded, so a link swapped after the check leads nowhere else."""
        return confined_path(url, [self._header_dir], "Ingest reads headers from").as_uri()

    def _remember(self, name: str, header: fits.Header) -> None:
        self._headers[name] = header
        self._headers.move_to_end(name)
        while len(self._headers) > _HEADER_CACHE:
            self._headers.popitem(last=False)
        waiter = self._waiters.pop(name, None)
        if waiter is not None:
            waiter.set()

    async def _header(self, name: str) -> fits.Header | None:
        if name in self._headers:
            return self._headers[name]
        known = await self._l(self.ledger.header, name)
        if known is None:
            return None
        url, checksum = known
        try:
            header = await asyncio.to_thread(_read_header, self._confined(url), checksum)
        except DmcsError as e:
            self.log.warning("header of %s no longer readable: %s", name, e)
            return None
        self._remember(name, header)
        return header

    async def _header_on_disk(self, name: str) -> fits.Header | None:
        """A header the header service wrote but whose announcement never arrived (the bus
        restarted, or this component did): read from its folder, recorded and said."""
        if Path(name).name != name or not name or name.startswith("."):
            return None
        async with self._disk_lock:  # the CCDs of one image look at once; one reads
            cached = self._headers.get(name)
            return cached if cached is not None else await self._read_header_file(name)

    async def _read_header_file(self, name: str) -> fits.Header | None:
        path = self._header_dir / f"{name}.fits"
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            return None
        except OSError as e:
            self.log.warning("header %s unreadable: %s", path, e)
            return None
        url, checksum = path.as_uri(), sha256_hex(data)
        try:
            header = await asyncio.to_thread(_read_header, url, checksum)
        except DmcsError as e:
            self.log.warning("header %s unusable: %s", path, e)
            return None
        await self._l(self.ledger.add_header, name, url, checksum)
        self.headers_found += 1
        self.log_message(
            logging.WARNING,
            f"header of {name} found in the header service's folder without its announcement",
        )
        self._remember(name, header)
        return header

    async def _await_header(self, name: str, deadline: float) -> fits.Header | None:
        """The header announced by ``deadline``; failing that, one the header service wrote
        whose announcement was lost."""
        header = await self._header(name)
        if header is not None:
            return header
        waiter = self._waiters.setdefault(name, asyncio.Event())
        try:
            async with asyncio.timeout(max(deadline - tai_now(), 0.0)):
                await waiter.wait()
        except TimeoutError:
            pass
        header = self._headers.get(name)
        return header if header is not None else await self._header_on_disk(name)

    # --------------------------------------------------------------- receiving
    async def rpc_receive_raw(self, meta: dict[str, Any], data: Any) -> dict[str, Any]:
        if self.summary_state != State.ENABLED:
            raise RetriableError(f"{self.name} is {self.summary_state.name}; not taking raws")
        raw = RawTransfer.parse(meta)
        view = raw.raw_bytes(data)
        name, visit, detector, checksum = raw.imageName, raw.visit, raw.detector, raw.checksum
        self.steps.mark(visit, detector, "arrived")
        if raw.byteSize is not None and len(view) != raw.byteSize:
            self.counters["corrupt"] += 1
            raise ChecksumMismatchError(
                f"{name} detector {detector} arrived with {len(view)} bytes, sent as {raw.byteSize}"
            )
        key = (visit, detector)
        while key in self._receiving:
            await asyncio.shield(self._receiving[key])
        existing = await self._l(self.ledger.find, visit, detector)
        if existing is not None:
            # What is stored was verified against this checksum when it arrived.
            if existing.checksum != checksum:
                raise InvalidInputError(
                    f"{name} detector {detector} was already received with another checksum"
                )
            self.counters["duplicates"] += 1
            return {"checksum": checksum, "duplicate": True}
        done = asyncio.get_running_loop().create_future()
        self._receiving[key] = done
        try:
            await self._store(raw, view)
        finally:
            del self._receiving[key]
            done.set_result(None)
        return {"checksum": checksum, "duplicate": False}

    async def _store(self, raw: RawTransfer, data: memoryview) -> None:
        """Verify the raw's checksum while writing it (merged with its header when known):
        one pass over its bytes, one durable write."""
        name, visit, detector = raw.imageName, raw.visit, raw.detector
        self.steps.mark(visit, detector, "looked_up")
        header = await self._header(name)
        self.steps.mark(visit, detector, "header")
        path = self.storage / str(visit) / f"{name}_{detector:03d}.fits"
        try:
            file_checksum, size = await asyncio.to_thread(
                store_raw, path, data, raw.checksum, header
            )
            self.steps.mark(visit, detector, "stored")
        except ChecksumMismatchError as e:
            self.counters["corrupt"] += 1
            raise ChecksumMismatchError(f"{name} detector {detector} {e}") from e
        except OSError as e:
            error = StorageError(f"cannot write {name} detector {detector} to {path}: {e}")
            await self.fault(INGEST_WRITE_FAILED, str(error))
            raise error from e
        await self._l(
            self.ledger.add,
            Received(
                visit=visit,
                detector=detector,
                image_name=name,
                camera=raw.camera,
                checksum=raw.checksum,
                file_checksum=file_checksum,
                byte_size=size,
                path=str(path),
                end_readout_tai=raw.endReadoutTai or tai_now(),
                received_tai=tai_now(),
                header_merged=header is not None,
                state="received",
            ),
        )
        self.steps.mark(visit, detector, "recorded")
        self._todo.put_nowait((visit, detector))

    # ------------------------------------------------------------- registering
    async def run_background(self, tg: SupervisedGroup) -> None:
        for r in await self._l(self.ledger.pending):
            self._todo.put_nowait((r.visit, r.detector))
        tg.create_task(self._register_loop, name=f"{self.name}-register")
        tg.create_task(self._status_loop, name=f"{self.name}-status")

    async def _register_loop(self) -> None:
        async with asyncio.TaskGroup() as tg:
            while True:
                key = await self._todo.get()
                tg.create_task(self._finish(*key))

    async def _finish(self, visit: int, detector: int) -> None:
        await self._enabled.wait()
        r = await self._l(self.ledger.find, visit, detector)
        if r is None or r.state != "received":
            return
        self.steps.mark(visit, detector, "finishing")
        try:
            r, description = await self._merge_late_header(r)
            head = await asyncio.to_thread(_read_head, r.path)
            header, _ = split_primary(head)
            self.steps.mark(visit, detector, "head_read")
            await self._register(*raw_records(r, header))
            self.steps.mark(visit, detector, "registered")
        except DmcsError as e:
            self.counters["failed"] += 1
            self.log_message(logging.ERROR, f"ingest of {r.image_name}/{detector} failed: {e}")
            self._announce(r, 1, f"ingest failed: {e}")
            return
        await self._l(
            self.ledger.update,
            visit,
            detector,
            state="registered",
            header_merged=r.header_merged,
            file_checksum=r.file_checksum,
        )
        self.counters["ingested"] += 1
        self.last_lag = tai_now() - r.end_readout_tai
        self.steps.mark(visit, detector, "imageIngested")
        self._announce(r, 0, description)

    async def _merge_late_header(self, r: Received) -> tuple[Received, str]:
        if r.header_merged:
            return r, "ingested with the header service's header merged"
        timeout = self.config.header_timeout
        header = await self._await_header(r.image_name, r.received_tai + timeout)
        if header is None:
            return r, (
                f"no header from the header service within {timeout:g} s; "
                "ingested with the raw's own headers only"
            )
        data = await asyncio.to_thread(Path(r.path).read_bytes)
        parts = await asyncio.to_thread(merged_parts, data, header)
        try:
            file_checksum, size = await asyncio.to_thread(store_parts, Path(r.path), parts)
        except OSError as e:
            raise StorageError(f"cannot rewrite {r.path} with its header: {e}") from e
        await self._l(
            self.ledger.update,
            r.visit,
            r.detector,
            state="received",
            header_merged=True,
            file_checksum=file_checksum,
        )
        merged = Received(
            **{
                **_fields(r),
                "header_merged": True,
                "file_checksum": file_checksum,
                "byte_size": size,
            }
        )
        return merged, "ingested with the header service's header merged (it came late)"

    async def _register(
        self, raw: RawRecord, exposure: ExposureRecord, detector: DetectorRecord
    ) -> bool:
        """Insert the rows, retrying for as long as the database is unreachable."""
        delay = self.config.retry_initial
        while True:
            try:
                repo = await self._repository()
                added = await repo.register_raw(raw, exposure, detector)
            except RetriableError as e:
                self.counters["retries"] += 1
                if not self._db_down:
                    self._db_down = True
                    self.log_message(logging.WARNING, f"registry unreachable, retrying: {e}")
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.config.retry_max)
                continue
            if self._db_down:
                self._db_down = False
                self.log_message(logging.WARNING, "registry reachable again; ingest resumed")
            return added

    async def _repository(self) -> Repository:
        async with self._repo_lock:
            if self._repo is None:
                if not self.config.dsn:
                    raise ConfigurationError(f"{self.name} has no registry DSN")
                self._repo = await Repository.connect(self.config.dsn, self.config.registry_schema)
            return self._repo

    def _announce(self, r: Received, status: int, description: str) -> None:
        self.publish(
            "imageIngested",
            {
                "camera": r.camera,
                "imageName": r.image_name,
                "visit": r.visit,
                "detector": r.detector,
                "statusCode": status,
                "description": description,
                "checksum": r.checksum,
            },
        )

    async def _status_loop(self) -> None:
        while True:
            if self.summary_state == State.ENABLED:
                self.publish("ingestStatus", self.status(), kind="telemetry")
            await asyncio.sleep(self.config.status_interval)

    def status(self) -> dict[str, Any]:
        return {
            "ingestedCount": self.counters["ingested"],
            "failedCount": self.counters["failed"],
            "pendingHeaders": len(self._waiters),
            "lagSeconds": round(self.last_lag, 4),
        }

    async def rpc_status(self) -> dict[str, Any]:
        pending = await self._l(self.ledger.pending)
        return {
            **self.status(),
            **self.counters,
            "pending": len(pending),
            "steps": self.steps.snapshot(),
            "processCpuSeconds": time.process_time(),
        }


def _fields(r: Received) -> dict[str, Any]:
    return {name: getattr(r, name) for name in Received.__dataclass_fields__}


def _read_header(url: str, checksum: str) -> fits.Header:
    parsed = urlparse(url)
    if parsed.scheme != "file":
        raise InvalidInputError(f"header URL must be file://, got {url!r}")
    try:
        data = Path(unquote(parsed.path)).read_bytes()
    except OSError as e:
        raise InvalidInputError(f"cannot read header {url}: {e}") from e
    if checksum and sha256_hex(data) != checksum:
        raise ChecksumMismatchError(f"header {url} does not match its checksum")
    return split_primary(data)[0]


def _read_head(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read(HEAD_BYTES)
