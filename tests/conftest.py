from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture
def mocks():
    """Fresh Pulumi mocks (preview=False) and empty config for one test."""
    from tests.mocks import install_mocks

    return install_mocks()
