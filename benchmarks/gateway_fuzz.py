"""Fuzz a running dmcs gateway at full size; print what it did to everyone else, as JSON.

The suite's fuzz inputs (tests/fuzz_inputs.py) at the size issue 15 asks for: ≥ 50,000 random
and adversarial frames over both encodings from anonymous, scientist, broker, batch and OCS
connections (the OCS's commands are sent as pings, so every state change is unauthorized),
then ≥ 500 malformed raw HTTP requests, against the default system (`dmcs run`'s), while a
bystander follows every component's heartbeats. Reported: HTTP 500s, fuzz and bystander
connections dropped, missed heartbeats, state changes, the endpoints' answers afterwards, and
the gateway process's RSS before (after a warm-up run), at its peak and after the fuzzing
clients left (target: back within 10 % of before).

The fuzzing clients run in a child process, so the gateway's process holds only the gateway,
the bystander and this script.

    python benchmarks/gateway_fuzz.py [--frames 50000] [--requests 500] [--pool 600]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import sys
import time
from collections import Counter
from typing import Any

import aiohttp

from commands.client import Client
from commands.protocol import SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK
from commands.server import serve
from config.system import load_system_config, load_tokens
from tests.fuzz_inputs import (
    Fuzzer,
    collect,
    encode,
    harmless,
    http_requests,
    messages,
    recombined,
    send_raw,
)

IDENTITIES = (None, "scientist", "broker", "batch", "ocs")
ENDPOINTS = ("/healthz", "/readyz", "/metrics", "/api/v1/status", "/api/v1/dashboard/snapshot")


def rss_mib() -> float:
    """This process's resident set size, MiB (Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def identity_tokens() -> dict[str, str]:
    config = load_system_config()
    return {who: token for token, who in load_tokens(config.gateway.tokens_file).items()}


# ---------------------------------------------------------------------------- the child
async def fuzz(
    url: str, host: str, port: int, frames: int, requests: int, pool: int
) -> dict[str, Any]:
    tokens = identity_tokens()
    started = time.perf_counter()
    examples = await asyncio.to_thread(collect, messages, pool)
    http = await asyncio.to_thread(collect, http_requests(tokens.values()), requests)
    generated = time.perf_counter() - started
    fuzzers: list[tuple[Fuzzer, str | None]] = []
    async with contextlib.AsyncExitStack() as stack:
        readers = []
        for who in IDENTITIES:
            headers = {"Authorization": f"Bearer {tokens[who]}"} if who else {}
            session = await stack.enter_async_context(aiohttp.ClientSession(headers=headers))
            for binary in (False, True):
                protocol = SUBPROTOCOL_MSGPACK if binary else SUBPROTOCOL_JSON
                ws = await stack.enter_async_context(
                    session.ws_connect(url, protocols=(protocol,), max_msg_size=0)
                )
                fuzzer = Fuzzer(ws, binary)
                fuzzers.append((fuzzer, who))
                readers.append(asyncio.create_task(fuzzer.read()))
        sent = 0
        t0 = time.perf_counter()
        for i, message in enumerate(recombined(examples, frames)):
            fuzzer, who = fuzzers[i % len(fuzzers)]
            await fuzzer.send(encode(harmless(message, who), fuzzer.binary))
            sent += 1
        for fuzzer, _ in fuzzers:
            await fuzzer.send(encode({"v": 1, "op": "ping", "id": -1}, fuzzer.binary))
        answered = 0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(300):
                for (fuzzer, _), reader in zip(fuzzers, readers, strict=True):
                    pong = asyncio.create_task(fuzzer.ponged.wait())
                    await asyncio.wait([pong, reader], return_when=asyncio.FIRST_COMPLETED)
                    answered += fuzzer.ponged.is_set()
        frames_s = time.perf_counter() - t0
        dropped = sum(1 for f, _ in fuzzers if f.ws.closed)
        errors = sum(f.errors for f, _ in fuzzers)
        codes = sorted(set().union(*(f.codes for f, _ in fuzzers)))
        for task in readers:
            task.cancel()
    statuses: Counter[int] = Counter()
    t0 = time.perf_counter()
    for request in http:
        statuses[await send_raw(host, port, request)] += 1
    return {
        "generated_s": round(generated, 1),
        "frames": sent,
        "frame_connections": len(fuzzers),
        "frames_s": round(frames_s, 1),
        "error_frames": errors,
        "error_codes": codes,
        "connections_answering_at_end": answered,
        "fuzz_connections_dropped": dropped,
        "http_requests": sum(statuses.values()),
        "http_s": round(time.perf_counter() - t0, 1),
        "http_statuses": {str(k): v for k, v in sorted(statuses.items())},
        "http_500s": statuses[500],
    }


# ----------------------------------------------------------------------- the gateway
class Watch:
    """The bystander: every component's heartbeats, on a connection that must not drop."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.seqs: dict[str, list[int]] = {}
        self.failure: BaseException | None = None

    async def follow(self) -> None:
        try:
            async for event in self.client.subscribe(topics=["heartbeat"], snapshot=False):
                self.seqs.setdefault(event.component, []).append(event.seq)
        except Exception as e:
            self.failure = e
            raise

    def missed(self) -> int:
        return sum(s[-1] - s[0] + 1 - len(s) for s in self.seqs.values() if s)

    def beats(self) -> int:
        return sum(len(s) for s in self.seqs.values())


async def states(http: aiohttp.ClientSession) -> dict[str, str]:
    async with http.get("/api/v1/status") as r:
        return {c["name"]: c["summaryState"] for c in (await r.json())["components"]}


async def child(
    url: str, host: str, port: int, frames: int, requests: int, pool: int
) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--child", url, host, str(port),
        "--frames", str(frames), "--requests", str(requests), "--pool", str(pool),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"the fuzzing child failed ({process.returncode})")
    result: dict[str, Any] = json.loads(out)
    return result


async def settled_rss(seconds: float = 5.0) -> float:
    await asyncio.sleep(seconds)
    gc.collect()
    return rss_mib()


async def main(args: argparse.Namespace) -> dict[str, Any]:
    config = load_system_config(name="fuzzbench")
    tokens = identity_tokens()
    async with serve(config, port=0) as running:
        url, host, port = running.ws_url, running.host, running.port
        async with Client(url, token=tokens["operator"], reconnect=False) as client:
            watch = Watch(client)
            follower = asyncio.create_task(watch.follow())
            async with aiohttp.ClientSession(running.http_url) as http:
                await asyncio.sleep(3 * config.heartbeat_interval)
                before = await states(http)
                warmup = await child(url, host, port, args.pool, 50, args.pool)
                rss_before = await settled_rss()
                peak = rss_before

                async def sample() -> None:
                    nonlocal peak
                    while True:
                        peak = max(peak, rss_mib())
                        await asyncio.sleep(0.5)

                sampler = asyncio.create_task(sample())
                beats_before = watch.beats()
                run = await child(url, host, port, args.frames, args.requests, args.pool)
                sampler.cancel()
                rss_after = await settled_rss()
                after = await states(http)
                endpoints = {}
                for path in ENDPOINTS:
                    async with http.get(path) as r:
                        endpoints[path] = r.status
            bystander_dropped = follower.done() or watch.failure is not None
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await follower
    changed = {n: [s, after.get(n)] for n, s in before.items() if s != after.get(n)}
    return {
        "benchmark": "gateway_fuzz",
        "components": len(before),
        "warmup": {"frames": warmup["frames"], "http_requests": warmup["http_requests"]},
        "fuzz": run,
        "http_500s": run["http_500s"],
        "fuzz_connections_dropped": run["fuzz_connections_dropped"],
        "bystander_dropped": int(bystander_dropped),
        "bystander_heartbeats_during": watch.beats() - beats_before,
        "missed_heartbeats": watch.missed(),
        "client_gap_count": client.gaps.missing,
        "unauthorized_state_changes": len(changed),
        "state_changes": changed,
        "endpoints_after": endpoints,
        "gateway_rss_mib": {
            "before": round(rss_before, 1),
            "peak": round(peak, 1),
            "after": round(rss_after, 1),
            "after_vs_before_pct": round(100 * (rss_after - rss_before) / rss_before, 1),
        },
        "targets": {"http_500s": 0, "dropped": 0, "missed_heartbeats": 0, "rss_within_pct": 10},
    }


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=50_000)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--pool", type=int, default=600, help="Hypothesis examples recombined")
    parser.add_argument("--child", nargs=3, metavar=("URL", "HOST", "PORT"), help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse()
    if arguments.child:
        url, host, port = arguments.child
        result = asyncio.run(
            fuzz(url, host, int(port), arguments.frames, arguments.requests, arguments.pool)
        )
    else:
        result = asyncio.run(main(arguments))
    print(json.dumps(result, indent=2))
