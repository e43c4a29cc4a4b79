"""Section ``nodeAccess``: who may READ the nodes (README "The read identity").

Two identities reach a node. The apply identity (``nodes[].sshUser``, root or passwordless sudo)
changes it: every step of the rollout. The read identity (``readUser``) can only run the probe
and the verify check installed on the node, with the parameters installed there, through one
forced command and one sudo rule: what a pull request's ``pulumi preview`` needs, and no more.
It exists on a node once ``readPublicKeys`` is set and ``pulumi up`` (apply identity) installed
it; until then every read uses the apply identity, as before this section existed.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from components.settings.checks import PublicKey, _check_user, _Model

DEFAULT_READ_USER = "registry-mirrors-read"


class NodeAccessSettings(_Model):
    """The read identity on the nodes."""

    read_user: str = Field(
        default=DEFAULT_READ_USER,
        description="The user the read identity logs in as; created by the program on each node "
        "(a system user whose only command is the read gate). Must not exist already.",
    )
    read_public_keys: list[PublicKey] = Field(
        default_factory=list,
        description="Public halves of the read key(s) (`ssh-ed25519 AAAA...`). Empty (default): "
        "no read identity; every node read uses nodes[].sshUser. Set: `pulumi up` installs the "
        "read identity on every node, and previews read with it.",
    )

    @field_validator("read_user")
    @classmethod
    def _user(cls, value: str) -> str:
        value = _check_user(value, "nodes[].address")
        if value == "root":
            raise ValueError("must not be root: the read identity is the one that is NOT root")
        return value

    @field_validator("read_public_keys")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        blobs = [key.split()[1] for key in value]
        if len(set(blobs)) != len(blobs):
            raise ValueError("the same key is listed twice")
        return value

    @property
    def enabled(self) -> bool:
        return bool(self.read_public_keys)
