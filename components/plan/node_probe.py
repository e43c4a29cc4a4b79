"""Parse what the node scripts print (``key=value`` lines) into typed results.

Pure: no ``import pulumi``. The scripts print machine-readable lines so the component never has to
guess from free text; a missing key is an error naming the node's script, not a silent default.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from components.renderers.flavours import AMBIGUOUS

ABSENT = "absent"


class ProbeOutputError(ValueError):
    """The probe printed something we cannot read (wrong script version, truncated output)."""


def parse_key_values(text: str) -> dict[str, list[str]]:
    """Every ``key=value`` line; repeated keys (``written=a``, ``written=b``) keep all values."""
    values: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key and key.replace("_", "").isalnum():
            values.setdefault(key, []).append(value)
    return values


@dataclass(frozen=True)
class ProbedDropIn:
    """One file the main config imports (directly or not), as probe.sh read it."""

    path: str
    sha256: str
    text: str
    # The entries probe.sh read from its own ``imports`` (checked against a TOML parser's).
    imports: tuple[str, ...] = ()
    original_saved: bool = False
    applied_from_sha256: str | None = None
    original_text: str | None = None
    # apply-config.sh's record beside it, when there is one (a drop-in it changed once): while the
    # file is what it left, applied_from_sha256 is set; otherwise the config step gets a new mark.
    applied_record_sha256: str | None = None


@dataclass(frozen=True)
class PreviousDir:
    """A directory in a root of a previous config_path, as probe.sh read it (not the files'
    content: only hosts.toml, and a digest of them all)."""

    path: str
    files: tuple[str, ...]
    digest: str
    hosts_toml: str | None


@dataclass(frozen=True)
class ProbeResult:
    containerd_version: str
    config_file: str
    config_exists: bool
    config_sha256: str
    config_text: str
    config_version: int | None
    original_saved: bool
    managed_dirs: tuple[str, ...]
    # The node's first original config.toml (apply-config.sh saved it before its first change).
    original_text: str | None = None
    # While config.toml is still what apply-config.sh left: the guard and the mark it was sent
    # (sent again, an unchanged node shows no diff). The record's checksum whenever there is one:
    # a config.toml that is not what we left then gets a new mark derived from it.
    applied_from_sha256: str | None = None
    applied_mark: str = ""
    applied_record_sha256: str | None = None
    # hosts.sh's record: the mark, while every hosts.toml it wrote is as it left it (else None);
    # the record's checksum whenever there is one.
    hosts_applied_mark: str | None = None
    hosts_applied_record_sha256: str | None = None
    # Flavour (probe.sh's flavour block). Defaults: a plain containerd node, as before issue 14.
    flavour: str = "containerd"
    flavour_candidates: tuple[str, ...] = ()
    unit: str = ""
    cri_socket: str = ""
    # k3s/RKE2 only: their registries.yaml, where they generate hosts.toml, their own tools.
    registries_file: str = ""
    registries_exists: bool = False
    registries_sha256: str = ABSENT
    registries_text: str = ""
    registries_original_saved: bool = False
    # While registries.yaml is what registries.sh left: the guard and mark it was written with.
    registries_applied_from_sha256: str | None = None
    registries_applied_mark: str = ""
    registries_applied_record_sha256: str | None = None
    hosts_dir: str = ""
    ctr: str = ""
    containerd_log: str = ""
    distribution_binary: str = ""
    distribution_version: str = ""
    # imports drop-ins (probe.sh's imports block): the entries it read from the main file's
    # ``imports``, where it matched relative patterns, every imported file it read (a set: the
    # planner puts them in containerd's order), and each named file that does not exist.
    imports_entries: tuple[str, ...] = ()
    imports_glob_base: str = ""
    dropins: tuple[ProbedDropIn, ...] = ()
    imports_errors: tuple[str, ...] = ()
    # The roots of a previous config_path probe.sh listed (node_routes.py), the directories in
    # them, and the directories already in CONFIG_PATH.
    previous_roots: tuple[str, ...] = ()
    previous_dirs: tuple[PreviousDir, ...] = ()
    config_path_dirs: tuple[str, ...] = ()


def _lines_b64(value: str, key: str) -> tuple[str, ...]:
    try:
        text = base64.b64decode(value, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise ProbeOutputError(f"probe.sh {key} is not base64 of UTF-8 text: {exc}") from None
    return tuple(text.splitlines())


def _text_b64(value: str, key: str) -> str | None:
    if not value:
        return None
    try:
        return base64.b64decode(value, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise ProbeOutputError(f"probe.sh {key} is not base64 of UTF-8 text: {exc}") from None


def _dropins(values: dict[str, list[str]]) -> tuple[ProbedDropIn, ...]:
    """probe.sh prints the same dropin_* keys once per file, in the same order."""
    paths = values.get("dropin_path", [])
    keys = (
        "dropin_exists", "dropin_sha256", "dropin_b64", "dropin_imports_b64",
        "dropin_original_saved", "dropin_applied_from_sha256", "dropin_original_b64",
        "dropin_applied_record_sha256",
    )  # fmt: skip
    for key in keys:
        if len(values.get(key, [])) != len(paths):
            raise ProbeOutputError(
                f"probe.sh printed {len(paths)} dropin_path lines but "
                f"{len(values.get(key, []))} {key} lines (output truncated?)"
            )
    result = []
    for index, path in enumerate(paths):
        sha = values["dropin_sha256"][index]
        exists = values["dropin_exists"][index] == "1"
        if not exists:
            raise ProbeOutputError(f"probe.sh read {path} but says it does not exist")
        text = _decoded({"b": [values["dropin_b64"][index]]}, "b", sha, exists)
        result.append(
            ProbedDropIn(
                path=path,
                sha256=sha,
                text=text,
                imports=_lines_b64(values["dropin_imports_b64"][index], "dropin_imports_b64"),
                original_saved=values["dropin_original_saved"][index] == "1",
                applied_from_sha256=values["dropin_applied_from_sha256"][index] or None,
                original_text=_text_b64(
                    values["dropin_original_b64"][index], "dropin_original_b64"
                ),
                applied_record_sha256=values["dropin_applied_record_sha256"][index] or None,
            )
        )
    return tuple(result)


def _previous_dirs(values: dict[str, list[str]]) -> tuple[PreviousDir, ...]:
    """probe.sh prints the same previous_dir_* keys once per directory, in the same order."""
    paths = values.get("previous_dir", [])
    keys = ("previous_dir_files_b64", "previous_dir_digest", "previous_dir_hosts_b64")
    for key in keys:
        if len(values.get(key, [])) != len(paths):
            raise ProbeOutputError(
                f"probe.sh printed {len(paths)} previous_dir lines but "
                f"{len(values.get(key, []))} {key} lines (output truncated?)"
            )
    return tuple(
        PreviousDir(
            path=path,
            files=_lines_b64(values["previous_dir_files_b64"][i], "previous_dir_files_b64"),
            digest=values["previous_dir_digest"][i],
            hosts_toml=_text_b64(values["previous_dir_hosts_b64"][i], "previous_dir_hosts_b64"),
        )
        for i, path in enumerate(paths)
    )


def _decoded(values: dict[str, list[str]], key: str, sha: str, exists: bool) -> str:
    """``key`` (base64) as text, checked against ``sha``: the text we merge or migrate must be
    exactly the file whose checksum guards the apply."""
    try:
        text = base64.b64decode(values.get(key, [""])[-1], validate=True).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise ProbeOutputError(f"probe.sh {key} is not base64 of UTF-8 text: {exc}") from None
    if exists and hashlib.sha256(text.encode()).hexdigest() != sha:
        raise ProbeOutputError(f"probe.sh {key} does not match its sha256 (output truncated?)")
    if not exists and sha != ABSENT:
        raise ProbeOutputError(f"probe.sh says the file is missing but gives sha256 {sha!r}")
    return text


def _flavour_fields(values: dict[str, list[str]]) -> dict:
    def last(key: str, default: str = "") -> str:
        return values.get(key, [default])[-1]

    fields: dict = {
        "flavour": last("flavour", "containerd"),
        "flavour_candidates": tuple(last("flavour_candidates").split()),
        "unit": last("unit"),
        "cri_socket": last("cri_socket"),
    }
    if "registries_file" in values:
        exists = last("registries_exists") == "1"
        sha = last("registries_sha256", ABSENT)
        fields.update(
            registries_file=last("registries_file"),
            registries_exists=exists,
            registries_sha256=sha,
            registries_text=_decoded(values, "registries_b64", sha, exists),
            registries_original_saved=last("registries_original_saved") == "1",
            registries_applied_from_sha256=last("registries_applied_from_sha256") or None,
            registries_applied_mark=last("registries_applied_mark"),
            registries_applied_record_sha256=last("registries_applied_record_sha256") or None,
            hosts_dir=last("hosts_dir"),
            ctr=last("ctr"),
            containerd_log=last("containerd_log"),
            distribution_binary=last("distribution_binary"),
            distribution_version=last("distribution_version"),
        )
    return fields


def parse_probe(stdout: str) -> ProbeResult:
    values = parse_key_values(stdout)
    flavour = _flavour_fields(values)
    if flavour["flavour"] == AMBIGUOUS:
        # probe.sh stops before reading anything else: the flavour must be settled first.
        return ProbeResult("", "", False, ABSENT, "", None, False, (), **flavour)

    def one(key: str) -> str:
        if key not in values:
            raise ProbeOutputError(
                f"probe.sh output has no {key}= line (got keys {sorted(values)})"
            )
        return values[key][-1]

    exists = one("config_exists") == "1"
    sha = one("config_sha256")
    try:
        text = base64.b64decode(one("config_b64"), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise ProbeOutputError(f"probe.sh config_b64 is not base64 of UTF-8 text: {exc}") from None
    if exists and hashlib.sha256(text.encode()).hexdigest() != sha:
        # The text we migrate must be exactly the file whose checksum guards the apply.
        raise ProbeOutputError(
            "probe.sh config_b64 does not match config_sha256 (output truncated?)"
        )
    if not exists and sha != ABSENT:
        raise ProbeOutputError(f"probe.sh says the config is missing but gives sha256 {sha!r}")
    version = one("config_version")
    original = values.get("original_b64", [""])[-1]
    try:
        original_text = base64.b64decode(original, validate=True).decode() if original else None
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise ProbeOutputError(
            f"probe.sh original_b64 is not base64 of UTF-8 text: {exc}"
        ) from None
    return ProbeResult(
        containerd_version=one("containerd_version"),
        config_file=one("config_file"),
        config_exists=exists,
        config_sha256=sha,
        config_text=text,
        config_version=int(version) if version.isdigit() else None,
        original_saved=values.get("original_saved", ["0"])[-1] == "1",
        managed_dirs=tuple(values.get("managed_dirs", [""])[-1].split()),
        original_text=original_text,
        applied_from_sha256=values.get("config_applied_from_sha256", [""])[-1] or None,
        applied_mark=values.get("config_applied_mark", [""])[-1],
        applied_record_sha256=values.get("config_applied_record_sha256", [""])[-1] or None,
        hosts_applied_mark=values["hosts_applied_mark"][-1]
        if "hosts_applied_mark" in values
        else None,
        hosts_applied_record_sha256=values.get("hosts_applied_record_sha256", [""])[-1] or None,
        imports_entries=_lines_b64(values.get("imports_b64", [""])[-1], "imports_b64"),
        imports_glob_base=values.get("imports_glob_base", [""])[-1],
        dropins=_dropins(values),
        imports_errors=tuple(values.get("imports_error", [])),
        previous_roots=tuple(values.get("previous_root", [])),
        previous_dirs=_previous_dirs(values),
        config_path_dirs=tuple(values.get("config_path_dirs", [""])[-1].split()),
        **flavour,
    )


@dataclass(frozen=True)
class StepResult:
    """What apply-config.sh / hosts.sh / restore.sh report."""

    changed: bool
    restarted: bool
    rolled_back: bool
    written: tuple[str, ...]
    removed: tuple[str, ...]
    backup: str
    # apply-config.sh after a restart: `ctr deprecations list` IDs (containerd 1.7+); None when
    # not reported (no restart, or containerd 1.6 has no such command).
    deprecations: tuple[str, ...] | None = None


def parse_step_result(stdout: str) -> StepResult:
    values = parse_key_values(stdout)

    def flag(key: str) -> bool:
        return values.get(key, ["0"])[-1] == "1"

    return StepResult(
        changed=flag("changed"),
        restarted=flag("restarted"),
        rolled_back=flag("rolled_back"),
        written=tuple(values.get("written", [])),
        removed=tuple(values.get("removed", [])),
        backup=values.get("backup", [""])[-1],
        deprecations=_deprecations(values.get("deprecations", ["unsupported"])[-1]),
    )


def _deprecations(value: str) -> tuple[str, ...] | None:
    return None if value == "unsupported" else tuple(value.split())
