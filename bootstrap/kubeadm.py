"""kubeadm and kubectl for the cloud workflow, as pure functions: configs to render, commands
to run, outputs to parse, and the decisions taken from what the nodes report. The phases in
bootstrap/phases/ read the facts, call these, and run the commands.

kubeadm's config API is kubeadm.k8s.io/v1beta4 (extraArgs are lists of {name, value}). The
controller manager does not allocate node pod CIDRs: the plan pins node N to its CIDR and
the pod-cidr phase patches `spec.podCIDR`, so the VPC routes, the bridge and Kubernetes
agree by construction. Node facts (name, address, pod CIDR) come from the
plan's `Node`; the control plane's public address is access data, passed in as text.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any

import yaml

from bootstrap.errors import LabError
from infra.cloud_init import CNI_BIN_DIR, CNI_BIN_DIR_LINE, SYSTEMD_CGROUP_LINE
from infra.plan import API_SERVER_PORT, Node, Plan

KUBEADM_API = "kubeadm.k8s.io/v1beta4"
CRI_SOCKET = "unix:///run/containerd/containerd.sock"
ADMIN_KUBECONFIG = "/etc/kubernetes/admin.conf"
KUBELET_KUBECONFIG = "/etc/kubernetes/kubelet.conf"
BOOTSTRAP_KUBECONFIG = "/etc/kubernetes/bootstrap-kubelet.conf"
CLUSTER_CA = "/etc/kubernetes/pki/ca.crt"
ETCD_MANIFEST = "/etc/kubernetes/manifests/etcd.yaml"
APISERVER_MANIFEST = "/etc/kubernetes/manifests/kube-apiserver.yaml"
# kubelet-finalize points kubelet.conf at the kubelet's rotating client certificate.
ROTATING_CLIENT_CERT = "/var/lib/kubelet/pki/kubelet-client-current.pem"
KUBECTL = f"kubectl --kubeconfig={ADMIN_KUBECONFIG}"
KUBECTL_TIMEOUT = 60  # one kubectl call against the API server
# Every bootstrap token lives 15 minutes, not kubeadm's default 24 hours: long enough for a
# join (the join phase's JOIN_TIMEOUT is 10 minutes), and the join phase deletes its own.
BOOTSTRAP_TOKEN_TTL = "15m"

# Configs go to kubeadm on stdin: the join token never touches a disk or a command line.
# --skip-token-print: the streamed output would otherwise put a bootstrap token in the log.
KUBEADM_INIT = "kubeadm init --config /dev/stdin --skip-token-print"
# Completing a stopped init: preflight would refuse the manifests, ports and etcd data the
# earlier run left; every other phase reuses what exists or writes it again identically.
KUBEADM_INIT_AGAIN = f"{KUBEADM_INIT} --skip-phases=preflight"
# kubeadm init's phases after the API server answers, in its order. Each creates or updates
# its objects, so running one again is harmless. (upload-certs does nothing without
# --upload-certs; show-join-command would print a token.)
API_PHASES = ("upload-config all", "mark-control-plane", "bootstrap-token",
              "kubelet-finalize all", "addon all")
KUBEADM_JOIN = "kubeadm join --config /dev/stdin"
KUBEADM_RESET = f"kubeadm reset -f --cri-socket {CRI_SOCKET}"
TOKEN_CREATE = f"kubeadm token create --print-join-command --ttl {BOOTSTRAP_TOKEN_TTL}"
# Prints "<name> <podCIDR>" per registered node ("<name> " when it has none).
NODE_CIDRS = (f"{KUBECTL} get nodes -o jsonpath="
              "'{range .items[*]}{.metadata.name}{\" \"}{.spec.podCIDR}{\"\\n\"}{end}'")
PREREQUISITE_FACTS = (
    "printf 'kubeadm=%s\\n' \"$(kubeadm version -o short 2>&1)\"; "
    "containerd_config=$(containerd config dump 2>/dev/null); "
    "printf 'systemd_cgroup=%s\\n' "
    f"\"$(grep -Ec {shlex.quote(SYSTEMD_CGROUP_LINE)} <<<\"$containerd_config\")\"; "
    "printf 'cni_bin_dir=%s\\n' "
    f"\"$(grep -Ec {shlex.quote(CNI_BIN_DIR_LINE)} <<<\"$containerd_config\")\"; "
    f"printf 'cni_loopback=%s\\n' \"$(test -x {CNI_BIN_DIR}/loopback && echo yes || echo no)\"; "
    "printf 'swap=%s\\n' \"$(swapon --noheadings | wc -l)\"")


def _documents(*documents: dict[str, Any]) -> str:
    return "---\n".join(yaml.safe_dump(doc, sort_keys=False) for doc in documents)


def _args(**values: str) -> list[dict[str, str]]:
    """v1beta4's list form of extra arguments."""
    return [{"name": name.replace("_", "-"), "value": value} for name, value in values.items()]


def render_init_config(plan: Plan, public_host: str, kubernetes_version: str) -> str:
    """InitConfiguration + ClusterConfiguration for the plan's control plane, which the
    operator reaches at `public_host`."""
    control_plane = plan.control_plane
    private_ip = str(control_plane.private_ip)
    init = {
        "apiVersion": KUBEADM_API,
        "kind": "InitConfiguration",
        # kubeadm always makes one token; it is never used (joins get their own), so it
        # expires soon instead of after a day.
        "bootstrapTokens": [{"ttl": BOOTSTRAP_TOKEN_TTL}],
        "localAPIEndpoint": {"advertiseAddress": private_ip, "bindPort": API_SERVER_PORT},
        "nodeRegistration": _node_registration(control_plane),
    }
    cluster = {
        "apiVersion": KUBEADM_API,
        "kind": "ClusterConfiguration",
        "kubernetesVersion": kubernetes_version,
        "controlPlaneEndpoint": f"{private_ip}:{API_SERVER_PORT}",
        "networking": {"podSubnet": str(plan.pod_network),
                       "serviceSubnet": str(plan.service_network)},
        # The operator's kubeconfig reaches the API server on the node's public address.
        "apiServer": {"certSANs": sorted({public_host, private_ip})},
        # Node CIDRs come from the plan (pod-cidr phase), not from registration order.
        "controllerManager": {"extraArgs": _args(allocate_node_cidrs="false")},
    }
    return _documents(init, cluster)


def _node_registration(node: Node) -> dict[str, Any]:
    # The node registers under its plan name (cloud-init sets the same hostname) and with its
    # VPC address, which the pod routes and the checks use.
    return {"name": node.name, "criSocket": CRI_SOCKET,
            "kubeletExtraArgs": _args(node_ip=str(node.private_ip))}


def parse_facts(output: str) -> dict[str, str]:
    """key=value lines into a dict."""
    return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)


# A shell function for facts: `fact <name> <test>` prints <name>=yes when the test (run in a
# subshell, so it may `exit`) succeeds, and <name>=no otherwise.
_FACT_FUNCTION = ('fact() { if (eval "$2") >/dev/null 2>&1; then echo "$1=yes"; '
                  'else echo "$1=no"; fi; }')


def _fact(name: str, test: str) -> str:
    return f"fact {name} {shlex.quote(test)}"


# -- prerequisites -----------------------------------------------------------------------------

def prerequisite_problems(facts: dict[str, str], kubernetes_minor: str) -> list[str]:
    """What stops kubeadm on this node, each on one line with its fix; empty when ready."""
    problems = []
    version = facts.get("kubeadm", "")
    if not re.fullmatch(rf"v{re.escape(kubernetes_minor)}\.\d+", version):
        problems.append(f"kubeadm reports {version or 'nothing'!r}, expected "
                        f"v{kubernetes_minor}.x: check the pkgs.k8s.io repository cloud-init "
                        "configured")
    if facts.get("systemd_cgroup", "0") == "0":
        problems.append("containerd does not use SystemdCgroup = true (control-plane pods "
                        "would crash-loop): fix /etc/containerd/config.toml and restart it")
    if facts.get("cni_bin_dir", "0") == "0":
        problems.append(f"containerd does not run CNI plugins from {CNI_BIN_DIR}: set the CNI "
                        "bin_dir (containerd 1.x) or bin_dirs (2.x) in "
                        "/etc/containerd/config.toml and restart it")
    if facts.get("cni_loopback") != "yes":
        problems.append(f"{CNI_BIN_DIR}/loopback is missing and containerd needs it for every "
                        "pod: apt-get install kubernetes-cni (pkgs.k8s.io) and hold it")
    if facts.get("swap", "0") != "0":
        problems.append("swap is on and the kubelet refuses to run: swapoff -a")
    return problems


# -- kubeadm init: facts, decision, commands ---------------------------------------------------

def _kubectl_test(arguments: str) -> str:
    return f"{KUBECTL} --request-timeout=10s {arguments}"


# What kubeadm init writes last, by fact: `kubectl get` succeeds only when every object
# exists (and admin.conf may read it). bootstrap-token makes the RBAC, then cluster-info and
# its RBAC; the addon phase ends the init.
INIT_OBJECTS = {
    "bootstrap_rbac": "get clusterrolebinding kubeadm:get-nodes kubeadm:kubelet-bootstrap "
                      "kubeadm:node-autoapprove-bootstrap "
                      "kubeadm:node-autoapprove-certificate-rotation",
    "cluster_info": "-n kube-public get configmap/cluster-info "
                    "role/kubeadm:bootstrap-signer-clusterinfo "
                    "rolebinding/kubeadm:bootstrap-signer-clusterinfo",
    "kube_proxy": "-n kube-system get daemonset/kube-proxy",
    "coredns": "-n kube-system get deployment/coredns",
}
API_WAIT_SECONDS = 60  # the API server may be restarting (its manifest exists)
_API_ANSWERS = (f"test -e {APISERVER_MANIFEST} && for attempt in $(seq {API_WAIT_SECONDS // 5}); "
                f"do {_kubectl_test('get --raw=/readyz')} && exit 0; sleep 5; done; exit 1")
INIT_FACTS = "\n".join([
    _FACT_FUNCTION,
    _fact("traces", f"test -e {CLUSTER_CA} -o -e {ADMIN_KUBECONFIG} -o -e {ETCD_MANIFEST}"),
    _fact("kubelet_finalized", f"grep -qF {ROTATING_CLIENT_CERT} {KUBELET_KUBECONFIG}"),
    f"api=$({_fact('api', _API_ANSWERS)})",
    'echo "$api"',
    # Without the API server no object can be read: each is reported missing.
    *(f'if [ "$api" = api=yes ]; then {_fact(name, _kubectl_test(arguments))}; '
      f"else echo {name}=no; fi" for name, arguments in INIT_OBJECTS.items()),
])
INIT_FACTS_TIMEOUT = API_WAIT_SECONDS + 4 * 15 + 30


@dataclass(frozen=True)
class InitFacts:
    """What the control plane shows of kubeadm init; every field False when unknown."""

    traces: bool = False  # the CA, admin.conf or the etcd manifest: init has begun
    kubelet_finalized: bool = False  # kubelet.conf uses the rotating client certificate
    api: bool = False  # the API server answers /readyz through admin.conf
    bootstrap_rbac: bool = False
    cluster_info: bool = False
    kube_proxy: bool = False
    coredns: bool = False

    def missing_objects(self) -> list[str]:
        return [name for name in INIT_OBJECTS if not getattr(self, name)]

    @property
    def done(self) -> bool:
        return self.api and not self.missing_objects()


def parse_init_facts(output: str) -> InitFacts:
    facts = parse_facts(output)
    return InitFacts(**{f.name: facts.get(f.name) == "yes" for f in fields(InitFacts)})


def init_phase_command(phase: str) -> str:
    token_flag = " --skip-token-print" if phase == "bootstrap-token" else ""
    return f"kubeadm init phase {phase} --config /dev/stdin{token_flag}"


def init_commands(facts: InitFacts) -> list[str]:
    """The kubeadm commands that complete init from these facts, in order; [] when done.
    Each takes the init config on stdin."""
    if facts.done:
        return []
    if not facts.traces:
        return [KUBEADM_INIT]
    if not facts.api:
        if facts.kubelet_finalized:
            raise LabError("the API server does not answer, although kubeadm init got past "
                           "kubelet-finalize: the control plane itself is down; check the "
                           "kubelet (journalctl -u kubelet) and its containers (crictl ps -a)")
        return [KUBEADM_INIT_AGAIN]
    first = 0
    if facts.bootstrap_rbac and facts.cluster_info:
        first = API_PHASES.index("addon all" if facts.kubelet_finalized
                                 else "kubelet-finalize all")
    return [init_phase_command(phase) for phase in API_PHASES[first:]]


def describe_init(facts: InitFacts) -> str:
    """Why init must run again, for the log."""
    if not facts.traces:
        return "no control plane yet"
    if not facts.api:
        return "kubeadm init stopped before the API server answered"
    return f"kubeadm init stopped before creating {', '.join(facts.missing_objects())}"


# -- join: credentials, facts, decision --------------------------------------------------------

@dataclass(frozen=True)
class JoinCredentials:
    """What `kubeadm token create --print-join-command` prints; the token is a secret."""

    endpoint: str
    token: str = field(repr=False)
    ca_cert_hash: str

    @property
    def token_id(self) -> str:
        """The token's public half: it names the token, and authenticates nothing."""
        return self.token.split(".", 1)[0]


_JOIN = re.compile(r"kubeadm join (?P<endpoint>\S+) --token (?P<token>\S+)"
                   r" --discovery-token-ca-cert-hash (?P<hash>sha256:[0-9a-f]{64})")


def parse_join_command(output: str) -> JoinCredentials:
    found = _JOIN.search(output)
    if found is None:
        # Never echo the output: it would contain the token.
        raise LabError("`kubeadm token create --print-join-command` printed no join command")
    return JoinCredentials(found["endpoint"], found["token"], found["hash"])


def token_delete_command(credentials: JoinCredentials) -> str:
    return f"kubeadm token delete {shlex.quote(credentials.token_id)}"


def render_join_config(credentials: JoinCredentials, node: Node) -> str:
    """JoinConfiguration that pins the cluster CA by its hash."""
    return _documents({
        "apiVersion": KUBEADM_API,
        "kind": "JoinConfiguration",
        "discovery": {"bootstrapToken": {
            "apiServerEndpoint": credentials.endpoint,
            "token": credentials.token,
            "caCertHashes": [credentials.ca_cert_hash],
        }},
        "nodeRegistration": _node_registration(node),
    })


# What `kubeadm join` leaves on a worker, in order: the CA and the bootstrap kubeconfig, then
# (TLS bootstrap done) kubelet.conf, and the bootstrap kubeconfig removed.
JOIN_FACTS = "\n".join([
    _FACT_FUNCTION,
    _fact("kubelet_conf", f"test -e {KUBELET_KUBECONFIG}"),
    _fact("bootstrap_conf", f"test -e {BOOTSTRAP_KUBECONFIG}"),
    _fact("cluster_ca", f"test -e {CLUSTER_CA}"),
])


@dataclass(frozen=True)
class WorkerFacts:
    kubelet_conf: bool = False
    bootstrap_conf: bool = False
    cluster_ca: bool = False
    registered: bool = False  # the API server has its Node object


def parse_worker_files(output: str) -> WorkerFacts:
    facts = parse_facts(output)
    return WorkerFacts(**{f.name: facts.get(f.name) == "yes" for f in fields(WorkerFacts)
                          if f.name != "registered"})


class JoinAction(Enum):
    NONE = "joined"
    JOIN = "join"
    RESET_AND_JOIN = "reset, then join"


def join_action(facts: WorkerFacts) -> JoinAction:
    """A joined worker has kubelet.conf and a Node object. One with neither kubeadm file
    joins. Anything between is half-joined: join's preflight refuses the files it left, and
    a kubelet.conf whose Node never registered may belong to an older cluster, so
    `kubeadm reset` clears the worker first (it holds no pods: no Node, no pods)."""
    if facts.kubelet_conf and facts.registered:
        return JoinAction.NONE
    if not (facts.kubelet_conf or facts.bootstrap_conf or facts.cluster_ca):
        return JoinAction.JOIN
    return JoinAction.RESET_AND_JOIN


def describe_worker(facts: WorkerFacts) -> str:
    if facts.kubelet_conf:
        return (f"{KUBELET_KUBECONFIG} exists and the node is registered" if facts.registered
                else f"{KUBELET_KUBECONFIG} exists but the Node object never registered")
    present = [path for path, found in ((BOOTSTRAP_KUBECONFIG, facts.bootstrap_conf),
                                        (CLUSTER_CA, facts.cluster_ca)) if found]
    return (f"half-joined: {', '.join(present)} without {KUBELET_KUBECONFIG}" if present
            else "not joined")


# -- node registration and pod CIDRs -----------------------------------------------------------

def wait_for_nodes_command(names: Iterable[str], timeout: int) -> str:
    """Waits until each Node object exists (kubectl 1.31+); exits non-zero after `timeout`."""
    nodes = " ".join(shlex.quote(f"node/{name}") for name in names)
    return f"{KUBECTL} wait --for=create {nodes} --timeout={timeout}s"


def parse_node_cidrs(output: str) -> dict[str, str]:
    """NODE_CIDRS output into {node name: podCIDR or ''}."""
    cidrs = {}
    for line in output.splitlines():
        name, _, cidr = line.partition(" ")
        if name:
            cidrs[name] = cidr.strip()
    return cidrs


def pod_cidr_patches(plan: Plan, registered: dict[str, str]) -> dict[str, str]:
    """{node: planned CIDR} for nodes still without one. A missing node or a CIDR other than
    the plan's is an error: the VPC routes and the bridges follow the plan."""
    missing = [name for name in plan.node_names() if name not in registered]
    if missing:
        raise LabError(f"node(s) not registered with the API server: {', '.join(missing)}; "
                       "check the kubelet there (journalctl -u kubelet)")
    wrong = [f"{node.name} has {registered[node.name]}, the plan says {node.pod_cidr}"
             for node in plan.nodes if registered[node.name] not in ("", str(node.pod_cidr))]
    if wrong:
        raise LabError("node pod CIDRs disagree with the plan (set once, they cannot be "
                       f"changed: delete and re-join the node): {'; '.join(wrong)}")
    return {node.name: str(node.pod_cidr) for node in plan.nodes if not registered[node.name]}


def pod_cidr_patch_command(node_name: str, cidr: str) -> str:
    patch = f'{{"spec":{{"podCIDR":"{cidr}","podCIDRs":["{cidr}"]}}}}'
    return f"{KUBECTL} patch node {shlex.quote(node_name)} --type merge -p {shlex.quote(patch)}"


def operator_kubeconfig(admin_conf: str, node_name: str, public_host: str) -> str:
    """admin.conf with its server set to the control plane's public address."""
    config = yaml.safe_load(admin_conf)
    try:
        for cluster in config["clusters"]:
            cluster["cluster"]["server"] = f"https://{public_host}:{API_SERVER_PORT}"
    except (KeyError, TypeError):
        raise LabError(f"{ADMIN_KUBECONFIG} on {node_name} has no clusters") from None
    return yaml.safe_dump(config, sort_keys=False)
