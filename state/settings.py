"""A component's settings: one pydantic model per component, declared as a class attribute.

The base validates the component's ``settings`` with :attr:`Configurable.settings_model` when
the component is built (``self.config``; bad settings: ConfigurationError, the component is not
built) and again on ``start``, with the named override merged on top
(:meth:`Configurable.configure`). Overrides are TOML files ``<overrides_dir>/<component>/
<override>.toml``; the launcher gives the folder (``config.components.OVERRIDES_DIR``).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ValidationError

from state.errors import CommandRejected, ConfigurationError

T = TypeVar("T", bound=BaseModel)


def validate_settings(model: type[T], values: Mapping[str, Any], component: str) -> T:
    """``values`` as ``model``; ConfigurationError naming the component and the fields."""
    try:
        return model.model_validate(dict(values))
    except ValidationError as e:
        raise ConfigurationError(f"invalid settings for {component}:\n{e}") from e


def override_names(folder: Path | None, component: str) -> tuple[str, ...]:
    """The overrides ``start`` accepts for ``component`` (its override files)."""
    where = folder / component if folder is not None else None
    return tuple(sorted(p.stem for p in where.glob("*.toml"))) if where and where.is_dir() else ()


def read_override(folder: Path | None, component: str, override: str) -> dict[str, Any]:
    """The values of one named override; ConfigurationError if there is no such override."""
    known = override_names(folder, component)
    if folder is None or override not in known:
        available = ", ".join(known) or "none"
        raise ConfigurationError(
            f"{component} has no configuration {override!r}; available: {available}"
        )
    path = folder / component / f"{override}.toml"
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigurationError(f"configuration {override!r} of {component}: {e}") from e


class Configurable:
    """The settings part of :class:`state.controller.Controller`."""

    #: The component's settings model; None: a component without settings (no overrides).
    settings_model: ClassVar[type[BaseModel] | None] = None
    version: ClassVar[str]
    name: str
    settings: Mapping[str, Any]
    #: Where the component's named overrides are (None: it has none).
    overrides_dir: Path | None
    #: The validated settings: an instance of :attr:`settings_model`.
    config: Any

    def load_settings(self) -> Any:
        """The settings validated with :attr:`settings_model` (None without one)."""
        model = self.settings_model
        return validate_settings(model, self.settings, self.name) if model else None

    async def configure(self, override: str) -> dict[str, Any]:
        """Validate the settings with ``override`` merged and apply them; return the
        ``configurationApplied`` payload.

        An unknown override or settings that do not validate raise ConfigurationError before
        anything changes: ``start`` fails and the component stays where it was, settings too.
        """
        model = self.settings_model
        if model is None:
            if override:
                raise CommandRejected(f"{self.name} has no configuration {override!r}")
            applied = {"configurations": "default", "url": "", "otherInfo": ""}
            return {**applied, "version": self.version}
        values = dict(self.settings)
        if override:
            values.update(read_override(self.overrides_dir, self.name, override))
        config = validate_settings(model, values, self.name)
        self.check_settings(config)
        self.config = config
        applied = {"configurations": override or "default", "url": "", "otherInfo": ""}
        return {**applied, "version": self.version}

    def check_settings(self, config: Any) -> None:
        """Hook: refuse (ConfigurationError) settings that the model alone cannot judge."""
