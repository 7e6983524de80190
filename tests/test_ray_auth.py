"""Joining a local Ray by address authenticates with the user's token, and only then."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from actors.ray_auth import use_local_token


@pytest.mark.parametrize(
    ("has_token", "preset", "expected"),
    [(True, None, "token"), (False, None, None), (True, "disabled", "disabled")],
)
def test_token_mode_only_with_a_token_and_no_explicit_choice(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    has_token: bool,
    preset: str | None,
    expected: str | None,
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    if preset is None:
        monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    else:
        monkeypatch.setenv("RAY_AUTH_MODE", preset)
    if has_token:
        (tmp_path / ".ray").mkdir()
        (tmp_path / ".ray" / "auth_token").write_text("x" * 64)
    monkeypatch.delitem(sys.modules, "ray", raising=False)
    use_local_token()
    assert os.environ.get("RAY_AUTH_MODE") == expected


def test_a_process_that_imported_ray_is_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray  # noqa: F401 -- the condition under test

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("x" * 64)
    use_local_token()
    assert "RAY_AUTH_MODE" not in os.environ
