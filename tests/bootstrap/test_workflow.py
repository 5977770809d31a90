"""The phase runner, with recording fake phases (kubeadm's workflow/runner_test.go)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from bootstrap.__main__ import main as bootstrap_cli
from bootstrap.errors import CommandFailed, PhaseError, UnknownPhase
from bootstrap.phases import Phase, Runner, cloud_workflow, local_workflow
from bootstrap.phases.workflow import describe
from bootstrap.remote import RunResult


@dataclass
class Recorder:
    """The fake context: phases append to `calls`; counts how often it was built."""

    calls: list[str] = field(default_factory=list)
    builds: int = 0


def recording(name: str, *children: Phase[Recorder], run_if: bool | None = None,
              fails: Exception | None = None, group: bool = False) -> Phase[Recorder]:
    def run(context: Recorder) -> None:
        context.calls.append(name)
        if fails is not None:
            raise fails
    condition: Callable[[Recorder], bool] | None = None
    if run_if is not None:
        def condition(context: Recorder) -> bool:
            context.calls.append(f"{name}?")
            return run_if
    return Phase(name, f"the {name} phase", run=None if group else run, run_if=condition,
                 phases=children)


def tree() -> list[Phase[Recorder]]:
    return [
        recording("a"),
        recording("b", recording("b1"), recording("b2", recording("deep"))),
        recording("c"),
    ]


def runner(phases: list[Phase[Recorder]] | None = None) -> tuple[Runner[Recorder], Recorder]:
    context = Recorder()

    def build() -> Recorder:
        context.builds += 1
        return context
    return Runner(phases if phases is not None else tree(), build), context


def test_paths_flatten_the_tree_in_order() -> None:
    assert runner()[0].paths() == ["a", "b", "b/b1", "b/b2", "b/b2/deep", "c"]
    assert describe(tree())[:3] == [("a", "the a phase"), ("b", "the b phase"),
                                    ("b/b1", "the b1 phase")]


def test_make_phases_lists_both_workflows_with_their_descriptions(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert bootstrap_cli(["phases"]) == 0
    local, cloud = capsys.readouterr().out.split("cloud (pulumi up):\n")
    assert [line.split()[0] for line in local.splitlines()[1:]] == [
        path for path, _ in describe(local_workflow())]
    assert "  node-network  Apply sysctls" in local
    assert [line.split()[0] for line in cloud.splitlines()] == [
        path for path, _ in describe(cloud_workflow())]


@pytest.mark.parametrize(("only", "skip", "expected"), [
    ((), (), ["a", "b", "b1", "b2", "deep", "c"]),
    (("b",), (), ["b", "b1", "b2", "deep"]),
    (("b/b2",), (), ["b2", "deep"]),
    (("c", "a"), (), ["a", "c"]),  # run order is the tree's, not the command line's
    ((), ("b",), ["a", "c"]),
    ((), ("b/b2",), ["a", "b", "b1", "c"]),
    (("b",), ("b/b1",), ["b", "b2", "deep"]),
    (("b/b1",), ("b",), []),  # skip wins over only
])
def test_only_and_skip_select_phases_with_their_children(
        only: tuple[str, ...], skip: tuple[str, ...], expected: list[str]) -> None:
    run, context = runner()
    run.run(only=only, skip=skip)
    assert context.calls == expected


def test_unknown_names_are_rejected_before_anything_runs() -> None:
    run, context = runner()
    with pytest.raises(UnknownPhase) as unknown:
        run.run(only=["a", "nope"], skip=["b/zzz"])
    assert unknown.value.unknown == ["nope", "b/zzz"]
    assert "unknown phase(s): nope, b/zzz" in str(unknown.value)
    assert "phases are: a, b, b/b1" in str(unknown.value)
    assert context.calls == [] and context.builds == 0


def test_context_is_built_once_and_only_when_a_phase_runs() -> None:
    run, context = runner()
    run.run(skip=["a", "b", "c"])
    assert context.builds == 0
    run.run()
    run.run(only=["c"])
    assert context.builds == 1


def test_failure_is_wrapped_with_the_phase_path_and_stops_the_run() -> None:
    cause = CommandFailed(RunResult("worker-1", "false", 1, "nope\n"))
    run, context = runner([recording("a"), recording("b", recording("bad", fails=cause)),
                           recording("c")])
    with pytest.raises(PhaseError) as failure:
        run.run()
    assert failure.value.path == "b/bad" and failure.value.cause is cause
    assert str(failure.value).startswith("phase b/bad: node worker-1: command exited with "
                                         "status 1: false")
    assert context.calls == ["a", "b", "bad"]


def test_run_if_false_skips_the_phase_and_its_children() -> None:
    run, context = runner([recording("a", recording("a1"), run_if=False),
                           recording("b", run_if=True)])
    assert run.run() == ["b"]
    assert context.calls == ["a?", "b?", "b"]


def test_groups_without_run_only_carry_children() -> None:
    run, context = runner([recording("g", recording("x"), group=True)])
    assert run.run() == ["g/x"]
    assert context.calls == ["x"]


def test_run_if_failure_is_wrapped_too() -> None:
    def broken(context: Recorder) -> bool:
        raise OSError("cannot tell")
    run, _ = runner([Phase("probe", "probe", run=lambda c: None, run_if=broken)])
    with pytest.raises(PhaseError, match=r"^phase probe: cannot tell$"):
        run.run()


def test_each_start_and_each_skip_is_logged_with_its_reason(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="k8s_cni_lab.phases")
    run, _ = runner([recording("a"), recording("b"), recording("c", run_if=False)])
    run.run(only=["b", "c"])
    assert [r.getMessage() for r in caplog.records] == [
        "[a] skipped: not selected by only",
        "[b] the b phase",
        "[c] skipped: does not apply to this cluster",
    ]
    caplog.clear()
    run.run(skip=["a", "b"])
    assert caplog.records[0].getMessage() == "[a] skipped: excluded by skip"


def test_invalid_trees_are_refused() -> None:
    with pytest.raises(ValueError, match="kebab-case"):
        Phase("Bad_Name", "x")
    with pytest.raises(ValueError, match="defined twice: a"):
        Runner([recording("a"), recording("a")], Recorder)


def test_local_workflow_is_wait_ssh_then_cni_then_node_network() -> None:
    never_built = Runner(local_workflow(), lambda: pytest.fail("context built"))
    assert never_built.paths() == ["wait-ssh", "cni", "node-network"]
