from __future__ import annotations

import gc
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Finalize here what the Pulumi SDK leaves unawaited (Output coroutines of the engine tier's
    inline programs), before the terminal summary: left to a later garbage collection, their
    "never awaited" warning fired inside the compile() of a lazily imported module (hypothesis's
    summary hook) and CPython 3.11 aborted the whole run with "AST constructor recursion depth
    mismatch" after every test had passed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        gc.collect()


@pytest.fixture
def mocks():
    """Fresh Pulumi mocks (preview=False) and empty config for one test."""
    from tests.mocks import install_mocks

    return install_mocks()


@pytest.fixture(autouse=True)
def no_ssh_to_real_nodes(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside integration tests, the program must never reach for a node: the sample settings
    name real-looking private addresses, and tests send traffic only to hosts they made. A test
    that runs the program passes its own runner (tests.mocks.FakeFleet)."""
    if "integration" in request.keywords:
        return
    from components import fleet

    def refuse(agent_socket: str) -> fleet.StepRunner:
        raise AssertionError(
            "this test would SSH to the nodes of its settings: pass runner=FakeFleet(...)"
        )

    monkeypatch.setattr(fleet, "ssh_runner", refuse)
