"""scripts/verify.py argument and input mistakes: exit 2, one line per problem naming the
argument or file, before any request is sent (every case here fails before the network)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.verify.vm_disk import check_vm_disk
from tests.cli_harness import assert_user_error, run
from tests.sample import TEST_KEY

GOOD = json.dumps(
    {"mirrors": {"docker.io": {"endpoint": "http://127.0.0.1:9", "container": "registry"}}}
).encode()

# (id, outputs.json content (None: no file), extra argv, what the line(s) name)
CASES: list[tuple[str, bytes | None, list[str], list[str]]] = [
    ("outputs-missing", None, [], ["outputs.json: cannot read: No such file or directory"]),
    ("outputs-not-json", b"{mirrors", [], ["outputs.json: not JSON"]),
    ("outputs-not-utf8", b"\xff\xfe{}", [], ["outputs.json: cannot read: not UTF-8"]),
    ("outputs-list", b"[1, 2]", [], ["outputs.json: no 'mirrors' output"]),
    ("outputs-empty", b"{}", [], ["outputs.json: no 'mirrors' output"]),
    ("mirrors-list", b'{"mirrors": []}', [], ["outputs.json: no 'mirrors' output"]),
    ("mirror-number", b'{"mirrors": {"docker.io": 5}}', [], ["mirrors.docker.io.endpoint"]),
    ("mirror-no-endpoint", b'{"mirrors": {"ghcr.io": {}}}', [], ["mirrors.ghcr.io.endpoint"]),
    (
        "endpoint-not-url",
        b'{"mirrors": {"ghcr.io": {"endpoint": "10.0.20.10:5010"}}}',
        [],
        ["mirrors.ghcr.io.endpoint: expected http(s)://HOST:PORT"],
    ),
    (
        "endpoint-trailing-newline",
        b'{"mirrors": {"ghcr.io": {"endpoint": "http://10.0.20.10:5010\\n"}}}',
        [],
        ["mirrors.ghcr.io.endpoint: expected http(s)://HOST:PORT"],
    ),
    (
        "metrics-url-number",
        b'{"mirrors": {"ghcr.io": {"endpoint": "http://127.0.0.1:9", "metricsUrl": 5}}}',
        [],
        ["mirrors.ghcr.io.metricsUrl: expected http://HOST:PORT/metrics"],
    ),
    (
        "vm-threshold-text",
        b'{"mirrors": {"ghcr.io": {"endpoint": "http://127.0.0.1:9"}},'
        b' "registryVm": {"address": "127.0.0.1", "diskUsageThresholdPercent": "eighty"}}',
        [],
        ["outputs.json: registryVm: expected"],
    ),
    ("image-no-equals", GOOD, ["--image", "ghcr.io"], ["--image ghcr.io: expected HOST=REPO:TAG"]),
    ("image-empty-repo", GOOD, ["--image", "ghcr.io="], ["--image 'ghcr.io=': expected"]),
    ("node-image-no-host", GOOD, ["--node-image", "busybox:1.36"], ["--node-image busybox:1.36"]),
    ("node-image-space", GOOD, ["--node-image", "a/b c"], ["--node-image 'a/b c'"]),
    ("nodes-without-settings", GOOD, ["--nodes"], ["--nodes needs --stack or --stack-file"]),
    ("timeout-zero", GOOD, ["--timeout", "0"], ["--timeout: expected seconds greater than 0"]),
    ("timeout-text", GOOD, ["--timeout", "soon"], ["--timeout: expected seconds"]),
    ("unknown-option", GOOD, ["--bogus"], ["unrecognized arguments: --bogus"]),
    ("stack-file-missing", GOOD, ["--nodes", "--stack-file", "nope.yaml"], ["nope.yaml: no such"]),
    (
        "stack-file-broken",
        GOOD,
        ["--nodes", "--stack-file", "bad.yaml"],
        ["bad.yaml: expected a mapping with a 'config:' key, got a list"],
    ),
]


@pytest.mark.parametrize(
    ("outputs", "argv", "names"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_a_mistake_is_one_line_per_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, outputs: bytes | None, argv: list, names: list
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.yaml").write_text("- a list\n")
    if outputs is not None:
        (tmp_path / "outputs.json").write_bytes(outputs)
    outcome = run("verify", ["--outputs", "outputs.json", *argv])
    assert_user_error(outcome, names, lines=len(names))


def test_every_argument_problem_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    argv = ["--outputs", "o.json", "--image", "x", "--node-image", "y", "--nodes"]
    outcome = run("verify", argv)
    assert_user_error(outcome, ["--image x", "--node-image y", "--nodes needs"], lines=3)


def test_no_ssh_client_is_a_failed_disk_check_not_a_traceback(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    outputs = {"registryVm": {"address": "127.0.0.1", "sshUser": "debian",
                              "sshHostPublicKey": TEST_KEY}}  # fmt: skip
    (check,) = check_vm_disk(outputs, None, [], timeout=5)
    assert (check.ok, check.detail) == (False, "no ssh client here")
    assert "openssh-client" in check.advice


def test_a_vm_with_no_exported_host_key_is_not_contacted(monkeypatch: pytest.MonkeyPatch):
    """Outputs of a stack deployed before the program made the VM's key: no key to pin, so the
    check fails naming why instead of trusting whatever answers (PATH is empty: had it tried to
    run ssh, the detail would say "no ssh client here")."""
    monkeypatch.setenv("PATH", "/nonexistent")
    outputs = {"registryVm": {"address": "127.0.0.1", "sshUser": "debian"}}
    (check,) = check_vm_disk(outputs, None, [], timeout=5)
    assert not check.ok
    assert "no sshHostPublicKey in the registryVm output" in check.detail
    assert "pulumi up" in check.advice
