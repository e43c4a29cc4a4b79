"""What Proxmox VE gives a VM that the program creates: its config and its cloud-init seed.

A test helper, never imported by the program. Two steps, each named after the code it mirrors:

1. ``proxmox_config(vm_inputs, snippets)``: the VM config the provider writes, from the
   ``proxmoxve.VmLegacy`` inputs the component registers (as recorded under Pulumi mocks,
   camelCased). bpg/terraform-provider-proxmox ``proxmoxtf/resource/vm/vm.go``
   ``vmGetCloudInitConfig`` and ``proxmox/nodes/vms/custom_cloud_init.go``
   ``CustomCloudInitConfig.EncodeValues`` (``ipconfig0``, ``nameserver``, ``searchdomain``,
   ``sshkeys``, ``ciuser``, ``ciupgrade``, ``cicustom``); ``custom_agent.go``
   ``CustomAgent.EncodeValues`` (``agent``).
2. ``generate_nocloud(conf, vmid, snippets)``: the NoCloud seed Proxmox builds from that config,
   proxmox/qemu-server ``src/PVE/QemuServer/Cloudinit.pm``: ``cloudinit_userdata``,
   ``nocloud_network`` (network-config version 1), ``nocloud_gen_metadata`` (instance-id = sha1 of
   user-data . network-config: vendor-data is NOT part of it), ``get_custom_cloudinit_files``
   (``cicustom vendor=`` read from the snippet store, at most 1 MiB), and
   ``commit_cloudinit_disk`` (an ISO labelled ``cidata``: ``genisoimage -quiet -iso-level 3 -J
   -R``).

Text is built line by line exactly as the Perl code prints it (not with a YAML dumper), so the
guest's cloud-init parses what Proxmox would hand it, byte for byte.
"""

from __future__ import annotations

import hashlib
import ipaddress
import subprocess
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SNIPPET_LIMIT = 1024 * 1024  # read_cloudinit_snippets_file: file_get_contents(..., 1 MiB)
SEED_LIMIT = 3 * 1024 * 1024  # generate_nocloud: "Cloud-Init sum of snippets too big"


@dataclass(frozen=True)
class HostDns:
    """The Proxmox host's /etc/resolv.conf (get_dns_conf falls back to it)."""

    search: tuple[str, ...] = ()
    nameservers: tuple[str, ...] = ()


def snippet_volid(file_inputs: Mapping[str, Any]) -> str:
    """The id bpg's file resource gets: ``<datastore>:<content type>/<file name>``."""
    source = file_inputs["sourceRaw"]
    return f"{file_inputs['datastoreId']}:{file_inputs['contentType']}/{source['fileName']}"


def proxmox_config(
    vm_inputs: Mapping[str, Any], mac_address: str, file_ids: Mapping[str, str]
) -> dict[str, str]:
    """The Proxmox VM config keys this tier needs, as the provider sends them.

    ``file_ids`` maps the id a file resource has under mocks to its real volid (``snippet_volid``):
    mocks answer ``<name>-id``, Proxmox ``local:snippets/<file>``.
    """
    conf: dict[str, str] = {"name": str(vm_inputs["name"]), "ostype": "l26"}
    agent = vm_inputs.get("agent") or {}
    if "enabled" in agent:  # CustomAgent.EncodeValues
        conf["agent"] = f"enabled={1 if agent['enabled'] else 0}"
    nic = vm_inputs["networkDevices"][0]
    net0 = [f"{nic.get('model', 'virtio')}={mac_address}", f"bridge={nic['bridge']}"]
    if nic.get("firewall"):
        net0.append("firewall=1")
    if nic.get("vlanId") is not None:
        net0.append(f"tag={int(nic['vlanId'])}")
    conf["net0"] = ",".join(net0)
    for index, serial in enumerate(vm_inputs.get("serialDevices") or []):
        conf[f"serial{index}"] = serial.get("device", "socket")

    init = vm_inputs["initialization"]
    custom = []  # CustomCloudInitFiles: meta, network, user, vendor
    for key, name in (
        ("metaDataFileId", "meta"),
        ("networkDataFileId", "network"),
        ("userDataFileId", "user"),
        ("vendorDataFileId", "vendor"),
    ):
        if init.get(key):
            custom.append(f"{name}={file_ids[init[key]]}")
    if custom:
        conf["cicustom"] = ",".join(custom)
    for index, ip_config in enumerate(init.get("ipConfigs") or []):
        ipv4 = ip_config.get("ipv4") or {}
        parts = []
        if ipv4.get("gateway"):
            parts.append(f"gw={ipv4['gateway']}")
        if ipv4.get("address"):
            parts.append(f"ip={ipv4['address']}")
        if parts:
            conf[f"ipconfig{index}"] = ",".join(parts)
    dns = init.get("dns") or {}
    if dns.get("domain"):
        conf["searchdomain"] = dns["domain"]
    if dns.get("servers"):
        conf["nameserver"] = " ".join(dns["servers"])
    account = init.get("userAccount") or {}
    if account.get("keys"):
        # strings.ReplaceAll(url.QueryEscape(strings.Join(keys, "\n")), "+", "%20")
        conf["sshkeys"] = urllib.parse.quote_plus("\n".join(account["keys"])).replace("+", "%20")
    if "upgrade" in init:  # only sent when set (vm.go: GetOkExists)
        conf["ciupgrade"] = "1" if init["upgrade"] else "0"
    if account.get("username"):
        conf["ciuser"] = account["username"]
    return conf


# --- Cloudinit.pm ------------------------------------------------------------------------------


def get_hostname_fqdn(conf: Mapping[str, str], vmid: int) -> tuple[str, str]:
    hostname = conf.get("name") or f"VM{vmid}"
    if "." in hostname:
        return hostname.split(".", 1)[0], hostname
    if conf.get("searchdomain"):
        return hostname, f"{hostname}.{conf['searchdomain']}"
    return hostname, hostname


def get_dns_conf(conf: Mapping[str, str], host: HostDns) -> tuple[list[str], list[str]]:
    search = conf.get("searchdomain")
    searchdomains = search.split() if search is not None else list(host.search)
    nameserver = conf.get("nameserver")
    nameservers = nameserver.split() if nameserver is not None else list(host.nameservers)
    return searchdomains, nameservers


def cloudinit_userdata(conf: Mapping[str, str], vmid: int) -> str:
    hostname, fqdn = get_hostname_fqdn(conf, vmid)
    content = "#cloud-config\n"
    content += f"hostname: {hostname}\n"
    content += "manage_etc_hosts: true\n"
    content += f"fqdn: {fqdn}\n"
    username = conf.get("ciuser")
    password = conf.get("cipassword")
    if username is not None:
        content += f"user: {username}\n"
    if username == "root":
        content += "disable_root: False\n"
    if password is not None:
        content += f"password: {password}\n"
    if conf.get("sshkeys") is not None:
        keys = urllib.parse.unquote(conf["sshkeys"]).split("\n")
        content += "ssh_authorized_keys:\n"
        for key in (k.rstrip("\n") for k in keys):
            if key.strip():
                content += f"  - {key}\n"
    content += "chpasswd:\n"
    content += "  expire: False\n"
    if username is None or username != "root":
        content += "users:\n"
        content += "  - default\n"
    if conf.get("ciupgrade") is None or conf["ciupgrade"] not in ("0", ""):
        content += "package_upgrade: true\n"
    return content


def split_ip4(ip: str) -> tuple[str, str]:
    if "/" not in ip:
        raise ValueError(f"not a CIDR: {ip}")
    address, prefix = ip.split("/", 1)
    return address, str(ipaddress.IPv4Network(f"0.0.0.0/{prefix}").netmask)


def parse_ipconfig(value: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in value.split(","))


def parse_net(value: str) -> dict[str, str]:
    """``virtio=MAC,bridge=...``: the model key carries the MAC (``macaddr``)."""
    parsed = parse_ipconfig(value)
    for model in ("virtio", "e1000", "rtl8139", "vmxnet3"):
        if model in parsed:
            parsed["macaddr"] = parsed[model]
    return parsed


def nocloud_network(conf: Mapping[str, str], host: HostDns) -> str:
    content = "version: 1\nconfig:\n"
    ifaces = sorted(key for key in conf if key.startswith("net") and key[3:].isdigit())
    for iface in ifaces:
        index = iface[3:]
        if not conf.get(f"ipconfig{index}"):
            continue
        indent = "    "
        net = parse_net(conf[iface])
        ipconfig = parse_ipconfig(conf[f"ipconfig{index}"])
        mac = net["macaddr"].lower()
        content += (
            f"{indent}- type: physical\n"
            f"{indent}  name: eth{index}\n"
            f"{indent}  mac_address: '{mac}'\n"
            f"{indent}  subnets:\n"
        )
        indent += "  "
        ip = ipconfig.get("ip")
        if ip is not None:
            if ip == "dhcp":
                content += f"{indent}- type: dhcp4\n"
            else:
                address, mask = split_ip4(ip)
                content += (
                    f"{indent}- type: static\n"
                    f"{indent}  address: '{address}'\n"
                    f"{indent}  netmask: '{mask}'\n"
                )
                if ipconfig.get("gw") is not None:
                    content += f"{indent}  gateway: '{ipconfig['gw']}'\n"
    indent = "    "
    searchdomains, nameservers = get_dns_conf(conf, host)
    # Perl: `if ($searchdomains || $nameservers)` on two array refs: always true.
    content += f"{indent}- type: nameserver\n"
    if nameservers:
        content += f"{indent}  address:\n"
        content += "".join(f"{indent}  - '{n}'\n" for n in nameservers)
    if searchdomains:
        content += f"{indent}  search:\n"
        content += "".join(f"{indent}  - '{s}'\n" for s in searchdomains)
    return content


def nocloud_gen_metadata(user: str, network: str) -> str:
    return f"instance-id: {hashlib.sha1((user + network).encode()).hexdigest()}\n"  # noqa: S324


@dataclass
class SnippetStore:
    """The ``snippets`` content of the Proxmox datastores: volid -> text."""

    files: dict[str, str] = field(default_factory=dict)

    def read(self, volid: str) -> str:
        data = self.files[volid].encode()
        return data[:SNIPPET_LIMIT].decode(errors="replace")


def get_custom_cloudinit_files(
    conf: Mapping[str, str], snippets: SnippetStore
) -> dict[str, str | None]:
    files = (
        dict(part.split("=", 1) for part in conf["cicustom"].split(","))
        if conf.get("cicustom")
        else {}
    )
    return {
        kind: snippets.read(files[kind]) if kind in files else None
        for kind in ("user", "network", "meta", "vendor")
    }


def generate_nocloud(
    conf: Mapping[str, str], vmid: int, snippets: SnippetStore, host: HostDns | None = None
) -> dict[str, str]:
    """The files of the seed ISO: ``user-data``, ``network-config``, ``meta-data``,
    ``vendor-data``."""
    host = host or HostDns()
    custom = get_custom_cloudinit_files(conf, snippets)
    user_data = custom["user"] if custom["user"] is not None else cloudinit_userdata(conf, vmid)
    network_data = (
        custom["network"] if custom["network"] is not None else nocloud_network(conf, host)
    )
    vendor_data = custom["vendor"] if custom["vendor"] is not None else ""
    meta_data = (
        custom["meta"]
        if custom["meta"] is not None
        else nocloud_gen_metadata(user_data, network_data)
    )
    total = sum(len(text) for text in (user_data, network_data, meta_data, vendor_data))
    if total > SEED_LIMIT:
        raise ValueError("Cloud-Init sum of snippets too big (> 3 MiB)")
    return {
        "user-data": user_data,
        "network-config": network_data,
        "meta-data": meta_data,
        "vendor-data": vendor_data,
    }


def commit_cloudinit_disk(files: Mapping[str, str], directory: Path, iso: Path) -> Path:
    """The ISO Proxmox puts on the VM's cloud-init drive (``label cidata``)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    subprocess.run(
        ["genisoimage", "-quiet", "-iso-level", "3", "-J", "-R", "-V", "cidata",
         "-o", str(iso), str(directory)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return iso
