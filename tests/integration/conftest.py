"""Fixtures shared by the real-daemon tests."""

from __future__ import annotations

import pytest

from tests.integration.containerd_versions import VERSIONS, ContainerdVersion


@pytest.fixture(params=VERSIONS, ids=lambda version: version.series)
def containerd(request: pytest.FixtureRequest) -> ContainerdVersion:
    """Each containerd version of the table in turn; skips (fails under CI=true) if absent."""
    version: ContainerdVersion = request.param
    version.require()
    return version


@pytest.fixture
def private_system() -> bool:
    """For test_node_e2e's ``world`` (which other modules share): override with True in a module
    whose node gets users and sudo rules (the read identity): testhost's ``private_system``."""
    return False
