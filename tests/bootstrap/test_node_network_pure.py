"""The node network as data: given a plan, expect these rules, state, unit and config."""

from __future__ import annotations

import ast
import json
import shlex
import sys

import pytest

from bootstrap.node_network import (
    APPLY_STDIN_COMMAND,
    BOOT_COMMAND,
    MASQUERADE_CHAIN,
    NODE_FILES,
    OWN_CHAINS,
    TEARDOWN_COMMAND,
    Rule,
    applier_source,
    bridge_address,
    cni_conflist,
    desired_state,
    forward_only_state,
    jump_rules,
    render_boot_unit,
    render_state,
    rules,
)
from bootstrap.node_network_apply import json_loads, shell_join, state_from_json
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


def test_the_state_of_worker_1_is_the_plan_s_values() -> None:
    state = desired_state(PLAN, PLAN.node("worker-1"))
    assert state.node == "worker-1"
    assert dict(state.sysctls) == {"net.ipv4.ip_forward": "1",
                                   "net.bridge.bridge-nf-call-iptables": "1"}
    assert state.bridge is not None
    assert (state.bridge.name, state.bridge.address) == ("cni0", "10.244.1.1/24")
    assert state.chains == OWN_CHAINS
    assert list(state.rules) == rules(PLAN, PLAN.node("worker-1"))


def test_the_state_file_is_json_the_applier_reads_back_unchanged() -> None:
    for node in PLAN.nodes:
        state = desired_state(PLAN, node)
        text = render_state(state)
        assert json_loads(text) == json.loads(text)  # the applier's reader, without json
        assert state_from_json(json_loads(text)) == state
    assert "/etc/" not in render_state(desired_state(PLAN, PLAN.nodes[0]))  # no sysctl.d


def test_the_applier_reads_bad_json_as_json_does() -> None:
    for bad in ("", "{", '{"node": 1} x', "[1,]"):
        with pytest.raises(ValueError):
            json_loads(bad)


def test_the_forward_only_state_is_the_filter_part_and_leaves_the_bridge() -> None:
    worker = PLAN.node("worker-2")
    state = forward_only_state(PLAN, worker)
    assert state.bridge is None and [c.name for c in state.chains] == ["LAB-FWD"]
    assert list(state.rules) == [r for r in rules(PLAN, worker) if r.table == "filter"]
    assert state.sysctls == desired_state(PLAN, worker).sysctls
    assert state_from_json(json_loads(render_state(state))) == state


def imported_modules(tree: ast.AST) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.add(node.module or "")
    return found


def test_the_applier_is_one_standard_library_file_with_cheap_imports() -> None:
    """It runs on nodes with /usr/bin/python3 -IS at every boot and bootstrap: nothing of the
    project, and at start-up only modules that cost no more than a millisecond or so."""
    tree = ast.parse(applier_source())
    assert {name.split(".")[0] for name in imported_modules(tree)} <= set(
        sys.stdlib_module_names)
    at_start_up = imported_modules(ast.Module(
        body=[node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)],
        type_ignores=[]))
    assert at_start_up == {"__future__", "os", "sys"}


@pytest.mark.parametrize("words", [
    ["iptables", "-t", "nat", "!", "-d", "10.244.0.0/16"], ["--comment", "k8s-cni-lab a b"],
    ["it's", "", "a_b", "x;y", "$HOME"],
])
def test_commands_are_shown_as_shlex_quotes_them(words: list[str]) -> None:
    assert shell_join(words) == shlex.join(words)


def test_boot_unit_runs_the_applier_before_the_kubelet() -> None:
    unit = render_boot_unit()
    assert "Type=oneshot" in unit and "RemainAfterExit=yes" in unit
    assert "Before=kubelet.service" in unit and "After=network-online.target" in unit
    assert f"ExecStart={BOOT_COMMAND}" in unit
    assert "WantedBy=multi-user.target" in unit


def test_the_applier_runs_with_the_node_s_own_isolated_python() -> None:
    python = ["/usr/bin/python3", "-IS", NODE_FILES.applier]
    assert shlex.split(BOOT_COMMAND) == [*python, NODE_FILES.state]
    assert shlex.split(TEARDOWN_COMMAND) == [*python, "--teardown", NODE_FILES.state]
    assert shlex.split(APPLY_STDIN_COMMAND) == [*python, "-"]


def test_node_files_are_the_only_paths_written() -> None:
    assert NODE_FILES.__dict__ == {
        "applier": "/opt/k8s-cni-lab/node_network_apply.py",
        "state": "/etc/k8s-cni-lab/node-network.json",
        "boot_unit": "/etc/systemd/system/lab-node-network.service",
        "conflist": "/etc/cni/net.d/10-lab-cni.conflist",
    }
