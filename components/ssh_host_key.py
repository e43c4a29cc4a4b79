"""The registry VM's SSH host key: made by the program, so every connection can pin it from the
VM's first boot on (no ``import pulumi`` here; components/registry_vm.py keeps it in the state).

An Ed25519 key: cloud-init's ``ssh_keys`` writes exactly the pair it is given and, when given
one, generates no other type (cloud-init 22.4 cc_ssh.py), so the VM presents this key and no
other. The private half is only ever a secret Output, a stdin, or a file on the VM.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

KEY_TYPE = "ssh-ed25519"


@dataclass(frozen=True, repr=False)
class HostKey:
    """A host key pair in the formats sshd and cloud-init read: ``private`` an OpenSSH private
    key file's text, ``public`` ``ssh-ed25519 BASE64`` (what ``host_key`` and a known_hosts line
    take). ``repr`` never shows the private half (a traceback or a log line must not)."""

    private: str
    public: str

    def __repr__(self) -> str:
        return f"HostKey(public={self.public!r}, private=<secret>)"


def generate_host_key() -> HostKey:
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()
    return HostKey(private=private, public=public_key_of(private))


def public_key_of(private: str) -> str:
    """``ssh-ed25519 BASE64`` of an OpenSSH private key (no comment: the pinned form)."""
    key = serialization.load_ssh_private_key(private.encode(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("the VM's host key must be an Ed25519 key")
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )


def fingerprint(public: str) -> str:
    """``SHA256:...`` as ``ssh-keygen -lf`` and ssh's own messages print it."""
    blob = base64.b64decode(public.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
