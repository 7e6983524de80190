"""Summit-to-base data path: latency endReadout → imageIngested, throughput, outage catch-up.

Runs the real thing: Ray actors for HeaderService, SummitBuffer and Ingest, the gateway and
client, an embedded PostgreSQL (or ``--dsn``). Raws are a ComCam visit (9 CCDs of 4k x 4k,
~70 MB each) rendered once by the camera simulator and cached under ``--cache``; each later
visit re-stamps them (new OBSID/VISIT in the primary header, so new checksums) instead of
rendering again. Prints JSON.

* latency: ``--visits`` visits one after the other (each drained before the next), per image
  from the bus time of ``endReadout`` to that of ``imageIngested``; target p95 ≤ 2 s.
* throughput: raw bytes ingested per second of those visits.
* catch-up: the link is cut for ``--outage`` visits, then restored while new visits keep
  arriving at the acquisition cadence; catch-up rate (MB/s drained) over the acquisition
  data rate (9 CCDs per ``--cadence`` s); target ≥ 2x.
* reference: one raw copied with fsync on the same disk (the storage ceiling).
* one raw's path: the CPU (and wall) time of each of its steps, run in this process with the
  product's own functions (summit read + hash + header check, durable write, send, base
  verify + merge + durable write).
* where the latency goes: each step's p50/p95/max over the timed raws and the slowest raw's
  timeline, from the buffer's and ingest's step marks (``summit.step_times``), and the CPU
  seconds the two components' processes used per timed visit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import itertools
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from astropy.io import fits

from base.header_merge import split_primary
from base.postgres import postgres_dsn
from base.raw_storage import store_raw
from commands.client import Client
from commands.server import serve
from config.system import SystemConfig
from state.direct_io import write_array_direct
from state.durable import sha256_hex, write_durably
from state.states import State
from summit.raw_check import read_checked_raw

MB = 1e6
TOKEN = "bench-ocs-token"


def render_visit(cache: Path) -> list[Path]:
    """The 9 raws of one ComCam visit, rendered once and kept in ``cache``."""
    from config.cameras import load_camera
    from summit.camera import CameraSimulator
    from summit.schedule import generate_schedule
    from summit.sky import Sky

    paths = [cache / f"raw_{d:03d}.fits" for d in range(9)]
    if all(p.exists() for p in paths):
        return paths
    cam = load_camera("comcam")
    visits = generate_schedule(cam, 2, seed=1)
    sky = Sky(1, visits[0].mjd_start - 0.1, visits[-1].mjd_start + 0.1)
    sim = CameraSimulator(cam, sky, seed=1)
    cache.mkdir(parents=True, exist_ok=True)
    for d, path in enumerate(paths):
        sim.write_raw(visits[0], d, path)
    return paths


def restamp(data: bytes, visit: int, image_name: str) -> bytes:
    header, offset = split_primary(data)
    header["VISIT"] = visit
    header["EXPID"] = visit
    header["OBSID"] = image_name
    hdu = fits.PrimaryHDU(header=header)
    hdu.add_checksum()
    out = io.BytesIO()
    hdu.writeto(out)
    return out.getvalue() + data[offset:]


class Daq:
    """The camera's staging area: writes each visit's raws durably before its ``endReadout``.

    The camera's own write is not part of the path: its DAQ is not the buffer's storage. Here
    both share one disk, so the staged files are flushed before the event; otherwise the
    kernel writes their 640 MB back inside the measured interval, competing with the
    buffer's and ingest's fsyncs.
    """

    def __init__(self, raws: list[Path], staging: Path) -> None:
        self.templates = [p.read_bytes() for p in raws]
        self.staging = staging
        self.byte_size = sum(len(t) for t in self.templates)

    def stage(self, seq: int) -> dict[str, Any]:
        visit = 2026112100000 + seq
        name = f"CC_O_20261121_{seq:06d}"
        folder = self.staging / str(visit)
        folder.mkdir(parents=True, exist_ok=True)
        images = []
        for d, template in enumerate(self.templates):
            data = restamp(template, visit, name)
            path = folder / f"raw_{d:03d}.fits"
            write_durably(path, data)
            images.append(
                {"detector": d, "url": path.as_uri(), "checksum": sha256_hex(data),
                 "byteSize": len(data)}
            )  # fmt: skip
        return {"imageName": name, "visit": visit, "dayObs": 20261121, "camera": "comcam",
                "detectors": list(range(9)), "images": images}  # fmt: skip


class Watch:
    """Bus times of each visit's endReadout and of every imageIngested."""

    def __init__(self) -> None:
        self.readout: dict[int, float] = {}
        self.ingested: dict[tuple[int, int], float] = {}
        self.stage: dict[str, dict[tuple[int, int], float]] = {
            "imageInBuffer": {}, "imageTransferred": {}
        }  # fmt: skip
        self.failed: list[dict[str, Any]] = []
        #: Raws stored before their header was known (rewritten with it merged afterwards).
        self.header_late = 0
        self.changed = asyncio.Event()

    async def run(self, client: Client) -> None:
        topics = ["endReadout", "imageIngested", *self.stage]
        async for e in client.subscribe(["Camera", "Ingest", "SummitBuffer"], topics):
            if e.topic == "endReadout":
                self.readout[int(e.data["visit"])] = e.tai
            elif e.topic in self.stage:
                self.stage[e.topic][(int(e.data["visit"]), int(e.data["detector"]))] = e.tai
            elif e.data.get("statusCode") == 0:
                self.ingested[(int(e.data["visit"]), int(e.data["detector"]))] = e.tai
                self.header_late += "came late" in str(e.data.get("description"))
            else:
                self.failed.append(e.data)
            self.changed.set()

    async def until(self, count: int, timeout: float, stages: bool = True) -> None:
        """Until ``count`` images are ingested (and, with ``stages``, seen at every stage)."""
        async with asyncio.timeout(timeout):
            while (
                min([len(self.ingested), *(len(s) for s in self.stage.values() if stages)]) < count
            ):
                self.changed.clear()
                await self.changed.wait()


async def send_visit(client: Client, daq: Daq, seq: int) -> int:
    payload = await asyncio.to_thread(daq.stage, seq)
    p = payload
    await client.send_camera_event(
        "startIntegration", imageName=p["imageName"], visit=p["visit"], exposureTime=30.0
    )
    await client.send_camera_event("endReadout", **payload)
    return int(p["visit"])


def raw_path_cpu(template: bytes, folder: Path) -> dict[str, Any]:
    """One raw through the path's own steps in this process, each timed (CPU of this process,
    best of 3, and wall): the summit's read + hash + header check and durable write, the send
    (the array held since the read put into Ray's object store), the base's zero-copy get and
    verify-while-writing with a header merged."""
    import ray

    data = restamp(template, 1, "CC_O_20261121_000001")
    staged, buffered, stored = folder / "staged.fits", folder / "buffered.fits", folder / "b.fits"
    staged.write_bytes(data)
    checksum = sha256_hex(data)
    header, _ = split_primary(data)
    service = fits.Header({"SEEING": 0.7, "AIRTEMP": 11.5})
    best: dict[str, list[float]] = {}

    def step(name: str, fn: Any, *args: Any) -> Any:
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn(*args)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        old = best.get(name)
        best[name] = [cpu, wall] if old is None or cpu < old[0] else old
        return out

    detector = header["DETECTOR"]
    for _ in range(3):
        raw = step("summit_read_hash_check", read_checked_raw, staged, checksum, 1, detector)
        step("summit_durable_write", write_array_direct, buffered, raw)
        ref = step("send_put_held_array", ray.put, raw)
        view = step("base_get", ray.get, ref)
        step("base_verify_merge_durable_write", store_raw, stored, memoryview(view), checksum,
             service)  # fmt: skip
        del raw, ref, view
    for path in (staged, buffered, stored):
        path.unlink()
    return {
        "cpu_s": {k: round(v[0], 3) for k, v in best.items()},
        "wall_s": {k: round(v[1], 3) for k, v in best.items()},
        "total_cpu_s": round(sum(v[0] for v in best.values()), 3),
    }


def fsync_copy_mbps(path: Path, folder: Path) -> float:
    data = path.read_bytes()
    t = time.perf_counter()
    write_durably(folder / "copy.fits", data)
    return len(data) / MB / (time.perf_counter() - t)


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def measure(args: argparse.Namespace, dsn: str, work: Path, raws: list[Path]) -> dict:
    tokens = work / "tokens.toml"
    tokens.write_text(f'[tokens]\n"{TOKEN}" = "ocs"\n')
    auth = ["ocs"]
    config = SystemConfig.model_validate(
        {
            "name": "benchdp",
            "data_dir": work / "data",
            "gateway": {"tokens_file": tokens, "port": 0},
            "components": [
                {"name": "HeaderService", "class": "summit.header_service:HeaderService",
                 "authorized": auth},
                {"name": "SummitBuffer", "class": "summit.summit_buffer:SummitBuffer",
                 "authorized": auth,
                 "settings": {"max_in_flight": args.in_flight, "accept_dirs": [str(work / "daq")]}},
                {"name": "Ingest", "class": "base.ingest:Ingest", "authorized": auth,
                 "settings": {"dsn": dsn, "registry_schema": "bench_registry"}},
            ],
        }
    )  # fmt: skip
    daq = Daq(raws, work / "daq")
    seq = 0
    async with serve(config, port=0) as running, Client(running.ws_url, token=TOKEN) as ocs:
        for name in ("HeaderService", "Ingest", "SummitBuffer"):
            await ocs.set_state(name, State.ENABLED)
        one_raw = await asyncio.to_thread(raw_path_cpu, daq.templates[0], work)
        watch = Watch()
        watcher = asyncio.create_task(watch.run(ocs))
        await asyncio.sleep(0.5)
        cpu_before = await component_cpu(running)
        latencies: list[float] = []
        stages: dict[str, list[float]] = {"imageInBuffer": [], "imageTransferred": []}
        first_readout = time.time()
        for _ in range(args.visits):
            seq += 1
            visit = await send_visit(ocs, daq, seq)
            await watch.until(9 * seq, 300)
            latencies += [watch.ingested[(visit, d)] - watch.readout[visit] for d in range(9)]
            for topic, times in stages.items():
                times += [watch.stage[topic][(visit, d)] - watch.readout[visit] for d in range(9)]
        busy = time.time() - first_readout
        cpu_after = await component_cpu(running)
        steps = await path_steps(running, set(watch.readout))

        await ocs.command("SummitBuffer", "cutLink", timeout=10)
        for _ in range(args.outage):
            seq += 1
            await send_visit(ocs, daq, seq)
        backlog_images = 9 * args.outage
        async with asyncio.timeout(600):
            while True:
                status = await running.system.handle("SummitBuffer").rpc.remote("status")
                if status["backlogCount"] >= backlog_images:
                    break
                await asyncio.sleep(0.5)
        done_before = len(watch.ingested)
        await ocs.command("SummitBuffer", "restoreLink", timeout=10)
        t0 = time.time()
        arrivals = 0
        while len(watch.ingested) < done_before + backlog_images + 9 * arrivals:
            if time.time() - t0 >= args.cadence * (arrivals + 1):
                seq += 1
                arrivals += 1
                await send_visit(ocs, daq, seq)
            with contextlib.suppress(TimeoutError):
                await watch.until(len(watch.ingested) + 1, 0.5, stages=False)
        drain = time.time() - t0
        watcher.cancel()
    drained_bytes = daq.byte_size * (args.outage + arrivals)
    catchup_mbps = drained_bytes / MB / drain
    acquisition_mbps = daq.byte_size / MB / args.cadence
    return {
        "raw_MB": round(daq.byte_size / 9 / MB, 1),
        "latency_images": len(latencies),
        "latency_p50_s": round(_pct(latencies, 0.5), 3),
        "latency_p95_s": round(_pct(latencies, 0.95), 3),
        "latency_max_s": round(max(latencies), 3),
        **{
            f"stage_p{round(q * 100)}_s": {
                "endReadout_to_imageInBuffer": round(_pct(stages["imageInBuffer"], q), 3),
                "endReadout_to_imageTransferred": round(_pct(stages["imageTransferred"], q), 3),
                "endReadout_to_imageIngested": round(_pct(latencies, q), 3),
            }
            for q in (0.5, 0.95)
        },
        "headers_merged_late": watch.header_late,
        "throughput_MBps": round(daq.byte_size * args.visits / MB / busy, 1),
        "outage_visits": args.outage,
        "visits_arriving_during_catchup": arrivals,
        "catchup_seconds": round(drain, 2),
        "catchup_MBps": round(catchup_mbps, 1),
        "acquisition_MBps": round(acquisition_mbps, 1),
        "catchup_ratio": round(catchup_mbps / acquisition_mbps, 2),
        "one_raw_path": one_raw,
        "where_the_latency_goes": steps,
        "component_cpu_s_per_visit": {
            k: round((cpu_after[k] - cpu_before[k]) / args.visits, 3) for k in cpu_after
        },
        "failed_ingests": len(watch.failed),
        "images_ingested": len(watch.ingested),
        "images_taken": 9 * seq,
    }


#: The steps a raw passes, in order (``summit.step_times``): summit buffer, then ingest.
PATH_STEPS = (
    "endReadout", "admitted", "hash_slot", "hashed", "reserved", "written", "imageInBuffer",
    "send", "arrived", "looked_up", "header", "stored", "recorded", "finishing", "head_read",
    "registered", "imageIngested",
)  # fmt: skip


def step_figures(marks: list[dict[str, float]]) -> dict[str, Any]:
    """Per step (the time since the one before it): p50, p95 and max over ``marks``, and the
    whole breakdown of the slowest raw."""
    gaps: dict[str, list[float]] = {}
    for m in marks:
        steps = [s for s in PATH_STEPS if s in m]
        for before, step in itertools.pairwise(steps):
            gaps.setdefault(f"{before}->{step}", []).append(m[step] - m[before])
    slowest = max(marks, key=lambda m: m.get("imageIngested", 0) - m["endReadout"])
    first = slowest["endReadout"]
    return {
        "per_step_p50_p95_max_s": {
            k: [round(_pct(v, 0.5), 3), round(_pct(v, 0.95), 3), round(max(v), 3)]
            for k, v in gaps.items()
        },
        "slowest_raw_s_since_endReadout": {
            "detector": slowest["detector"],
            **{s: round(slowest[s] - first, 3) for s in PATH_STEPS if s in slowest},
        },
    }


async def component_cpu(running: Any) -> dict[str, float]:
    """CPU seconds used so far by the buffer's and ingest's processes."""
    return {
        name: (await running.system.handle(name).rpc.remote("status"))["processCpuSeconds"]
        for name in ("SummitBuffer", "Ingest")
    }


async def path_steps(running: Any, visits: set[int]) -> dict[str, Any]:
    """Where the timed raws' latency went, from the buffer's and ingest's step marks."""
    marks: dict[tuple[int, int], dict[str, float]] = {}
    for name in ("SummitBuffer", "Ingest"):
        status = await running.system.handle(name).rpc.remote("status")
        for m in status["steps"]:
            if m["visit"] in visits:
                marks.setdefault((m["visit"], m["detector"]), {}).update(m)
    return step_figures([m for m in marks.values() if "endReadout" in m])


def _workdir(parent: Path | None) -> Path:
    work = Path(tempfile.mkdtemp(prefix="dmcs-bench-dp-", dir=parent))
    work.chmod(0o755)  # the embedded PostgreSQL runs as its own user
    return work


async def main(args: argparse.Namespace) -> dict[str, Any]:
    t = time.perf_counter()
    raws = await asyncio.to_thread(render_visit, args.cache)
    render_s = time.perf_counter() - t
    work = _workdir(args.workdir)
    try:
        reference = fsync_copy_mbps(raws[0], work)
        with postgres_dsn(args.dsn, work / "pg") as dsn:
            figures = await measure(args, dsn, work, raws)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "benchmark": "data_path",
        "camera": "comcam (9 CCDs, 4k x 4k)",
        "raws": "rendered once by the camera simulator, re-stamped per visit",
        "render_or_cache_s": round(render_s, 1),
        **figures,
        "reference_fsync_copy_MBps": round(reference, 1),
        "targets": {"latency_p95_s": 2.0, "catchup_ratio": 2.0},
        "met": {
            "latency_p95": figures["latency_p95_s"] <= 2.0,
            "catchup": figures["catchup_ratio"] >= 2.0,
        },
        "cpus": os.cpu_count(),
    }


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visits", type=int, default=3, help="visits timed for latency")
    parser.add_argument("--outage", type=int, default=10, help="visits taken while cut off")
    parser.add_argument("--cadence", type=float, default=34.0, help="s between visits")
    parser.add_argument("--in-flight", type=int, default=4, help="SummitBuffer max_in_flight")
    parser.add_argument("--dsn", default=None, help="PostgreSQL (default: embedded)")
    parser.add_argument("--cache", type=Path, default=Path("var/bench/comcam_visit"))
    parser.add_argument("--workdir", type=Path, default=None)
    return parser.parse_args()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(parse())), indent=1))
