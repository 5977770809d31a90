"""The checks' table, the same after `pulumi up` and `make lab`, and the failures in words."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

from rich.console import Console
from rich.table import Table

from bootstrap.verify.checks import Outcome

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
