"""The trained DIASource reliability model shipped with dmcs, read from its JSON file.

``reliability_model.json`` beside this module is written by ``scripts/train_reliability.py``;
``algorithms.reliability.ReliabilityModel`` evaluates it. Components load it at ``start``, so a
missing or malformed file is a configuration error there, not a failure mid-night.
"""

from __future__ import annotations

import json
from pathlib import Path

from algorithms.reliability import ReliabilityModel
from state.errors import ConfigurationError

DEFAULT_MODEL = Path(__file__).resolve().parent / "reliability_model.json"


def load_reliability_model(path: Path | str | None = None) -> ReliabilityModel:
    """The model at ``path`` (empty or None: the one shipped in the repository)."""
    p = Path(path) if path else DEFAULT_MODEL
    try:
        data = json.loads(p.read_text())
    except OSError as e:
        raise ConfigurationError(f"cannot read the reliability model {p}: {e}") from e
    except ValueError as e:
        raise ConfigurationError(f"the reliability model {p} is not JSON: {e}") from e
    if not isinstance(data, dict):
        raise ConfigurationError(f"the reliability model {p} is not a JSON object")
    try:
        return ReliabilityModel.from_dict(data)
    except ValueError as e:
        raise ConfigurationError(f"the reliability model {p} is unusable: {e}") from e


def alert_threshold(model: ReliabilityModel, configured: float | None) -> float:
    """The configured alert threshold, or the one recommended when the model was trained."""
    if configured is not None:
        return float(configured)
    try:
        return float(model.metadata["recommendedThreshold"])
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigurationError(
            f"no alert threshold configured and model {model.version} recommends none"
        ) from e


def alertable_sql(threshold: str = "$1") -> str:
    """The APDB ``DiaSource`` rows that get an alert, as a SQL condition (``threshold``: the
    placeholder of the alert threshold): the rule of ``algorithms.association_run.
    alert_selection``, for reading a night's expected alert count back from the database."""
    return f'("diaObjectId" <> 0 OR "ssObjectId" <> 0) AND reliability >= {threshold}'
