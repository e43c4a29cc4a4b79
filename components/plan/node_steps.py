"""The exact (command, stdin) of every node step, as plain functions of plain values.

The Pulumi component and the end-to-end test both call these, so the test runs over SSH exactly
what ``pulumi up`` would send. Pure: no ``import pulumi``.

The steps pulumi-command runs (hosts, config, registries, restore) send their script first on
stdin and keep the command to the parameters and a small loader (renderers/shell.py
``stdin_command``): a failed step's message then starts with the script's own summary, not with
the 14 KB command. The probe and the verify check, which we run and report ourselves, carry the
script in the command.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from components.renderers.flavours import FLAVOURS, Flavour, Role
from components.renderers.shell import as_root, remote_command, stdin_command
from components.renderers.tls import RANCHER_CA_FILE, containerd_ca_file
from components.settings import Node, Settings


@dataclass(frozen=True)
class Step:
    """What runs: ``command`` is the login shell's command line; stdin is ``script`` (when it
    travels there, see ``stdin_command``) followed by ``content``, what the script reads."""

    command: str
    content: str = ""
    script: str = ""

    @property
    def stdin(self) -> str:
        return self.script + self.content


def _as_node_root(node: Node, command: str) -> str:
    # The scripts need root (config.toml, restart).
    return as_root(command, node.ssh_user)


def script_step(
    node: Node, script: str, params: Mapping[str, str | int | bool], stdin: str = ""
) -> Step:
    """``scripts/<script>`` with ``params`` as root on ``node`` (sudo unless it is root), the
    script in the command: for what we run and report ourselves (the probe, verify)."""
    return Step(_as_node_root(node, remote_command(script, params)), stdin)


def sent_step(
    node: Node, script: str, params: Mapping[str, str | int | bool], content: str = ""
) -> Step:
    """A step pulumi-command runs: the script on stdin before ``content``, a short command."""
    command, text = stdin_command(script, params)
    return Step(_as_node_root(node, command), content, text)


def probe_params(settings: Settings, node: Node) -> dict[str, str]:
    """probe.sh's parameters for ``node``: sent with the probe by the apply identity, installed
    on the node for the read identity (components/plan/read_access.py)."""
    params = {"CONFIG_FILE": node.config_file, "CONFIG_PATH": settings.containerd.config_path}
    if node.flavour is not None:
        # Only when set, so the command of every other node stays byte for byte what it was.
        params["FLAVOUR"] = node.flavour
    return params


def probe_step(settings: Settings, node: Node) -> Step:
    return script_step(node, "node/probe.sh", dict(probe_params(settings, node)))


HOSTS_HEADER = "# registry-mirrors: "


def hosts_bundle(files: Mapping[str, str]) -> str:
    """hosts.sh's stdin: the files themselves, each after a ``# registry-mirrors: <dir>/hosts.toml``
    line. Plain text, so ``pulumi preview --diff`` shows a reviewer the hosts.toml lines that
    change; hosts.sh splits at the header lines and writes each file without its header."""
    parts = []
    for directory, text in sorted(files.items()):
        if not text.endswith("\n") or any(
            line.startswith(HOSTS_HEADER) for line in text.splitlines()
        ):
            raise ValueError(f"{directory}/hosts.toml cannot travel in the bundle as rendered")
        parts.append(f"{HOSTS_HEADER}{directory}/hosts.toml\n{text}")
    return "".join(parts)


def hosts_step(
    settings: Settings,
    node: Node,
    files: Mapping[str, str],
    carried: Sequence[tuple[str, str, str]] = (),
    mark: str = "",
) -> Step:
    """hosts.sh: ``files`` (the bundle on stdin, after the script) and the directories of a
    previous config_path it copies on the node, as (digest, name, source) (``CARRY``; only when
    there are some). ``mark``: recorded with every file it leaves, carried ones and CA_FILE
    included; the probe gives it back while they are as hosts.sh left them
    (components/plan/node_plan.py ``apply_mark``). With TLS on, ``with_trust`` puts the CA
    certificates between the script and the bundle (known once the VM has made its CA:
    components/containerd_mirrors.py)."""
    params: dict[str, str | int | bool] = {
        "CONFIG_PATH": settings.containerd.config_path,
        "CA_FILE": containerd_ca_file(settings),
        "APPLY_MARK": mark,
    }
    if carried:
        for digest, name, source in carried:
            if any(c.isspace() for c in f"{digest}{name}{source}"):
                raise ValueError(f"cannot send {source!r} in hosts.sh's CARRY")
        params["CARRY"] = "".join(f"{d} {n} {s}\n" for d, n, s in carried)
    return sent_step(node, "node/hosts.sh", params, hosts_bundle(files))


def node_role(node: Node, flavour: Flavour) -> Role:
    """``nodes[].role``, else the flavour's: k3s/RKE2 servers are control-plane nodes."""
    return node.role or flavour.role


def health_command(node: Node, flavour: Flavour) -> str:
    """How a control-plane node tells, by itself, that it is healthy as a cluster member."""
    if node.health_command:
        return node.health_command
    if flavour.is_distribution and not flavour.kubeconfig:
        raise NodeStepError(
            f"node {node.name} ({node.address}): nodes[].role is control-plane but a "
            f"{flavour.name} runs no API server of its own to ask: set nodes[].healthCommand; "
            "nothing was changed"
        )
    return flavour.health_command


def _health_params(settings: Settings, node: Node, flavour: Flavour) -> dict[str, str | int | bool]:
    # Control-plane nodes only (a worker's commands stay byte for byte what they were): after the
    # CRI plugin is ok, HEALTH_COMMAND must succeed within HEALTH_TIMEOUT or the change is rolled
    # back; before a change it must already succeed (else nothing is changed). A k3s/RKE2 server
    # whose CRI answers may still be rejoining etcd: the next server must not restart until then.
    if node_role(node, flavour) != "control-plane":
        return {}
    return {
        "HEALTH_COMMAND": health_command(node, flavour),
        "HEALTH_TIMEOUT": settings.containerd.health_timeout_seconds,
    }


CA_SECTION = "# registry-mirrors-ca"
CA_SECTION_END = "# registry-mirrors-ca-end"


def trust_section(ca_pem: str) -> str:
    """The CA certificates of our caches as the first part of a step's stdin (scripts/node/lib.sh
    take_trust_section writes them to the step's CA_FILE before anything that names it)."""
    text = ca_pem if ca_pem.endswith("\n") else ca_pem + "\n"
    if "-----BEGIN CERTIFICATE-----" not in text or "PRIVATE KEY" in text:
        raise ValueError("the CA bundle must hold certificates and nothing else")
    if CA_SECTION_END in text or text.startswith(CA_SECTION):
        raise ValueError("the CA bundle cannot travel in a step's stdin")
    return f"{CA_SECTION}\n{text}{CA_SECTION_END}\n"


def with_trust(step: Step, ca_pem: str) -> Step:
    """``step`` with the CA certificates in front of its content: its stdin is then the script,
    the CA section, the content (the script takes the section off before reading its content)."""
    return Step(step.command, trust_section(ca_pem) + step.content, step.script)


def _restart_params(settings: Settings, node: Node) -> dict[str, str | int | bool]:
    # The scripts restart containerd, then wait up to RESTART_TIMEOUT for its CRI plugin to be ok
    # on CONTAINERD_ADDRESS (a node whose socket is elsewhere would otherwise always roll back).
    return {
        "RESTART_COMMAND": node.restart_command,
        "RESTART_TIMEOUT": settings.containerd.restart_timeout_seconds,
        "CONTAINERD_ADDRESS": node.containerd_address,
        **_health_params(settings, node, FLAVOURS["containerd"]),
    }


def config_step(
    settings: Settings,
    node: Node,
    expected_sha256: str,
    new_text: str,
    dropins: Sequence[tuple[str, str, str]] = (),
    mark: str = "",
) -> Step:
    """apply-config.sh: config.toml (``new_text``, guarded by ``expected_sha256``) and the
    ``imports`` drop-ins that change with it, as (path, guard, text): one restart, one rollback.
    Without drop-ins the content is config.toml alone. ``mark``: recorded with every file it
    leaves (components/plan/node_plan.py ``apply_mark``)."""
    params: dict[str, str | int | bool] = {
        "CONFIG_FILE": node.config_file,
        "EXPECTED_SHA256": expected_sha256,
        "APPLY_MARK": mark,
        **_restart_params(settings, node),
    }
    if not dropins:
        return sent_step(node, "node/apply-config.sh", params, new_text)
    params["DROPIN_COUNT"] = len(dropins)
    files = [(node.config_file, expected_sha256, new_text), *dropins]
    for path, _, _ in files:
        if "\n" in path or not path.startswith("/"):
            raise ValueError(f"cannot send {path!r} in apply-config.sh's bundle")
    bundle = "".join(
        f"# registry-mirrors-file: {guard} {len(text.encode())} {path}\n{text}"
        for path, guard, text in files
    )
    return sent_step(node, "node/apply-config.sh", params, bundle)


def restore_config_step(settings: Settings, node: Node) -> Step:
    """nodes[].state: restored: the node's very first config.toml back, containerd restarted."""
    return sent_step(
        node,
        "node/restore.sh",
        {"CONFIG_FILE": node.config_file, **_restart_params(settings, node)},
    )


def restore_hosts_step(settings: Settings, node: Node) -> Step:
    """nodes[].state: restored: our hosts.toml files and CA_FILE go (a hand-made hosts.toml we
    replaced comes back). REMOVE_ALL, so no bundle is read whatever follows the script on stdin."""
    return sent_step(
        node,
        "node/hosts.sh",
        {
            "CONFIG_PATH": settings.containerd.config_path,
            "CA_FILE": containerd_ca_file(settings),
            "REMOVE_ALL": 1,
        },
    )


def verify_step(
    settings: Settings,
    node: Node,
    images: Sequence[str] = (),
    flavour: Flavour = FLAVOURS["containerd"],
) -> Step:
    """Read-only health check for scripts/verify.py (pulls ``images`` through hosts.toml). On a
    k3s/RKE2 node: its own containerd and ctr, its socket, the config.toml and certs.d it
    generated (``expected_config_path`` says what config_path must then be)."""
    params: dict[str, str | int | bool] = {
        **verify_params(settings, node, flavour),
        "IMAGES": " ".join(images),
    }
    return script_step(node, "node/verify-node.sh", params)


def verify_params(settings: Settings, node: Node, flavour: Flavour) -> dict[str, str]:
    """verify-node.sh's parameters but the images: sent by the apply identity, installed on the
    node for the read identity (whose request names only the images)."""
    params = {
        "CONFIG_FILE": node.config_file,
        "CONFIG_PATH": expected_config_path(settings, flavour),
        "CONTAINERD_ADDRESS": node.containerd_address,
    }
    if flavour.is_distribution:
        params.update(
            CONFIG_FILE=flavour.config_file,
            CONTAINERD_ADDRESS=flavour.cri_socket,
            CTR=f"{flavour.bin_dir}/ctr",
            CONTAINERD=f"{flavour.bin_dir}/containerd",
        )
    return params


def expected_config_path(settings: Settings, flavour: Flavour) -> str:
    """Where the node's containerd must read hosts.toml from."""
    return flavour.hosts_dir if flavour.is_distribution else settings.containerd.config_path


class NodeStepError(RuntimeError):
    """A node step failed; the message names the node, its address and the step."""


# What ssh exits with when it cannot connect or authenticate (the remote command never ran).
SSH_FAILURE = 255


def check_step(node: Node, role: str, exit_code: int, stderr: str) -> None:
    """Raise NodeStepError unless the step succeeded (for runners other than pulumi-command,
    whose own error already names the resource ``<name>-<node>-<role>``)."""
    if exit_code == 0:
        return
    where = f"node {node.name} ({node.ssh_user}@{node.address}:{node.ssh_port}) {role}"
    if exit_code == SSH_FAILURE:
        # ssh's last line is the reason; the banner above it (host key warnings) is noise here.
        lines = stderr.strip().splitlines()
        reason = lines[-1] if lines else "no output from ssh"
        if "Host key verification failed" in stderr:
            reason += (
                " (the node's host key is not the pinned nodes[].sshHostPublicKey: if it was "
                "reinstalled, compare its key on its console, then re-pin it: python "
                f"scripts/pin_host_keys.py --stack <stack> --repin {node.name})"
            )
        raise NodeStepError(f"{where}: cannot reach the node over SSH: {reason}")
    raise NodeStepError(f"{where} failed (exit {exit_code}): {stderr.strip()}")


# --- k3s / RKE2: registries.yaml instead of config.toml -----------------------------------------


def _distribution_params(
    settings: Settings, node: Node, flavour: Flavour
) -> dict[str, str | int | bool]:
    # The restart command and socket come from the flavour unless the node sets them explicitly
    # (their defaults are plain containerd's).
    explicit = node.model_fields_set
    return {
        "REGISTRIES_FILE": flavour.registries_file,
        "RESTART_COMMAND": node.restart_command
        if "restart_command" in explicit
        else flavour.restart_command,
        "RESTART_TIMEOUT": settings.containerd.restart_timeout_seconds,
        "CONTAINERD_ADDRESS": node.containerd_address
        if "containerd_address" in explicit
        else flavour.cri_socket,
        "CTR": f"{flavour.bin_dir}/ctr",
        "UNIT": flavour.unit,
        "CONTAINERD_LOG": flavour.containerd_log,
        "CA_FILE": RANCHER_CA_FILE,
        **_health_params(settings, node, flavour),
    }


def expected_hosts(settings: Settings) -> str:
    """registries.sh's EXPECTED_HOSTS: each upstream and the cache its generated hosts.toml must
    try first."""
    return " ".join(f"{u.host}={settings.endpoint(u)}" for u in settings.upstreams)


def registries_step(
    settings: Settings,
    node: Node,
    flavour: Flavour,
    expected_sha256: str,
    new_text: str,
    mark: str = "",
) -> Step:
    """Write registries.yaml (``new_text``), restart the distribution, check its generated
    hosts.toml; roll back on failure. Identical text: nothing happens, no restart."""
    return sent_step(
        node,
        "node/registries.sh",
        {
            **_distribution_params(settings, node, flavour),
            "EXPECTED_SHA256": expected_sha256,
            "APPLY_MARK": mark,
            "HOSTS_DIR": flavour.hosts_dir,
            "EXPECTED_HOSTS": expected_hosts(settings),
        },
        new_text,
    )


def restore_registries_step(settings: Settings, node: Node, flavour: Flavour) -> Step:
    """nodes[].state: restored: the node's very first registries.yaml back (or none, if it had
    none), restart."""
    return sent_step(
        node,
        "node/registries.sh",
        {**_distribution_params(settings, node, flavour), "RESTORE": 1},
    )
