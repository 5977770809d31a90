"""The table and the failure lines, as the lab prints them and the cloud logs them."""

import io

from rich.console import Console

from bootstrap.verify.checks import lab_checks, run_checks
from bootstrap.verify.report import failure_lines, outcome_table, plain_text
from lab.cli import print_failures
from tests.verify.test_checks import INTERNET, PLAN, PODS, PUBLIC, ScriptedProber

CAUSES = {"pod to pod, across nodes": "NAT inside the cluster: worker-1",
          "pod to pod, across nodes (back)": "NAT inside the cluster: worker-2",
          "large answer, across nodes": "NAT inside the cluster: worker-1"}


def nat_inside_outcomes():
    return run_checks(ScriptedProber(nat_inside=True),
                      lab_checks(PLAN, PUBLIC, PODS, INTERNET, 80))


def test_failure_lines_name_each_failed_check_with_its_cause():
    assert failure_lines(nat_inside_outcomes(), CAUSES) == [
        "pod to pod, across nodes: expected sees 10.244.1.3, got sees 10.0.1.11. "
        "Likely cause: NAT inside the cluster: worker-1",
        "pod to pod, across nodes (back): expected sees 10.244.2.3, got sees 10.0.1.12. "
        "Likely cause: NAT inside the cluster: worker-2",
        "large answer, across nodes: expected sees 10.244.1.3, got sees 10.0.1.11. "
        "Likely cause: NAT inside the cluster: worker-1"]


def test_print_failures_prints_the_same_lines_marked():
    out = io.StringIO()
    print_failures(Console(file=out, width=300, color_system=None), nat_inside_outcomes(), CAUSES)
    assert out.getvalue().splitlines() == [f"x {line}" for line in
                                           failure_lines(nat_inside_outcomes(), CAUSES)]


def test_the_plain_table_has_every_check_and_no_markup():
    text = plain_text(outcome_table(nat_inside_outcomes(), CAUSES, title="Connectivity checks"))
    assert text.startswith("Connectivity checks")
    assert text.count("FAIL") == 3 and text.count(" pass ") == 5
    assert "[red]" not in text and "[dim]" not in text and "\x1b[" not in text
    assert all(line == line.rstrip() for line in text.splitlines())
