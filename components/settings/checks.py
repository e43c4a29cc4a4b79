"""The value checks more than one section shares (addresses, host names, user names, SSH keys,
cron fields), as annotated types where pydantic applies them, and the base of every model.

Unknown keys are errors: Distribution and containerd silently ignore typos, so we must not.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic.alias_generators import to_camel

from components.settings.errors import key_text

_HOSTNAME_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_CONTAINER_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")
_USER_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
# Key types sshd offers as host keys (and ssh-add accepts), as they begin a public key line.
SSH_KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-dss",
)


def _check_hostname(value: str) -> str:
    labels = value.split(".")
    if not value or len(value) > 253 or not all(_HOSTNAME_LABEL.match(label) for label in labels):
        raise ValueError("expected a DNS hostname of lowercase letters, digits, '-' and '.'")
    return value


def _check_registry_host(value: str) -> str:
    """A registry as containerd names it: ``host`` or ``host:port``."""
    host, _, port = value.partition(":")
    _check_hostname(host)
    if port and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError("expected host or host:port with a port from 1 to 65535")
    return value


def _check_container_name(value: str) -> str:
    if not _CONTAINER_NAME.match(value):
        raise ValueError("expected a container name: letters, digits, '_', '.', '-' (max 63)")
    return value


def _check_address(value: str) -> str:
    """An IP address or a DNS name. A dotted all-numeric name is never a DNS name (resolvers
    refuse it): ``10.0.0.300`` is a mistyped IPv4 address, not a host called that."""
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    if re.fullmatch(r"[0-9.]+", value):
        raise ValueError("not an IPv4 address (each of the 4 parts is 0-255)")
    try:
        return _check_hostname(value)
    except ValueError:
        raise ValueError("expected an IP address or a DNS hostname") from None


def _check_user(value: str, address_key: str) -> str:
    """A Linux login name. ``user@host`` is refused with where the host goes instead: ssh would
    otherwise be handed ``user@host@address``."""
    if "@" in value:
        raise ValueError(f"expected a user name only, without '@...' (the host is {address_key})")
    if not _USER_NAME.match(value):
        raise ValueError("expected a Linux user name (lowercase letters, digits, '_', '-')")
    return value


def check_host_key(value: str) -> str:
    """One public key as ``TYPE BASE64 [comment]`` (what ``ssh-keyscan`` prints after the host
    name, and what pulumi-command's ``host_key`` and a known_hosts line expect; an authorized
    key is the same line, and cloud-init writes a cut one that sshd then never matches)."""
    tokens = value.split()
    if len(tokens) >= 3 and tokens[0] not in SSH_KEY_TYPES and tokens[1] in SSH_KEY_TYPES:
        raise ValueError(
            f"looks like a known_hosts line: drop the leading host name {key_text(tokens[0])}"
            f" and keep '{tokens[1]} AAAA...'"
        )
    if len(tokens) < 2 or tokens[0] not in SSH_KEY_TYPES:
        raise ValueError("expected 'TYPE BASE64' with TYPE such as ssh-ed25519 or ssh-rsa")
    if "\n" in value.strip():
        raise ValueError("expected one key on one line")
    try:
        blob = base64.b64decode(tokens[1], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the base64 part of the key is damaged (cut short when pasted?)") from None
    # The blob is a sequence of SSH strings (uint32 length + bytes), its own type first: a key
    # cut short (or with a piece missing) no longer parses into whole strings.
    strings, offset = [], 0
    while offset + 4 <= len(blob):
        length = int.from_bytes(blob[offset : offset + 4], "big")
        strings.append(blob[offset + 4 : offset + 4 + length])
        offset += 4 + length
    if offset != len(blob) or not strings or strings[0] != tokens[0].encode():
        raise ValueError(f"the key data is not a whole {tokens[0]} key (cut short when pasted?)")
    return value


# Cron fields as cron reads them: minute 0-59, hour 0-23, day of week 0-7 (0 and 7 = Sunday).
CRON_RANGES = {"minute": (0, 59), "hour": (0, 23), "day_of_week": (0, 7)}
_DAYS = ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday")
_DAY_NAMES = {name: str(i) for i, day in enumerate(_DAYS) for name in (day, day[:3])}


def _cron_text(value: Any) -> Any:
    """A person writes ``minute: 30`` (a YAML int) as readily as ``minute: '30'``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value.strip() if isinstance(value, str) else value


def check_cron_field(value: str, field: str) -> str:
    """``*``, ``N``, ``A-B``, ``*/S``, ``A-B/S`` and lists of them, each number in range; day
    names (``sun``, ``Monday``) become numbers, which every cron reads the same way.

    Returns the field as it is rendered into the cron file."""
    low, high = CRON_RANGES[field]
    if field == "day_of_week":
        value = re.sub(r"[A-Za-z]+", lambda m: _DAY_NAMES.get(m[0].lower(), m[0]), value)
    for part in value.split(","):
        match = re.fullmatch(r"(\*|(\d+)(?:-(\d+))?)(?:/(\d+))?", part)
        if not match:
            raise ValueError("expected a cron field such as 3, '*/2', '1-5' or '0,30'")
        numbers = [int(n) for n in (match[2], match[3]) if n is not None]
        for number in numbers:
            if not low <= number <= high:
                sunday = " (0 and 7 are Sunday)" if field == "day_of_week" else ""
                raise ValueError(f"{number} is out of range {low}-{high}{sunday}")
        if len(numbers) == 2 and numbers[0] > numbers[1]:
            raise ValueError(f"range {numbers[0]}-{numbers[1]} runs backwards")
        if match[4] is not None and not 1 <= int(match[4]) <= high:
            raise ValueError(f"step /{match[4]} is out of range 1-{high}")
        if match[4] is not None and match[3] is None and match[1] != "*":
            raise ValueError("a step needs a range or '*' (e.g. '*/15' or '0-30/15')")
    return value


Hostname = Annotated[str, AfterValidator(_check_hostname)]
RegistryHost = Annotated[str, AfterValidator(_check_registry_host)]
ContainerName = Annotated[str, AfterValidator(_check_container_name)]
Port = Annotated[int, Field(ge=1, le=65535)]
CronField = Annotated[str, BeforeValidator(_cron_text)]
PublicKey = Annotated[str, AfterValidator(check_host_key)]


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        frozen=True,
        strict=False,
    )


def _no_credentials(url: str, form: str, instead: str) -> None:
    """A user:password@ in a URL would travel in plain text wherever the URL goes."""
    if re.match(r"^[^/]*//[^/?#]*@", url):
        raise ValueError(f"credentials do not belong in the URL: write {form} and set {instead}")
