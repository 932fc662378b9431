"""The repository's lock (constraints.txt, made by scripts/lock) as {package: version} for the
running interpreter and platform (environment markers evaluated), and whether this run installed
through it (scripts/try-newest sets CROSSENT_UNLOCKED=1: the newest releases, not the lock;
scripts/test-torch sets CROSSENT_UNLOCKED_PACKAGES to the names it installed at other versions:
another torch build and what must move with it)."""

from __future__ import annotations

import os
import pathlib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = pathlib.Path(__file__).resolve().parents[1]
LOCK = ROOT / "constraints.txt"


def locked_versions(path: pathlib.Path = LOCK) -> dict[str, str]:
    """Canonical package name -> the pinned version that applies here."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate():
            continue
        (spec,) = req.specifier  # a lock pins exactly: one ==
        assert spec.operator == "==", line
        pins[canonicalize_name(req.name)] = spec.version
    return pins


def unlocked() -> bool:
    return os.environ.get("CROSSENT_UNLOCKED", "") not in ("", "0")


def unlocked_packages() -> set[str]:
    """Canonical names this run installed outside the lock (CROSSENT_UNLOCKED_PACKAGES, comma-separated)."""
    names = os.environ.get("CROSSENT_UNLOCKED_PACKAGES", "")
    return {canonicalize_name(n) for n in names.split(",") if n.strip()}
