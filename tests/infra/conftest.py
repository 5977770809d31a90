"""Run the real __main__.py against Pulumi's mocks: no CLI, no AWS.

`deploy(config)` runs the program once per test with its own mocks and a fresh root stack
and returns a `Deployment`. Registrations are asynchronous, so every check runs inside
`Deployment.check`, which waits for all resources' URNs, and the test returns that Output
(as `@pulumi.runtime.test` requires, or the check never runs).
"""

from __future__ import annotations

import json
import runpy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import pulumi.runtime.settings as pulumi_settings
import pytest
from pulumi.runtime import rpc
from pulumi.runtime.mocks import MockCallArgs, MockMonitor, MockResourceArgs
from pulumi.runtime.stack import Stack
from pulumi.runtime.sync_await import _sync_await

PROJECT, STACK = "k8s-cni-lab", "dev"
MAIN = Path(__file__).resolve().parents[2] / "__main__.py"
AMI_ID = "ami-0mocked0ubuntu0"
ZONES = ["ap-southeast-1a", "ap-southeast-1b", "ap-southeast-1c"]

BOOTSTRAP = "pulumi-python:dynamic/bootstrap:ClusterBootstrap"
MOCK_KUBECONFIG = "apiVersion: v1\nkind: Config\n# the mocked cluster admin's\n"

AMI_TOKEN = "aws:ec2/getAmi:getAmi"
ZONES_TOKEN = "aws:index/getAvailabilityZones:getAvailabilityZones"
OFFERINGS_TOKEN = "aws:ec2/getInstanceTypeOfferings:getInstanceTypeOfferings"
# The first zone lacks the default instance type, as a new zone sometimes does.
OFFERING_ZONES = ZONES[1:]


def fake_public_key(name: str) -> str:
    return f"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5{name}\n"


def fake_private_key(name: str) -> str:
    return f"-----BEGIN OPENSSH PRIVATE KEY-----\n{name}\n-----END OPENSSH PRIVATE KEY-----\n"


class LabMocks(pulumi.runtime.Mocks):
    """Echoes inputs as state and invents the computed outputs the program reads."""

    def __init__(self) -> None:
        self.calls: list[MockCallArgs] = []
        self.instances = 0

    def new_resource(self, args: MockResourceArgs) -> tuple[str, dict[str, Any]]:
        state = dict(args.inputs)
        if args.typ == "aws:ec2/instance:Instance":
            self.instances += 1
            state["publicIp"] = f"203.0.113.{self.instances}"
            state["primaryNetworkInterfaceId"] = f"eni-{args.name}"
        elif args.typ == "tls:index/privateKey:PrivateKey":
            state["publicKeyOpenssh"] = fake_public_key(args.name)
            state["privateKeyOpenssh"] = fake_private_key(args.name)
        elif args.typ == "aws:ec2/keyPair:KeyPair":
            state["keyName"] = f"{args.name}-key"
        elif args.typ == BOOTSTRAP:  # what BootstrapProvider.create returns
            state["kubeconfig"] = MOCK_KUBECONFIG
            state["checks"] = {"pod to pod, across nodes": "pass"}
        return f"{args.name}-id", state

    def call(self, args: MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        self.calls.append(args)
        if args.token == AMI_TOKEN:
            return {"id": AMI_ID, "imageId": AMI_ID}, []
        if args.token == ZONES_TOKEN:
            return {"names": ZONES, "zoneIds": ["apse1-az1", "apse1-az2", "apse1-az3"]}, []
        if args.token == OFFERINGS_TOKEN:
            return {"locations": OFFERING_ZONES, "instanceTypes": ["t3.small"] * 2}, []
        raise AssertionError(f"unexpected invoke {args.token}")


class SecretAwareMonitor(MockMonitor):
    """Marks outputs secret the way the engine does: those named in additionalSecretOutputs
    (pulumi-tls private keys) and those whose input was secret (user data holding one)."""

    def __init__(self, mocks: LabMocks) -> None:
        super().__init__(mocks)
        # Resource options the mocks never see, by URN.
        self.dependencies: dict[str, list[str]] = {}
        self.ignore_changes: dict[str, list[str]] = {}
        self.delete_before_replace: dict[str, bool] = {}
        self.secret_inputs: dict[str, set[str]] = {}
        self.additional_secret_outputs: dict[str, list[str]] = {}

    def RegisterResource(self, request):  # the gRPC method's name
        response = super().RegisterResource(request)
        self.dependencies[response.urn] = list(request.dependencies)
        self.ignore_changes[response.urn] = list(request.ignoreChanges)
        self.delete_before_replace[response.urn] = request.deleteBeforeReplace
        inputs = rpc.deserialize_properties(request.object, keep_unknowns=True)
        secret_inputs = {key for key, value in inputs.items() if rpc.is_rpc_secret(value)}
        self.secret_inputs[response.urn] = secret_inputs
        self.additional_secret_outputs[response.urn] = list(request.additionalSecretOutputs)
        secret_keys = set(request.additionalSecretOutputs) | secret_inputs
        if not secret_keys or request.type == "pulumi:pulumi:Stack":
            return response
        state = rpc.deserialize_properties(response.object)
        state = {key: rpc.wrap_rpc_secret(value) if key in secret_keys else value
                 for key, value in state.items()}
        response.object.CopyFrom(_sync_await(rpc.serialize_properties(state, {})))
        return response


@dataclass
class Deployment:
    monitor: SecretAwareMonitor
    mocks: LabMocks
    resources: list[pulumi.Resource]
    outputs: dict[str, Any]
    namespace: dict[str, Any] = field(default_factory=dict)

    def check(self, assertions: Callable[[Deployment], None]) -> pulumi.Output[None]:
        """Run `assertions` once every resource is registered; return it for the test."""
        urns = [resource.urn for resource in self.resources]
        return pulumi.Output.all(*urns).apply(lambda _: assertions(self))

    def check_outputs(self, assertions: Callable[[dict[str, Any]], None]) -> pulumi.Output[None]:
        """Run `assertions` on the resolved stack outputs."""
        return pulumi.Output.from_input(self.outputs).apply(assertions)

    def registered(self, type_: str) -> dict[str, dict[str, Any]]:
        """Recorded state of every resource of one type, keyed by logical name."""
        found = {}
        for urn, registration in self.monitor.resources.items():
            if urn.split("::")[2].split("$")[-1] == type_:
                found[urn.split("::")[-1]] = {key: rpc.unwrap_rpc_secret(value)
                                              for key, value in registration.state.items()}
        return found

    def urn_of(self, type_: str, name: str) -> str:
        return next(urn for urn in self.monitor.resources
                    if urn.endswith(f"{type_}::{name}"))

    def one(self, type_: str) -> dict[str, Any]:
        found = self.registered(type_)
        assert len(found) == 1, f"expected one {type_}, got {sorted(found)}"
        return next(iter(found.values()))


def pytest_configure(config: pytest.Config) -> None:
    # pulumi_aws warns about its own deprecated resources when the module is imported.
    config.addinivalue_line("filterwarnings", "ignore::DeprecationWarning:pulumi_aws")


@pytest.fixture
def deploy(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Deployment]]:
    """deploy(config) runs __main__.py with `config` ({key: value}, un-namespaced)."""
    created: list[pulumi.Resource] = []
    original_init = pulumi.Resource.__init__

    def recording_init(self: pulumi.Resource, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        created.append(self)

    monkeypatch.setattr(pulumi.Resource, "__init__", recording_init)

    def run(config: dict[str, Any] | None = None) -> Deployment:
        mocks = LabMocks()
        monitor = SecretAwareMonitor(mocks)
        pulumi_settings.ROOT.set(None)  # a fresh stack, so no output leaks between tests
        pulumi.runtime.set_mocks(mocks, project=PROJECT, stack=STACK, preview=False,
                                 monitor=monitor)
        pulumi.runtime.set_all_config(
            {f"{PROJECT}:{key}": value if isinstance(value, str) else json.dumps(value)
             for key, value in (config or {}).items()})
        namespace = runpy.run_path(str(MAIN), run_name="__main__")
        root = pulumi.runtime.get_root_resource()
        assert isinstance(root, Stack)
        return Deployment(monitor, mocks, list(created), dict(root.outputs), namespace)

    yield run
    pulumi.runtime.set_all_config({})
    pulumi_settings.ROOT.set(None)
