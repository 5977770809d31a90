"""The node network as data: given a plan, expect these rules, scripts and config."""

from __future__ import annotations

import shlex
import subprocess

import pytest

from bootstrap.node_network import (
    BOOT_COMMAND,
    MASQUERADE_CHAIN,
    NODE_FILES,
    OWN_CHAINS,
    Rule,
    bridge_address,
    cni_conflist,
    jump_rules,
    render_boot_unit,
    render_setup_script,
    render_teardown_script,
    rules,
)
from infra.plan import Settings, make_plan

PLAN = make_plan(Settings())


def test_rules_for_worker_1_of_the_default_plan() -> None:
    worker = PLAN.node("worker-1")
    assert [(r.table, r.chain, r.spec) for r in rules(PLAN, worker)] == [
        ("filter", "LAB-FWD", ("-s", "10.244.0.0/16", "-j", "ACCEPT")),
        ("filter", "LAB-FWD", ("-d", "10.244.0.0/16", "-j", "ACCEPT")),
        ("nat", "LAB-POSTRTG", ("-s", "10.244.1.0/24", "!", "-d", "10.244.0.0/16",
                                "-j", "MASQUERADE")),
    ]


def test_nat_never_uses_the_seed_labs_out_interface_form() -> None:
    for node in PLAN.nodes:
        for rule in rules(PLAN, node):
            assert "-o" not in rule.spec and "cni0" not in rule.spec


def test_rules_follow_the_plan_for_every_node_and_other_cidrs() -> None:
    plan = make_plan(Settings(node_count=5, pod_cidr="172.20.0.0/16", node_prefix=26))
    masquerades = [r.spec for node in plan.nodes for r in rules(plan, node)
                   if r.chain == MASQUERADE_CHAIN.name]
    assert masquerades == [("-s", f"172.20.0.{64 * n}/26", "!", "-d", "172.20.0.0/16",
                            "-j", "MASQUERADE") for n in range(4)] + [
        ("-s", "172.20.1.0/26", "!", "-d", "172.20.0.0/16", "-j", "MASQUERADE")]
    assert bridge_address(plan.node("worker-4")) == "172.20.1.1/26"


def test_every_rule_is_tagged_and_lives_in_a_declared_table_chain_pair() -> None:
    pairs = {(c.table, c.name) for c in OWN_CHAINS} | {(c.table, c.hook) for c in OWN_CHAINS}
    for rule in [*rules(PLAN, PLAN.nodes[0]), *jump_rules()]:
        assert rule.comment.startswith("k8s-cni-lab ")
        assert (rule.table, rule.chain) in pairs


def test_one_jump_per_own_chain_from_its_builtin_chain() -> None:
    assert [(r.table, r.chain, r.spec) for r in jump_rules()] == [
        ("filter", "FORWARD", ("-j", "LAB-FWD")),
        ("nat", "POSTROUTING", ("-j", "LAB-POSTRTG")),
    ]


def test_rule_renders_for_iptables_and_iptables_restore() -> None:
    rule = rules(PLAN, PLAN.node("master"))[2]
    assert rule.command("-C") == (
        "iptables -w -t nat -C LAB-POSTRTG -s 10.244.0.0/24 '!' -d 10.244.0.0/16 "
        "-m comment --comment 'k8s-cni-lab masquerade pod traffic leaving the cluster' "
        "-j MASQUERADE")
    assert rule.restore_line("-A") == (
        '-A LAB-POSTRTG -s 10.244.0.0/24 ! -d 10.244.0.0/16 -m comment --comment '
        '"k8s-cni-lab masquerade pod traffic leaving the cluster" -j MASQUERADE')


def test_rule_comments_cannot_break_the_quoting() -> None:
    with pytest.raises(ValueError, match="quotes"):
        Rule("filter", "LAB-FWD", ("-j", "ACCEPT"), 'k8s-cni-lab "x"')


def test_conflist_for_worker_2() -> None:
    assert cni_conflist(PLAN, PLAN.node("worker-2")) == {
        "cniVersion": "1.0.0",
        "name": "lab-net",
        "plugins": [{
            "type": "lab-cni", "bridge": "cni0", "subnet": "10.244.2.0/24",
            "gateway": "10.244.2.1", "clusterCidr": "10.244.0.0/16", "mtu": 1500,
            "hairpinMode": True, "dataDir": "/var/lib/cni/networks",
        }],
    }


def test_setup_script_bakes_in_the_values_and_stays_out_of_etc() -> None:
    script = render_setup_script(PLAN, PLAN.node("worker-1"))
    assert script.startswith("#!/bin/bash\n") and "set -euo pipefail" in script
    assert "10.244.1.1/24" in script and "10.244.1.0/24" in script
    code = "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("#"))
    assert "sysctl.d" not in code and "/etc/" not in code
    assert "iptables-restore -w --noflush" in script
    assert "-F" not in script.split()  # setup flushes nothing: declaring our chains does
    assert "! -o" not in script


@pytest.mark.parametrize("render", [render_setup_script, render_teardown_script])
def test_scripts_are_valid_bash(render) -> None:  # type: ignore[no-untyped-def]
    script = render(PLAN, PLAN.node("worker-1"))
    checked = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
    assert checked.returncode == 0, checked.stderr


def test_teardown_removes_jumps_chains_and_bridge_only() -> None:
    script = render_teardown_script(PLAN, PLAN.node("master"))
    for jump in jump_rules():
        assert jump.command("-D") in script
    assert "iptables -w -t filter -X LAB-FWD" in script
    assert "iptables -w -t nat -X LAB-POSTRTG" in script
    assert "ip link del dev cni0" in script
    assert "/proc/sys" not in script and "sysctl" not in script  # sysctls are left alone


def test_boot_unit_runs_the_setup_script_before_the_kubelet() -> None:
    unit = render_boot_unit()
    assert "Type=oneshot" in unit and "RemainAfterExit=yes" in unit
    assert "Before=kubelet.service" in unit and "After=network-online.target" in unit
    assert f"ExecStart={BOOT_COMMAND}" in unit
    assert shlex.split(BOOT_COMMAND) == ["/bin/bash", NODE_FILES.setup_script]
    assert "WantedBy=multi-user.target" in unit


def test_node_files_are_the_only_paths_written() -> None:
    assert NODE_FILES.__dict__ == {
        "setup_script": "/etc/k8s-cni-lab/node-network.sh",
        "teardown_script": "/etc/k8s-cni-lab/node-network-down.sh",
        "boot_unit": "/etc/systemd/system/lab-node-network.service",
        "conflist": "/etc/cni/net.d/10-lab-cni.conflist",
    }
