"""Joining a local Ray by address authenticates with the user's token, and only then."""

from __future__ import annotations

import os
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
    use_local_token()
    assert os.environ.get("RAY_AUTH_MODE") == expected
