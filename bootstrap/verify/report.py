"""The checks' table, the same after `pulumi up` and `make lab`, and the failures in words."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

from rich.console import Console
from rich.table import Table

from bootstrap.verify.checks import Outcome
from bootstrap.verify.diagnose import NodeFacts
from bootstrap.verify.status import NodeStatus, disagreements
from infra.plan import Plan

PASS, FAIL = "[green]pass[/]", "[red]FAIL[/]"


def outcome_table(outcomes: Sequence[Outcome], causes: Mapping[str, str],
                  title: str = "Connectivity checks") -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("check", "from", "to", "expected", "result", "time"):
        table.add_column(column, justify="right" if column == "time" else "left")
    for outcome in outcomes:
        check = outcome.check
        verdict = PASS if outcome.passed else FAIL
        result = f"{verdict} {outcome.observed}"
        if check.name in causes:
            result += f"\n[dim]{causes[check.name]}[/]"
        target = f"{check.target.ip}:{check.port}" if check.port else check.target.ip
        table.add_row(check.name, f"{check.source.name}\n[dim]{check.source.ip}[/]",
                      f"{check.target.name}\n[dim]{target}[/]",
                      check.expected, result, f"{outcome.seconds * 1000:.0f} ms")
    return table


def plain_text(table: Table, width: int = 140) -> str:
    """The table without colours, for a log line or an error (Pulumi's stderr)."""
    text = io.StringIO()
    Console(file=text, width=width, color_system=None, highlight=False).print(table)
    return "\n".join(line.rstrip() for line in text.getvalue().splitlines())


def failure_lines(outcomes: Sequence[Outcome], causes: Mapping[str, str]) -> list[str]:
    """One line per failed check: what was expected, what happened, and why."""
    return [f"{outcome.check.name}: expected {outcome.check.expected}, got {outcome.observed}. "
            f"Likely cause: {causes.get(outcome.check.name)}"
            for outcome in outcomes if not outcome.passed]


def status_table(plan: Plan, statuses: Sequence[NodeStatus],
                 kubernetes: Mapping[str, tuple[str, str]] | None = None) -> Table:
    """One row per node: what it holds, in red where it differs from the plan. On a cloud
    cluster, `kubernetes` adds each Node object's spec.podCIDR and kubelet's Ready."""
    table = Table(title="Nodes", title_justify="left")
    for column in ("node", "SSH", "plan pod CIDR", "CNI config", "cni0",
                   *(["spec.podCIDR"] if kubernetes else []), "plugin",
                   *(["kubelet"] if kubernetes else [])):
        table.add_column(column, no_wrap=True)
    table.add_column("ip_forward / FORWARD / NAT")
    for status in statuses:
        node = plan.node(status.name)
        k8s = kubernetes.get(status.name, ("", "Unknown")) if kubernetes else None
        if status.reached:
            table.add_row(status.name, "[red]no[/]", status.planned_cidr,
                          *["?"] * (len(table.columns) - 3))
            continue
        planned = status.planned_cidr
        gateway = f"{node.gateway}/{node.pod_cidr.prefixlen}"
        table.add_row(
            status.name, "[green]ok[/]", planned,
            _mark(status.conflist_cidr == planned, status.conflist_cidr or "none"),
            _mark(status.bridge_addresses == (gateway,),
                  ", ".join(status.bridge_addresses) or "none"),
            *([_mark(k8s[0] == planned, k8s[0] or "unset")] if k8s else []),
            _mark(status.plugin == "current", status.plugin),
            *([_mark(k8s[1] == "True", "Ready" if k8s[1] == "True" else k8s[1])]
              if k8s else []),
            _rules(status.facts))
    return table


def status_lines(plan: Plan, statuses: Sequence[NodeStatus],
                 kubernetes: Mapping[str, tuple[str, str]] | None = None) -> list[str]:
    """One line per node that differs from the plan, naming each difference."""
    lines = []
    for status in statuses:
        k8s = kubernetes.get(status.name, ("", "Unknown")) if kubernetes else None
        found = disagreements(status, plan.node(status.name), k8s)
        if found:
            lines.append(f"{status.name}: {'; '.join(found)}")
    return lines


def _mark(good: bool, text: str) -> str:
    return f"[green]{text}[/]" if good else f"[red]{text}[/]"


def _rules(facts: NodeFacts | None) -> str:
    if facts is None:
        return "[red]unknown[/]"
    return " / ".join([_mark(facts.forwarding, "on" if facts.forwarding else "off"),
                       _mark(facts.forward_accepts_pods,
                             "ok" if facts.forward_accepts_pods else "missing"),
                       _nat(facts)])


def _nat(facts: NodeFacts) -> str:
    if not facts.masquerades_outbound:
        return "[red]missing[/]"
    return "[red]inside cluster too[/]" if facts.masquerades_cluster else "[green]outbound[/]"


def show_status(console: Console, plan: Plan, statuses: Sequence[NodeStatus],
                kubernetes: Mapping[str, tuple[str, str]] | None = None) -> int:
    """The table, then each node's differences; 0 when every node holds what is planned."""
    console.print(status_table(plan, statuses, kubernetes))
    lines = status_lines(plan, statuses, kubernetes)
    for line in lines:
        console.print(f"[red]x[/] {line}", soft_wrap=True)
    return 1 if lines else 0
