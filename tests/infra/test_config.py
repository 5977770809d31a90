"""Pulumi.yaml, the dev stack's settings, and how config becomes plan Settings."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pulumi
import pytest
import yaml

from infra.config import PLAN_KEYS, load_config
from infra.plan import Settings

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "k8s-cni-lab"


@pytest.fixture
def config():
    def read(values: dict[str, str]) -> pulumi.Config:
        pulumi.runtime.set_all_config({f"{PROJECT}:{k}": v for k, v in values.items()})
        return pulumi.Config(PROJECT)
    yield read
    pulumi.runtime.set_all_config({})


def test_project_is_python_with_the_projects_virtualenv():
    project = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
    assert project["name"] == PROJECT
    assert project["runtime"]["name"] == "python"
    assert project["runtime"]["options"]["virtualenv"] == ".venv"


def test_dev_stack_sets_the_region_and_every_setting_at_its_default():
    stack = yaml.safe_load((ROOT / "Pulumi.dev.yaml").read_text())["config"]
    assert stack.pop("aws:region") == "ap-southeast-1"
    assert stack.pop(f"{PROJECT}:bootstrap") == "true"  # StackConfig's default
    defaults = asdict(Settings())
    expected = {}
    for key, field in PLAN_KEYS.items():
        value = defaults[field]
        expected[f"{PROJECT}:{key}"] = list(value) if isinstance(value, tuple) else str(value)
    assert stack == expected  # amiId and availabilityZone stay unset: they are looked up


def test_empty_config_gives_the_default_settings(config):
    loaded = load_config(config({}))
    assert loaded.settings == Settings()
    assert (loaded.ami_id, loaded.availability_zone) == (None, None)
    assert loaded.bootstrap is True


@pytest.mark.parametrize(("raw", "expected"), [("true", True), ("false", False)])
def test_bootstrap_setting(config, raw, expected):
    assert load_config(config({"bootstrap": raw})).bootstrap is expected


def test_every_key_reaches_its_setting(config):
    loaded = load_config(config({
        "nodeCount": "5", "instanceType": "m7i.large", "kubernetesVersion": "1.37",
        "vpcCidr": "10.10.0.0/16", "subnetCidr": "10.10.2.0/24", "podCidr": "10.128.0.0/16",
        "serviceCidr": "10.112.0.0/12", "nodePrefix": "25",
        "allowedCidrs": '["198.51.100.7/32", "203.0.113.0/24"]', "rootVolumeGiB": "40",
        "routeLimit": "100", "amiId": "ami-0abc", "availabilityZone": "ap-southeast-1b",
    }))
    assert loaded.settings == Settings(
        node_count=5, instance_type="m7i.large", kubernetes_version="1.37",
        vpc_cidr="10.10.0.0/16", subnet_cidr="10.10.2.0/24", pod_cidr="10.128.0.0/16",
        service_cidr="10.112.0.0/12", node_prefix=25,
        allowed_cidrs=("198.51.100.7/32", "203.0.113.0/24"), root_volume_gib=40,
        route_limit=100)
    assert (loaded.ami_id, loaded.availability_zone) == ("ami-0abc", "ap-southeast-1b")


def test_a_single_allowed_cidr_string_is_accepted(config):
    loaded = load_config(config({"allowedCidrs": "198.51.100.7/32"}))
    assert loaded.settings.allowed_cidrs == ("198.51.100.7/32",)


def test_every_settings_field_but_none_is_configurable():
    assert set(PLAN_KEYS.values()) == set(asdict(Settings()))


def test_comma_separated_allowed_cidrs_are_accepted(config):
    loaded = load_config(config({"allowedCidrs": "198.51.100.7/32, 203.0.113.0/24"}))
    assert loaded.settings.allowed_cidrs == ("198.51.100.7/32", "203.0.113.0/24")


@pytest.mark.parametrize("raw", ['{"cidr": "198.51.100.7/32"}', "[1, 2]", "42"])
def test_allowed_cidrs_of_another_shape_are_refused(config, raw):
    with pytest.raises(pulumi.RunError, match="allowedCidrs: expected a list of CIDR strings"):
        load_config(config({"allowedCidrs": raw}))
