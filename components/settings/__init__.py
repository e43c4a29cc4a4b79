"""The one settings model: every value the program uses, validated once, before any resource.

Pure: no ``import pulumi`` here (tests and ``scripts/render.py`` use it without Pulumi).
Keys in stack config are camelCase (``vmId``); Python attributes are snake_case.
Unknown keys are errors: Distribution and containerd silently ignore typos, so we must not.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import ipaddress
import re
import typing
import urllib.parse
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from components.renderers.flavours import FlavourName

DOCKER_HUB = "docker.io"
DOCKER_HUB_SERVER = "https://registry-1.docker.io"

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


class CloudImage(_Model):
    """Import the VM's disk from a downloaded cloud image (alternative to a template clone)."""

    url: str = Field(description="Cloud image URL, e.g. a Debian 12 genericcloud qcow2.")
    checksum: str | None = Field(default=None, description="Expected checksum of the image.")
    checksum_algorithm: Literal["sha256", "sha512"] = Field(
        default="sha512", description="Algorithm of `checksum`."
    )
    datastore: str = Field(
        default="local", description="Datastore with the 'import' content type for the image."
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s/]+/\S+$", value):
            raise ValueError("expected an http(s) URL of an image file")
        return value


class VmSettings(_Model):
    """The registry VM on Proxmox VE."""

    proxmox_node: Hostname = Field(description="Proxmox node the VM runs on, e.g. 'pve'.")
    vm_id: int = Field(ge=100, le=999_999_999, description="Proxmox VM id.")
    name: Hostname = Field(default="registry", description="VM name and hostname.")
    template_vm_id: int | None = Field(
        default=None, ge=100, le=999_999_999, description="Clone this cloud-init template VM."
    )
    cloud_image: CloudImage | None = Field(
        default=None, description="Or import the disk from this cloud image."
    )
    cores: int = Field(default=2, ge=1, le=128, description="vCPUs.")
    memory_mb: int = Field(default=4096, ge=1024, le=1_048_576, description="Memory in MiB.")
    disk_gb: int = Field(default=100, ge=10, le=65_536, description="Disk size in GiB (cache).")
    datastore: str = Field(default="local-lvm", description="Datastore for the VM disk.")
    snippets_datastore: str = Field(
        default="local", description="Datastore with the 'snippets' content type enabled."
    )
    bridge: str = Field(default="vmbr0", description="Proxmox bridge for the NIC.")
    vlan: int | None = Field(default=None, ge=1, le=4094, description="VLAN tag, if any.")
    address: str = Field(description="Static address in CIDR form, e.g. 10.0.20.10/24.")
    gateway: str = Field(description="Default gateway, inside the address's subnet.")
    dns_servers: list[str] = Field(
        default_factory=lambda: ["10.0.20.1"], min_length=1, description="DNS servers."
    )
    search_domain: Hostname | None = Field(default=None, description="DNS search domain.")
    ssh_user: str = Field(default="debian", description="Cloud-init user the program logs in as.")
    ssh_public_keys: list[PublicKey] = Field(
        min_length=1, description="Authorized SSH public keys."
    )
    ssh_host_public_key: PublicKey | None = Field(
        default=None,
        description="The VM's SSH host key to pin (recommended); unset: accept on first use.",
    )
    cloud_init_timeout_seconds: int = Field(
        default=900, ge=30, le=7200, description="How long to wait for cloud-init to finish."
    )

    @field_validator("ssh_user")
    @classmethod
    def _user(cls, value: str) -> str:
        return _check_user(value, "vm.address")

    @field_validator("dns_servers")
    @classmethod
    def _dns(cls, value: list[str]) -> list[str]:
        for server in value:
            try:
                ipaddress.ip_address(server)
            except ValueError:
                raise ValueError(
                    f"{shown(server)} is not an IP address (expected e.g. 10.0.20.1)"
                ) from None
        return value

    @property
    def interface(self) -> ipaddress.IPv4Interface:
        return ipaddress.IPv4Interface(self.address)

    @property
    def ip(self) -> str:
        return str(self.interface.ip)

    @property
    def prefix(self) -> int:
        return self.interface.network.prefixlen


class ProxmoxSsh(_Model):
    """SSH from the Pulumi provider to the Proxmox host (needed to upload snippets)."""

    username: str = Field(default="root", description="SSH user on the Proxmox host.")
    agent: bool = Field(default=True, description="Use the local ssh-agent.")
    node_address: str | None = Field(
        default=None, description="Address of the Proxmox node if its name does not resolve."
    )

    @field_validator("username")
    @classmethod
    def _user(cls, value: str) -> str:
        # root@pam is the API user's form (realm), not an SSH login.
        return _check_user(value, "proxmox.endpoint, or proxmox.ssh.nodeAddress")

    @field_validator("node_address")
    @classmethod
    def _node_address(cls, value: str | None) -> str | None:
        return None if value is None else _check_address(value)


def _no_credentials(url: str, form: str, instead: str) -> None:
    """A user:password@ in a URL would travel in plain text wherever the URL goes."""
    if re.match(r"^[^/]*//[^/?#]*@", url):
        raise ValueError(f"credentials do not belong in the URL: write {form} and set {instead}")


class ProxmoxSettings(_Model):
    endpoint: str = Field(description="Proxmox API URL, e.g. https://pve.lan:8006/.")
    insecure: bool = Field(default=False, description="Skip TLS verification (not recommended).")
    ssh: ProxmoxSsh = Field(default_factory=ProxmoxSsh, description="Provider SSH settings.")

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        _no_credentials(
            value, "https://HOST[:PORT]/", "the API token as the secret proxmoxApiToken"
        )
        if not re.match(r"^https://[^\s/@?#]+/?$", value):
            raise ValueError("expected https://HOST[:PORT]/")
        url = urllib.parse.urlsplit(value)
        try:
            port = url.port
        except ValueError:
            port = -1
        if port is not None and not 1 <= port <= 65535:
            raise ValueError("the port is out of range 1-65535 (Proxmox listens on 8006)")
        host = url.hostname or ""
        try:
            _check_address(host)
        except ValueError as error:
            raise ValueError(f"host {key_text(host)}: {error}") from None
        return value


class Upstream(_Model):
    """One upstream registry and the Distribution pull-through cache in front of it."""

    host: RegistryHost = Field(description="Registry host as images name it, e.g. ghcr.io.")
    port: Port = Field(description="Port the cache is published on, on the VM.")
    container: ContainerName = Field(description="Container name on the VM.")
    metrics_port: Port | None = Field(default=None, description="Metrics port; default port+1.")
    server: str | None = Field(
        default=None,
        description="Upstream URL; default https://<host> (Docker Hub: registry-1.docker.io).",
    )

    @field_validator("server")
    @classmethod
    def _server(cls, value: str | None) -> str | None:
        if value is not None:
            # It lands in hosts.toml, the registry config and the mirrors output: all plain text.
            _no_credentials(
                value, "https://HOST[:PORT]", "upstreamCredentials.<host> (a secret) instead"
            )
        if value is not None and not re.match(r"^https?://[^\s/]+/?$", value):
            raise ValueError("expected the root URL of a registry, e.g. https://ghcr.io")
        return value.rstrip("/") if value else value

    @property
    def resolved_metrics_port(self) -> int:
        return self.metrics_port if self.metrics_port is not None else self.port + 1

    @property
    def resolved_server(self) -> str:
        if self.server:
            return self.server
        return DOCKER_HUB_SERVER if self.host == DOCKER_HUB else f"https://{self.host}"


DEFAULT_UPSTREAMS: tuple[Upstream, ...] = (
    Upstream(host="docker.io", port=5000, container="registry"),
    Upstream(host="ghcr.io", port=5010, container="registry-ghcr"),
    Upstream(host="quay.io", port=5020, container="registry-quay"),
    Upstream(host="registry.k8s.io", port=5030, container="registry-k8s"),
    Upstream(host="reg.kyverno.io", port=5040, container="registry-kyverno"),
)


class Schedule(_Model):
    """A cron schedule: weekly GC or hourly restart, staggered per registry.

    Fields are range-checked here, so the cron file never gets a value cron would read
    differently (``60`` minutes is not minute 0); whether a field may be more than a plain number
    is the maintenance renderer's rule (GC slots are staggered from one plain time), checked
    by ``load_settings`` through that renderer."""

    minute: CronField = Field(description="Cron minute of the first registry's job.")
    hour: CronField = Field(default="*", description="Cron hour.")
    day_of_week: CronField = Field(default="*", description="Cron day of week (0 = Sunday).")
    stagger_minutes: int = Field(
        ge=0, le=59, description="Minutes added per registry so no two jobs overlap."
    )

    @field_validator("minute", "hour", "day_of_week")
    @classmethod
    def _cron(cls, value: str, info: ValidationInfo) -> str:
        assert info.field_name is not None
        return check_cron_field(value, info.field_name)


class GcSchedule(Schedule):
    """Weekly GC: Sunday 03:00 for the first registry, then every 20 minutes the next."""

    minute: CronField = Field(default="0", description="Cron minute of the first registry's GC.")
    hour: CronField = Field(default="3", description="Cron hour (a plain number).")
    day_of_week: CronField = Field(
        default="0", description="Day of week (0 or 7 = Sunday), or '*' for a daily GC."
    )
    stagger_minutes: int = Field(
        default=20, ge=0, le=59, description="Minutes added per registry so no two GCs overlap."
    )


class RestartSchedule(Schedule):
    """Hourly restart at minute 7 for the first registry, then every 5 minutes the next."""

    minute: CronField = Field(default="7", description="Cron minute of the first restart.")
    stagger_minutes: int = Field(default=5, ge=0, le=59, description="Minutes added per registry.")


# Majors of Distribution this program renders a config for (components/renderers/registry_config
# holds what differs between them).
REGISTRY_MAJORS = (2, 3)
_VERSION_TAG = re.compile(r"^v?(\d+)(\.\d+){0,2}([-+][\w.-]*)?$")
_GO_DURATION = re.compile(r"^(0|([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+)$")


def registry_image_major(image: str) -> int:
    """Distribution's major version, read from the image reference's tag.

    ``registry:3.1.1``, ``registry:2.8.3``, ``registry:3.1.1@sha256:...``,
    ``mirror.lan:5000/library/registry:v3.0.0``. A digest alone names no version, and the config a
    registry reads depends on it (its path, its keys), so it is refused with the fix: docker pulls
    ``name:tag@digest`` by the digest and the tag only tells this program which version it is.
    """
    name, at, _ = image.partition("@")
    last = name.rsplit("/", 1)[-1]
    _, colon, tag = last.partition(":")
    if not colon:
        if at:
            example = shown(f"{name}:3.1.1@sha256:...")
            fix = f"write its version tag before the digest, e.g. {example} "
            fix += "(docker pulls by the digest; the tag only names the version)"
        else:
            fix = f"add its version tag, e.g. {shown(f'{name}:3.1.1')}"
        raise ValueError(
            f"names no Distribution version, and the major decides the config path and keys: {fix}"
        )
    match = _VERSION_TAG.match(tag)
    if match is None:
        example = shown(f"{name.rsplit(':', 1)[0]}:3.1.1")
        raise ValueError(
            f"tag {shown(tag)} is not a Distribution version: use the image's version tag, e.g. "
            f"{example} (a digest may follow: ':3.1.1@sha256:...')"
        )
    major = int(match.group(1))
    if major not in REGISTRY_MAJORS:
        raise ValueError(
            f"Distribution {major}.x is not supported (supported majors: "
            f"{', '.join(map(str, REGISTRY_MAJORS))})"
        )
    return major


class RegistrySettings(_Model):
    """How the Distribution containers run on the VM."""

    image: str = Field(
        # Distribution 3 fetches each blob once on a cache miss; 2.8 fetches it twice (README).
        default="registry:3.1.1",
        description="Registry image, pinned: a version tag, optionally with @sha256 digest.",
    )
    proxy_ttl: str | None = Field(
        default=None,
        description="Distribution 3 only: how long cached content lives (Go duration, e.g. "
        "168h; 0 = never expires). Unset: Distribution's default, 168h.",
    )
    disk_usage_threshold_percent: int = Field(
        default=80,
        ge=1,
        le=100,
        description="Cache disk usage (percent of the VM filesystem) that the maintenance job "
        "logs as a warning and scripts/verify.py reports as a failure.",
    )
    memory_mb: int = Field(default=1024, ge=128, le=65_536, description="Memory limit per cache.")
    log_level: Literal["error", "warn", "info", "debug"] = Field(
        default="info", description="Distribution log level (info keeps access logs)."
    )
    gc: GcSchedule = Field(
        default_factory=GcSchedule,
        description="Weekly garbage collection, one registry after another.",
    )
    restart: RestartSchedule = Field(
        default_factory=RestartSchedule,
        description="Hourly restart (Distribution's proxy cache grows in memory).",
    )
    allowed_cidrs: list[str] | None = Field(
        default=None,
        description="Who may pull from the caches; default: the node addresses (/32 each).",
    )
    admin_cidrs: list[str] = Field(
        default_factory=lambda: ["10.0.0.0/8"], min_length=1, description="Who may SSH to the VM."
    )

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        if not re.search(r"(:[\w][\w.-]{0,127}|@sha256:[0-9a-f]{64})$", value) or value.endswith(
            ":latest"
        ):
            raise ValueError(
                "expected a pinned image reference (a tag other than latest, or a digest)"
            )
        registry_image_major(value)
        return value

    @field_validator("proxy_ttl")
    @classmethod
    def _proxy_ttl(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return value
        if not _GO_DURATION.match(value):
            raise ValueError(
                "expected a Go duration such as 168h or 90m (no 'd' unit), or 0 to never expire"
            )
        image = info.data.get("image")  # absent when the image itself was invalid
        if image is not None and registry_image_major(image) == 2:
            # 2.8 hard-codes repositoryTTL = 168h (registry/proxy/proxymanifeststore.go) and
            # never reads proxy.ttl: the setting would silently do nothing.
            raise ValueError(
                f"Distribution 2.x ({image}) ignores proxy.ttl and always expires after 168h: "
                "use a registry:3 image (e.g. registry:3.1.1) or remove registry.proxyTtl"
            )
        return value

    @property
    def major(self) -> int:
        """Distribution's major version of ``image`` (2 or 3)."""
        return registry_image_major(self.image)

    @field_validator("allowed_cidrs", "admin_cidrs")
    @classmethod
    def _cidrs(cls, value: list[str] | None) -> list[str] | None:
        for cidr in value or []:
            try:
                ipaddress.ip_network(cidr, strict=True)
            except ValueError:
                raise ValueError(
                    f"{shown(cidr)} is not a network in CIDR form (e.g. 10.0.20.0/24;"
                    " no host bits set)"
                ) from None
        return value


class Node(_Model):
    """A cluster node whose containerd is switched to config_path + hosts.toml."""

    name: Hostname = Field(description="Node name (unique).")
    address: str = Field(description="Address the program reaches the node at over SSH.")
    ssh_user: str = Field(default="root", description="SSH user (root or passwordless sudo).")
    ssh_port: Port = Field(default=22, description="SSH port.")
    ssh_host_public_key: PublicKey | None = Field(default=None, description="Host key to pin.")
    config_file: str = Field(
        default="/etc/containerd/config.toml", description="containerd config.toml path."
    )
    restart_command: str = Field(
        default="systemctl restart containerd", description="How to restart containerd."
    )
    containerd_address: str = Field(
        default="/run/containerd/containerd.sock",
        description="containerd's socket, where the CRI plugin is checked after a restart.",
    )
    skip_config_path: bool = Field(
        default=False,
        description="Opt out: leave config.toml alone (only hosts.toml is written; reported).",
    )
    flavour: FlavourName | None = Field(
        default=None,
        description="Force the node's flavour (containerd, k3s-server, k3s-agent, rke2-server, "
        "rke2-agent); default: detected by the probe. A mismatch with the node is an error.",
    )

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        try:
            ipaddress.IPv4Address(value)
        except ValueError:
            raise ValueError("expected an IPv4 address such as 10.0.20.21") from None
        return value

    @field_validator("ssh_user")
    @classmethod
    def _user(cls, value: str) -> str:
        return _check_user(value, "nodes[].address")

    @field_validator("restart_command")
    @classmethod
    def _restart(cls, value: str) -> str:
        # Refused here, not on the node after config.toml has already been changed.
        if not value.strip():
            raise ValueError("must not be empty: the command that restarts containerd")
        return value

    @field_validator("config_file", "containerd_address")
    @classmethod
    def _abs(cls, value: str) -> str:
        if not value.startswith("/") or any(c.isspace() for c in value):
            raise ValueError("expected an absolute path without spaces")
        return value


class ContainerdSettings(_Model):
    """containerd-side settings shared by all nodes."""

    config_path: str = Field(
        default="/etc/containerd/certs.d", description="Directory containerd reads hosts.toml from."
    )
    batch_size: int = Field(
        default=5, ge=1, le=1000, description="Nodes per batch after the canary."
    )
    restart_timeout_seconds: int = Field(
        default=60, ge=5, le=600, description="How long to wait for the CRI plugin after a restart."
    )
    probe_concurrency: int = Field(
        default=32,
        ge=1,
        le=256,
        description="Nodes read at once over SSH while the program runs (preview included).",
    )

    @field_validator("config_path")
    @classmethod
    def _dir(cls, value: str) -> str:
        if not value.startswith("/") or ":" in value or any(c.isspace() for c in value):
            raise ValueError("expected ONE absolute directory (no ':' list, no spaces)")
        return value.rstrip("/") or "/"


class Settings(_Model):
    """Everything one stack needs, except secrets."""

    proxmox: ProxmoxSettings
    vm: VmSettings
    upstreams: list[Upstream] = Field(
        default_factory=lambda: list(DEFAULT_UPSTREAMS), min_length=1, description="Upstreams."
    )
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    nodes: list[Node] = Field(default_factory=list, description="Cluster nodes.")
    containerd: ContainerdSettings = Field(default_factory=ContainerdSettings)

    @model_validator(mode="after")
    def _cross_checks(self) -> Self:
        problems = _cross_problems(self.model_dump(by_alias=True))
        if problems:
            raise SettingsError(problems)
        return self

    def endpoint(self, upstream: Upstream) -> str:
        return f"http://{self.vm.ip}:{upstream.port}"

    def metrics_url(self, upstream: Upstream) -> str:
        return f"http://{self.vm.ip}:{upstream.resolved_metrics_port}/metrics"

    @property
    def allowed_cidrs(self) -> list[str]:
        if self.registry.allowed_cidrs is not None:
            return list(self.registry.allowed_cidrs)
        return [f"{node.address}/32" for node in self.nodes]


def _get(mapping: Any, key: str, default: Any = None) -> Any:
    """Read a camelCase key from raw config (or its snake_case twin) without trusting its type."""
    if not isinstance(mapping, Mapping):
        return default
    snake = re.sub(r"(?<!^)([A-Z])", r"_\\1", key).lower()
    return mapping.get(key, mapping.get(snake, default))


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):  # None, 'x', inf, nan, 5000 digits
        return None


def _cross_problems(raw: Mapping[str, Any]) -> list[str]:
    """Checks that span keys. Works on raw config so they run even when a field is invalid:
    the user sees every problem in one go."""
    problems: list[str] = []
    vm = _get(raw, "vm", {})
    address = _get(vm, "address")
    interface = None
    if isinstance(address, str):
        try:
            interface = ipaddress.IPv4Interface(address)
        except ValueError:
            problems.append(
                f"vm.address: {shown(address)} is not an IPv4 address in CIDR form"
                " (expected e.g. 10.0.20.10/24)"
            )
    if interface is not None:
        network = interface.network
        if "/" not in address:
            problems.append(
                f"vm.address: {shown(address)} has no prefix (expected e.g. 10.0.20.10/24)"
            )
            interface = None
        elif network.prefixlen < 31 and interface.ip in (
            network.network_address,
            network.broadcast_address,
        ):
            kind = "network" if interface.ip == network.network_address else "broadcast"
            problems.append(f"vm.address: {shown(address)} is the {kind} address of {network}")
    gateway_raw = _get(vm, "gateway")
    if isinstance(gateway_raw, str):
        try:
            gateway = ipaddress.IPv4Address(gateway_raw)
        except ValueError:
            problems.append(f"vm.gateway: {shown(gateway_raw)} is not an IPv4 address")
        else:
            if interface is not None and gateway not in interface.network:
                problems.append(
                    f"vm.gateway: {shown(gateway_raw)} is outside the VM subnet {interface.network}"
                )
            elif interface is not None and gateway == interface.ip:
                problems.append(f"vm.gateway: {shown(gateway_raw)} is the VM's own address")
    if isinstance(vm, Mapping):
        sources = [k for k in ("templateVmId", "cloudImage") if _get(vm, k) is not None]
        if len(sources) != 1:
            got = "neither" if not sources else "both"
            problems.append(f"vm: set exactly one source: templateVmId or cloudImage (got {got})")

    upstreams = _get(raw, "upstreams")
    if upstreams is None:
        upstreams = [u.model_dump(by_alias=True) for u in DEFAULT_UPSTREAMS]
    upstreams = [
        u if isinstance(u, Mapping) else {}
        for u in (upstreams if isinstance(upstreams, list) else [])
    ]
    problems += _duplicates("upstreams", "host", [_get(u, "host") for u in upstreams])
    problems += _duplicates("upstreams", "container", [_get(u, "container") for u in upstreams])
    port_owner: dict[int, str] = {}
    for index, upstream in enumerate(upstreams):
        port = _int_or_none(_get(upstream, "port"))
        metrics = _int_or_none(_get(upstream, "metricsPort"))
        if metrics is None and port is not None:
            metrics = port + 1
        for field, value in (("port", port), ("metricsPort", metrics)):
            if value is None or not 1 <= value <= 65535:
                if (
                    field == "metricsPort"
                    and value is not None
                    and _get(upstream, "metricsPort") is None
                ):
                    problems.append(
                        f"upstreams[{index}].metricsPort: default port+1 = {value} is out of range"
                    )
                continue
            if value == 22:
                problems.append(f"upstreams[{index}].{field}: {value} clashes with SSH on the VM")
            owner = port_owner.get(value)
            if owner is not None:
                problems.append(f"upstreams[{index}].{field}: {value} clashes with {owner}")
            else:
                port_owner[value] = (
                    f"upstreams[{index}].{field} ({key_text(_get(upstream, 'host'))})"
                )

    nodes = _get(raw, "nodes", [])
    nodes = [
        n if isinstance(n, Mapping) else {} for n in (nodes if isinstance(nodes, list) else [])
    ]
    problems += _duplicates("nodes", "name", [_get(n, "name") for n in nodes])
    problems += _duplicates("nodes", "address", [_get(n, "address") for n in nodes])
    if interface is not None:
        for index, node in enumerate(nodes):
            if _get(node, "address") == str(interface.ip):
                problems.append(
                    f"nodes[{index}].address: {shown(_get(node, 'address'))}"
                    " is the registry VM's own address"
                )
    return problems


def _duplicates(section: str, key: str, values: list[Any]) -> list[str]:
    seen: dict[Any, int] = {}
    problems = []
    for index, value in enumerate(values):
        if value is None or not isinstance(value, (str, int)):
            continue
        if value in seen:
            first = f"{section}[{seen[value]}].{key}"
            problems.append(f"{section}[{index}].{key}: {shown(value)} duplicates {first}")
        else:
            seen[value] = index
    return problems


class UpstreamCredentials(_Model):
    username: str = Field(min_length=1)
    password: SecretStr


class Secrets(_Model):
    """Secret config, read as Pulumi secrets. Never rendered, logged or put into cloud-init."""

    proxmox_api_token: SecretStr = Field(
        description="Proxmox API token: 'USER@REALM!TOKENID=UUID'."
    )
    upstream_credentials: dict[str, UpstreamCredentials] = Field(
        default_factory=dict, description="Per upstream host: {username, password}."
    )

    @field_validator("proxmox_api_token")
    @classmethod
    def _token(cls, value: SecretStr) -> SecretStr:
        if not re.match(r"^[^@\s]+@[^!\s]+![^=\s]+=\S+$", value.get_secret_value()):
            raise ValueError("expected USER@REALM!TOKENID=SECRET (value hidden)")
        return value


SECTIONS = ("proxmox", "vm", "upstreams", "registry", "nodes", "containerd")
SECRET_KEYS = ("proxmoxApiToken", "upstreamCredentials")


def _known_keys(location: tuple[Any, ...]) -> list[str]:
    """The keys the model accepts where ``location`` ends (for a "did you mean" hint)."""
    model: Any = Settings
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


def _format_error(error: ValidationError) -> list[str]:
    """One line per pydantic error: ``key: problem (got value)``. The value is left out for an
    unknown key (a password pasted under the wrong key must not reach a CI log) and for keys
    whose name suggests a secret; echoed values are cut to ``SHOWN_LENGTH``."""
    lines = []
    for item in error.errors():
        if isinstance(item.get("ctx", {}).get("error"), SettingsError):
            continue  # cross-key problems: load_settings adds them from the raw config
        location = tuple(item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        value = item.get("input")
        show = item["type"] != "missing" and not isinstance(value, (dict, list))
        if item["type"] == "extra_forbidden":
            message = unknown_key(location[-1], _known_keys(location))
            show = False
        elif item["type"] == "missing":
            message = "required key is missing"
        if any(isinstance(part, str) and secret_name(part) for part in location):
            show = False
        lines.append(
            f"{_location(location)}: {message}" + (f" (got {shown(value)})" if show else "")
        )
    return lines


def load_settings(raw: Mapping[str, Any]) -> Settings:
    """Validate the project's config namespace (keys without the ``project:`` prefix).

    Raises SettingsError with every problem at once, one per line, each naming its key.
    """
    known = [*SECTIONS, *SECRET_KEYS]
    problems = [f"{key_text(key)}: {unknown_key(key, known)}" for key in raw if key not in known]
    plain = {key: value for key, value in raw.items() if key in SECTIONS}
    try:
        settings = Settings.model_validate(plain)
    except ValidationError as error:
        problems += _format_error(error) + _cross_problems(plain)
        raise SettingsError(list(dict.fromkeys(problems))) from None
    problems += _schedule_problems(settings)
    if problems:
        raise SettingsError(problems)
    return settings


def _schedule_problems(settings: Settings) -> list[str]:
    """GC and restart times must be plain times whose staggered slots never overlap; the
    maintenance renderer knows how slots are laid out, so ask it rather than repeat it."""
    from components.renderers.maintenance import gc_windows, restart_jobs

    try:
        gc_windows(settings)
        restart_jobs(settings)
    except ValueError as error:
        return [str(error)]
    return []


def load_secrets(raw: Mapping[str, Any], settings: Settings) -> Secrets:
    """Validate secret config. Messages never contain a secret value."""
    values = {key: raw[key] for key in SECRET_KEYS if key in raw}
    try:
        secrets = Secrets.model_validate(values)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            location = _location(tuple(item["loc"]))
            message = item["msg"].removeprefix("Value error, ")
            if item["type"] == "missing":
                message = "required secret is missing (pulumi config set --secret ...)"
            elif item["type"] == "extra_forbidden":
                message = unknown_key(item["loc"][-1], ["username", "password"])
            problems.append(f"{location}: {message}")  # never the value: it is a secret
        raise SettingsError(problems) from None
    hosts = {u.host for u in settings.upstreams}
    unknown = [
        f"upstreamCredentials.{key_text(host)}: no upstream with this host is configured"
        for host in secrets.upstream_credentials
        if host not in hosts
    ]
    if unknown:
        raise SettingsError(unknown)
    return secrets
