"""base.heap: a freed large array is reused without faulting its pages in again."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

_PROBE = """
import json, resource, sys
import numpy as np
sys.path.insert(0, {root!r})
from base.heap import keep_freed_memory
on = keep_freed_memory() if {tune} else False
def faults():
    a = np.ones((4096, 4096), np.float32)  # 64 MB: over glibc's largest mmap threshold
    del a
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    b = np.ones((4096, 4096), np.float32)
    f = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
    del b
    return f
print(json.dumps({{"on": on, "faults": faults()}}))
"""


def _probe(tune: bool) -> dict:
    code = _PROBE.format(root=str(ROOT), tune=tune)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_plane_is_reused_without_page_faults() -> None:
    default, tuned = _probe(False), _probe(True)
    assert tuned["on"] is True
    # 64 MB is 16,384 pages of 4 kB (32 huge pages): the default maps it afresh.
    assert default["faults"] >= 30
    assert tuned["faults"] < max(5, default["faults"] // 10)


def test_non_positive_trim_is_refused() -> None:
    from base.heap import keep_freed_memory

    assert keep_freed_memory(0) is False
