"""Read a stack file (``stacks/Pulumi.<stack>.yaml``) offline, the way ``pulumi up`` will, for the
scripts that review or check a stack without the Pulumi CLI. Pure: no ``import pulumi``;
secrets are never decrypted.

Every problem is one line: ``FILE: ...`` or ``FILE:LINE:COL: ...`` for the file itself, and
``key: ...`` (as ``pulumi up`` prints it) for a setting. What ``pulumi up`` would refuse, this
refuses too, with the same words where the program says it:

- YAML as the Pulumi CLI (Go, yaml.v3) reads it: a duplicate key is an error, ``yes``/``on``/``no``
  are strings (YAML 1.2), a UTF-8 byte order mark is skipped, other non-UTF-8 bytes are errors;
- a config key is ``<namespace>:<name>``; a namespace other than the project's and
  ``OTHER_NAMESPACES`` is an error (a typo such as ``registry-mirror:`` would otherwise be
  ignored and its defaults used);
- ``proxmoxApiToken`` / ``upstreamCredentials`` in plain text are errors (``--secret``).
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError

from components.settings import (
    SECRET_KEYS,
    SECTIONS,
    Settings,
    SettingsError,
    key_text,
    load_settings,
)

PROJECT = "registry-mirrors"
STACKS_DIR = Path(__file__).resolve().parent.parent / "stacks"
# Namespaces a stack file of this program may hold besides its own: Pulumi's (``pulumi:tags``,
# ``pulumi:disable-default-providers``) and those of the provider packages it uses. The program
# creates its providers explicitly from ``registry-mirrors:proxmox`` (and the VM's address), so
# keys there configure only default providers, which this program never uses; they are allowed
# because shared Pulumi ESC environments and org templates put them into every stack.
OTHER_NAMESPACES = ("pulumi", "proxmoxve", "docker", "command")
# The keys of a stack file (Pulumi's ProjectStack): anything else is a typo Pulumi ignores.
STACK_FILE_KEYS = ("config", "environment", "secretsprovider", "encryptedkey", "encryptionsalt")
_STACK_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_SECTIONS_AND_SECRETS = (*SECTIONS, *SECRET_KEYS)


class StackFileError(SettingsError):
    """The stack file cannot be used; ``problems`` are one line each."""


def stack_path(stack: str) -> Path:
    """``stacks/Pulumi.<stack>.yaml``; an ``org/project/stack`` name uses its last part, as the
    Pulumi CLI names the file."""
    name = stack.rsplit("/", 1)[-1]
    if not _STACK_NAME.fullmatch(name) or name in (".", ".."):
        raise StackFileError(
            [f"--stack {key_text(stack)}: expected a stack name of letters, digits, '_', '.', '-'"]
        )
    return STACKS_DIR / f"Pulumi.{name}.yaml"


# --- YAML as yaml.v3 reads it --------------------------------------------------------------------

_INT = re.compile(r"[-+]?(0[box]?)?[0-9a-fA-F_]+")
_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
_SPECIAL = {
    **dict.fromkeys(("true", "True", "TRUE"), True),
    **dict.fromkeys(("false", "False", "FALSE"), False),
    **dict.fromkeys(("", "~", "null", "Null", "NULL"), None),
    **dict.fromkeys((".nan", ".NaN", ".NAN"), math.nan),
    **dict.fromkeys((".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF"), math.inf),
    **dict.fromkeys(("-.inf", "-.Inf", "-.INF"), -math.inf),
}


def _go_scalar(text: str) -> Any:
    """A plain scalar as yaml.v3 resolves it into an interface{} (its resolve.go), not as
    PyYAML's YAML 1.1 does: ``on``/``yes``/``no`` stay strings, ``1:30`` is not 90, a number
    too large for 64 bits stays a string. Timestamps stay strings (no setting is a date)."""
    if text in _SPECIAL:
        return _SPECIAL[text]
    if not text or text[0] not in "+-.0123456789":
        return text
    plain = text.replace("_", "")
    if _INT.fullmatch(plain):
        sign = -1 if plain.startswith("-") else 1
        digits = plain.lstrip("+-")
        base = {"0b": 2, "0o": 8, "0x": 16}.get(digits[:2].lower(), 0)
        if base == 0:
            base = 8 if len(digits) > 1 and digits.startswith("0") else 10  # Go: 0777 is octal
        else:
            digits = digits[2:]
        try:
            number = sign * int(digits, base)
        except ValueError:
            number = None
        if number is not None and -(2**63) <= number < 2**64:
            return number
    if _FLOAT.fullmatch(plain):
        number = float(plain)
        if not math.isinf(number):  # Go's ParseFloat fails with a range error: a string then
            return number
    return text


class _StackLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and resolves plain scalars as yaml.v3 does."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:
                raise ConstructorError(
                    None, None, "a mapping key must be a plain value", key_node.start_mark
                ) from None
            if first is not None:
                raise ConstructorError(
                    None,
                    None,
                    f"duplicate key {key_text(key)} (first at line {first.start_mark.line + 1});"
                    " Pulumi refuses a key given twice",
                    key_node.start_mark,
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_plain(self, node: yaml.ScalarNode) -> Any:
        return _go_scalar(node.value) if node.style is None else node.value


# Plain scalars are resolved by _go_scalar (after the str tag), not by YAML 1.1's regexes; only
# the merge key (``<<: *defaults``, which yaml.v3 also reads) keeps its resolver.
_StackLoader.yaml_implicit_resolvers = {}
_StackLoader.add_implicit_resolver("tag:yaml.org,2002:merge", re.compile(r"^(?:<<)$"), ["<"])
_StackLoader.add_constructor("tag:yaml.org,2002:str", _StackLoader.construct_yaml_plain)


def _position(text: str, index: int) -> tuple[int, int]:
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1


def _yaml_problem(name: str, error: yaml.YAMLError, text: str) -> str:
    """One line for a YAML error: ``FILE:LINE:COL: problem (context)``."""
    if isinstance(error, yaml.reader.ReaderError):
        line, column = _position(text, error.position)
        return f"{name}:{line}:{column}: character {error.character!r} is not allowed in YAML"
    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        where = f"{name}:{mark.line + 1}:{mark.column + 1}" if mark else name
        problem = error.problem or error.context or "invalid YAML"
        if error.context and error.problem:
            context = error.context
            if error.context_mark and error.context_mark is not mark:
                context += f" at line {error.context_mark.line + 1}"
            problem += f" ({context})"
        return f"{where}: {_one_line(problem)}"
    return f"{name}: invalid YAML: {_one_line(str(error))}"


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def parse_yaml(data: bytes, name: str) -> Any:
    """The one YAML document in ``data``; StackFileError with one ``FILE[:LINE:COL]: ...`` line."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]  # the Pulumi CLI strips a UTF-8 byte order mark before parsing
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line, column = _position(data.decode("utf-8", "replace"), _char_index(data, error.start))
        raise StackFileError(
            [
                f"{name}:{line}:{column}: byte 0x{data[error.start]:02x} is not UTF-8"
                " (save the file as UTF-8)"
            ]
        ) from None
    try:
        return yaml.load(text, Loader=_StackLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as error:
        raise StackFileError([_yaml_problem(name, error, text)]) from None
    except RecursionError:
        raise StackFileError([f"{name}: nested too deeply"]) from None
    except (ValueError, TypeError, AttributeError, OverflowError):
        # PyYAML's constructors for explicit tags (``!!int abc``, ``!!timestamp x``) raise these;
        # their text would echo the value, which may be a secret.
        raise StackFileError(
            [f"{name}: a value with an explicit tag (!!...) does not fit its tag"]
        ) from None


def _char_index(data: bytes, byte_index: int) -> int:
    return len(data[:byte_index].decode("utf-8", "replace"))


# --- what a stack file holds ----------------------------------------------------------------------


def is_secure(value: Any) -> bool:
    """A Pulumi secret in a stack file: ``{secure: <ciphertext>}``."""
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("secure"), str)


def secure_paths(value: Any, path: str) -> list[str]:
    """Where encrypted values sit inside ``value`` (Pulumi calls a value with any of them
    secret: ``pulumi config set --secret --path``)."""
    if is_secure(value):
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in secure_paths(v, f"{path}.{key_text(k)}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in secure_paths(v, f"{path}[{i}]")]
    return []


def _namespace_hint(namespace: str) -> str:
    def squash(text: str) -> str:
        return re.sub(r"[^a-z0-9]", "", text.lower())

    if squash(namespace) == squash(PROJECT) or difflib.get_close_matches(
        namespace.lower(), [PROJECT], n=1, cutoff=0.7
    ):
        return f" (did you mean {PROJECT}:?)"
    return f" (this program reads {PROJECT}: and allows {', '.join(OTHER_NAMESPACES)})"


def split_config(
    config: Mapping[Any, Any], project: str = PROJECT
) -> tuple[dict[str, Any], list[str]]:
    """The project's values (keys without ``project:``) and one problem per key that is not a
    ``<namespace>:<name>`` key of an allowed namespace. Used offline (stack file) and by the
    program (every key of its config), so both say the same."""
    values: dict[str, Any] = {}
    problems: list[str] = []
    allowed = {project, *OTHER_NAMESPACES}
    for key, value in config.items():
        parts = key.split(":") if isinstance(key, str) else []
        if len(parts) == 3 and parts[1] == "config":  # the old <namespace>:config:<name> form
            parts = [parts[0], parts[2]]
        if len(parts) != 2 or not parts[0] or not parts[1]:
            example = key if isinstance(key, str) and key in _SECTIONS_AND_SECRETS else "vm"
            problems.append(
                f"{key_text(key)}: expected a key of the form <namespace>:<name>,"
                f" e.g. {project}:{example}"
            )
            continue
        namespace, name = parts
        if namespace not in allowed:
            problems.append(
                f"{key_text(key)}: unknown namespace {key_text(namespace)}"
                f"{_namespace_hint(namespace)}"
            )
        elif namespace == project:
            if name in values:
                problems.append(f"{key_text(key)}: given twice ({project}:{name})")
            values[name] = value
    return values, problems


def plain_secret_problems(keys: Iterable[str], is_secret: Callable[[str], bool]) -> list[str]:
    """A secret setting stored in plain text: the program refuses it (this is its line)."""
    return [
        f"{key}: must be set as a secret (pulumi config set --secret {key} ...)"
        for key in SECRET_KEYS
        if key in keys and not is_secret(key)
    ]


@dataclass(frozen=True)
class StackFile:
    path: Path
    values: dict[str, Any]  # the project's keys, without ``registry-mirrors:``
    problems: list[str] = field(default_factory=list)  # found so far, one line each


def read_stack_file(path: Path) -> StackFile:
    """Parse a stack file; StackFileError for a file that cannot be read as one at all."""
    name = str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise StackFileError([f"{name}: no such file{_known_stacks(path)}"]) from None
    except IsADirectoryError:
        raise StackFileError([f"{name}: is a directory, not a stack file"]) from None
    except OSError as error:
        raise StackFileError([f"{name}: cannot read: {error.strerror or error}"]) from None
    document = parse_yaml(data, name)
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise StackFileError(
            [f"{name}: expected a mapping with a 'config:' key, got {_kind(document)}"]
        )
    problems = [
        f"{name}: {key_text(key)}: unknown top-level key"
        f"{' (did you mean config?)' if difflib.get_close_matches(str(key), ['config']) else ''}"
        f" (a stack file holds {', '.join(STACK_FILE_KEYS)})"
        for key in document
        if key not in STACK_FILE_KEYS
    ]
    config = document.get("config")
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise StackFileError(
            [
                *problems,
                f"{name}: config: expected a mapping of <namespace>:<name> keys,"
                f" got {_kind(config)}",
            ]
        )
    values, namespace_problems = split_config(config)
    return StackFile(path=path, values=values, problems=problems + namespace_problems)


def _kind(value: Any) -> str:
    kinds = {list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return kinds.get(type(value), type(value).__name__)


def _known_stacks(path: Path) -> str:
    stacks = sorted(
        p.name[len("Pulumi.") : -len(".yaml")] for p in path.parent.glob("Pulumi.*.yaml")
    )
    return f" (stacks here: {', '.join(stacks)})" if stacks else ""


def load_stack_settings(path: Path) -> Settings:
    """Everything ``pulumi up`` would check before creating anything, offline: the file, its
    namespaces, secrets stored in plain text, and the settings. StackFileError lists it all."""
    stack = read_stack_file(path)
    problems = list(stack.problems)
    problems += plain_secret_problems(
        stack.values, lambda key: bool(secure_paths(stack.values[key], key))
    )
    # An encrypted value in a setting that is not a secret: Pulumi would decrypt it for the
    # program, this offline reader cannot. Say so instead of judging the ciphertext.
    encrypted = [
        p for k, v in stack.values.items() if k not in SECRET_KEYS for p in secure_paths(v, k)
    ]
    plain = {k: _without_secure(v) for k, v in stack.values.items()}
    settings: Settings | None = None
    try:
        settings = load_settings(plain)
    except SettingsError as error:
        unknown = [p for p in encrypted if f"{p}: unknown key" in " ".join(error.problems)]
        encrypted = [p for p in encrypted if p not in unknown]
        # The settings' verdict on a placeholder for ciphertext would mislead; an unknown key
        # stays one (its value is never shown).
        problems += [line for line in error.problems if not any(_names(line, p) for p in encrypted)]
    problems += [
        f"{p}: encrypted (secure:) in {path}; it is not a secret setting, so offline tools cannot"
        " check it: set it in plain text"
        for p in encrypted
    ]
    if problems or settings is None:
        raise StackFileError(list(dict.fromkeys(problems)))
    return settings


def _names(line: str, path: str) -> bool:
    return any(line.startswith(path + end) for end in (":", ".", "["))


def _without_secure(value: Any) -> Any:
    if is_secure(value):
        return "<encrypted>"
    if isinstance(value, dict):
        return {k: _without_secure(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_secure(v) for v in value]
    return value
