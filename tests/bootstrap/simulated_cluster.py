"""A simulated cloud cluster for phase tests: fake nodes (fakes.py) whose kubeadm, kubectl and
systemctl answers come from one in-memory state instead of fixed replies.

No kubeadm, kubelet, containerd or API server runs here, and no test reaches a cloud. Each
command changes or reads the state the way the real tool changes or reads the node, step by
step, so a failure injected after any step leaves what the real tool would have left:
kubeadm init's sub-phases write its files and API objects in kubeadm's order, its preflight
refuses a node an earlier run touched, `kubeadm join` refuses the files a half-join left,
and a bootstrap token must exist (and not be deleted) to join. The facts scripts the phases
send are read line by line (`fact <name> '<test>'`) and each test is evaluated against the
state, so a script that asked for the wrong file or object would get a wrong answer.

Scripted `replies` (fakes.Reply) still win over the simulation: tests use them to override
one answer, and the verify phase's probes come from cloud_replies.py.
"""

from __future__ import annotations

import itertools
import re
import shlex
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import yaml

from bootstrap.errors import CommandFailed, SSHUnreachable
from bootstrap.remote import RunResult
from bootstrap.ssh import WITHHELD
from infra.plan import Plan
from tests.bootstrap.fakes import FakeCluster, FakeNode, Reply

# kubeadm init's sub-phases, in the order kubeadm 1.35+ runs them.
INIT_STEPS = ("preflight", "certs", "kubeconfig", "etcd", "control-plane", "kubelet-start",
              "wait-control-plane", "upload-config", "upload-certs", "mark-control-plane",
              "bootstrap-token", "kubelet-finalize", "addon", "show-join-command")
# Where `kubeadm join` can stop on a worker: before writing anything, while waiting for the
# kubelet's TLS bootstrap, or done but with a kubelet that never registers its Node.
JOIN_STOPS = ("preflight", "kubelet-start", "register")
KUBERNETES_VERSION = "v1.36.2"
CA_HASH = "sha256:" + "ab" * 32
HEALTHY_PREREQUISITES = ("kubeadm=v1.36.2\nsystemd_cgroup=1\ncni_bin_dir=1\ncni_loopback=yes\n"
                         "swap=0\n")
DEFAULT_ADMIN_CONF = """\
apiVersion: v1
kind: Config
clusters:
- cluster:
    certificate-authority-data: Q0E=
    server: https://10.0.1.10:6443
  name: kubernetes
users:
- name: kubernetes-admin
  user:
    client-key-data: U0VDUkVU
"""

PKI = "/etc/kubernetes/pki"
MANIFESTS = "/etc/kubernetes/manifests"
KUBELET_CONF = "/etc/kubernetes/kubelet.conf"
BOOTSTRAP_CONF = "/etc/kubernetes/bootstrap-kubelet.conf"
ROTATING_CERT = "/var/lib/kubelet/pki/kubelet-client-current.pem"
CERT_FILES = tuple(f"{PKI}/{name}" for name in (
    "ca.crt", "ca.key", "apiserver.crt", "apiserver.key", "apiserver-kubelet-client.crt",
    "front-proxy-ca.crt", "front-proxy-client.crt", "etcd/ca.crt", "etcd/server.crt",
    "etcd/peer.crt", "etcd/healthcheck-client.crt", "apiserver-etcd-client.crt", "sa.key",
    "sa.pub"))
KUBECONFIG_FILES = tuple(f"/etc/kubernetes/{name}.conf" for name in (
    "admin", "super-admin", "kubelet", "controller-manager", "scheduler"))
CONTROL_PLANE_MANIFESTS = tuple(f"{MANIFESTS}/{name}.yaml" for name in (
    "kube-apiserver", "kube-controller-manager", "kube-scheduler"))
KUBELET_FILES = ("/var/lib/kubelet/kubeadm-flags.env", "/var/lib/kubelet/config.yaml")
# API objects, as "<kind>/<namespace>/<name>" or "<kind>/<name>", that each phase creates.
UPLOAD_CONFIG_OBJECTS = ("configmap/kube-system/kubeadm-config",
                         "configmap/kube-system/kubelet-config")
BOOTSTRAP_TOKEN_OBJECTS = (
    "clusterrolebinding/kubeadm:get-nodes", "clusterrolebinding/kubeadm:kubelet-bootstrap",
    "clusterrolebinding/kubeadm:node-autoapprove-bootstrap",
    "clusterrolebinding/kubeadm:node-autoapprove-certificate-rotation",
    "configmap/kube-public/cluster-info",
    "role/kube-public/kubeadm:bootstrap-signer-clusterinfo",
    "rolebinding/kube-public/kubeadm:bootstrap-signer-clusterinfo")
ADDON_OBJECTS = ("deployment/kube-system/coredns", "daemonset/kube-system/kube-proxy")


class StepFailed(Exception):
    """A simulated tool failed: its exit code 1 and message."""


@dataclass
class ApiServer:
    """The cluster's API state. `up` once the control plane's kubelet runs its manifests."""

    up: bool = False
    objects: set[str] = field(default_factory=set)
    nodes: dict[str, str] = field(default_factory=dict)  # registered Node -> podCIDR
    tokens: dict[str, str] = field(default_factory=dict)  # live token -> its TTL
    issued: list[str] = field(default_factory=list)  # every token ever made
    join_tokens: list[str] = field(default_factory=list)  # `token create` hands these out first
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _serial: Iterator[int] = field(default_factory=itertools.count, repr=False)

    def new_token(self, ttl: str, token: str | None = None) -> str:
        serial = next(self._serial)
        token = token or f"tok{serial:03d}.{serial:016d}"
        self.tokens[token] = ttl
        self.issued.append(token)
        return token

    def require_up(self) -> None:
        if not self.up:
            raise StepFailed("unable to connect to the API server: connection refused")


@dataclass
class SimulatedNode(FakeNode):
    """A FakeNode whose commands act on the shared `api` and its own files."""

    api: ApiServer = field(default_factory=ApiServer)
    admin_conf: str = DEFAULT_ADMIN_CONF
    prerequisites: str = HEALTHY_PREREQUISITES
    # Failures to inject, each once: a command substring, "<connect>", "<put>" (any upload)
    # or "<read:PATH>".
    faults: dict[str, int] = field(default_factory=dict)
    stop_init_after: str | None = None  # one of INIT_STEPS
    stop_join_at: str | None = None  # one of JOIN_STOPS
    enabled_units: set[str] = field(default_factory=set)

    # -- the FakeNode interface, with faults -------------------------------------------------

    def connect(self) -> None:
        super().connect()
        if self._take_fault("<connect>"):
            raise SSHUnreachable(self.name, f"{self.name}:22", 0, "connection refused")

    def put_files(self, files: Any, *, timeout: float = 60) -> None:
        if self._take_fault("<put>"):
            raise OSError("SFTP write failed (injected)")
        super().put_files(files, timeout=timeout)

    def read_file(self, path: str, *, timeout: float = 60) -> tuple[bytes, int] | None:
        if self._take_fault(f"<read:{path}>"):
            raise OSError("SFTP read failed (injected)")
        return super().read_file(path, timeout=timeout)

    def run(self, command: str, *, timeout: float, check: bool = True,
            stdin: bytes | None = None, quiet: bool = False, secret: bool = False) -> RunResult:
        if any(reply.match in command for reply in self.replies):
            return super().run(command, timeout=timeout, check=check, stdin=stdin,
                               quiet=quiet, secret=secret)
        assert timeout > 0
        self.commands.append(command)
        self.stdins.append(stdin)
        fault = next((key for key in self.faults if key in command), None)
        if fault is not None and self._take_fault(fault):
            exit_code, output = 1, "injected failure\n"
        else:
            exit_code, output = self._simulate(command, stdin)
        result = RunResult(self.name, command, exit_code, output)
        if check and not result.ok:  # as NodeSSH does: a secret output stays out of errors
            raise CommandFailed(replace(result, output=WITHHELD) if secret else result)
        return result

    def _take_fault(self, key: str) -> bool:
        if self.faults.get(key, 0) <= 0:
            return False
        self.faults[key] -= 1
        return True

    def _simulate(self, command: str, stdin: bytes | None) -> tuple[int, str]:
        try:
            return 0, self._dispatch(command, stdin)
        except StepFailed as failure:
            return 1, f"{failure}\n"

    def _dispatch(self, command: str, stdin: bytes | None) -> str:
        if command.startswith("fact() {"):
            return self._facts(command)
        if command.startswith("printf 'kubeadm="):
            return self.prerequisites
        if command.startswith("kubeadm"):
            return self._kubeadm(shlex.split(command), stdin)
        if command.startswith("kubectl"):
            return self._kubectl(shlex.split(command))
        if command.startswith("systemctl"):
            return self._systemctl(command.split())
        return ""  # cloud-init status, the node-network script, daemon-reload...

    # -- files ------------------------------------------------------------------------------

    def _write(self, *paths: str, content: bytes = b"x") -> None:
        for path in paths:
            self.files.setdefault(path, (content, 0o600))

    def _remove_under(self, *prefixes: str) -> None:
        for path in [p for p in self.files if p.startswith(prefixes)]:
            del self.files[path]

    # -- facts scripts ----------------------------------------------------------------------

    def _facts(self, script: str) -> str:
        lines = re.findall(r"fact (\w+) '([^']*)'", script)
        return "".join(f"{name}={'yes' if self._holds(test) else 'no'}\n"
                       for name, test in lines)

    def _holds(self, test: str) -> bool:
        if test.startswith("test -e ") and "&&" not in test:
            return any(path in self.files for path in re.findall(r"-e (\S+)", test))
        if test.startswith("grep -qF "):
            _, _, needle, path = test.split()
            return needle.encode() in self.files.get(path, (b"", 0))[0]
        if "--raw=/readyz" in test:
            manifest = re.match(r"test -e (\S+) &&", test)
            return (manifest is not None and manifest[1] in self.files and self.api.up
                    and "/etc/kubernetes/admin.conf" in self.files)
        if test.startswith("kubectl"):
            return self._kubectl_get(shlex.split(test))
        raise AssertionError(f"the simulation does not know the fact test {test!r}")

    # -- kubectl (on the control plane, with admin.conf) -------------------------------------

    def _kubectl(self, argv: list[str]) -> str:
        self.api.require_up()
        if "wait" in argv:
            wanted = [arg.removeprefix("node/") for arg in argv if arg.startswith("node/")]
            if not all(name in self.api.nodes for name in wanted):
                raise StepFailed("error: timed out waiting for the condition on nodes")
            return "".join(f"node/{name} condition met\n" for name in wanted)
        if argv[2:4] == ["get", "nodes"]:
            return "".join(f"{name} {cidr}\n" for name, cidr in self.api.nodes.items())
        if "patch" in argv:
            name = argv[argv.index("node") + 1]
            patch = yaml.safe_load(argv[argv.index("-p") + 1])
            self.api.nodes[name] = patch["spec"]["podCIDR"]
            return f"node/{name} patched\n"
        return ""  # the verify phase's kubectl calls are scripted replies

    def _kubectl_get(self, argv: list[str]) -> bool:
        if not self.api.up:
            return False
        namespace = argv[argv.index("-n") + 1] if "-n" in argv else None
        names = argv[argv.index("get") + 1:]
        if "/" not in names[0]:
            names = [f"{names[0]}/{name}" for name in names[1:]]
        keys = [f"{kind}/{namespace}/{name}" if namespace else f"{kind}/{name}"
                for kind, name in (entry.split("/", 1) for entry in names)]
        return all(key in self.api.objects for key in keys)

    # -- systemctl --------------------------------------------------------------------------

    def _systemctl(self, argv: list[str]) -> str:
        if argv[1] == "is-enabled":
            if argv[-1] not in self.enabled_units:
                raise StepFailed("disabled")
        elif argv[1] == "enable":
            self.enabled_units.add(argv[-1])
        return ""

    # -- kubeadm ----------------------------------------------------------------------------

    def _kubeadm(self, argv: list[str], stdin: bytes | None) -> str:
        verb = argv[1]
        if verb == "version":
            return f"{KUBERNETES_VERSION}\n"
        if verb == "token":
            return self._token(argv)
        if verb == "reset":
            self._reset()
            return "[reset] done\n"
        config = list(yaml.safe_load_all(stdin or b""))
        if verb == "init" and argv[2] == "phase":
            return self._init_steps([argv[3]], config, argv)
        if verb == "init":
            skipped = "--skip-phases=preflight" in argv
            return self._init_steps([s for s in INIT_STEPS if not (skipped and s == "preflight")],
                                    config, argv)
        if verb == "join":
            return self._join(config[0])
        raise AssertionError(f"the simulation does not know kubeadm {verb}")

    def _token(self, argv: list[str]) -> str:
        with self.api.lock:
            if argv[2] == "delete":
                token_id = argv[3]
                for token in [t for t in self.api.tokens if t.startswith(token_id + ".")]:
                    del self.api.tokens[token]
                return f'bootstrap token "{token_id}" deleted\n'
            self.api.require_up()
            if "configmap/kube-public/cluster-info" not in self.api.objects:
                raise StepFailed("the cluster-info ConfigMap does not exist")
            given = self.api.join_tokens.pop(0) if self.api.join_tokens else None
            token = self.api.new_token(argv[argv.index("--ttl") + 1], given)
            return (f"kubeadm join 10.0.1.10:6443 --token {token} "
                    f"--discovery-token-ca-cert-hash {CA_HASH} \n")

    def _init_steps(self, steps: list[str], config: list[dict[str, Any]],
                    argv: list[str]) -> str:
        assert config and config[0]["kind"] == "InitConfiguration", "init needs its config"
        output = []
        for step in steps:
            output.append(self._init_step(step, config[0], argv))
            if step == self.stop_init_after:
                self.stop_init_after = None
                raise StepFailed("".join(output) + f"error execution phase after {step}: "
                                 "stopped by the test")
        return "".join(output)

    def _init_step(self, step: str, init: dict[str, Any], argv: list[str]) -> str:
        return getattr(self, "_init_" + step.replace("-", "_"))(init, argv) or ""

    def _init_preflight(self, _init: dict[str, Any], _argv: list[str]) -> None:
        taken = [path for path in (*CONTROL_PLANE_MANIFESTS, f"{MANIFESTS}/etcd.yaml")
                 if path in self.files]
        if taken or self.api.up:
            raise StepFailed("[preflight] Some fatal errors occurred: "
                             f"FileAvailable {taken}, Port-6443 in use: {self.api.up}")

    def _init_certs(self, _init: dict[str, Any], _argv: list[str]) -> None:
        self._write(*CERT_FILES)

    def _init_kubeconfig(self, _init: dict[str, Any], _argv: list[str]) -> None:
        if ROTATING_CERT.encode() in self.files.get(KUBELET_CONF, (b"", 0))[0]:
            # kubeadm validates an existing kubeconfig against what it would write.
            raise StepFailed(f"a kubeconfig file {KUBELET_CONF} exists already but has an "
                             "unexpected client certificate")
        for path in KUBECONFIG_FILES:
            self._write(path, content=self.admin_conf.encode() if "admin" in path else b"x")

    def _init_etcd(self, _init: dict[str, Any], _argv: list[str]) -> None:
        self._write(f"{MANIFESTS}/etcd.yaml")

    def _init_control_plane(self, _init: dict[str, Any], _argv: list[str]) -> None:
        self._write(*CONTROL_PLANE_MANIFESTS)

    def _init_kubelet_start(self, init: dict[str, Any], _argv: list[str]) -> None:
        self._write(*KUBELET_FILES)
        # The kubelet runs the static pods: the API server comes up, then the node registers.
        self.api.up = True
        self.api.nodes.setdefault(init["nodeRegistration"]["name"], "")

    def _init_wait_control_plane(self, _init: dict[str, Any], _argv: list[str]) -> None:
        self.api.require_up()

    def _init_upload_config(self, _init: dict[str, Any], _argv: list[str]) -> None:
        self.api.require_up()
        self.api.objects.update(UPLOAD_CONFIG_OBJECTS)

    def _init_upload_certs(self, _init: dict[str, Any], _argv: list[str]) -> str:
        return "[upload-certs] Skipping phase. Please see --upload-certs\n"

    def _init_mark_control_plane(self, init: dict[str, Any], _argv: list[str]) -> None:
        self.api.require_up()
        self.api.objects.add(f"label/{init['nodeRegistration']['name']}/control-plane")

    def _init_bootstrap_token(self, init: dict[str, Any], argv: list[str]) -> str:
        self.api.require_up()
        ttl = init.get("bootstrapTokens", [{}])[0].get("ttl", "24h0m0s")
        token = self.api.new_token(ttl)
        self.api.objects.update(BOOTSTRAP_TOKEN_OBJECTS)
        return "" if "--skip-token-print" in argv else f"[bootstrap-token] Using token: {token}\n"

    def _init_kubelet_finalize(self, _init: dict[str, Any], _argv: list[str]) -> None:
        self.files[KUBELET_CONF] = (f"client-certificate: {ROTATING_CERT}\n".encode(), 0o600)

    def _init_addon(self, _init: dict[str, Any], _argv: list[str]) -> None:
        self.api.require_up()
        self.api.objects.update(ADDON_OBJECTS)

    def _init_show_join_command(self, _init: dict[str, Any], argv: list[str]) -> str:
        return "" if "--skip-token-print" in argv else "kubeadm join ... --token (a token)\n"

    # -- join and reset on a worker ---------------------------------------------------------

    def _join(self, config: dict[str, Any]) -> str:
        assert config["kind"] == "JoinConfiguration"
        taken = [path for path in (KUBELET_CONF, BOOTSTRAP_CONF, f"{PKI}/ca.crt")
                 if path in self.files]
        if taken:
            raise StepFailed(f"[preflight] Some fatal errors occurred: FileAvailable {taken}")
        self._stop_join("preflight")
        with self.api.lock:
            if config["discovery"]["bootstrapToken"]["token"] not in self.api.tokens:
                raise StepFailed("couldn't validate the identity of the API Server: "
                                 "token not found")
        self._write(BOOTSTRAP_CONF, f"{PKI}/ca.crt", *KUBELET_FILES)
        self._stop_join("kubelet-start")
        self._write(KUBELET_CONF)
        del self.files[BOOTSTRAP_CONF]
        if self.stop_join_at == "register":  # kubeadm succeeds; the Node never appears
            self.stop_join_at = None
        else:
            with self.api.lock:
                self.api.nodes.setdefault(config["nodeRegistration"]["name"], "")
        return "This node has joined the cluster\n"

    def _stop_join(self, step: str) -> None:
        if self.stop_join_at == step:
            self.stop_join_at = None
            raise StepFailed(f"error execution phase {step}: stopped by the test")

    def _reset(self) -> None:
        self._remove_under("/etc/kubernetes/", "/var/lib/kubelet/")


@dataclass
class SimulatedCluster(FakeCluster[SimulatedNode]):
    """FakeCluster over SimulatedNodes that share one API server."""

    @property
    def api(self) -> ApiServer:
        return next(iter(self.nodes.values())).api

    def connect_all(self) -> None:
        self.on_all(lambda node: node.connect())  # the subclass's connect, with its fault

    def state(self) -> Any:
        """Everything the simulation can change, to compare before and after a run."""
        api = self.api
        return (api.up, sorted(api.objects), dict(api.nodes), dict(api.tokens),
                {name: (dict(node.files), sorted(node.enabled_units))
                 for name, node in self.nodes.items()})


def simulated_cluster(plan: Plan, *, master_replies: Sequence[Reply] = (),
                      admin_conf: str = DEFAULT_ADMIN_CONF,
                      join_tokens: Sequence[str] = ()) -> SimulatedCluster:
    """Fresh systemd nodes of the plan, as cloud-init leaves them, sharing one API server."""
    api = ApiServer(join_tokens=list(join_tokens))
    nodes = {name: SimulatedNode(name, api=api, admin_conf=admin_conf)
             for name in plan.node_names()}
    nodes[plan.control_plane.name].replies.extend(master_replies)
    for node in nodes.values():
        node.files["/run/systemd/system"] = (b"", 0o755)
    return SimulatedCluster(nodes)
