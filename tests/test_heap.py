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


_CCD_PROBE = """
import json, resource, sys
import numpy as np
sys.path.insert(0, {root!r})
from base.heap import keep_freed_memory
keep_freed_memory({args})
def planes():
    return [np.ones((4096, 4096), np.float32) for _ in range(18)]  # 1.2 GB, as a CCD's stages
kept = planes()
del kept  # all of it free at the heap's top, as at the end of a CCD
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
again = planes()
print(json.dumps({{"faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0}}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_ccds_worth_of_freed_planes_is_kept_for_the_next_ccd() -> None:
    def faults(args: str) -> int:
        code = _CCD_PROBE.format(root=str(ROOT), args=args)
        done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
        return int(json.loads(done.stdout)["faults"])

    # 1.2 GB is 295k pages of 4 kB (576 huge pages): a 1 GB bound trimmed it all away.
    assert faults("1 << 30") >= 500
    assert faults("") < 100
