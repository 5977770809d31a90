"""A packet trace shown: one row per hop, in the style of the checks' table, the stopping
hop in red; or, without a kernel trace, the rule counters; and the line saying where and
why it stopped. The same for the local lab and a cloud stack."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from bootstrap.verify.checks import Check
from bootstrap.verify.trace import Hop, TraceResult, Verdict, route_summary

ARROWS = {"request": "→", "answer": "←"}


def trace_table(check: Check, result: TraceResult) -> Table:
    """One row per hop, in the style of the checks' table; the stopping hop in red."""
    target = f"{check.target.ip}:{check.port}" if check.port else check.target.ip
    table = Table(title=f"Trace: {check.source.name} → {check.target.name} "
                        f"({'HTTP' if check.method == 'http' else check.method} {target})",
                  title_justify="left", show_lines=True, expand=True)
    table.add_column("#", no_wrap=True)
    table.add_column("hop", no_wrap=True)
    table.add_column("in → out", ratio=2)
    table.add_column("route", ratio=2)
    table.add_column("addresses", ratio=2, min_width=len("203.0.113.11 → 198.51.100.1"))
    table.add_column("rules matched (table: rule as iptables -S prints it)", ratio=5)
    stop = result.stop
    for number, hop in enumerate(result.hops, 1):
        here = stop is not None and stop.place == hop.place and stop.direction == hop.direction
        ports = [f" (port {port})" if port and port != name else ""
                 for port, name in zip(hop.bridge_ports, (hop.inbound, hop.outbound), strict=True)]
        rules = "\n".join(_rule_text(verdict) for verdict in hop.rules) or "[dim]none[/]"
        table.add_row(f"{number} {ARROWS[hop.direction]}",
                      f"[red]{hop.place}[/]" if here else hop.place,
                      f"{hop.inbound or '(sent here)'}{ports[0]} → {_outbound(hop)}{ports[1]}",
                      route_summary(hop.route), _addresses(hop), rules)
    return table


def _rule_text(verdict: Verdict) -> str:
    text = "• " + verdict.describe().replace("[", "\\[")
    return f"[red]{text}[/]" if verdict.drops else text


def _outbound(hop: Hop) -> str:
    """The interface it left through; where no traced hook saw it leave (a namespace without
    a filter table), the route's device, said so."""
    if hop.outbound:
        return hop.outbound
    words = hop.route.split()
    if "dev" in words[:-1] and words[0] != "local":
        return f"{words[words.index('dev') + 1]} [dim](route)[/]"
    return "-"


def _addresses(hop: Hop) -> str:
    before = f"{hop.before[0]} → {hop.before[1]}"
    if not hop.translated:
        return before
    return f"{before}\n[yellow]NAT: {hop.after[0]} → {hop.after[1]}[/]"


def print_trace(console: Console, check: Check, result: TraceResult) -> None:
    """The hops (or, without a kernel trace, the counters), where it stopped, the notes."""
    console.print(counter_table(result) if result.counted else trace_table(check, result))
    console.print(verdict_line(result), soft_wrap=True)
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}", soft_wrap=True)


def counter_table(result: TraceResult) -> Table:
    table = Table(title="Rule counters that rose during the probe (not a trace)",
                  title_justify="left", show_lines=True)
    table.add_column("namespace", no_wrap=True)
    table.add_column("rules (table: rule as iptables -S prints it)")
    for place, rules in result.counted.items():
        table.add_row(place, "\n".join(f"• {rule}".replace("[", "\\[") for rule in rules))
    return table


def verdict_line(result: TraceResult) -> str:
    if result.arrived:
        return "[green]arrived[/]: every hop passed it on"
    assert result.stop is not None
    how = "" if result.stop.traced else " [dim](not traced: from the nodes' configuration)[/]"
    return f"[red]stopped at {result.stop.place}[/] ({result.stop.direction}): " \
           f"{result.stop.reason}{how}"
