"""Run CPU-heavy work in a child process that can be killed when it hangs.

A CCD that hangs (a pathological image, a runaway fit) must not hold its processor forever:
the caller gives up after a timeout, the child is killed and a fresh one takes the next job.
Work is named as ``module:function`` so the child imports it itself; state the function keeps
in its own module (a preload cache) lives as long as the child does.
"""

from __future__ import annotations

import asyncio
import importlib
import multiprocessing as mp
import threading
import time
import traceback
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from base.heap import keep_freed_memory
from state.errors import ConfigurationError, DmcsError, NonRetriableError


class WorkTimeoutError(NonRetriableError):
    """The work did not finish within its time limit; the child was killed."""


class WorkerDiedError(NonRetriableError):
    """The child process died (killed, out of memory, crashed) before answering."""


class RemoteError(NonRetriableError):
    """The work raised an exception that is not a dmcs error; the traceback is kept."""


def _resolve(target: str) -> Any:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


#: CPU seconds this child spent outside its jobs (receiving and unpickling requests, pickling
#: and sending answers) since :func:`take_outside_cpu` last read it.
_outside_cpu_s = [0.0]


def take_outside_cpu() -> float:
    """CPU seconds of this child outside its jobs since the last call (the hand-off through the
    pipe), then zeroed; a job reads it to carry the hand-off's cost in its own answer."""
    taken, _outside_cpu_s[0] = _outside_cpu_s[0], 0.0
    return taken


def _serve(conn: Connection) -> None:
    keep_freed_memory()
    mark = time.process_time()
    while True:
        try:
            target, args, kwargs = conn.recv()
        except EOFError:
            return
        _outside_cpu_s[0] += time.process_time() - mark
        try:
            reply: tuple[str, Any] = ("ok", _resolve(target)(*args, **kwargs))
        except DmcsError as e:
            reply = ("dmcs", e)
        except Exception as e:  # noqa: BLE001 -- reported to the caller with its traceback
            reply = ("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
        mark = time.process_time()
        try:
            conn.send(reply)
        except Exception as e:  # noqa: BLE001 -- an answer that cannot be pickled
            conn.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))


class IsolatedWorker:
    """One child process, one job at a time, each with its own timeout."""

    def __init__(self, name: str = "worker") -> None:
        self.name = name
        self._ctx = mp.get_context("spawn")
        self._process: BaseProcess | None = None
        self._conn: Connection | None = None
        self._lock = asyncio.Lock()
        self.restarts = 0

    def _ensure(self) -> Connection:
        if self._process is None or not self._process.is_alive() or self._conn is None:
            self._kill()
            parent, child = self._ctx.Pipe()
            process = self._ctx.Process(target=_serve, args=(child,), name=self.name, daemon=True)
            process.start()
            child.close()
            self._process, self._conn = process, parent
        return self._conn

    def _kill(self) -> None:
        process, conn = self._process, self._conn
        self._process = self._conn = None
        if process is not None:
            if process.is_alive():
                process.kill()
            process.join(timeout=5)
            self.restarts += 1
        if conn is not None:
            conn.close()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def run(self, target: str, *args: Any, timeout: float, **kwargs: Any) -> Any:
        """``target(*args, **kwargs)`` in the child; kills it after ``timeout`` seconds."""
        if ":" not in target:
            raise ConfigurationError(f"work target must be 'module:function', got {target!r}")
        async with self._lock:
            conn = self._ensure()
            conn.send((target, args, kwargs))
            done = threading.Event()
            try:
                async with asyncio.timeout(timeout):
                    kind, value = await asyncio.to_thread(_receive, conn, done)
            except TimeoutError as e:
                self._kill()
                raise WorkTimeoutError(f"{target} did not finish within {timeout:.0f} s") from e
            except (EOFError, OSError) as e:
                self._kill()
                raise WorkerDiedError(f"the worker process died while running {target}") from e
            except asyncio.CancelledError:
                self._kill()
                raise
            finally:
                done.set()
        if kind == "ok":
            return value
        if kind == "dmcs":
            raise value
        raise RemoteError(f"{target} failed: {value}")

    def close(self) -> None:
        self._kill()


def _receive(conn: Connection, done: threading.Event) -> tuple[str, Any]:
    while not done.is_set():
        if conn.poll(0.2):
            result: tuple[str, Any] = conn.recv()
            return result
    raise EOFError("abandoned")
