"""Node facts for the likely causes, read over SSH: one command per node, then the pure
parser in diagnose.py. The local lab and the cloud's verify phase both use it."""

from __future__ import annotations

from bootstrap.errors import LabError
from bootstrap.node_network import NODE_FILES, bridge_address
from bootstrap.remote import NodeCluster, RemoteNode
from bootstrap.verify.diagnose import FACTS_COMMAND, NodeFacts, parse_node_facts
from infra.plan import Plan

FACTS_TIMEOUT = 30


def read_node_facts(ssh: NodeCluster, plan: Plan) -> dict[str, NodeFacts]:
    """FACTS_COMMAND on every node, parsed. A node that cannot tell is left out (unknown),
    never read as bare: a cause must rest on facts that were seen."""
    def facts_output(node: RemoteNode) -> str | None:
        try:
            result = node.run(FACTS_COMMAND, timeout=FACTS_TIMEOUT, check=False, quiet=True)
        except LabError:
            return None
        return result.output if result.ok else None

    outputs = ssh.on_all(facts_output)
    return {node.name: parse_node_facts(output, str(node.pod_cidr), str(plan.pod_network),
                                        bridge_address(node))
            for node in plan.nodes if (output := outputs.get(node.name)) is not None}


def read_persisted_state(node: RemoteNode) -> tuple[str | None, str | None]:
    """What the node brings back at boot: its node-network state file and CNI config (None
    where missing), for `bootstrap.exercises.persistence_problems`."""
    found = [node.read_file(path) for path in (NODE_FILES.state, NODE_FILES.conflist)]
    state, conflist = (None if file is None else file[0].decode(errors="replace")
                       for file in found)
    return state, conflist
