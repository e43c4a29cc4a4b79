"""FrontSwitch: what the VM may only do once every node trusts the CA and speaks HTTPS.

Created after the node rollout (``depends_on``: the last step of every node of the last batch,
which the batch gates make wait for every earlier batch). The engine creates nothing whose
dependency failed, so one node step that fails leaves both steps below for a later ``pulumi up``:

- ``<name>-tls-issue``: the served certificate from CA ``tls.caGeneration``, with the names the
  settings give (scripts/vm/registry-tls.sh issue: a new PEM, a reload, no connection cut), then
  the keys of older CAs shredded. During a CA rotation the nodes trust the old and the new CA
  from their step on (the trust step's bundle), so no node ever sees a certificate it does not
  trust.
- ``<name>-front``: the front's final rules (scripts/vm/front.sh, never a restart): the plain
  ports refuse every request (403) unless ``tls.plainHttp``. Until then they kept serving the
  nodes not yet switched to https://.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pulumi
from pulumi_command import remote

from components.renderers.front_proxy import (
    FRONT_SCRIPT,
    front_bundle,
    front_params,
    settings_front,
)
from components.renderers.shell import as_root, remote_command
from components.renderers.tls import TLS_SCRIPT, tls_params
from components.settings import Settings
from components.ssh import SshTarget

TYPE = "registry-mirrors:vm:FrontSwitch"


class FrontSwitch(pulumi.ComponentResource):
    def __init__(
        self,
        name: str,
        *,
        settings: Settings,
        ssh: SshTarget,
        after: Sequence[pulumi.Resource],
        vm_id: pulumi.Input[Any] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(TYPE, name, None, opts)
        user = settings.cache_host.ssh_user
        # A new VM starts from the trust and front steps' state: both steps again there.
        triggers = [vm_id] if vm_id is not None else None
        issue = as_root(remote_command(TLS_SCRIPT, tls_params(settings, "issue")), user)
        self.issue = remote.Command(
            f"{name}-tls-issue",
            connection=ssh.connection(),
            create=issue,
            update=issue,
            triggers=triggers,
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(after)),
        )
        front = settings_front(settings, serve_plain=settings.tls.plain_http)
        command = as_root(remote_command(FRONT_SCRIPT, front_params(front, restart=False)), user)
        self.front = remote.Command(
            f"{name}-front",
            connection=ssh.connection(),
            create=command,
            update=command,
            stdin=front_bundle(front),
            triggers=triggers,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.issue]),
        )
        self.register_outputs({"issued": self.issue.stdout})
