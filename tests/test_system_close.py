"""Stopping a system closes each component (its tasks cancelled, its last events sent) before
its actor is killed, so no task is left pending in a process killed under it."""

from __future__ import annotations

from pathlib import Path

from commands.server import serve
from config.system import GatewayConfig, SystemConfig
from tests.conftest import component_spec


async def test_a_stopped_system_closes_its_components_before_killing_them(
    ray_session: None, tokens_file: Path, tmp_path: Path
) -> None:
    config = SystemConfig.model_validate(
        {
            "name": "closing",
            "data_dir": tmp_path,
            "gateway": GatewayConfig(tokens_file=tokens_file, port=0),
            "components": [
                component_spec(name, "tests.night_emitter:CloseRecorder")
                for name in ("CloserA", "CloserB")
            ],
        }
    )
    async with serve(config, port=0) as running:
        assert set(running.system.components) == {"CloserA", "CloserB"}
        assert not list(tmp_path.glob("*/closed"))
    assert sorted(p.parent.name for p in tmp_path.glob("*/closed")) == ["CloserA", "CloserB"]
    assert not running.system.components
