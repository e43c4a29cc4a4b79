"""One row of verify's table: what was checked where, whether it passed, and what to do if not."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Check:
    upstream: str
    endpoint: str
    check: str
    ok: bool
    detail: str
    advice: str = ""
    image: str = ""  # node pulls: the image reference pulled


def _size(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if count < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")
