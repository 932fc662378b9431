"""The test environment is the lock's: every package constraints.txt pins for this interpreter is
installed at that version (so a release upstream cannot change the suite's verdict), and the lock
covers everything the dev extra needs."""

from __future__ import annotations

import importlib.metadata as md

import pytest
from packaging.utils import canonicalize_name
from packaging.version import Version

from lockfile import LOCK, locked_versions, unlocked, unlocked_packages


def _installed() -> dict[str, str]:
    return {canonicalize_name(d.metadata["Name"]): d.version for d in md.distributions()}


@pytest.mark.skipif(unlocked(), reason="CROSSENT_UNLOCKED: scripts/try-newest reports the differences")
def test_the_installed_versions_are_the_locked_ones():
    installed, exempt = _installed(), unlocked_packages()
    wrong = {
        name: (installed[name], pinned)
        for name, pinned in locked_versions().items()
        if name in installed and name not in exempt
        and Version(installed[name]).public != Version(pinned).public
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
