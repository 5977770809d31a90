"""A kubeadm-style phase workflow: named, nested, idempotent steps run in order.

Paths join nested names with "/" ("node-network/rules"). `only` selects phases and their
children, `skip` removes phases and their children and wins over `only`; both are checked
against the tree before anything runs. The shared context is built once, lazily, when the
first selected phase needs it, so a rejected command line costs nothing.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from bootstrap.errors import PhaseError, UnknownPhase
from bootstrap.remote_files import describe_paths

# Contravariant: a phase that reads only the local context also serves the cloud workflow.
ContextT = TypeVar("ContextT", contravariant=True)
DataT = TypeVar("DataT")  # the Runner builds and holds the context: invariant

log = logging.getLogger("k8s_cni_lab.phases")

_PHASE_NAME = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


@dataclass(frozen=True)
class Phase(Generic[ContextT]):
    """One step. `run` may be None for a pure group; when `run_if` returns False the phase
    and its children do not apply to this cluster and are skipped (logged)."""

    name: str
    short: str
    run: Callable[[ContextT], None] | None = None
    run_if: Callable[[ContextT], bool] | None = None
    phases: tuple[Phase[ContextT], ...] = ()

    def __post_init__(self) -> None:
        if not _PHASE_NAME.match(self.name):
            raise ValueError(f"phase name {self.name!r} is not kebab-case")


@dataclass(frozen=True)
class _Step(Generic[ContextT]):
    path: str
    phase: Phase[ContextT]


def log_noop(phase: str, node: str, reason: str) -> None:
    """A step that found nothing to do says why, so a re-run explains itself."""
    log.info("[%s] %s: no-op: %s", phase, node, reason)


def log_step(phase: str, node: str, message: str) -> None:
    log.info("[%s] %s: %s", phase, node, message)


def log_files(phase: str, node: str, written: Sequence[str], current: Sequence[str]) -> None:
    """One line for the files a phase wrote, one for those already right."""
    if written:
        log_step(phase, node, f"installed {describe_paths(written)}")
    if current:
        verb = "has" if len(current) == 1 else "have"
        log_noop(phase, node, f"{describe_paths(current)} already {verb} this content and "
                              "mode (sha256 match)")


class Runner(Generic[DataT]):
    """Runs a phase tree over a context built once by `make_context`."""

    def __init__(self, phases: Sequence[Phase[DataT]],
                 make_context: Callable[[], DataT]) -> None:
        self._steps = list(_flatten(phases, parent=""))
        paths = [step.path for step in self._steps]
        duplicates = sorted({path for path in paths if paths.count(path) > 1})
        if duplicates:
            raise ValueError(f"phase path(s) defined twice: {', '.join(duplicates)}")
        self._make_context = make_context
        self._context: DataT | None = None

    def paths(self) -> list[str]:
        return [step.path for step in self._steps]

    def run(self, *, only: Iterable[str] = (), skip: Iterable[str] = ()) -> list[str]:
        """Run the selected phases in order; returns the paths that ran. Raises UnknownPhase
        before running anything, and PhaseError("phase <path>: ...") when a phase fails."""
        excluded = self._exclusions(list(only), list(skip))
        ran: list[str] = []
        not_applicable: list[str] = []
        for step in self._steps:
            if step.path in excluded:
                log.info("[%s] skipped: %s", step.path, excluded[step.path])
                continue
            if any(_is_within(step.path, parent) for parent in not_applicable):
                continue
            if not self._applies(step):
                not_applicable.append(step.path)
                continue
            if step.phase.run is not None:
                log.info("[%s] %s", step.path, step.phase.short)
                self._run_step(step)
                ran.append(step.path)
        return ran

    def _applies(self, step: _Step[DataT]) -> bool:
        if step.phase.run_if is None:
            return True
        try:
            applies = step.phase.run_if(self._context_once())
        except Exception as error:
            raise PhaseError(step.path, error) from error
        if not applies:
            log.info("[%s] skipped: does not apply to this cluster", step.path)
        return applies

    def _run_step(self, step: _Step[DataT]) -> None:
        assert step.phase.run is not None
        context = self._context_once()
        try:
            step.phase.run(context)
        except Exception as error:
            raise PhaseError(step.path, error) from error

    def _context_once(self) -> DataT:
        if self._context is None:
            self._context = self._make_context()
        return self._context

    def _exclusions(self, only: list[str], skip: list[str]) -> dict[str, str]:
        """Each phase that will not run, with the reason (kubeadm's computePhaseRunFlags)."""
        known = self.paths()
        unknown = [name for name in [*only, *skip] if name not in known]
        if unknown:
            raise UnknownPhase(unknown, known)
        excluded: dict[str, str] = {}
        for path in known:
            if any(_is_within(path, name) for name in skip):
                excluded[path] = "excluded by skip"
            elif only and not any(_is_within(path, name) for name in only):
                excluded[path] = "not selected by only"
        return excluded


def describe(phases: Sequence[Phase[DataT]]) -> list[tuple[str, str]]:
    """(path, short help) of every phase, in run order: what `make phases` prints."""
    return [(step.path, step.phase.short) for step in _flatten(phases, parent="")]


def _flatten(phases: Sequence[Phase[DataT]], parent: str) -> Iterator[_Step[DataT]]:
    for phase in phases:
        path = f"{parent}/{phase.name}" if parent else phase.name
        yield _Step(path, phase)
        yield from _flatten(phase.phases, path)


def _is_within(path: str, ancestor: str) -> bool:
    """True for the ancestor itself and every phase nested under it."""
    return path == ancestor or path.startswith(ancestor + "/")
