"""The SummitBuffer's reconciliation with the camera's readout records.

An ``endReadout`` that went out while the buffer was down, restarting or not ENABLED is not
needed: the camera's readout records in its staging area are the record
(``summit.readout_records``), and the buffer takes in every raw they list that its manifest
lacks, at once on enable and every ``reconcile_interval`` seconds. The staging areas it
reconciles are its own (``staging_dir``, by default ``<data_dir>/staging``) and every area an
``endReadout`` pointed at inside the folders the buffer takes raws from (remembered on disk,
``staging_roots.json`` in its data directory).

A mixin of :class:`~summit.summit_buffer.SummitBuffer`, which supplies what is declared below
(its settings, store, state and logging, and the ``accept``/``_offer``/``_report_once`` of its
handoff).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from state.durable import write_durably
from state.errors import BufferFullError, DmcsError, InvalidInputError, StorageError
from state.events import Event
from state.states import State
from state.waiting import wait_event
from summit.raw_check import path_from_url
from summit.readout_records import ReadoutRecord, read_records, staging_root

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from config.data_path import SummitBufferSettings
    from summit.buffer_manifest import Entry
    from summit.buffer_store import BufferStore, Offer


class BufferReconciliation:
    if TYPE_CHECKING:
        config: SummitBufferSettings
        store: BufferStore
        summary_state: State
        log: logging.Logger
        log_message: Callable[[int, str], None]
        accept: Callable[..., Awaitable[tuple[Entry, bool]]]
        _offer: Callable[[Event, dict[str, Any]], Offer]
        _report_once: Callable[[str, str], None]
        source: Callable[[str], Path]
        staging_dir: Path

    def _init_reconciliation(self, roots_file: Path) -> None:
        self.reconciled = 0
        self._reconcile_now = asyncio.Event()
        self._roots_file = roots_file
        self._roots = self._load_roots()
        #: Readout records whose every raw the manifest holds (not read again).
        self._settled: set[str] = set()

    def _load_roots(self) -> set[Path]:
        roots = {self.staging_dir}
        try:
            remembered = [Path(p) for p in json.loads(self._roots_file.read_text())]
        except FileNotFoundError:
            remembered = []
        except (OSError, ValueError, TypeError) as e:
            self.log.warning("%s unreadable (%s); staging areas relearnt", self._roots_file, e)
            remembered = []
        return roots | {p for p in remembered if self._takes_from(p)}

    def _takes_from(self, root: Path) -> bool:
        """Whether ``root`` lies in a folder the buffer takes raws from (``source``)."""
        try:
            self.source(root.as_uri())
        except InvalidInputError:
            return False
        return True

    def _learn_roots(self, images: list[Any]) -> None:
        """Remember the staging areas of the raws an ``endReadout`` named, those that lie in
        the folders the buffer takes raws from."""
        found = set()
        for image in images:
            with contextlib.suppress(InvalidInputError, KeyError, TypeError):
                root = staging_root(path_from_url(str(image["url"])))
                if self._takes_from(root):
                    found.add(root)
        if found <= self._roots:
            return
        self._roots |= found
        try:
            body = json.dumps(sorted(str(p) for p in self._roots)).encode()
            self._roots_file.parent.mkdir(parents=True, exist_ok=True)
            write_durably(self._roots_file, body)
        except OSError as e:
            self.log_message(logging.WARNING, f"staging areas not remembered: {e}")

    async def _reconcile_loop(self) -> None:
        while True:
            await wait_event(self._reconcile_now, self.config.reconcile_interval)
            self._reconcile_now.clear()
            if self.summary_state == State.ENABLED:
                await self.reconcile()

    async def reconcile(self) -> int:
        """Take in every raw the camera's readout records list that the manifest lacks."""
        taken = 0
        for root in sorted(self._roots):
            try:
                records = await asyncio.to_thread(read_records, root, self._settled)
            except StorageError as e:
                self._report_once(str(root), f"staging area not reconciled: {e}")
                continue
            for record in records:
                if isinstance(record, ReadoutRecord):
                    taken += await self._reconcile_record(record)
                else:
                    path, why = record
                    self._report_once(str(path), f"readout record {path} unreadable: {why}")
        if taken:
            self.reconciled += taken
            self.log_message(
                logging.WARNING,
                f"took in {taken} raws from the camera's readout records whose endReadout "
                "this buffer had not acted on (it was down, restarting or not ENABLED)",
            )
        return taken

    async def _reconcile_record(self, record: ReadoutRecord) -> int:
        taken, missing = 0, 0
        event = Event("Camera", "endReadout", 0, record.tai, record.payload)
        for image in record.payload.get("images") or []:
            if self.summary_state != State.ENABLED:
                return taken
            try:
                offer = self._offer(event, image)
                if await self.store.find(offer.visit, offer.detector) is not None:
                    continue
                _, new = await self.accept(offer, offered=False)
            except BufferFullError:
                return taken  # the camera keeps it; retried when there is room
            except DmcsError as e:
                missing += 1
                self._report_once(f"{record.path}:{image!r}", f"raw not reconciled: {e}")
                continue
            taken += new
        if not missing:
            self._settled.add(record.path.parent.name)
        return taken
