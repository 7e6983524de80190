"""The same simulation options and seed give byte-identical files (issue 16, item 6)."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from commands.cli import main


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _simulate(out: Path) -> None:
    args = ["simulate", "night", "--camera", "mini", "--visits", "3", "--seed", "1", "--raws"]
    result = CliRunner().invoke(main, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output


def test_same_seed_gives_identical_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _simulate(tmp_path / "a")
    # A later wall clock for the second run: anything that stamps the time into a file
    # (gzip member headers of tile-compressed FITS, for one) would change its bytes.
    monkeypatch.setattr(gzip, "time", SimpleNamespace(time=lambda: 2_000_000_000.0))
    _simulate(tmp_path / "b")
    a, b = _digests(tmp_path / "a"), _digests(tmp_path / "b")
    assert any(name.startswith("templates/") for name in a)
    assert any(name.startswith("raws/") for name in a)
    assert a.keys() == b.keys()
    assert [name for name in a if a[name] != b[name]] == []


def test_a_night_rewritten_and_stopped_midway_has_no_manifest(tmp_path: Path) -> None:
    """A night simulated again into the same folder and stopped part-way (here its calibrations
    cannot be written) is no night at all, not the older night's manifest over a mix of files
    that ``dmcs replay`` would reuse."""
    out = tmp_path / "night"
    args = ["simulate", "night", "--camera", "mini", "--visits", "2", "--no-templates"]
    first = CliRunner().invoke(main, [*args, "--seed", "1", "--no-calibs", "--out", str(out)])
    assert first.exit_code == 0, first.output
    assert (out / "manifest.json").is_file()
    (out / "calibs").write_text("not a folder")
    again = CliRunner().invoke(main, [*args, "--seed", "2", "--out", str(out)])
    assert again.exit_code != 0
    assert not (out / "manifest.json").exists()
