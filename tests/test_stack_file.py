"""Stack files as users get them wrong: every mistake is exit 2 and one line naming the file or
key, through ``scripts/render.py`` (and the loader ``verify.py`` shares), never a traceback,
never a secret, nothing written. And what the Pulumi CLI reads, this reads the same way."""

from __future__ import annotations

import copy
import math
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from components.settings import DEFAULT_UPSTREAMS
from components.stack_file import StackFileError, load_stack_settings, parse_yaml
from tests.cli_harness import assert_user_error, run, run_process, snapshot
from tests.sample import sample_raw
from tests.test_settings import BAD_INPUTS, SECRET, SECRET_PLACES, _set

TOKEN = "pulumi@pve!registry=0a1b2c3d-s3cr3t-token"


def _stack(raw: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    config = {f"registry-mirrors:{k}": v for k, v in (raw or sample_raw()).items()}
    config["registry-mirrors:proxmoxApiToken"] = {"secure": "v1:AAAAencrypted"}
    return {"config": config | extra}


def _valid_text(**extra: Any) -> str:
    return yaml.safe_dump(_stack(**extra), sort_keys=False)


def _render(tmp_path: Path, data: bytes) -> tuple[Any, Path]:
    stack_file = tmp_path / "Pulumi.t.yaml"
    stack_file.write_bytes(data)
    out = tmp_path / "out"
    before = snapshot(tmp_path)
    outcome = run("render", ["--stack-file", str(stack_file), "--out", str(out)])
    if outcome.code != 0:
        assert snapshot(tmp_path) == before, "something was written"
    return outcome, stack_file


VALID = _valid_text()
# A realistic stack file with a comment and a nested value, to break in each way below.
HAND_WRITTEN = """\
# dev
config:
  registry-mirrors:proxmox:
    endpoint: https://pve.lan:8006/
  registry-mirrors:vm:
    proxmoxNode: pve
    vmId: 210
    templateVmId: 9000
    address: 10.0.20.10/24
    gateway: 10.0.20.1
    sshPublicKeys:
      - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHx0pNnkYbq8R0CkYb8bHf2nHXq0ZfT0Vb6fJp3cS2aD a@b
  registry-mirrors:nodes:
    - name: k8s-cp-1
      address: 10.0.20.21
"""

# (id, file bytes, what its line(s) must name). "{file}" is the stack file's path.
BROKEN_FILES: list[tuple[str, bytes, list[str]]] = [
    ("document-list", b"- a\n- b\n", ["{file}: expected a mapping", "a list"]),
    ("document-string", b"just text\n", ["{file}: expected a mapping", "a string"]),
    ("document-number", b"42\n", ["{file}: expected a mapping", "a number"]),
    ("document-bool", b"true\n", ["{file}: expected a mapping", "a boolean"]),
    ("config-list", b"config:\n  - registry-mirrors:vm\n", ["{file}: config: expected a mapping"]),
    ("config-string", b"config: registry-mirrors\n", ["{file}: config:", "a string"]),
    ("config-number", b"config: 3\n", ["{file}: config:", "a number"]),
    (
        "latin1-comment",
        HAND_WRITTEN.replace("# dev", "# caf\xe9").encode("latin-1"),
        ["{file}:1:6:", "0xe9", "UTF-8"],
    ),
    (
        "latin1-value",
        HAND_WRITTEN.replace("pve\n", "pv\xe9\n", 1).encode("latin-1"),
        ["{file}:6:", "not UTF-8"],
    ),
    ("binary", bytes(range(256)) * 4, ["{file}:", "UTF-8"]),
    ("gzip", b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03", ["{file}:1:2:", "0x8b"]),
    ("utf16", "config: {}\n".encode("utf-16"), ["{file}:1:1:", "0xff"]),
    (
        "nul-byte",
        HAND_WRITTEN.replace("pve\n", "pve\x00\n", 1).encode(),
        ["{file}:6:", "not allowed"],
    ),
    ("control-char", b"config:\n  a: \x07\n", ["{file}:2:6:", "not allowed"]),
    (
        "dup-top-level",
        HAND_WRITTEN.encode() + b"config: {}\n",
        ["{file}:", "duplicate key config", "line 2"],
    ),
    (
        "dup-namespace-key",
        HAND_WRITTEN.encode() + b"  registry-mirrors:vm: {}\n",
        ["{file}:16:3:", "duplicate key registry-mirrors:vm", "line 5"],
    ),
    (
        "dup-nested",
        HAND_WRITTEN.replace("    gateway:", "    address: 10.0.20.11/24\n    gateway:").encode(),
        ["{file}:10:5:", "duplicate key address", "first at line 9"],
    ),
    (
        "dup-in-list-item",
        HAND_WRITTEN.encode() + b"      name: again\n",
        ["{file}:16:7:", "duplicate key name", "first at line 14"],
    ),
    ("dup-flow", b"config: {a: 1, a: 2}\n", ["{file}:1:16:", "duplicate key a"]),
    ("tab-indent", HAND_WRITTEN.replace("    vmId", "\tvmId").encode(), ["{file}:7:1:", "'\\t'"]),
    ("bad-indent", HAND_WRITTEN.replace("    vmId", "   vmId").encode(), ["{file}:7:", "mapping"]),
    (
        "unclosed-flow",
        b"config:\n  registry-mirrors:nodes: [a, b\n",
        ["{file}:3:1:", "flow sequence", "line 2"],
    ),
    ("unclosed-quote", b"config:\n  registry-mirrors:vm: 'abc\n", ["{file}:3:1:", "quoted scalar"]),
    ("two-documents", VALID.encode() + b"---\nconfig: {}\n", ["{file}:", "single document"]),
    (
        "undefined-alias",
        b"config:\n  registry-mirrors:vm: *base\n",
        ["{file}:2:24:", "alias 'base'"],
    ),
    (
        "bad-tag",
        b"config:\n  registry-mirrors:vm: !!int abc\n",
        ["{file}: a value with an explicit tag"],
    ),
    ("python-tag", b"config: !!python/object:os.system {}\n", ["{file}:1:9:", "constructor"]),
    ("unhashable-key", b"config:\n  ? [a, b]\n  : 1\n", ["{file}:2:5:", "plain value"]),
    (
        "missing-colon",
        HAND_WRITTEN.replace("vmId: 210", "vmId 210").encode(),
        ["{file}:8:5:", "expected ':'"],
    ),
    # No cache host at all: one line naming both ways to have one.
    (
        "empty-file",
        b"",
        ["vm: required with proxmox (the cache VM the program creates), or set host"],
    ),
    ("comments-only", b"# nothing yet\n", ["vm: required with proxmox"]),
    ("config-null", b"config:\n", ["vm: required with proxmox"]),
    (
        "unknown-top-level",
        b"confg:\n  registry-mirrors:vm: {}\n",
        ["{file}: confg: unknown top-level key (did you mean config?)"],
    ),
    (
        "unknown-top-level-2",
        VALID.encode() + b"secretprovider: x\n",
        ["{file}: secretprovider: unknown top-level key"],
    ),
    ("non-string-top-key", VALID.encode() + b"7: x\n", ["{file}: 7: unknown top-level key"]),
    # Namespaces: a typo must not be skipped (its defaults would be used in silence).
    (
        "ns-singular",
        _valid_text(**{"registry-mirror:containerd": {"batchSize": 3}}).encode(),
        [
            "registry-mirror:containerd: unknown namespace registry-mirror"
            " (did you mean registry-mirrors:?)"
        ],
    ),
    (
        "ns-no-dash",
        _valid_text(**{"registrymirrors:vm": {}}).encode(),
        ["registrymirrors:vm: unknown namespace", "did you mean registry-mirrors:"],
    ),
    (
        "ns-underscore",
        _valid_text(**{"registry_mirrors:nodes": []}).encode(),
        ["registry_mirrors:nodes:", "did you mean registry-mirrors:"],
    ),
    (
        "ns-case",
        _valid_text(**{"Registry-Mirrors:nodes": []}).encode(),
        ["Registry-Mirrors:nodes:", "did you mean registry-mirrors:"],
    ),
    (
        "ns-other-program",
        _valid_text(**{"aws:region": "eu-west-1"}).encode(),
        ["aws:region: unknown namespace aws (this program reads registry-mirrors:"],
    ),
    (
        "ns-proxmox-typo",
        _valid_text(**{"proxmox:endpoint": "https://x/"}).encode(),
        ["proxmox:endpoint: unknown namespace proxmox"],
    ),
    (
        "no-namespace",
        _valid_text(vm={"vmId": 1}).encode(),
        ["vm: expected a key of the form <namespace>:<name>, e.g. registry-mirrors:vm"],
    ),
    (
        "no-namespace-token",
        _valid_text(proxmoxApiToken="x").encode(),
        ["proxmoxApiToken: expected", "registry-mirrors:proxmoxApiToken"],
    ),
    (
        "three-parts",
        _valid_text(**{"registry-mirrors:vm:name": "x"}).encode(),
        ["registry-mirrors:vm:name: expected a key of the form"],
    ),
    ("empty-namespace", _valid_text(**{":vm": {}}).encode(), [":vm: expected a key of the form"]),
    (
        "empty-name",
        _valid_text(**{"registry-mirrors:": {}}).encode(),
        ["registry-mirrors:: expected a key of the form"],
    ),
    (
        "non-string-key",
        VALID.replace("config:\n", "config:\n  5: x\n").encode(),
        ["5: expected a key of the form"],
    ),
    (
        "legacy-form-twice",
        _valid_text(**{"registry-mirrors:config:vm": {}}).encode(),
        ["registry-mirrors:config:vm: given twice"],
    ),
    (
        "unknown-project-key",
        _valid_text(**{"registry-mirrors:upstream": []}).encode(),
        ["upstream: unknown key (did you mean upstreams?)"],
    ),
    # Secrets in plain text: what `pulumi up` says.
    (
        "token-plain",
        VALID.replace(
            "proxmoxApiToken:\n    secure: v1:AAAAencrypted", f"proxmoxApiToken: {TOKEN}"
        ).encode(),
        [
            "proxmoxApiToken: must be set as a secret"
            " (pulumi config set --secret proxmoxApiToken ...)"
        ],
    ),
    (
        "credentials-plain",
        _valid_text(
            **{
                "registry-mirrors:upstreamCredentials": {
                    "docker.io": {"username": "me", "password": SECRET}
                }
            }
        ).encode(),
        ["upstreamCredentials: must be set as a secret"],
    ),
    (
        "credentials-plain-json",
        _valid_text(
            **{
                "registry-mirrors:upstreamCredentials": '{"docker.io": {"password": "'
                + SECRET
                + '"}}'
            }
        ).encode(),
        ["upstreamCredentials: must be set as a secret"],
    ),
    (
        "encrypted-setting",
        VALID.replace("gateway: 10.0.20.1", "gateway:\n      secure: v1:abc").encode(),
        ["vm.gateway: encrypted (secure:) in {file}; it is not a secret setting"],
    ),
    (
        "encrypted-unknown",
        VALID.replace("vmId: 210", "pin:\n      secure: v1:abc\n    vmId: 210").encode(),
        ["vm.pin: unknown key"],
    ),
    # Values YAML 1.1 reads differently from the Pulumi CLI (yaml.v3): judged as Pulumi sees them.
    ("yes-is-a-string", VALID.replace("vmId: 210", "vmId: yes").encode(), ["vm.vmId:", "'yes'"]),
    ("sexagesimal", VALID.replace("vmId: 210", "vmId: 3:30").encode(), ["vm.vmId:", "'3:30'"]),
    ("octal", VALID.replace("vmId: 210", "vmId: 010").encode(), ["vm.vmId:", "(got 8)"]),
    ("huge-int", VALID.replace("vmId: 210", "vmId: " + "9" * 5000).encode(), ["vm.vmId:"]),
    ("inf", VALID.replace("vmId: 210", "vmId: .inf").encode(), ["vm.vmId:"]),
]


@pytest.mark.parametrize(
    ("data", "names"), [c[1:] for c in BROKEN_FILES], ids=[c[0] for c in BROKEN_FILES]
)
def test_broken_stack_file_is_one_line_per_problem(tmp_path: Path, data: bytes, names: list[str]):
    outcome, stack_file = _render(tmp_path, data)
    assert_user_error(
        outcome, [n.replace("{file}", str(stack_file)) for n in names], secrets=[SECRET, TOKEN]
    )


def test_at_least_50_broken_files():
    assert len(BROKEN_FILES) >= 50


def test_a_yaml_syntax_error_is_one_line_even_with_a_secret_on_that_line(tmp_path: Path):
    data = HAND_WRITTEN.replace("vmId: 210", f"vmId: 210\n    password: '{SECRET}").encode()
    outcome, stack_file = _render(tmp_path, data)
    assert_user_error(outcome, [f"{stack_file}:"], secrets=[SECRET], lines=1)


@pytest.mark.parametrize(("case", "changes", "key"), [(c[0], c[1], c[2]) for c in BAD_INPUTS])
def test_every_bad_value_through_the_cli(tmp_path: Path, case: str, changes: dict, key: str):
    """The settings table (tests/test_settings.py), end to end: exit 2, key named, no file."""
    raw = sample_raw()
    for path, value in changes.items():
        _set(raw, path, value)
    outcome, _ = _render(tmp_path, yaml.safe_dump(_stack(raw)).encode())
    assert_user_error(outcome, [f"{key}:"])


@pytest.mark.parametrize(("case", "changes", "key"), SECRET_PLACES)
def test_a_secret_under_the_wrong_key_is_never_echoed(
    tmp_path: Path, case: str, changes: dict, key: str
):
    raw = sample_raw()
    for path, value in changes.items():
        _set(raw, path, value)
    outcome, _ = _render(tmp_path, yaml.safe_dump(_stack(raw)).encode())
    assert_user_error(outcome, [f"{key}: unknown key"], secrets=[SECRET, "123456789"])


@pytest.mark.parametrize(
    "extra",
    [
        {"registry-mirror:proxmoxApiToken": SECRET},
        {"registry-mirrors:password": SECRET},
        {"password": SECRET},
        {"registry-mirrors:proxmoxApiToken ": SECRET},
        {SECRET: "a key that is itself a secret is a typo of its own"},
    ],
    ids=["typo-namespace", "project-key", "no-namespace", "trailing-space", "as-key"],
)
def test_a_secret_in_a_misspelled_key_is_never_echoed(tmp_path: Path, extra: dict):
    outcome, _ = _render(tmp_path, _valid_text(**extra).encode())
    assert outcome.code == 2
    assert SECRET not in outcome.stderr or extra.get(SECRET), outcome.stderr
    assert_user_error(outcome, [], secrets=[] if SECRET in extra else [SECRET])


def test_a_huge_value_is_not_echoed_whole(tmp_path: Path):
    raw = sample_raw()
    raw["vm"]["address"] = "10.0.20.10/24" + "0" * 1_000_000
    raw["nodes"][0]["name"] = "n" * 1_000_000
    outcome, _ = _render(tmp_path, yaml.safe_dump(_stack(raw)).encode())
    assert_user_error(outcome, ["vm.address:", "nodes[0].name:"])
    assert len(outcome.stderr) < 2000


def test_the_real_entry_point_exits_2_without_a_traceback(tmp_path: Path):
    stack_file = tmp_path / "Pulumi.t.yaml"
    stack_file.write_bytes(b"- a list\n")
    outcome = run_process("render", ["--stack-file", str(stack_file), "--out", str(tmp_path / "o")])
    assert_user_error(outcome, [f"{stack_file}: expected a mapping"], lines=1)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        ([], ["error: the following arguments are required"]),
        (["--out", "o"], ["one of the arguments --stack --stack-file is required"]),
        (["--stack", "dev"], ["--out"]),
        (["--stack", "dev", "--stack-file", "x", "--out", "o"], ["not allowed with"]),
        (
            ["--stack", "nope", "--out", "o"],
            ["Pulumi.nope.yaml: no such file (stacks here: dev, prod)"],
        ),
        (["--stack", "../../etc/x y", "--out", "o"], ["--stack", "expected a stack name"]),
        (["--stack", "", "--out", "o"], ["expected a stack name"]),
        (["--stack-file", "/", "--out", "o"], ["/: is a directory"]),
        (
            ["--stack-file", "/nonexistent/Pulumi.x.yaml", "--out", "o"],
            ["/nonexistent/Pulumi.x.yaml: no such file"],
        ),
        (["--stack", "dev", "--out", "o", "--bogus"], ["unrecognized arguments: --bogus"]),
    ],
)
def test_bad_arguments_are_one_line(tmp_path: Path, monkeypatch, argv: list[str], names: list[str]):
    monkeypatch.chdir(tmp_path)
    outcome = run("render", argv)
    assert_user_error(outcome, names, lines=1)
    assert list(tmp_path.iterdir()) == []


# Stack files that are right, in ways the old reader (or YAML 1.1) got wrong.
GOOD_FILES: list[tuple[str, bytes]] = [
    ("bom", b"\xef\xbb\xbf" + VALID.encode()),
    ("crlf", VALID.replace("\n", "\r\n").encode()),
    (
        "provider-namespaces",
        _valid_text(
            **{
                "proxmoxve:endpoint": "https://x/",
                "pulumi:tags": {"a": "b"},
                "docker:host": "ssh://x",
                "command:x": 1,
            }
        ).encode(),
    ),
    (
        "legacy-key-form",
        VALID.replace("registry-mirrors:containerd", "x")
        .replace("registry-mirrors:vm:", "registry-mirrors:config:vm:")
        .encode(),
    ),
    ("environment", VALID.encode() + b"environment:\n  - shared-env\nencryptionsalt: v1:abc\n"),
    (
        "merge-key",
        HAND_WRITTEN.replace(
            "  registry-mirrors:nodes:\n    - name: k8s-cp-1\n      address: 10.0.20.21\n",
            "  registry-mirrors:nodes:\n    - &node {name: k8s-cp-1, address: 10.0.20.21}\n"
            "    - {<<: *node, name: k8s-cp-2, address: 10.0.20.22}\n",
        ).encode(),
    ),
    (
        "name-on",
        VALID.replace("name: registry", "name: 'on'")
        .replace("name: k8s-cp-1", "name: on")
        .encode(),
    ),
    (
        "cron-ints",
        _valid_text(
            **{"registry-mirrors:registry": {"gc": {"minute": 30, "hour": 2, "dayOfWeek": 6}}}
        ).encode(),
    ),
    (
        "secure-credentials",
        _valid_text(**{"registry-mirrors:upstreamCredentials": {"secure": "v1:x"}}).encode(),
    ),
]


@pytest.mark.parametrize("data", [c[1] for c in GOOD_FILES], ids=[c[0] for c in GOOD_FILES])
def test_good_stack_files_render(tmp_path: Path, data: bytes):
    outcome, _ = _render(tmp_path, data)
    assert outcome.code == 0, outcome.stderr
    assert (tmp_path / "out" / "summary.json").is_file()


def test_scalars_resolve_as_the_pulumi_cli_reads_them():
    """yaml.v3's resolve.go, not YAML 1.1: the review must judge what `pulumi up` will get."""
    text = b"a: [on, yes, no, Off, y, 010, 0o17, 0x1F, 0b11, 1_000, +12, -7, 1:30, 1e3, .5, 08,\n"
    text += b"  18446744073709551615, 99999999999999999999, 1e999, '', ~, null, true, True,\n"
    text += b"  FALSE, 2024-01-31, '5']\n"
    assert parse_yaml(text, "f")["a"] == [
        "on", "yes", "no", "Off", "y", 8, 15, 31, 3, 1000, 12, -7, "1:30", 1000.0, 0.5, 8.0,
        18446744073709551615, 1e20, "1e999", "", None, None, True, True, False, "2024-01-31", "5",
    ]  # fmt: skip


# --- property: whatever YAML document a stack file holds --------------------------------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.text(max_size=40),
    st.sampled_from(["10.0.20.10/24", "*/5", "60", "ssh-ed25519 AAAA", "https://x:99999/", "on"]),
    st.sampled_from([math.inf, -math.inf, 10**30, -1, 0, 22, 65536]),
)
_keys = st.one_of(
    st.text(max_size=12),
    st.integers(-3, 3),
    st.booleans(),
    st.sampled_from(
        ["address", "vmId", "gc", "minute", "dayOfWeek", "nodes", "sshUser", "secure", "password"]
    ),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=4),
    max_leaves=12,
)
_config_keys = st.one_of(
    st.sampled_from(
        [
            "registry-mirrors:vm", "registry-mirrors:nodes", "registry-mirrors:registry",
            "registry-mirrors:upstreams", "registry-mirrors:proxmox", "registry-mirrors:containerd",
            "registry-mirrors:proxmoxApiToken", "registry-mirror:vm", "proxmoxve:endpoint", "vm",
        ]
    ),
    st.text(max_size=20),
    st.integers(0, 3),
)  # fmt: skip


@st.composite
def _stack_documents(draw: st.DrawFn) -> Any:
    kind = draw(st.sampled_from(["anything", "config", "mutated"]))
    if kind == "anything":
        return draw(_values)
    if kind == "config":
        return {"config": draw(st.dictionaries(_config_keys, _values, max_size=6))}
    # A valid stack with one value replaced: reaches the settings checks, not only the parser.
    raw = copy.deepcopy(sample_raw())
    raw["upstreams"] = [u.model_dump(by_alias=True, exclude_none=True) for u in DEFAULT_UPSTREAMS]
    raw["registry"] = {"gc": {"minute": 0, "hour": 3}, "restart": {"minute": 7}}
    section = draw(st.sampled_from(sorted(raw)))
    target: Any = raw[section]
    while isinstance(target, (dict, list)) and target:
        keys = list(target) if isinstance(target, dict) else list(range(len(target)))
        key = draw(st.sampled_from(keys))
        if not isinstance(target[key], (dict, list)) or draw(st.booleans()):
            target[key] = draw(_values)
            break
        target = target[key]
    return _stack(raw)


def _check_outcome(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        stack_file = root / "Pulumi.t.yaml"
        stack_file.write_bytes(data)
        outcome = run("render", ["--stack-file", str(stack_file), "--out", str(root / "out")])
        assert outcome.code in (0, 2), outcome
        if outcome.code == 2:
            assert_user_error(outcome, [])
            assert sorted(p.name for p in root.iterdir()) == ["Pulumi.t.yaml"]
        else:
            assert (root / "out" / "summary.json").is_file()


@hsettings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=_stack_documents())
def test_any_yaml_document_is_a_stack_or_one_line_per_problem(document: Any):
    _check_outcome(yaml.safe_dump(document, allow_unicode=True).encode())


@hsettings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_any_bytes_are_a_stack_or_one_line_per_problem(data: bytes):
    _check_outcome(data)


@hsettings(max_examples=150, deadline=None)
@given(document=_stack_documents())
def test_the_loader_raises_only_stack_file_errors(document: Any):
    """The loader verify.py and render.py share: Settings, or StackFileError with one line
    per problem, each naming something (the file, or a key before its colon)."""
    with tempfile.TemporaryDirectory() as directory:
        stack_file = Path(directory) / "Pulumi.t.yaml"
        stack_file.write_text(yaml.safe_dump(document))
        try:
            load_stack_settings(stack_file)
        except StackFileError as error:
            assert error.problems
            for line in error.problems:
                assert "\n" not in line and ": " in line and len(line) < 500, line


def test_an_encrypted_value_is_judged_once(tmp_path: Path):
    """Under an unknown key: that key is unknown (one line). Under a known key that is not a
    secret: one line saying so (not a verdict on the ciphertext's placeholder)."""
    data = VALID.replace("vmId: 210", "pin:\n      secure: v1:abc\n    vmId: 210")
    data = data.replace("gateway: 10.0.20.1", "gateway:\n      secure: v1:abc")
    outcome, stack_file = _render(tmp_path, data.encode())
    assert outcome.lines == [
        "vm.pin: unknown key (typo?)",
        f"vm.gateway: encrypted (secure:) in {stack_file}; it is not a secret setting, so offline"
        " tools cannot check it: set it in plain text",
    ]
