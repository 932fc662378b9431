"""The test environment is the lock's: every package constraints.txt pins for this interpreter is
installed at that version (so a release upstream cannot change the suite's verdict), and the lock
covers everything the dev extra needs."""

from __future__ import annotations

import importlib.metadata as md

import pytest
from packaging.utils import canonicalize_name
from packaging.version import Version

from lockfile import LOCK, locked_versions, unlocked, unlocked_packages


def _installed() -> dict[str, set[str]]:
    """Name -> the versions installed in the first sys.path entry that has the package (the copy
    Python imports; a copy further down the path, e.g. a system-wide one, is never imported).
    More than one version there means a stale dist-info left beside the new one by an upgrade."""
    found: dict[str, tuple[object, set[str]]] = {}
    for d in md.distributions():
        name = canonicalize_name(d.metadata["Name"])
        where = getattr(d, "_path", None)
        where = where.parent if where is not None else None
        first = found.setdefault(name, (where, set()))
        if first[0] == where:
            first[1].add(Version(d.version).public)
    return {name: versions for name, (_, versions) in found.items()}


@pytest.mark.skipif(unlocked(), reason="CROSSENT_UNLOCKED: scripts/try-newest reports the differences")
def test_the_installed_versions_are_the_locked_ones():
    installed, exempt = _installed(), unlocked_packages()
    wrong = {
        name: (sorted(installed[name]), pinned)
        for name, pinned in locked_versions().items()
        if name in installed and name not in exempt
        and Version(pinned).public not in installed[name]
    }
    assert not wrong, (
        f"installed (and pinned by {LOCK.name}): {wrong}; run `make test` on a fresh clone, or "
        "scripts/install dev to bring this venv to the lock")


def test_the_lock_pins_every_dev_dependency():
    from packaging.requirements import Requirement

    pins = locked_versions()
    missing = []
    for line in md.requires("crossent") or []:
        req = Requirement(line)
        if req.marker is not None and not any(
            req.marker.evaluate({"extra": e}) for e in ("dev", "cli", "hf", "triton")
        ):
            continue
        name = canonicalize_name(req.name)
        if name != "crossent" and name not in pins:
            missing.append(name)
    assert not missing, f"{missing} not in {LOCK.name}: run scripts/lock"


def test_locked_versions_read_markers(tmp_path):
    lock = tmp_path / "c.txt"
    lock.write_text("a==1.0 ; python_full_version < '3.0'\na==2.0 ; python_full_version >= '3.0'\n"
                    "b==3 # via x\n    # via y\n")
    assert locked_versions(lock) == {"a": "2.0", "b": "3"}
