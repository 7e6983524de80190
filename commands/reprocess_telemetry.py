"""A reprocessing run's progress and failures as telemetry, through the gateway's HTTP API.

Best effort by design: the ledger in PostgreSQL is the run's record, so an unreachable or
refusing gateway costs telemetry (logged once; what was still unsent at the end is counted
as dropped) and never the run. Progress is
coalesced to at most one message per ``interval`` (plus every phase change and the end; the
last unsent state of a phase is kept and sent before the next phase's); failures are queued
(bounded, oldest dropped first) and sent in order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp

from base.reprocess.observer import RunObserver
from state.clock import tai_now
from state.fanout import DropOldestQueue
from state.waiting import wait_event

log = logging.getLogger("dmcs.reprocess.telemetry")

#: Failures kept while the gateway is unreachable.
MAX_QUEUED = 1000


def http_base(url: str) -> str:
    """``ws://host:port/ws`` → ``http://host:port`` (``wss`` → ``https``)."""
    scheme, _, rest = url.partition("://")
    if not rest:
        raise ValueError(f"not a gateway URL: {url!r}")
    host = rest.split("/", 1)[0]
    return f"{'https' if scheme in ('wss', 'https') else 'http'}://{host}"


class RunTelemetry(RunObserver):
    def __init__(self, url: str, token: str | None, interval: float = 1.0) -> None:
        self.base = http_base(url)
        self.token = token
        self.interval = interval
        self.sent = 0
        #: Unsent when the run ended (what the bounded failure queue pushed out is added).
        self._unsent_at_close = 0
        self.refused: str | None = None
        self._state: dict[str, Any] = {}
        self._phase_started = time.monotonic()
        self._phase_done0 = 0
        self._failures: DropOldestQueue[dict[str, Any]] = DropOldestQueue(MAX_QUEUED)
        #: A phase's last state, unsent when the next phase began; sent in order.
        self._phase_ends: DropOldestQueue[dict[str, Any]] = DropOldestQueue(MAX_QUEUED)
        self._progress_due = False
        self._urgent = False
        self._last_progress = 0.0
        self._wake = asyncio.Event()
        self._closing = False
        self._unreachable = False

    @property
    def dropped(self) -> int:
        """Telemetry lost: failures pushed out of the full queue, and what was unsent at close."""
        return self._failures.dropped + self._phase_ends.dropped + self._unsent_at_close

    def stats(self) -> dict[str, Any]:
        return {"sent": self.sent, "dropped": self.dropped, "refused": self.refused}

    # ---------------------------------------------------------------- observer
    def began(self, run: str, mode: str, workers: int) -> None:
        self._state = {
            "run": run,
            "mode": mode,
            "phase": "ccd",
            "done": 0,
            "total": 0,
            "failed": 0,
            "ratePerSecond": None,
            "etaSeconds": None,
            "status": "running",
            "startedTai": tai_now(),
            "workers": workers,
        }
        self._due(urgent=True)

    def progress(self, phase: str, done: int, total: int) -> None:
        now = time.monotonic()
        if phase != self._state.get("phase") or done < self._phase_done0:
            if self._progress_due and self._state:
                self._phase_ends.put(dict(self._state))
            self._phase_started, self._phase_done0 = now, done
            self._due(urgent=True)
        elapsed = now - self._phase_started
        rate = (done - self._phase_done0) / elapsed if elapsed > 0 and done > 0 else None
        eta = (total - done) / rate if rate else None
        self._state.update(
            phase=phase,
            done=done,
            total=total,
            ratePerSecond=None if rate is None else round(rate, 4),
            etaSeconds=None if eta is None else round(eta, 1),
        )
        self._due(urgent=done == total)

    def failure(self, unit: str, reason: str, attempt: int, final: bool) -> None:
        if final:
            self._state["failed"] = self._state.get("failed", 0) + 1
        failure = {"unit": unit, "reason": reason, "attempt": attempt, "final": final}
        self._failures.put({"run": self._state.get("run", ""), **failure})
        self._due(urgent=final)

    def ended(self, status: str) -> None:
        self._state["status"] = status
        if status == "done":
            self._state["etaSeconds"] = 0.0
        self._due(urgent=True)

    def _due(self, urgent: bool) -> None:
        self._progress_due = True
        self._urgent = self._urgent or urgent
        self._wake.set()

    # ------------------------------------------------------------------ sender
    async def run(self) -> None:
        """Send until :meth:`close`; the caller owns this task.

        After close it makes one last attempt at what is pending and returns.
        """
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
            while True:
                closing = self._closing
                self._wake.clear()
                if self.refused is None:
                    await self._send_due(session, force=closing)
                if closing:
                    unsent = len(self._failures) + len(self._phase_ends) + self._progress_due
                    self._unsent_at_close += unsent
                    return
                await self._sleep(self._next_wait())

    async def close(self) -> None:
        """Ask :meth:`run` to send what is pending, then return."""
        self._closing = True
        self._wake.set()

    def _next_wait(self) -> float | None:
        if self.refused is not None:
            return None
        if self._unreachable:
            return self.interval
        if self._failures or self._phase_ends or self._urgent:
            return 0.0
        if self._progress_due:
            return max(0.0, self._last_progress + self.interval - time.monotonic())
        return None

    async def _sleep(self, seconds: float | None) -> None:
        await wait_event(self._wake, seconds)

    async def _send_due(self, session: aiohttp.ClientSession, force: bool) -> None:
        while not self._failures.empty():
            if not await self._post(session, "reprocessFailure", self._failures.peek()):
                return
            self._failures.get_nowait()
        while not self._phase_ends.empty():
            if not await self._post(session, "reprocessProgress", self._phase_ends.peek()):
                return
            self._phase_ends.get_nowait()
        ready = force or self._urgent or time.monotonic() - self._last_progress >= self.interval
        if self._progress_due and self._state and ready:
            self._progress_due = self._urgent = False
            self._last_progress = time.monotonic()
            if not await self._post(session, "reprocessProgress", dict(self._state)):
                self._progress_due = True

    async def _post(self, session: aiohttp.ClientSession, topic: str, data: dict[str, Any]) -> bool:
        url = f"{self.base}/api/v1/telemetry/{topic}"
        try:
            async with session.post(url, json=data) as r:
                if r.status in (401, 403, 404):
                    self.refused = f"HTTP {r.status}: {(await r.text()).strip()}"
                    log.error("the gateway refuses reprocessing telemetry (%s)", self.refused)
                    return False
                r.raise_for_status()
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            if not self._unreachable:
                log.warning("gateway %s unreachable, telemetry deferred: %s", self.base, e)
            self._unreachable = True
            return False
        self._unreachable = False
        self.sent += 1
        return True
