"""The simulated summit-base network link: up or down, a bandwidth, injected corruption.

Summit and base storage are separate (and may sit on different Ray nodes); every byte the
summit buffer sends to ingest crosses this link. It can be cut and restored on command, its
bandwidth limited (a transfer takes ``size / bandwidth`` seconds, one at a time through the
pipe), and told to corrupt the next transfers (one flipped byte each) so that tests can show
that checksums catch it. A transfer on a link that is or goes down raises
``ConnectionLostError``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

from config.data_path import LinkSettings
from state.errors import ConnectionLostError
from state.peers import Peer

MB = 1_000_000


class Link:
    def __init__(self, settings: LinkSettings | None = None) -> None:
        settings = settings or LinkSettings()
        self.bandwidth_mbps = settings.bandwidth_mbps
        self._up = asyncio.Event()
        if settings.up:
            self._up.set()
        self._pipe = asyncio.Lock()
        self._corrupt_next = 0
        self.bytes_sent = 0
        self.transfers = 0
        self.corrupted = 0
        self.down_since: float | None = None if settings.up else time.monotonic()

    @property
    def is_up(self) -> bool:
        return self._up.is_set()

    @property
    def state(self) -> str:
        return "up" if self.is_up else "down"

    def cut(self) -> None:
        if self.is_up:
            self.down_since = time.monotonic()
        self._up.clear()

    def restore(self) -> None:
        self.down_since = None
        self._up.set()

    async def wait_up(self) -> None:
        await self._up.wait()

    def set_bandwidth(self, mbps: float) -> None:
        if mbps < 0:
            raise ValueError(f"bandwidth must be >= 0 MB/s, got {mbps}")
        self.bandwidth_mbps = mbps

    def corrupt_next(self, count: int) -> None:
        """Flip one byte in each of the next ``count`` transfers (fault injection)."""
        self._corrupt_next += count

    async def send(self, peer: Peer, method: str, meta: dict[str, Any], data: np.ndarray) -> Any:
        """Carry ``data`` (a raw's bytes as a uint8 array, which Ray hands over without a copy)
        to ``peer.rpc_<method>(meta, data)`` and return its answer."""
        if not self.is_up:
            raise ConnectionLostError("the summit-base link is down")
        bandwidth = self.bandwidth_mbps
        if bandwidth > 0:
            async with self._pipe:
                await asyncio.sleep(data.nbytes / (bandwidth * MB))
        if not self.is_up:
            raise ConnectionLostError("the summit-base link went down during the transfer")
        if self._corrupt_next > 0 and data.nbytes:
            self._corrupt_next -= 1
            self.corrupted += 1
            data = data.copy()
            data[data.nbytes // 2] ^= 0xFF
        self.transfers += 1
        self.bytes_sent += data.nbytes
        return await peer.call(method, meta, data)
