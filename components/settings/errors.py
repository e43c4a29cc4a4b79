"""How a settings problem is shown: one line, ``key: problem (got value)``, every echoed value
masked and cut, a secret never echoed. Every section's checks and the loader format through here.
"""

from __future__ import annotations

import difflib
import re
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

# Values echoed in error lines are cut here: a 5 MB value must not become 5 MB of CI log.
SHOWN_LENGTH = 60
_PLAIN_KEY = re.compile(rf"[\w.@/:-]{{1,{SHOWN_LENGTH}}}")
# Names that suggest a secret: the value under such a key is never echoed, whatever the key.
# ("public" key material is not secret: sshPublicKeys, sshHostPublicKey are shown.)
_SECRET_NAME = re.compile(
    r"pass|secret|token|credential|private|auth|cookie|session|(?<!public)key", re.IGNORECASE
)


class SettingsError(ValueError):
    """All problems found in the settings, one line each: ``key: problem (got value)``."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


def _without_user_info(text: str) -> str:
    """``text`` with each URL's user-info (``scheme://user:password@``) masked, from ``://`` to
    the word's last '@' (a password pasted raw may hold an '@' or a '/'). Word by word, with no
    regex backtracking: a value of megabytes must not take minutes."""

    def masked(word: re.Match[str]) -> str:
        start, end = word[0].find("://"), word[0].rfind("@")
        return word[0] if start < 0 or end < start else word[0][: start + 3] + "***" + word[0][end:]

    return re.sub(r"\S+", masked, text) if "://" in text else text


def shown(value: Any) -> str:
    """A value as an error line echoes it: repr (so one line, control characters escaped), a
    URL's user-info masked, cut to ``SHOWN_LENGTH`` characters. Masked before the cut: a cut
    alone could keep most of a password."""
    if isinstance(value, str):
        value = _without_user_info(value)
        if len(value) > SHOWN_LENGTH:
            return repr(value[:SHOWN_LENGTH]) + "..."
    text = _without_user_info(repr(value))
    return text if len(text) <= SHOWN_LENGTH + 2 else text[:SHOWN_LENGTH] + "..."


def key_text(key: Any) -> str:
    """A key as an error line names it: as written when it is a plain name, else quoted; cut."""
    if isinstance(key, str) and _PLAIN_KEY.fullmatch(key):
        return key
    return shown(key)


def secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


def _known_keys(root: type[BaseModel] | None, location: tuple[Any, ...]) -> list[str]:
    """The keys the model accepts where ``location`` ends (for a "did you mean" hint), walking
    down from ``root`` (``Settings``; the model is passed in, as it is built on these errors)."""
    if root is None:
        return []
    model: Any = root
    for part in location[:-1]:
        if isinstance(part, int):
            continue
        fields = {f.alias or name: f for name, f in model.model_fields.items()}
        field = fields.get(part)
        if field is None:
            return []
        annotation = field.annotation
        # Unwrap Optional[...] and list[...] down to the model they hold.
        while typing.get_origin(annotation) is not None:
            arguments = [a for a in typing.get_args(annotation) if a is not type(None)]
            if not arguments:
                return []
            annotation = arguments[0]
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return [f.alias or name for name, f in model.model_fields.items()]


def unknown_key(name: Any, known: list[str]) -> str:
    """``unknown key (typo?)``, with the closest known key when there is one."""
    close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.6) if known else []
    return f"unknown key (did you mean {close[0]}?)" if close else "unknown key (typo?)"


def _location(parts: tuple[Any, ...]) -> str:
    text = "".join(f"[{p}]" if isinstance(p, int) else f".{key_text(p)}" for p in parts)
    return text.removeprefix(".") or "(top level)"


def _format_error(error: ValidationError, root: type[BaseModel] | None = None) -> list[str]:
    """One line per pydantic error: ``key: problem (got value)``. The value is left out for an
    unknown key (a password pasted under the wrong key must not reach a CI log) and for keys
    whose name suggests a secret; echoed values are cut to ``SHOWN_LENGTH``. ``root``: the model
    validated, for the "did you mean" hint of an unknown key."""
    lines = []
    for item in error.errors():
        if isinstance(item.get("ctx", {}).get("error"), SettingsError):
            continue  # cross-key problems: load_settings adds them from the raw config
        location = tuple(item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        value = item.get("input")
        show = item["type"] != "missing" and not isinstance(value, (dict, list))
        if item["type"] == "extra_forbidden":
            message = unknown_key(location[-1], _known_keys(root, location))
            show = False
        elif item["type"] == "missing":
            message = "required key is missing"
        if any(isinstance(part, str) and secret_name(part) for part in location):
            show = False
        lines.append(
            f"{_location(location)}: {message}" + (f" (got {shown(value)})" if show else "")
        )
    return lines
