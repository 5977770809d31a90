"""The exercises as data: the catalog, hints that tell a little more each time, the verdict
and the persistence judgement (pure: no node, no root)."""

from __future__ import annotations

import json

import pytest

from bootstrap import exercises
from bootstrap.exercises import NODE_EXERCISES, Target, judge, persistence_problems
from bootstrap.node_network import cni_conflist, desired_state, render_state
from bootstrap.verify.checks import Endpoint, PodInfo, lab_checks
from infra.plan import make_plan
from lab.exercise import catalog
from lab.layout import make_layout

PLAN = make_plan()
WORKER = PLAN.workers[0]
PODS = (PodInfo("nginx-worker-1", "worker-1", "10.244.1.2", "web"),
        PodInfo("bash-worker-1", "worker-1", "10.244.1.3", "tools"))
TARGET = Target(PLAN, WORKER, PODS)
EVERY = catalog(make_layout(PLAN, "lab"))
CHECK_NAMES = {check.name for check in lab_checks(
    PLAN, {n.name: "203.0.113.1" for n in PLAN.nodes},
    [*PODS, PodInfo("nginx-worker-2", "worker-2", "10.244.2.2", "web"),
     PodInfo("bash-worker-2", "worker-2", "10.244.2.3", "tools")],
    Endpoint("internet", "internet", "198.51.100.1"), 80)}
# Words that would give a cause away in a symptom.
CAUSE_WORDS = ("forward", "nat", "masquerade", "mtu", "route", "bridge", "cidr", "subnet",
               "gateway", "sysctl", "iptables", "conflist", "down", "missing", "mismatch",
               "source", "destination", "ebtables")


def test_the_catalog_has_the_faults_each_once_with_three_hints():
    names = [exercise.name for exercise in EVERY]
    assert len(names) == len(set(names)) >= 13
    assert all(len(exercise.hints) == exercises.HINT_COUNT for exercise in EVERY)
    assert all(set(exercise.fails) <= CHECK_NAMES and exercise.fails for exercise in EVERY)
    assert {e.where for e in NODE_EXERCISES} == {"node"}  # shell on any node, cloud too


@pytest.mark.parametrize("exercise", EVERY, ids=[e.name for e in EVERY])
def test_the_symptom_and_the_first_hints_do_not_name_the_cause(exercise):
    cause = exercise.text(exercise.cause, TARGET)
    for shown in (exercise.name, exercise.symptom):
        assert not any(word in shown.lower() for word in CAUSE_WORDS), shown
    first, second, last = (exercises.hint(exercise, TARGET, shown) for shown in range(3))
    assert cause not in first and cause not in second
    assert cause in last and last.startswith("hint 3/3: The cause: ")
    assert cause in exercises.solution(exercise, TARGET)


def test_hints_come_in_order_then_point_at_the_solution():
    forwarding = exercises.find(EVERY, "stuck-on-node")
    texts = [exercises.hint(forwarding, TARGET, shown) for shown in range(5)]
    assert [text[:8] for text in texts[:3]] == ["hint 1/3", "hint 2/3", "hint 3/3"]
    assert texts[3] == texts[4] == ("no more hints for stuck-on-node: `make solution` shows "
                                    "the fix and why")


def test_an_unknown_exercise_is_one_line_naming_the_list():
    with pytest.raises(exercises.ExerciseError, match=r"^no exercise named 'nat': .make "
                                                      r"exercises. lists them \(stuck-on-node"):
        exercises.find(EVERY, "nat")


def plan_files() -> tuple[str, str]:
    return render_state(desired_state(PLAN, WORKER)), json.dumps(cni_conflist(PLAN, WORKER))


def test_the_plans_files_persist_nothing_wrong():
    assert persistence_problems(PLAN, WORKER, *plan_files()) == []


def test_each_persisted_fault_is_named_by_what_boot_would_bring_back():
    state, conflist = plan_files()
    for name in ("quiet-neighbours", "no-way-out", "wrong-sender", "no-reply"):
        injected = exercises.find(EVERY, name).inject(TARGET)
        broken = injected.split("<<'EOF'\n")[1].split("\nEOF")[0]  # the file it writes
        problems = persistence_problems(PLAN, WORKER, broken, conflist)
        assert problems and all(p.startswith("/etc/k8s-cni-lab/node-network.json ")
                                for p in problems), name
    seed = exercises.find(EVERY, "wrong-sender").inject(TARGET)
    assert "has a rule the plan has not: -s 10.244.1.0/24 ! -o cni0 -j MASQUERADE" in "\n".join(
        persistence_problems(PLAN, WORKER, seed.split("<<'EOF'\n")[1].split("\nEOF")[0],
                             conflist))
    moved = conflist.replace("10.244.1.0/24", "10.244.255.0/24")
    assert persistence_problems(PLAN, WORKER, state, moved) == [
        "/etc/cni/net.d/10-lab-cni.conflist gives pods 10.244.255.0/24, the plan 10.244.1.0/24"]
    assert persistence_problems(PLAN, WORKER, None, conflist) == [
        "/etc/k8s-cni-lab/node-network.json is missing or unreadable"]


def test_the_verdict_wants_every_check_and_the_persisted_state():
    nat = exercises.find(EVERY, "no-way-out")
    assert not judge(nat, ["pod to internet"], []).solved
    kept_by_hand = judge(nat, [], ["/etc/k8s-cni-lab/node-network.json lacks the rule x"])
    assert not kept_by_hand.solved and "boot unit would bring the fault back" in \
        kept_by_hand.lines[0]
    assert judge(nat, [], []).lines == ("exercise no-way-out: solved",)


def test_a_kernel_only_fault_notes_that_a_reboot_would_have_fixed_it():
    verdict = judge(exercises.find(EVERY, "stuck-on-node"), [], [])
    assert verdict.solved and verdict.lines[1].startswith(
        "note: a reboot would also have fixed it, because the boot unit re-applies")
