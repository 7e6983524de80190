"""Validated settings of the components defined so far (frozen once loaded)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from config.system import read_toml
from state.errors import ConfigurationError

T = TypeVar("T", bound=BaseModel)


class Site(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    #: Cerro Pachón, the Rubin Observatory summit.
    name: str = "Cerro Pachon"
    latitude: float = Field(default=-30.244639, ge=-90, le=90)
    longitude: float = Field(default=-70.749417, ge=-180, le=180)
    height: float = 2663.0


class HeaderServiceSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    telescope: str = "Simonyi Survey Telescope"
    instrument: str = "LSSTCam"
    #: Camera readout time, seconds, added to the exposure time to expect ``endReadout``.
    readout_time: float = Field(default=2.0, ge=0)
    #: Seconds past the expected end of readout before a missing ``endReadout`` is given up.
    readout_timeout: float = Field(default=30.0, gt=0)
    site: Site = Site()


def validate_settings(model: type[T], values: Mapping[str, Any], component: str) -> T:
    try:
        return model.model_validate(dict(values))
    except ValidationError as e:
        raise ConfigurationError(f"invalid settings for {component}:\n{e}") from e


OVERRIDES_DIR = Path(__file__).resolve().parent / "overrides"


def available_overrides(component: str) -> tuple[str, ...]:
    """The configuration overrides ``start`` accepts for ``component`` (its override files)."""
    folder = OVERRIDES_DIR / component
    return tuple(sorted(p.stem for p in folder.glob("*.toml"))) if folder.is_dir() else ()


def resolve_settings(
    model: type[T], base: Mapping[str, Any], component: str, override: str
) -> tuple[T, dict[str, Any]]:
    """Validate ``base`` settings with the named override file merged on top.

    Overrides live in ``config/overrides/<component>/<override>.toml``. Returns the settings
    and the ``configurationApplied`` payload naming what was applied.
    """
    values = dict(base)
    applied = "default"
    if override:
        folder = OVERRIDES_DIR / component
        path = folder / f"{override}.toml"
        if not override.replace("_", "").replace("-", "").isalnum() or not path.is_file():
            available = available_overrides(component)
            raise ConfigurationError(
                f"{component} has no configuration {override!r}; "
                f"available: {', '.join(available) or 'none'}"
            )
        values.update(read_toml(path))
        applied = override
    settings = validate_settings(model, values, component)
    return settings, {"configurations": applied, "url": "", "otherInfo": ""}
