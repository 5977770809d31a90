"""Every exercise on a real lab: inject the fault, the documented checks fail, the diagnosis
names the cause (without being told which exercise runs), the documented solution makes
every check pass and the exercise count as solved. One lab for all; each test leaves it
healthy again (or mends it) for the next."""

from __future__ import annotations

import os

import pytest

from bootstrap import exercises
from bootstrap.exercises import Exercise, Target
from bootstrap.node_network import POD_MTU
from bootstrap.verify.facts import read_persisted_state
from lab import exercise as lab_exercise
from lab import lifecycle, network, nodes
from lab.layout import lab_layout
from tests.lab.test_lab_e2e import lab_cli, lab_name

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root and network namespaces"),
]

CATALOG = lab_exercise.catalog(lab_layout("x"))  # the lab's own: by name


def mend(lab: lifecycle.LocalLab) -> None:
    """Whatever a failed test left: the plan's files and rules, routes, MTUs, pods."""
    lifecycle.bootstrap(lab, only=("cni", "node-network"))
    network.add_pod_routes(lab.layout)
    network.apply_planned_checks(lab.layout)
    for node in lab.plan.workers:
        lab.ssh.node(node.name).run(f"ip link set dev eth0 mtu {POD_MTU}", timeout=30)
    for pod in lab.pods:
        lab.stop_pod(pod)
    lab.start_pods()


def failing(lab: lifecycle.LocalLab) -> tuple[list[str], dict[str, str]]:
    outcomes, causes = lab.run_checks()
    return [o.check.name for o in outcomes if not o.passed], causes


def persistence(lab: lifecycle.LocalLab, node: str) -> list[str]:
    return exercises.persistence_problems(lab.plan, lab.plan.node(node),
                                          *read_persisted_state(lab.ssh.node(node)))


@pytest.mark.parametrize("exercise", CATALOG, ids=[e.name for e in CATALOG])
def test_the_fault_is_diagnosed_and_the_solution_solves_it(practice_lab: lifecycle.LocalLab,
                                                           exercise: Exercise) -> None:
    lab = practice_lab
    layout_exercise = exercises.find(lab_exercise.catalog(lab.layout), exercise.name)
    node = lab.plan.workers[0].name
    try:
        lab_exercise.inject(lab, layout_exercise, lab_exercise.target_for(lab, node))
        target = lab_exercise.target_for(lab, node)  # pods may have new addresses
        failed, causes = failing(lab)
        assert sorted(failed) == sorted(exercise.fails)
        cause = exercise.text(exercise.cause, target)
        assert any(cause in text for text in causes.values()), causes
        lab_exercise.run_shell(lab, layout_exercise, target, layout_exercise.fix(target))
        failed, causes = failing(lab)
        assert failed == [], causes
        verdict = exercises.judge(exercise, failed, persistence(lab, node))
        assert verdict.solved, verdict.lines
        assert ("reboot would also have fixed it" in verdict.lines[-1]) == \
            bool(exercise.boot_restores)
    except BaseException:
        mend(lab)
        raise


def test_a_kernel_only_fix_of_a_persisted_fault_is_not_solved(
        practice_lab: lifecycle.LocalLab) -> None:
    """The NAT rule added by hand: every check passes, but the state file still lacks it."""
    lab = practice_lab
    nat = exercises.find(CATALOG, "no-way-out")
    node = lab.plan.workers[0]
    target = Target(lab.plan, node, tuple(lab.pods))
    try:
        lab_exercise.inject(lab, nat, target)
        lab.ssh.node(node.name).run(
            f"iptables -t nat -A POSTROUTING -s {node.pod_cidr} ! -d {lab.plan.pod_network} "
            "-j MASQUERADE", timeout=30)
        failed, _ = failing(lab)
        verdict = exercises.judge(nat, failed, persistence(lab, node.name))
        assert failed == [] and not verdict.solved
        assert "lacks the rule 'k8s-cni-lab masquerade pod traffic leaving the cluster'" in \
            "\n".join(verdict.lines)
    finally:
        mend(lab)
        lab.ssh.node(node.name).run(
            f"iptables -t nat -D POSTROUTING -s {node.pod_cidr} ! -d {lab.plan.pod_network} "
            "-j MASQUERADE", timeout=30, check=False)


def test_the_learners_loop_on_the_command_line_and_its_bad_inputs() -> None:
    """Each step a new process, as `make` runs them: a refused name, an exercise that builds
    the lab, a second one refused, a hint, check (not yet), the fix, check (solved), a lab
    broken by hand refused, and `down` taking the open exercise's record with the lab."""
    name = lab_name()
    record = nodes.lab_dir(name) / "exercise.json"
    try:
        unknown = lab_cli(name, "exercise", "nope")
        assert unknown.returncode == 1 and unknown.stdout.count("\n") == 1
        assert "no exercise named 'nope'" in unknown.stdout and not nodes.lab_dir(name).exists()
        started = lab_cli(name, "exercise", "all-cut-off")
        assert started.returncode == 0, started.stdout + started.stderr
        assert "FAIL" in started.stdout
        assert "Symptom: pods on one node reach nothing at all" in started.stdout
        assert "is down" not in started.stdout and "Likely cause" not in started.stdout
        assert f"--name {name} enter worker-1 nginx-worker-1" in started.stdout
        again = lab_cli(name, "exercise", "no-way-out")
        assert again.returncode == 1 and "exercise all-cut-off is still open" in again.stdout
        assert lab_cli(name, "hint").stdout.startswith("hint 1/3: ")
        unsolved = lab_cli(name, "check")
        assert unsolved.returncode == 1 and "exercise all-cut-off: not solved yet" in \
            unsolved.stdout and "Likely cause" not in unsolved.stdout
        assert "ip link set dev cni0 up" in lab_cli(name, "solution").stdout
        lab_cli(name, "enter", "worker-1", "-c", "ip link set dev cni0 up")
        solved = lab_cli(name, "check")
        assert solved.returncode == 0 and "exercise all-cut-off: solved" in solved.stdout
        assert "note: a reboot would also have fixed it" in solved.stdout
        assert not record.exists()
        lab_cli(name, "enter", "worker-2", "-c", "sysctl -q -w net.ipv4.ip_forward=0")
        refused = lab_cli(name, "exercise", "no-way-out")
        assert refused.returncode == 1 and "checks do not all pass already" in refused.stdout
        assert not record.exists()
        lab_cli(name, "enter", "worker-2", "-c", "sysctl -q -w net.ipv4.ip_forward=1")
        assert lab_cli(name, "exercise", "stuck-on-node").returncode == 0 and record.exists()
    finally:
        lab_cli(name, "down")
    assert not record.exists() and not nodes.lab_dir(name).exists()
    no_hint = lab_cli(name, "hint")
    assert no_hint.returncode == 1 and "no exercise is open" in no_hint.stdout
    assert "Traceback" not in no_hint.stdout + no_hint.stderr
