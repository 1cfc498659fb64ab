"""Name -> implementation lookups for the engines' registries (objectives, launchers, eval backends).

One helper so that every registry fails the same way: the unknown name, the known ones, and a
"did you mean" when the name is close to one of them.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import TypeVar

from shadowft.errors import ShadowFTError

T = TypeVar("T")


def lookup(registry: Mapping[str, T], name: str, what: str) -> T:
    """`registry[name]`, or a `ShadowFTError` listing the known names of `what` (e.g. "objective")."""
    try:
        return registry[name]
    except KeyError:
        known = sorted(registry)
        close = difflib.get_close_matches(name, known, n=1)
        raise ShadowFTError(
            f"unknown {what} {name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""),
            hint=f"known {what}s: {', '.join(known)}",
        ) from None
