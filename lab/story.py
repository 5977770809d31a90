"""`make lab STEPS=1`: the seed lab's story, replayed on the simulated VPC.

The lab fixed pod networking one step at a time; each stage here applies the same fix (ours,
not the lab's buggy version) and runs every check again, so each fix is seen turning a
failure into a pass (and the first check that still fails is traced hop by hop, to show
where its packet stops):
  1. pods on the bridge, nodes' FORWARD policy DROP (as Docker sets it), nothing else;
  2. after the FORWARD rules (and IPv4 forwarding): pods on one node talk;
  3. after NAT for traffic leaving the cluster: pods reach the internet;
  4. after the VPC's pod routes: still silent across nodes, as the seed lab forgot that
     EC2 drops what a node forwards for its pods while its source/destination check is on;
  5. with the check off on every node: pods on different nodes talk, without NAT.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bootstrap import node_network
from bootstrap.remote import RemoteNode
from bootstrap.verify.checks import Check, Outcome
from bootstrap.verify.diagnose import VpcFacts
from bootstrap.verify.trace import TraceResult
from lab import network, trace
from lab.lifecycle import LocalLab, bootstrap


@dataclass(frozen=True)
class Stage:
    title: str
    outcomes: list[Outcome]
    causes: dict[str, str]
    vpc: VpcFacts  # what the VPC router did at this stage
    # The first check that failed, traced hop by hop: where its packet stopped.
    traced: tuple[Check, TraceResult] | None = None

    @property
    def slug(self) -> str:
        """The title as a file name: "2 +FORWARD" -> "2-forward"."""
        return "-".join(re.findall(r"[a-z0-9]+", self.title.lower()))


def apply_forward_rules(lab: LocalLab, node: RemoteNode) -> None:
    """Only the filter-table part of the node network, the lab's "FORWARD fix": the same
    applier the bootstrap runs, given a desired state without NAT (on its standard input)."""
    state = node_network.forward_only_state(lab.plan, lab.plan.node(node.name))
    node.put_files([(node_network.NODE_FILES.applier, node_network.applier_source(), 0o644)])
    node.run(node_network.APPLY_STDIN_COMMAND, timeout=60, quiet=True,
             stdin=node_network.render_state(state).encode())


def _checks(lab: LocalLab, title: str) -> Stage:
    outcomes, causes = lab.run_checks()
    lab.console.log(f"{title}: {sum(o.passed for o in outcomes)}/{len(outcomes)} as expected")
    failed = next((outcome.check for outcome in outcomes if not outcome.passed), None)
    traced = None if failed is None else (failed, trace.trace_probe(lab, failed))
    return Stage(title, outcomes, causes, lab.vpc_facts(), traced)


def replay(lab: LocalLab) -> list[Stage]:
    bootstrap(lab, skip=("node-network",))
    lab.start_pods()
    stages = [_checks(lab, "1 bridge only")]
    lab.ssh.on_all(lambda node: apply_forward_rules(lab, node))
    stages.append(_checks(lab, "2 +FORWARD"))
    bootstrap(lab, only=("node-network",))
    stages.append(_checks(lab, "3 +NAT"))
    network.add_pod_routes(lab.layout)
    stages.append(_checks(lab, "4 +routes"))
    network.apply_planned_checks(lab.layout)
    stages.append(_checks(lab, "5 -src/dst check"))
    return stages
