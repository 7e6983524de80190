"""Ray's token authentication for processes that join a local cluster by address.

A local Ray that ``ray.init()`` starts (``dmcs run``) requires the token in the user's
``~/.ray/auth_token``, but a process that joins it by address (``dmcs reprocess --address``,
``dmcs run --address``) sends no token unless ``RAY_AUTH_MODE`` says so, and Ray reads that
when it is imported. So this module does not import Ray, and the CLI calls
:func:`use_local_token` before anything does.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def use_local_token() -> None:
    """Authenticate to Ray with this user's token when there is one.

    An explicit ``RAY_AUTH_MODE`` is left as it is, and so is a process that has imported Ray
    already: Ray has read the mode then, and the clusters it starts would disagree with it.
    """
    if "ray" in sys.modules or "RAY_AUTH_MODE" in os.environ:
        return
    if (Path.home() / ".ray" / "auth_token").is_file():
        os.environ["RAY_AUTH_MODE"] = "token"
