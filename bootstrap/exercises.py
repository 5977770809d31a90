"""Exercises: one fault injected on one node, for the learner to find and fix by hand.

Pure data and functions, no I/O. Each exercise says how to break the node (shell run on
it), what the learner sees (a symptom that never names the cause), three hints from vague to
precise (the last one in the diagnosis's own words), and the commands that fix it, with why.
The same catalog serves the local lab and a cloud stack: every command here is shell on a
node. The lab adds the exercises that need its simulated VPC or its pod runtime (lab/).

Solved means every check passes AND the node's persisted state (the node-network state file
that the boot unit re-applies, and the CNI config) is the plan's: a fix made only in the
kernel would be undone at the next boot when the fault lives in those files
(`persistence_problems`). When the fault lived only in the kernel, a reboot would have fixed
it too, and the verdict says so (`Exercise.boot_restores`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from bootstrap.errors import LabError
from bootstrap.node_network import (
    BOOT_COMMAND,
    BRIDGE,
    MASQUERADE_CHAIN,
    NODE_FILES,
    POD_MTU,
    bridge_address,
    cni_conflist,
    desired_state,
    render_state,
)
from bootstrap.node_network_apply import state_to_json
from bootstrap.verify.checks import Outcome, PodInfo, pod_hosts
from infra.plan import Node, Plan

Difficulty = Literal["easy", "medium", "hard"]
HINT_COUNT = 3
# The seed lab's own NAT rule: everything leaving through anything but the bridge, other
# nodes' pods included, gets the node's address.
SEED_NAT_SPEC = ("-s", "{pod_cidr}", "!", "-o", BRIDGE, "-j", "MASQUERADE")
LOWERED_MTU = POD_MTU - 100
UPLINK = "$(ip -4 route show default | awk '{print $5; exit}')"  # the node's VPC link


@dataclass(frozen=True)
class Target:
    """Where an exercise runs: the plan, the chosen node, and the pods (on every node)."""

    plan: Plan
    node: Node
    pods: tuple[PodInfo, ...] = ()

    @property
    def node_pods(self) -> list[PodInfo]:
        return [pod for pod in self.pods if pod.node == self.node.name]

    @property
    def tools_pod(self) -> str:
        """The node's tools pod (bash-...), where an exercise breaks one pod."""
        return next((pod.name for pod in self.node_pods if pod.role == "tools"), "POD")

    def words(self) -> dict[str, str]:
        """What the exercise's texts may name: {node}, {pod_cidr}, {gateway}, {cluster}..."""
        return {"node": self.node.name, "tools_pod": self.tools_pod,
                "pod_cidr": str(self.node.pod_cidr),
                "gateway": bridge_address(self.node), "cluster": str(self.plan.pod_network),
                "private_ip": str(self.node.private_ip), "bridge": BRIDGE,
                "pod_mtu": str(POD_MTU), "state_file": NODE_FILES.state,
                "conflist": NODE_FILES.conflist}


Shell = Callable[[Target], str]


@dataclass(frozen=True)
class Exercise:
    name: str
    difficulty: Difficulty
    symptom: str  # what the learner sees; never the cause
    fails: tuple[str, ...]  # the checks that fail, with the fault on the first worker
    cause: str  # the diagnosis's words, with {node} and the like
    hints: tuple[str, str, str]
    why: str  # why the fix works
    inject: Shell
    fix: Shell
    boot_restores: str = ""  # the fault lived only in the kernel: what a reboot redoes
    where: Literal["node", "pod", "vpc"] = "node"  # pod and vpc: the local lab only

    def text(self, template: str, target: Target) -> str:
        return template.format(**target.words())


# -- the persisted state, changed or restored -------------------------------------------------

def file_command(path: str, content: str) -> str:
    """Shell that writes `content` to `path` (a here-document: the node needs nothing else)."""
    return f"cat > {path} <<'EOF'\n{content.rstrip()}\nEOF"


def state_with(change: Callable[[dict[str, Any], Target], None]) -> Shell:
    """Inject into the persisted state: write a changed state file and apply it as the boot
    unit does, so the fault is in the kernel and comes back at every boot."""
    def inject(target: Target) -> str:
        document = state_to_json(desired_state(target.plan, target.node))
        change(document, target)
        return f"{file_command(NODE_FILES.state, json.dumps(document, indent=2))}\n" \
               f"{BOOT_COMMAND}"
    return inject


def restore_state(target: Target) -> str:
    """The plan's state file back, applied: the fix that also holds at the next boot."""
    state = render_state(desired_state(target.plan, target.node))
    return f"{file_command(NODE_FILES.state, state)}\n{BOOT_COMMAND}"


def _without_rule(comment_end: str) -> Callable[[dict[str, Any], Target], None]:
    def change(document: dict[str, Any], _: Target) -> None:
        document["rules"] = [rule for rule in document["rules"]
                             if not rule["comment"].endswith(comment_end)]
    return change


def _forward_rules_removed(document: dict[str, Any], _: Target) -> None:
    document["rules"] = [rule for rule in document["rules"] if rule["table"] != "filter"]


def _seed_nat_rule(document: dict[str, Any], target: Target) -> None:
    for rule in document["rules"]:
        if rule["chain"] == MASQUERADE_CHAIN.name:
            rule["spec"] = [word.format(**target.words()) for word in SEED_NAT_SPEC]


def persistence_problems(plan: Plan, node: Node, state_text: str | None,
                         conflist_text: str | None) -> list[str]:
    """What the node's files would bring back at its next boot: each way they differ from
    the plan. [] when a reboot would keep the node as the plan says."""
    problems = []
    wanted = state_to_json(desired_state(plan, node))
    found = _json(state_text)
    if found is None:
        problems.append(f"{NODE_FILES.state} is missing or unreadable")
    elif found != wanted:
        problems += [f"{NODE_FILES.state} {difference}"
                     for difference in state_differences(wanted, found)]
    conflist = _json(conflist_text)
    if conflist != cni_conflist(plan, node):
        subnet = _subnet(conflist)
        problems.append(f"{NODE_FILES.conflist} gives pods {subnet or 'no subnet'}, the plan "
                        f"{node.pod_cidr}" if subnet != str(node.pod_cidr)
                        else f"{NODE_FILES.conflist} differs from the plan's")
    return problems


def state_differences(wanted: Mapping[str, Any], found: Mapping[str, Any]) -> list[str]:
    differences = []
    if found.get("sysctls") != wanted["sysctls"]:
        differences.append(f"sets sysctls {found.get('sysctls')}, the plan {wanted['sysctls']}")
    if found.get("bridge") != wanted["bridge"]:
        differences.append(f"holds bridge {found.get('bridge')}, the plan {wanted['bridge']}")
    rules = found.get("rules") or []
    differences += [f"lacks the rule '{rule['comment']}' ({' '.join(rule['spec'])})"
                    for rule in wanted["rules"] if rule not in rules]
    differences += [f"has a rule the plan has not: {' '.join(rule.get('spec', []))}"
                    for rule in rules if rule not in wanted["rules"]]
    if found.get("chains") != wanted["chains"]:
        differences.append("declares other chains than the plan")
    return differences or ["differs from the plan's"]


def _json(text: str | None) -> Any:
    try:
        return None if text is None else json.loads(text)
    except ValueError:
        return None


def _subnet(conflist: Any) -> str:
    try:
        return str(next(p["subnet"] for p in conflist["plugins"] if "subnet" in p))
    except (KeyError, TypeError, StopIteration):
        return ""


# -- the open exercise ------------------------------------------------------------------------

@dataclass(frozen=True)
class OpenExercise:
    """What `hint`, `solution` and `check` need to find an exercise a learner started."""

    name: str
    node: str
    hints_shown: int = 0


class ExerciseError(LabError):
    """A one-line refusal that names the fix."""


def refuse_if_open(record: OpenExercise | None, check: str) -> None:
    if record is not None:
        raise ExerciseError(f"exercise {record.name} is still open on {record.node}: solve it "
                            f"(`{check}` tells), or give up with `make solution` and `make down`")


def chosen_node(plan: Plan, exercise: Exercise, wanted: str | None) -> str:
    """The node to break: `wanted`, else the first that runs pods; a pod-level exercise
    needs a node that runs the test pods."""
    hosts = pod_hosts(plan)
    chosen = wanted or hosts[0]
    allowed = hosts if exercise.where == "pod" else plan.node_names()
    if chosen not in allowed:
        raise ExerciseError(f"exercise {exercise.name} runs on a node of {', '.join(allowed)}, "
                            f"not {chosen!r}: pick one with NODE=")
    return chosen


def refuse_unless_passing(where: str, outcomes: Sequence[Outcome], fix: str) -> None:
    """An exercise starts only where every check passes: a fault the learner did not inject
    would mislead."""
    failing = [outcome.check.name for outcome in outcomes if not outcome.passed]
    if failing:
        raise ExerciseError(f"the {where}'s checks do not all pass already "
                            f"({', '.join(failing)}): a fault you did not inject would "
                            f"mislead; {fix}")


def require_open(record: OpenExercise | None, verb: str) -> OpenExercise:
    if record is None:
        raise ExerciseError(f"no exercise is open to {verb}: start one with `make exercise` "
                            "(`make exercises` lists them)")
    return record


# -- verdicts, hints, solutions ---------------------------------------------------------------

@dataclass(frozen=True)
class Verdict:
    solved: bool
    lines: tuple[str, ...]


def judge(exercise: Exercise, failed_checks: Sequence[str],
          persistence: Sequence[str]) -> Verdict:
    """Solved: no check fails and nothing persisted would bring a fault back at boot."""
    name = exercise.name
    if failed_checks:
        return Verdict(False, (f"exercise {name}: not solved yet: {len(failed_checks)} "
                               f"check(s) still fail ({', '.join(failed_checks)})",))
    if persistence:
        return Verdict(False, (f"exercise {name}: not solved yet: every check passes, but the "
                               "boot unit would bring the fault back at the next boot:",
                               *(f"  {problem}" for problem in persistence)))
    lines = [f"exercise {name}: solved"]
    if exercise.boot_restores:
        lines.append(f"note: a reboot would also have fixed it, because "
                     f"{exercise.boot_restores}")
    return Verdict(True, tuple(lines))


def hint(exercise: Exercise, target: Target, shown: int) -> str:
    """Hint number shown+1 (1 to HINT_COUNT); past the last one, where to go next."""
    if shown >= HINT_COUNT:
        return f"no more hints for {exercise.name}: `make solution` shows the fix and why"
    return f"hint {shown + 1}/{HINT_COUNT}: {exercise.text(exercise.hints[shown], target)}"


def solution(exercise: Exercise, target: Target) -> str:
    cause = exercise.text(exercise.cause, target)
    return (f"The cause: {cause}.\n\n{exercise.text(exercise.why, target)}\n\n"
            f"Run on {target.node.name if exercise.where != 'vpc' else 'this machine'}:\n"
            f"{exercise.fix(target)}")


def listing_line(exercise: Exercise) -> tuple[str, str, str]:
    return exercise.name, exercise.difficulty, exercise.symptom


# -- the node-level catalog -------------------------------------------------------------------

BOOT_UNIT_REAPPLIES = f"the boot unit re-applies {NODE_FILES.state}, which still has it right"
PERSISTED_WHY = (f"The fault is in {NODE_FILES.state}, the node network that the boot unit "
                 "re-applies at every boot: a rule added by hand makes the checks pass until "
                 "the next reboot. Restore the file (here the plan's, as `make run "
                 "PHASES=node-network` would write it) and apply it the way the boot unit does.")

NODE_EXERCISES: tuple[Exercise, ...] = (
    Exercise(
        name="stuck-on-node", difficulty="easy",
        symptom="pods on one node talk to each other, but nothing they send gets off the node",
        fails=("pod to pod, across nodes", "pod to pod, across nodes (back)",
               "large answer, across nodes", "pod to internet"),
        cause="forwarding off on {node} (net.ipv4.ip_forward=0)",
        hints=("Pods on one node share a bridge; anything else, the node must route. What "
               "does a Linux host need before it routes packets between its interfaces?",
               "On {node}, read the kernel's IPv4 settings: `sysctl -a 2>/dev/null | grep "
               "'^net.ipv4.conf.all'` and the other `net.ipv4.*` switches.",
               "The cause: forwarding off on {node} (net.ipv4.ip_forward=0)."),
        why="Linux routes between interfaces only with net.ipv4.ip_forward=1: without it the "
            "node drops every packet that is not its own, so pod traffic stops at the node.",
        inject=lambda _: "sysctl -q -w net.ipv4.ip_forward=0",
        fix=lambda _: "sysctl -w net.ipv4.ip_forward=1",
        boot_restores=f"{BOOT_UNIT_REAPPLIES} (net.ipv4.ip_forward=1)"),
    Exercise(
        name="quiet-neighbours", difficulty="easy",
        symptom="pods cannot even reach the pod next to them on the same node",
        fails=("pod to pod, same node", "pod to pod, across nodes",
               "pod to pod, across nodes (back)", "large answer, across nodes",
               "pod to internet"),
        cause="FORWARD dropped on {node}: policy DROP and no rule accepts the pod network",
        hints=("Packets between pods cross the node's packet filter, even on one bridge. "
               "What does the filter do with traffic no rule accepts?",
               "On {node}: `iptables -S FORWARD` and `iptables -S LAB-FWD`; then look at what "
               "the boot unit applies: {state_file}.",
               "The cause: FORWARD dropped on {node}: policy DROP and no rule accepts the pod "
               "network {cluster}, and the node's state file lacks those rules."),
        why="The FORWARD policy is DROP (as Docker sets it) and the rules that accept the pod "
            "network {cluster} were lost. " + PERSISTED_WHY,
        inject=state_with(_forward_rules_removed), fix=restore_state),
    Exercise(
        name="no-way-out", difficulty="easy",
        symptom="pods talk to each other across nodes, but never reach the internet",
        fails=("pod to internet",),
        cause="no NAT on {node}: the internet gateway drops pod addresses",
        hints=("The internet gateway knows only the nodes' addresses. What must happen to a "
               "pod's source address before its packet leaves the cluster?",
               "On {node}: `iptables -t nat -S LAB-POSTRTG`, then the rules in {state_file}.",
               "The cause: no NAT on {node}: the internet gateway drops pod addresses; the "
               "state file lacks the masquerade rule too."),
        why="Traffic leaving the cluster must carry the node's address: the rule `-s "
            "{pod_cidr} ! -d {cluster} -j MASQUERADE` does that. " + PERSISTED_WHY,
        inject=state_with(_without_rule("masquerade pod traffic leaving the cluster")),
        fix=restore_state),
    Exercise(
        name="wrong-sender", difficulty="medium",
        symptom="pods on other nodes answer, but they see the wrong client address",
        fails=("pod to pod, across nodes", "large answer, across nodes"),
        cause="NAT inside the cluster: {node} masquerades pod-to-pod traffic",
        hints=("Every check answers, but one sees the node's address where a pod's should "
               "be. Who rewrites source addresses on the way?",
               "On {node}: `iptables -t nat -S` and the NAT rule in {state_file}: which "
               "destinations does it leave alone?",
               "The cause: NAT inside the cluster: {node} masquerades pod-to-pod traffic, "
               "with the seed lab's rule `-s {pod_cidr} ! -o {bridge} -j MASQUERADE`."),
        why="`! -o {bridge}` masquerades everything that leaves through eth0, other nodes' "
            "pods included, so they see {private_ip}. Kubernetes wants pods to see each "
            "other's real addresses: NAT only what leaves the cluster, `! -d {cluster}`. "
            + PERSISTED_WHY,
        inject=state_with(_seed_nat_rule), fix=restore_state),
    Exercise(
        name="no-reply", difficulty="medium",
        symptom="pods send to the internet, but the answers never come back",
        fails=("pod to internet",),
        cause="FORWARD on {node} accepts pod traffic one way only (from pods)",
        hints=("The request leaves; does the answer have a way back in? A packet filter "
               "judges each direction on its own.",
               "On {node}: `iptables -S LAB-FWD` and the filter rules in {state_file}: which "
               "direction of pod traffic do they accept?",
               "The cause: FORWARD on {node} accepts pod traffic one way only (from pods): "
               "the answers coming back are dropped."),
        why="With FORWARD's policy DROP, `-s {cluster} -j ACCEPT` lets requests out but the "
            "answers, addressed to pods, match nothing: `-d {cluster} -j ACCEPT` lets them "
            "in. " + PERSISTED_WHY,
        inject=state_with(_without_rule("forward to pods")), fix=restore_state),
    Exercise(
        name="all-cut-off", difficulty="easy",
        symptom="pods on one node reach nothing at all, not even their own node",
        fails=("pod to its gateway", "pod to pod, same node", "pod to pod, across nodes",
               "pod to pod, across nodes (back)", "large answer, across nodes",
               "pod to internet"),
        cause="the bridge {bridge} is down on {node}",
        hints=("Every pod on the node is cut off, whatever the destination. What do all its "
               "pods share?",
               "On {node}: `ip -br link show {bridge}`.",
               "The cause: the bridge {bridge} is down on {node}."),
        why="Each pod's veth is a port of {bridge}: a bridge that is down forwards nothing.",
        inject=lambda t: f"ip link set dev {BRIDGE} down",
        fix=lambda t: f"ip link set dev {BRIDGE} up",
        boot_restores=f"{BOOT_UNIT_REAPPLIES} (the bridge up)"),
    Exercise(
        name="neighbours-only", difficulty="medium",
        symptom="pods reach the pod next to them, but nothing beyond the node",
        fails=("pod to its gateway", "pod to pod, across nodes",
               "pod to pod, across nodes (back)", "large answer, across nodes",
               "pod to internet"),
        cause="{bridge} on {node} lacks the pod gateway address {gateway}",
        hints=("Pods on one bridge talk directly; for anything else they send to their "
               "default gateway. Does anyone answer at that address?",
               "In a pod, `ip route` names the gateway; on {node}, `ip -4 addr show "
               "{bridge}` shows who holds it.",
               "The cause: {bridge} on {node} lacks the pod gateway address {gateway}."),
        why="Pods route everything through {gateway}, the node's address on {bridge}; without "
            "it nobody answers their ARP requests, and the node has no route back into "
            "{pod_cidr} either.",
        inject=lambda t: f"ip addr del {bridge_address(t.node)} dev {BRIDGE}",
        fix=lambda t: f"ip addr add {bridge_address(t.node)} broadcast + dev {BRIDGE}",
        boot_restores=f"{BOOT_UNIT_REAPPLIES} (the gateway address on {BRIDGE})"),
    Exercise(
        name="big-answers-stall", difficulty="hard",
        symptom="ping and small answers get through across nodes, a large answer never does",
        fails=("large answer, across nodes",),
        cause="MTU mismatch on {node}",
        hints=("Small packets pass, large ones vanish without an error: what limits the size "
               "of a packet on a link?",
               "Compare the MTUs on {node}: `ip -o link show | grep -o '^[0-9]*: [^:@]*\\|mtu "
               "[0-9]*'`, the node's VPC link against {bridge} and the pods'.",
               "The cause: MTU mismatch on {node}: its VPC link has a smaller MTU than the "
               "pods' {pod_mtu}: full-size packets are dropped, small ones (ping) pass."),
        why="The pods (MTU {pod_mtu}) and the far end announce full-size segments; the node's "
            "VPC link takes smaller frames and silently drops the larger ones, so small "
            "answers pass and large ones stall. Give the link at least the pods' MTU.",
        inject=lambda _: f"ip link set dev {UPLINK} mtu {LOWERED_MTU}",
        fix=lambda _: f"ip link set dev {UPLINK} mtu {POD_MTU}",
        boot_restores="the node's network configuration sets its link's MTU again at boot"),
)


def by_name(exercises: Sequence[Exercise]) -> dict[str, Exercise]:
    return {exercise.name: exercise for exercise in exercises}


def find(exercises: Sequence[Exercise], name: str) -> Exercise:
    found = by_name(exercises).get(name)
    if found is None:
        raise ExerciseError(f"no exercise named {name!r}: `make exercises` lists them "
                            f"({', '.join(e.name for e in exercises)})")
    return found
