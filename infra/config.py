"""Every setting of the stack, read in one place from Pulumi config.

The keys are the camelCase names documented in docs/infra.md; each falls back to the
default in `plan.Settings`, so `Pulumi.dev.yaml` can stay short and a missing key is never
an error. The two cloud-only settings (amiId, availabilityZone) are looked up when unset;
`bootstrap` (default true) makes `pulumi up` build the kubeadm cluster on the nodes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any

import pulumi

from infra.plan import Settings

# camelCase config key -> Settings field, for the settings the address plan needs.
PLAN_KEYS = {
    "nodeCount": "node_count",
    "instanceType": "instance_type",
    "kubernetesVersion": "kubernetes_version",
    "vpcCidr": "vpc_cidr",
    "subnetCidr": "subnet_cidr",
    "podCidr": "pod_cidr",
    "serviceCidr": "service_cidr",
    "nodePrefix": "node_prefix",
    "allowedCidrs": "allowed_cidrs",
    "rootVolumeGiB": "root_volume_gib",
    "routeLimit": "route_limit",
}


@dataclass(frozen=True)
class StackConfig:
    settings: Settings
    ami_id: str | None  # None: the latest Canonical Ubuntu 24.04 image of the region
    availability_zone: str | None  # None: the first zone offering the instance type
    bootstrap: bool = True  # False: stop at bare nodes and routes (bootstrap by hand)


def load_config(config: pulumi.Config | None = None) -> StackConfig:
    config = config or pulumi.Config()
    defaults = Settings()
    types = {f.name: type(getattr(defaults, f.name)) for f in fields(Settings)}
    values: dict[str, Any] = {}
    for key, field_name in PLAN_KEYS.items():
        expected = types[field_name]
        value: object
        if expected is int:
            value = config.get_int(key)
        elif expected is tuple:
            value = _string_list(key, config.get(key))
        else:
            value = config.get(key)
        if value is not None:
            values[field_name] = value
    return StackConfig(
        settings=Settings(**values),
        ami_id=config.get("amiId") or None,
        availability_zone=config.get("availabilityZone") or None,
        bootstrap=config.get_bool("bootstrap", True),
    )


def _string_list(key: str, raw: str | None) -> tuple[str, ...] | None:
    """A YAML list of strings (`--path 'key[0]'`), or one string with commas between items."""
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = [item.strip() for item in raw.split(",") if item.strip()]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    raise pulumi.RunError(
        f"{key}: expected a list of CIDR strings, got {raw}. Fix: "
        f"pulumi config set --path '{key}[0]' 203.0.113.7/32"
    )
