"""The camera's own record of each readout in its DAQ staging area: events only notify.

Before it sends ``endReadout``, the camera writes the event's payload durably next to the raws
it lists (``<staging>/<imageName>/endReadout.json``). A SummitBuffer that was down, restarting
or not ENABLED when the event went out reads these records and takes in every raw it does not
hold (:meth:`summit.summit_buffer.SummitBuffer.reconcile`), so no raw is lost because a
component or the event bus restarted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from state.clock import tai_now
from state.durable import write_durably
from state.errors import StorageError

RECORD = "endReadout.json"


@dataclass(frozen=True)
class ReadoutRecord:
    path: Path
    #: The ``endReadout`` payload (``imageName``, ``visit``, ``camera``, ``images`` ...).
    payload: dict[str, Any]
    #: When the camera wrote it (TAI), the end-of-readout time of its raws.
    tai: float


def write_record(staging: Path, payload: dict[str, Any]) -> Path:
    """Write the readout record of ``payload`` under ``staging`` (atomic, fsynced)."""
    path = Path(staging) / str(payload["imageName"]) / RECORD
    body = json.dumps({"tai": tai_now(), "endReadout": payload}, sort_keys=True).encode()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_durably(path, body)
    except OSError as e:
        raise StorageError(f"cannot write the readout record {path}: {e}") from e
    return path


def staging_root(url_path: Path) -> Path:
    """The staging area of a staged raw (``<staging>/<imageName>/<file>``)."""
    return url_path.parent.parent


def read_records(staging: Path, skip: set[str] | frozenset[str] = frozenset()) -> list[Any]:
    """Readable records under ``staging`` in image-name order, and unreadable ones as errors.

    Folders named in ``skip`` are not read. Returns a list of ``ReadoutRecord`` or
    ``(path, reason)`` for a record that cannot be read (never raises for one record).
    """
    out: list[Any] = []
    try:
        folders = sorted(p for p in Path(staging).iterdir() if p.is_dir())
    except FileNotFoundError:
        return []
    except OSError as e:
        raise StorageError(f"cannot list the camera staging area {staging}: {e}") from e
    for folder in folders:
        if folder.name in skip:
            continue
        path = folder / RECORD
        try:
            doc = json.loads(path.read_bytes())
            out.append(ReadoutRecord(path, dict(doc["endReadout"]), float(doc["tai"])))
        except FileNotFoundError:
            continue  # raws being staged; the record comes with the endReadout
        except (OSError, ValueError, KeyError, TypeError) as e:
            out.append((path, f"{type(e).__name__}: {e}"))
    return out
