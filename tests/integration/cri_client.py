"""A minimal CRI client (runtime.v1) over the node's containerd socket: crictl is not in Debian 12.

Pulling through CRI is the only honest check of hosts.toml: ``ctr`` ignores config_path unless
given ``--hosts-dir``, kubelet does not.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
from cri_api.v1 import api_pb2, api_pb2_grpc


def _channel(socket: Path) -> grpc.Channel:
    return grpc.insecure_channel(f"unix://{socket}")


def pull_image(socket: Path, image: str, timeout: float = 60) -> str:
    """PullImage as kubelet does it; returns the image ref (digest) containerd reports."""
    with _channel(socket) as channel:
        stub = api_pb2_grpc.ImageServiceStub(channel)
        request = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=image))
        return stub.PullImage(request, timeout=timeout).image_ref


def remove_image(socket: Path, image: str, timeout: float = 30) -> None:
    with _channel(socket) as channel:
        stub = api_pb2_grpc.ImageServiceStub(channel)
        stub.RemoveImage(
            api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=image)), timeout=timeout
        )


def status_config(socket: Path, timeout: float = 10) -> dict[str, Any]:
    """The ``config`` entry of CRI ``Status(verbose=True)``: the settings the CRI plugin runs with.

    containerd 1.x reports its whole CRI config there, ``registry.configPath`` included; 2.x
    reports only the runtime plugin's (no ``registry``): read config_path from
    ``containerd config dump`` instead (``plugins."io.containerd.cri.v1.images".registry``).
    """
    with _channel(socket) as channel:
        stub = api_pb2_grpc.RuntimeServiceStub(channel)
        info = stub.Status(api_pb2.StatusRequest(verbose=True), timeout=timeout).info
    return json.loads(info.get("config", "{}"))
