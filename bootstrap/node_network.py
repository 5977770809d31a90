"""The node network, as pure functions of the address plan: no I/O here.

Every node gets the same treatment, on AWS and in the local lab:
- sysctls: IPv4 forwarding, and bridged traffic through iptables (br_netfilter);
- the cni0 bridge holding the node's pod gateway address (and only that address);
- iptables rules in our own chains, flannel style: LAB-FWD (filter) accepts pod traffic in
  FORWARD, LAB-POSTRTG (nat) masquerades only traffic that leaves the cluster, so pods on
  different nodes see each other's real addresses (findings #6);
- the CNI config list naming our plugin.

The setup script is the single implementation: the bootstrap runs it once and a systemd unit
runs it at every boot (findings #7). Running it again changes nothing.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any

from bootstrap.cni.install import CNI_TYPE
from infra.plan import Node, Plan

BRIDGE = "cni0"
COMMENT_TAG = "k8s-cni-lab"
CNI_NETWORK_NAME = "lab-net"
CNI_VERSION = "1.0.0"
POD_MTU = 1500
IPAM_DATA_DIR = "/var/lib/cni/networks"
BOOT_UNIT_NAME = "lab-node-network.service"
# The setup script's last line when it found everything in place.
NO_CHANGES_LINE = "node-network: no changes"


@dataclass(frozen=True)
class NodeFiles:
    """Every path the bootstrap writes on a node besides the plugin's (those are listed by
    bootstrap/cni/install.py), and nothing else."""

    setup_script: str = "/etc/k8s-cni-lab/node-network.sh"
    teardown_script: str = "/etc/k8s-cni-lab/node-network-down.sh"
    boot_unit: str = f"/etc/systemd/system/{BOOT_UNIT_NAME}"
    conflist: str = "/etc/cni/net.d/10-lab-cni.conflist"


NODE_FILES = NodeFiles()
BOOT_COMMAND = f"/bin/bash {NODE_FILES.setup_script}"


@dataclass(frozen=True)
class OwnChain:
    """One of our chains, and the built-in chain that jumps to it (one jump each)."""

    table: str
    name: str
    hook: str


FORWARD_CHAIN = OwnChain(table="filter", name="LAB-FWD", hook="FORWARD")
MASQUERADE_CHAIN = OwnChain(table="nat", name="LAB-POSTRTG", hook="POSTROUTING")
OWN_CHAINS = (FORWARD_CHAIN, MASQUERADE_CHAIN)


@dataclass(frozen=True)
class Rule:
    """One iptables rule: its table and chain, the match and target, and a visible tag."""

    table: str
    chain: str
    spec: tuple[str, ...]
    comment: str

    def __post_init__(self) -> None:
        # iptables-restore only understands double quotes: keep comments free of quoting.
        if any(char in self.comment for char in "\"'\\\n"):
            raise ValueError(f"rule comment {self.comment!r} must not contain quotes")

    def args(self) -> tuple[str, ...]:
        """The spec with the comment match placed before the target, as iptables-save does."""
        target = self.spec.index("-j")
        comment = ("-m", "comment", "--comment", self.comment)
        return (*self.spec[:target], *comment, *self.spec[target:])

    def command(self, action: str) -> str:
        """The iptables command line (shell-quoted) for -A, -C, -D or -I."""
        return shlex.join(["iptables", "-w", "-t", self.table, action, self.chain, *self.args()])

    def restore_line(self, action: str) -> str:
        """The same rule as an iptables-restore line, which quotes with double quotes."""
        args = " ".join(f'"{arg}"' if " " in arg else arg for arg in self.args())
        return f"{action} {self.chain} {args}"


def rules(plan: Plan, node: Node) -> list[Rule]:
    """The rules inside our chains for this node, in order."""
    cluster, pods = str(plan.pod_network), str(node.pod_cidr)
    fwd, nat = FORWARD_CHAIN, MASQUERADE_CHAIN
    return [
        # Pod traffic crosses the node's FORWARD path (bridged or routed): accept it even
        # when the policy is DROP, as Docker sets it.
        Rule(fwd.table, fwd.name, ("-s", cluster, "-j", "ACCEPT"),
             f"{COMMENT_TAG} forward from pods"),
        Rule(fwd.table, fwd.name, ("-d", cluster, "-j", "ACCEPT"),
             f"{COMMENT_TAG} forward to pods"),
        # NAT only what leaves the cluster: pod to pod across nodes keeps its source address.
        Rule(nat.table, nat.name, ("-s", pods, "!", "-d", cluster, "-j", "MASQUERADE"),
             f"{COMMENT_TAG} masquerade pod traffic leaving the cluster"),
    ]


def jump_rules() -> list[Rule]:
    """The one jump from each built-in chain into ours."""
    return [Rule(chain.table, chain.hook, ("-j", chain.name), f"{COMMENT_TAG} jump to {chain.name}")
            for chain in OWN_CHAINS]


def bridge_address(node: Node) -> str:
    """The gateway with the node's pod prefix, e.g. 10.244.1.1/24."""
    return f"{node.gateway}/{node.pod_cidr.prefixlen}"


def cni_conflist(plan: Plan, node: Node) -> dict[str, Any]:
    """The node's CNI network configuration list, read by the container runtime."""
    return {
        "cniVersion": CNI_VERSION,
        "name": CNI_NETWORK_NAME,
        "plugins": [{
            "type": CNI_TYPE,
            "bridge": BRIDGE,
            "subnet": str(node.pod_cidr),
            "gateway": str(node.gateway),
            "clusterCidr": str(plan.pod_network),
            "mtu": POD_MTU,
            "hairpinMode": True,
            "dataDir": IPAM_DATA_DIR,
        }],
    }


def render_boot_unit() -> str:
    """A oneshot unit that re-applies the node network at boot, before the kubelet starts."""
    return f"""\
[Unit]
Description=k8s-cni-lab node network (sysctls, {BRIDGE} bridge, iptables rules)
Wants=network-online.target
After=network-online.target
Before=kubelet.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={BOOT_COMMAND}

[Install]
WantedBy=multi-user.target
"""


_SCRIPT_PRELUDE = """\
#!/bin/bash
# {title} for node {node} (generated by k8s-cni-lab; the bootstrap overwrites it).
set -euo pipefail
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
changes=0
changed() {{ echo "node-network: $*"; changes=$((changes + 1)); }}
"""

_SCRIPT_SUMMARY = f"""
if [ "$changes" -eq 0 ]; then echo {shlex.quote(NO_CHANGES_LINE)}
else echo "node-network: $changes change(s)"; fi
"""


def render_setup_script(plan: Plan, node: Node) -> str:
    """An idempotent bash script, values baked in: sysctls, bridge, iptables rules."""
    return "\n".join([
        _SCRIPT_PRELUDE.format(title="Node network setup", node=node.name),
        _setup_sysctls(),
        _setup_bridge(bridge_address(node)),
        _setup_iptables(plan, node),
        _SCRIPT_SUMMARY,
    ])


def render_teardown_script(plan: Plan, node: Node) -> str:
    """Removes exactly what setup added: the jumps, our chains and the bridge. Sysctls stay:
    their earlier values were never recorded, and other software may rely on forwarding."""
    q = shlex.quote
    lines = [_SCRIPT_PRELUDE.format(title="Node network teardown", node=node.name),
             "# Jumps first, so no packet is sent into a chain that is going away."]
    for jump in jump_rules():
        lines.append(f"while {jump.command('-C')} 2>/dev/null; do\n"
                     f"  {jump.command('-D')}; changed {q(f'removed jump to {jump.spec[-1]}')}\n"
                     "done")
    for chain in OWN_CHAINS:
        ipt = f"iptables -w -t {chain.table}"
        lines.append(f"if {ipt} -S {chain.name} >/dev/null 2>&1; then\n"
                     f"  {ipt} -F {chain.name}; {ipt} -X {chain.name}; "
                     f"changed {q(f'removed chain {chain.name} ({chain.table})')}\n"
                     "fi")
    lines.append(f"if ip link show dev {BRIDGE} >/dev/null 2>&1; then\n"
                 f"  ip link del dev {BRIDGE}; changed {q(f'removed bridge {BRIDGE}')}\n"
                 "fi")
    lines.append(_SCRIPT_SUMMARY)
    return "\n".join(lines)


def _setup_sysctls() -> str:
    return """\
# Set at run time, never in /etc/sysctl.d: local lab nodes share the host's /etc, and the
# boot unit re-applies them anyway. Read and written through /proc/sys: no process each.
ensure_sysctl() {
  local path=/proc/sys/${1//.//} current
  read -r current < "$path"
  if [ "$current" != "$2" ]; then echo "$2" > "$path"; changed "set $1=$2"; fi
}
# The bridge sysctls exist once br_netfilter is loaded, or when it is built into the kernel.
if [ ! -e /proc/sys/net/bridge/bridge-nf-call-iptables ]; then
  modprobe br_netfilter; changed "loaded br_netfilter"
fi
ensure_sysctl net.ipv4.ip_forward 1
ensure_sysctl net.bridge.bridge-nf-call-iptables 1
"""


def _setup_bridge(address: str) -> str:
    # The link's kind and flags come from sysfs; only the addresses need `ip`. The script
    # runs at every boot and every bootstrap, on every node: each process avoided counts.
    bridge, wanted = shlex.quote(BRIDGE), shlex.quote(address)
    sysfs = f"/sys/class/net/{BRIDGE}"
    return f"""\
# The {BRIDGE} bridge, up, holding the pod gateway address and no other IPv4 address.
if [ ! -e {sysfs} ]; then  # first run: all three at once, in one process
  ip -batch - <<'BATCH'
link add name {BRIDGE} type bridge
addr add {address} broadcast + dev {BRIDGE}
link set dev {BRIDGE} up
BATCH
  changed "created bridge {BRIDGE} with {address}, up"
else
  if [ ! -d {sysfs}/bridge ]; then
    echo "node-network: {BRIDGE} exists but is not a bridge; remove it and re-run" >&2; exit 1
  fi
  has_gateway=no
  while read -r _ _ _ address _; do  # "5: cni0    inet 10.244.1.1/24 brd ..."
    if [ -z "$address" ]; then continue; fi
    if [ "$address" = {wanted} ]; then has_gateway=yes; continue; fi
    ip addr del "$address" dev {bridge}; changed "removed $address from {BRIDGE}"
  done <<< "$(ip -4 -o addr show dev {bridge})"
  if [ "$has_gateway" = no ]; then
    ip addr add {wanted} broadcast + dev {bridge}; changed "added {address} to {BRIDGE}"
  fi
  read -r flags < {sysfs}/flags
  if (( (flags & 1) == 0 )); then  # IFF_UP
    ip link set dev {bridge} up; changed "set {BRIDGE} up"
  fi
fi
"""


def _setup_iptables(plan: Plan, node: Node) -> str:
    """Read both tables once (iptables-save) and compare our chains and jumps line by line;
    if anything differs, rebuild our chains in one iptables-restore transaction. --noflush
    keeps everyone else's rules; declaring our chains flushes only them."""
    chain_rules, jumps = rules(plan, node), jump_rules()
    q = shlex.quote
    arms = [f'    {q(f"-A {chain.name} ")}*) chain{i}+="$line;";;'
            for i, chain in enumerate(OWN_CHAINS)]
    arms += [f'    {q(jump.restore_line("-A"))}) jump{i}=1;;' for i, jump in enumerate(jumps)]
    expected = [q("".join(f"{r.restore_line('-A')};" for r in chain_rules if r.chain == c.name))
                for c in OWN_CHAINS]
    in_place = [f'[ "$chain{i}" = {want} ]' for i, want in enumerate(expected)]
    in_place += [f'[ "$jump{i}" = 1 ]' for i in range(len(jumps))]
    restore: list[str] = []
    for table in dict.fromkeys(chain.table for chain in OWN_CHAINS):
        restore.append(f"echo {q('*' + table)}")
        restore += [f"echo {q(f':{c.name} - [0:0]')}" for c in OWN_CHAINS if c.table == table]
        restore += [f"echo {q(r.restore_line('-A'))}" for r in chain_rules if r.table == table]
        # Insert the jump first in the built-in chain, unless it is there already.
        restore += [f'[ "$jump{i}" = 1 ] || echo {q(j.restore_line("-I"))}'
                    for i, j in enumerate(jumps) if j.table == table]
        restore.append("echo COMMIT")
    chain_names = " and ".join(chain.name for chain in OWN_CHAINS)
    variables = " ".join([*(f"chain{i}=" for i in range(len(OWN_CHAINS))),
                          *(f"jump{i}=0" for i in range(len(jumps)))])
    return "\n".join([
        f"# iptables: our chains {chain_names}, entered by one jump each.",
        variables,
        "while IFS= read -r line; do",
        '  case "$line" in',
        *arms,
        "  esac",
        'done <<< "$(iptables-save)"',
        "rebuild_rules() {",
        *(f"  {line}" for line in restore),
        "}",
        f"if ! {{ {' && '.join(in_place)}; }}; then",
        "  rebuild_rules | iptables-restore -w --noflush",
        f'  changed "rebuilt iptables chains {chain_names}"',
        "fi",
    ])
