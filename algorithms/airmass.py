"""Airmass from altitude."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray


def airmass_kasten_young(altitude_deg: ArrayLike) -> NDArray[np.float64]:
    """Relative airmass (Kasten & Young 1989), finite down to the horizon.

    Raises ValueError for altitudes outside [0, 90] degrees.
    """
    alt = np.asarray(altitude_deg, dtype=np.float64)
    if np.any(~np.isfinite(alt)) or np.any((alt < 0) | (alt > 90)):
        raise ValueError("altitude must be finite and within [0, 90] degrees")
    return 1.0 / (np.sin(np.radians(alt)) + 0.50572 * (alt + 6.07995) ** -1.6364)
