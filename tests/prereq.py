"""Prerequisites of integration tests.

On a laptop without a tool (or without root) an integration test skips with the reason.
Under CI=true a missing prerequisite FAILS the test: a skipped proof is no proof.
"""

from __future__ import annotations

import os
import shutil

import pytest

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def missing(reason: str) -> None:
    """Skip (laptop) or fail (CI) because a prerequisite is missing."""
    if IN_CI:
        pytest.fail(f"prerequisite missing under CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


def require_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        missing(f"{name} is not installed (.ci/run installs it)")
    assert path is not None
    return path


def require_root() -> None:
    if os.geteuid() != 0:
        missing("needs root (network namespaces, containerd, sshd)")
