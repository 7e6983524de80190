"""Shared pieces of the data-path tests: a simulated night, a camera that stages its raws,
a summit buffer and ingest wired in one loop, and an embedded PostgreSQL that can be restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from astropy.io import fits

from base.ingest import Ingest
from base.registry import Repository
from state.clock import tai_now
from state.durable import sha256_hex
from state.events import Event
from state.peers import LocalPeers
from summit.readout_records import write_record
from summit.summit_buffer import SummitBuffer

_seq = itertools.count(1)


@dataclass(frozen=True)
class Readout:
    """One visit as the camera reads it out: the ``endReadout`` payload and its raws."""

    payload: dict[str, Any]

    @property
    def images(self) -> list[dict[str, Any]]:
        return list(self.payload["images"])

    def event(self) -> Event:
        return Event("Camera", "endReadout", next(_seq), tai_now(), self.payload)


class Camera:
    """Stages the raws of a simulated night into its own DAQ folder, visit by visit."""

    def __init__(self, night: Path, staging: Path) -> None:
        self.visit_dirs = sorted((night / "raws").glob("*/*"))
        self.staging = staging

    def readout(self, index: int) -> Readout:
        raws = sorted(self.visit_dirs[index].glob("raw_*.fits"))
        target = self.staging / self.visit_dirs[index].name
        target.mkdir(parents=True, exist_ok=True)
        images = []
        header = fits.getheader(raws[0])
        for raw in raws:
            staged = target / raw.name
            shutil.copyfile(raw, staged)
            data = staged.read_bytes()
            images.append(
                {
                    "detector": int(fits.getheader(staged)["DETECTOR"]),
                    "url": staged.as_uri(),
                    "checksum": sha256_hex(data),
                    "byteSize": len(data),
                }
            )
        payload = {
            "imageName": str(header["OBSID"]),
            "visit": int(header["VISIT"]),
            "dayObs": int(header["DAYOBS"]),
            "camera": str(header["CAMERA"]),
            "shutterCloseTai": tai_now(),
            "detectors": [i["detector"] for i in images],
            "images": images,
        }
        write_record(self.staging, payload)
        return Readout(payload)


@dataclass
class LocalPath:
    """A SummitBuffer and an Ingest as plain objects in this loop, joined by LocalPeers."""

    buffer: SummitBuffer
    ingest: Ingest
    peers: LocalPeers
    events: list[Event] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def sink(self, event: Event) -> None:
        self.events.append(event)
        self.changed.set()

    def topic(self, topic: str) -> list[Event]:
        return [e for e in self.events if e.topic == topic]

    async def wait_for(
        self, predicate: Callable[[], bool], timeout: float = 30.0, what: str = ""
    ) -> None:
        """Wait until ``predicate()`` holds, re-checking on every event (heartbeats included)."""
        async with asyncio.timeout(timeout):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


async def enable(component: Any) -> None:
    await component.do_start()
    await component.do_enable()


def make_buffer(
    root: Path, sink: Callable[[Event], None], peers: LocalPeers, **settings: Any
) -> SummitBuffer:
    return SummitBuffer(
        "SummitBuffer",
        sink=sink,
        authorized={"ocs"},
        settings={
            "status_interval": 0.2,
            "retry_initial": 0.05,
            "retry_max": 0.5,
            "accept_dirs": [str(root)],  # the tests' staging areas lie under their tmp_path
            **settings,
        },
        data_dir=root / "summit",
        peers=peers,
    )


@contextlib.asynccontextmanager
async def local_path(
    root: Path,
    dsn: str,
    schema: str,
    *,
    buffer: dict[str, Any] | None = None,
    ingest: dict[str, Any] | None = None,
) -> AsyncIterator[LocalPath]:
    peers = LocalPeers()
    events: list[Event] = []
    changed = asyncio.Event()

    def sink(event: Event) -> None:
        events.append(event)
        changed.set()

    summit = make_buffer(root, sink, peers, **(buffer or {}))
    base = Ingest(
        "Ingest",
        sink=sink,
        authorized={"ocs"},
        settings={
            "dsn": dsn,
            "registry_schema": schema,
            "header_timeout": 0.3,
            "retry_initial": 0.05,
            "retry_max": 0.5,
            "status_interval": 0.2,
            **(ingest or {}),
        },
        data_dir=root / "base",
        peers=peers,
    )
    peers.components.update({"SummitBuffer": summit, "Ingest": base})
    path = LocalPath(summit, base, peers, events, changed)
    await summit.start()
    await base.start()
    await enable(summit)
    await enable(base)
    try:
        yield path
    finally:
        await summit.close()
        await base.close()


async def registry_matches(dsn: str, schema: str, taken: list[Readout]) -> list[Any]:
    """Assert the final count: images taken = images registered, checksums equal."""
    repo = await Repository.connect(dsn, schema)
    try:
        raws = await repo.raws()
    finally:
        await repo.close()
    expected = {(r.payload["visit"], i["detector"]): i["checksum"] for r in taken for i in r.images}
    got = {(raw.visit, raw.detector): raw.checksum for raw in raws}
    assert len(raws) == len(expected), (len(raws), len(expected))
    assert got == expected
    for raw in raws:
        assert sha256_hex(Path(raw.path).read_bytes()) == raw.file_checksum
    return raws


def socket_dir(dsn: str) -> str:
    return parse_qs(urlparse(dsn).query)["host"][0]


@contextlib.contextmanager
def private_postgres(pgdata: Path) -> Iterator[str]:
    """An embedded PostgreSQL of this test's own, so stopping it disturbs nobody else.

    Unsupervised: the tests that use it stop and start it themselves.
    """
    from base.postgres import embedded_postgres

    with embedded_postgres(pgdata, supervise=False) as dsn:
        yield dsn


def stop_postgres(pgdata: Path) -> None:
    import pgserver

    user = pgserver.get_server(pgdata).system_user
    pgserver.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user)


def start_postgres(pgdata: Path, dsn: str) -> None:
    import pgserver

    log = pgdata / "log"
    pgserver.pg_ctl(
        ["-w", "-l", str(log), "-o", '-h ""', "-o", f"-k {socket_dir(dsn)}", "start"],
        pgdata=pgdata,
        user=pgserver.get_server(pgdata).system_user,
    )


def mini_night_dir(base: Path, visits: int = 6, seed: int = 7) -> Path:
    """A rendered night of the ``mini`` camera (4 CCDs per visit), made once per session."""
    from summit.simulation import plan_night, run_night

    out = base / f"mini_night_{visits}_{seed}"
    if not (out / "manifest.json").exists():
        run_night(plan_night("mini", visits, seed, out), raws=True)
    return out
