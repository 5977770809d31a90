"""The lab's topology as a picture, with packets' paths drawn on it (Graphviz's `dot`).

Hops run left to right, as a packet from the internet goes: internet host, internet gateway,
VPC router, nodes, their cni0 bridges, pods; every box shows its addresses. A path is a
chain of coloured arrows (green: as expected, red: not), numbered and listed in a legend; the
hop where a packet stopped gets a red border and a "stopped here" line with the reason.

Building the graph is pure (`graph`, `check_path`, `check_paths`); `render` runs `dot` once.
An element id names one box: "internet", "igw", "router", "node:<name>", "bridge:<name>"
(that node's cni0) and "pod:<name>".
"""

from __future__ import annotations

import html
import subprocess
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import graphviz
from rich.console import Console

from bootstrap.verify.checks import Check, Endpoint, Outcome, PodInfo
from bootstrap.verify.diagnose import VpcFacts
from lab.layout import (
    IGW_INTERNET_SIDE,
    INTERNET_HOST,
    LabNode,
    Layout,
    router_igw_addresses,
)

INTERNET, IGW, ROUTER = "internet", "igw", "router"
# Where `make lab` and `python -m lab check` draw the checks: in the checkout, beside the
# code, so the picture outlives the lab (whose own directory `make down` removes).
OUTPUT_DIR = Path(__file__).resolve().parents[1] / "out"
PASSED_COLOUR, FAILED_COLOUR, LINK_COLOUR = "#1a7f37", "#cf222e", "#8c959f"
STOP_FILL = "#ffebe9"
REASON_WIDTH = 48  # characters per line of a reason in a box or the legend


class PictureError(Exception):
    """`dot` is missing or failed: the picture is a bonus, so callers note it and go on."""


@dataclass(frozen=True)
class DrawnPath:
    label: str  # "pod to pod, across nodes" or "trace bash-worker-1 -> nginx-worker-2"
    hops: tuple[str, ...]  # element ids, in the order the packet passed them
    passed: bool  # arrived, or as a check expects (green); or not (red)
    stopped_at: str | None = None  # the element id of the hop where it stopped
    reason: str = ""  # why it stopped (or failed), shown at the stop mark and in the legend
    must_not_arrive: bool = False  # a check that passes when nothing arrives: drawn dashed


def picture_stem(lab: str, what: str) -> Path:
    """out/<lab>/<what>: render() adds .svg and .png."""
    return OUTPUT_DIR / lab / what


# -- element ids and paths (pure) ----------------------------------------------------------

def element_ids(layout: Layout, pods: Sequence[PodInfo]) -> tuple[str, ...]:
    """Every box of the picture, left to right, node by node."""
    per_node = [f"{kind}:{node.name}" for node in layout.nodes for kind in ("node", "bridge")]
    return (INTERNET, IGW, ROUTER, *per_node, *(f"pod:{pod.name}" for pod in pods))


def _towards_internet(layout: Layout, pods: Sequence[PodInfo], element: str) -> list[str]:
    """The element and every hop above it, up to the internet host: the topology is a tree."""
    kind, _, name = element.partition(":")
    if kind == "pod":
        return [element, *_towards_internet(layout, pods, f"bridge:{_pod(pods, name).node}")]
    if kind == "bridge":
        return [element, f"node:{name}", ROUTER, IGW, INTERNET]
    if kind == "node":
        return [element, ROUTER, IGW, INTERNET]
    outside = [ROUTER, IGW, INTERNET]
    return outside[outside.index(element):]


def _pod(pods: Sequence[PodInfo], name: str) -> PodInfo:
    for pod in pods:
        if pod.name == name:
            return pod
    raise ValueError(f"no pod named {name} in the lab (its pods: "
                     f"{', '.join(pod.name for pod in pods)})")


def endpoint_element(layout: Layout, pods: Sequence[PodInfo], endpoint: Endpoint) -> str:
    """The box an endpoint of a check is: a pod, a node (its private or public address), a
    node's cni0 (the pod's gateway), or the internet host."""
    if endpoint.kind == "internet":
        return INTERNET
    if endpoint.kind == "pod":
        return f"pod:{_pod(pods, endpoint.name).name}"
    for node in layout.nodes:
        if endpoint.kind == "node" and endpoint.node == node.name:
            if endpoint.ip == str(node.planned.gateway):
                return f"bridge:{node.name}"
            return f"node:{node.name}"
    raise ValueError(f"{endpoint.kind} {endpoint.name} is not in the lab's picture")


def check_path(layout: Layout, pods: Sequence[PodInfo], check: Check) -> tuple[str, ...]:
    """The hops a check's packet is meant to pass, from its source up the tree to the first
    hop it shares with its target, then down to the target."""
    up = _towards_internet(layout, pods, endpoint_element(layout, pods, check.source))
    down = _towards_internet(layout, pods, endpoint_element(layout, pods, check.target))
    turn = next(hop for hop in up if hop in down)
    return (*up[:up.index(turn) + 1], *reversed(down[:down.index(turn)]))


def check_paths(layout: Layout, pods: Sequence[PodInfo], outcomes: Sequence[Outcome],
                causes: Mapping[str, str]) -> list[DrawnPath]:
    """Each check's expected path, green when the check passed, red with its likely cause
    when not (a check says whether a packet arrived, not where it stopped)."""
    return [DrawnPath(label=outcome.check.name,
                      hops=check_path(layout, pods, outcome.check),
                      passed=outcome.passed,
                      reason="" if outcome.passed else causes.get(outcome.check.name, ""),
                      must_not_arrive=not outcome.check.expect_reach)
            for outcome in outcomes]


# -- the graph (pure) ----------------------------------------------------------------------

def _dot_name(element: str) -> str:
    """A node name for DOT: graphviz reads "a:b" in an edge as node a, port b."""
    return element.replace(":", ".")


@dataclass(frozen=True)
class _Box:
    title: str
    lines: list[str]  # addresses, one a line
    alerts: list[str] = field(default_factory=list)  # what differs from the plan, in red


def _label(box: _Box, stops: Sequence[str]) -> str:
    """An HTML-like label: the name in bold, one address a line, the alerts, then any stop
    marks, white on red."""
    rows = [f"<TR><TD><B>{_escape(box.title)}</B></TD></TR>"]
    rows += [f'<TR><TD ALIGN="LEFT">{_escape(line)}</TD></TR>' for line in box.lines]
    rows += [f'<TR><TD ALIGN="LEFT"><FONT COLOR="{FAILED_COLOUR}"><B>{_escape(alert)}</B>'
             "</FONT></TD></TR>" for alert in box.alerts]
    rows += [f'<TR><TD ALIGN="LEFT" BALIGN="LEFT" BGCOLOR="{FAILED_COLOUR}"><FONT COLOR="white">'
             f"<B>{_wrapped(stop)}</B></FONT></TD></TR>" for stop in stops]
    return f'<<TABLE BORDER="0" CELLSPACING="0" CELLPADDING="1">{"".join(rows)}</TABLE>>'


def _escape(text: str) -> str:
    return html.escape(text, quote=False)


def _wrapped(text: str) -> str:
    return "<BR/>".join(_escape(line) for line in textwrap.wrap(text, REASON_WIDTH))


def _misrouted(node: LabNode, vpc: VpcFacts) -> str:
    cidr, planned = node.planned.pod_cidr, node.planned.private_ip
    wrong = vpc.next_hops.get(str(cidr))
    return f"wrong: {cidr} via {wrong}, not {planned}" if wrong else \
        f"missing: {cidr} via {planned}"


def _boxes(layout: Layout, pods: Sequence[PodInfo], vpc: VpcFacts) -> dict[str, _Box]:
    """Each element's box: its name, its addresses, and what the VPC does differently from
    the plan (a pod route missing, a node's source/destination check on)."""
    router_side, igw_side = router_igw_addresses()
    nat = [f"1:1 NAT {node.planned.private_ip} = {node.public_ip}" for node in layout.nodes]
    routes = {node.name: f"{node.planned.pod_cidr} via {node.planned.private_ip}"
              for node in layout.nodes}
    missing = {name for name, present in vpc.routed.items() if not present}
    boxes = {
        INTERNET: _Box("internet host", [f"{INTERNET_HOST.ip}"]),
        IGW: _Box("internet gateway", [f"wan {IGW_INTERNET_SIDE}", f"vpc {igw_side}", *nat]),
        ROUTER: _Box("VPC router", [f"vpc0 {layout.router_ip}", f"igw0 {router_side}",
                                    "route table:",
                                    *(route for name, route in routes.items()
                                      if name not in missing),
                                    f"0.0.0.0/0 via {igw_side.ip}"],
                     [_misrouted(node, vpc) for node in layout.nodes if node.name in missing]),
    }
    prefix = layout.plan.subnet.prefixlen
    for node in layout.nodes:
        planned = node.planned
        boxes[f"node:{node.name}"] = _Box(
            node.name, [f"eth0 {planned.private_ip}/{prefix}", f"public {node.public_ip}"],
            ["source/dest check on"] if vpc.source_dest_check.get(node.name) else [])
        boxes[f"bridge:{node.name}"] = _Box("cni0", [
            f"{planned.gateway}/{planned.pod_cidr.prefixlen}", f"pods {planned.pod_cidr}"])
    for pod in pods:
        boxes[f"pod:{pod.name}"] = _Box(pod.name, [f"eth0 {pod.ip}"])
    return boxes


def _stop_marks(paths: Sequence[DrawnPath]) -> dict[str, list[str]]:
    """element id -> the "stopped here" lines of the paths that stopped there."""
    stops: dict[str, list[str]] = {}
    for number, path in enumerate(paths, 1):
        if path.stopped_at:
            stops.setdefault(path.stopped_at, []).append(
                f"X {number} stopped here" + (f": {path.reason}" if path.reason else ""))
    return stops


def graph(layout: Layout, pods: Sequence[PodInfo], paths: Sequence[DrawnPath],
          vpc: VpcFacts | None = None, title: str = "") -> graphviz.Digraph:
    """The topology, the paths on it and their legend, under "lab <name>: <title>". `vpc`,
    when given, is what the router really does: a missing pod route or a source/destination
    check is marked in red (without it, the boxes show the plan)."""
    known = set(element_ids(layout, pods))
    for path in paths:
        unknown = [hop for hop in (*path.hops, path.stopped_at) if hop and hop not in known]
        if unknown:
            raise ValueError(f"path {path.label!r} names hops not in the lab: {unknown}")
    dot = graphviz.Digraph(f"lab {layout.lab}", graph_attr={
        "rankdir": "LR", "ranksep": "0.9", "nodesep": "0.25", "fontname": "Helvetica",
        "label": f"lab {layout.lab}" + (f": {title}" if title else ""),
        "labelloc": "t", "labeljust": "l"})
    dot.attr("node", shape="box", style="rounded,filled", fillcolor="white",
             fontname="Helvetica", fontsize="11", margin="0.08,0.04")
    dot.attr("edge", fontname="Helvetica", fontsize="10")
    _add_boxes(dot, layout, pods, _boxes(layout, pods, vpc or VpcFacts()), _stop_marks(paths))
    _links(dot, layout, pods)
    _path_edges(dot, layout, pods, paths)
    if paths:
        dot.node("legend", _legend(paths), shape="plaintext", style="")
    return dot


def _add_boxes(dot: graphviz.Digraph, layout: Layout, pods: Sequence[PodInfo],
               boxes: Mapping[str, _Box], stops: Mapping[str, list[str]]) -> None:
    """The boxes, the VPC's and each node's framed together; a stopping hop in red."""
    def add(target: graphviz.Digraph, element: str) -> None:
        marked = stops.get(element, [])
        stop_style = {"color": FAILED_COLOUR, "penwidth": "3", "fillcolor": STOP_FILL}
        target.node(_dot_name(element), _label(boxes[element], marked), id=element,
                    **(stop_style if marked else {}))

    add(dot, INTERNET)
    add(dot, IGW)
    with dot.subgraph(name="cluster_vpc") as vpc:
        vpc.attr(label=f"VPC {layout.plan.vpc}, subnet {layout.plan.subnet}", style="dashed",
                 color=LINK_COLOUR, fontname="Helvetica")
        add(vpc, ROUTER)
        for node in reversed(layout.nodes):  # dot stacks a rank's boxes bottom-up in LR
            with vpc.subgraph(name=f"cluster_{node.name}") as frame:
                frame.attr(label=f"{node.planned.role} {node.name} (namespace "
                                 f"{node.namespace})",
                           style="rounded", color=LINK_COLOUR, fontsize="10")
                add(frame, f"node:{node.name}")
                add(frame, f"bridge:{node.name}")
                for pod in (pod for pod in pods if pod.node == node.name):
                    add(frame, f"pod:{pod.name}")


def _links(dot: graphviz.Digraph, layout: Layout, pods: Sequence[PodInfo]) -> None:
    """The wires: they alone place the boxes in ranks, left to right."""
    link = {"color": LINK_COLOUR, "dir": "none", "penwidth": "1.5"}
    dot.edge(INTERNET, IGW, **link)
    dot.edge(IGW, ROUTER, **link)
    for node in reversed(layout.nodes):
        dot.edge(ROUTER, _dot_name(f"node:{node.name}"), **link)
        dot.edge(_dot_name(f"node:{node.name}"), _dot_name(f"bridge:{node.name}"), **link)
    for pod in pods:
        dot.edge(_dot_name(f"bridge:{pod.node}"), _dot_name(f"pod:{pod.name}"), **link)


def _path_edges(dot: graphviz.Digraph, layout: Layout, pods: Sequence[PodInfo],
                paths: Sequence[DrawnPath]) -> None:
    """One arrow per wire, direction and verdict, labelled with the numbers of the paths it
    carries. Each arrow is laid along its wire, left to right, with its head where the
    packet went: drawn against the ranks, dot would loop it around the boxes."""
    chains = [_towards_internet(layout, pods, element) for element in element_ids(layout, pods)]
    left_of = {hop: up for chain in chains for hop, up in pairwise(chain)}
    carried: dict[tuple[str, str, bool, bool, bool], list[str]] = {}
    for number, path in enumerate(paths, 1):
        for start, end in pairwise(path.hops):
            rightwards = left_of.get(end) == start
            wire = (start, end) if rightwards else (end, start)
            key = (*wire, rightwards, path.passed, path.must_not_arrive)
            carried.setdefault(key, []).append(str(number))
    for (left, right, rightwards, passed, dashed), numbers in carried.items():
        colour = PASSED_COLOUR if passed else FAILED_COLOUR
        dot.edge(_dot_name(left), _dot_name(right), label=",".join(numbers), color=colour,
                 fontcolor=colour, penwidth="2.2", style="dashed" if dashed else "solid",
                 dir="forward" if rightwards else "back", arrowsize="0.8")


def _legend(paths: Sequence[DrawnPath]) -> str:
    # The key spans the number and label columns only, so it never widens the numbers'.
    rows = [f'<TR><TD COLSPAN="2" ALIGN="LEFT">{key}</TD><TD></TD></TR>'
            for key in ("<B>paths</B>: green as expected, red not;", "dashed: must not arrive")]
    for number, path in enumerate(paths, 1):
        colour = PASSED_COLOUR if path.passed else FAILED_COLOUR
        verdict = "pass" if path.passed else "FAIL"
        note = (f'<FONT COLOR="{FAILED_COLOUR}">{_wrapped(path.reason)}</FONT>'
                if path.reason else "")
        rows.append(f'<TR><TD ALIGN="RIGHT"><FONT COLOR="{colour}"><B>{number}</B></FONT></TD>'
                    f'<TD ALIGN="LEFT"><FONT COLOR="{colour}"><B>{verdict}</B></FONT> '
                    f"{_escape(path.label)}</TD>"
                    f'<TD ALIGN="LEFT" BALIGN="LEFT">{note}</TD></TR>')
    return (f'<<TABLE BORDER="1" CELLBORDER="0" CELLSPACING="2" COLOR="{LINK_COLOUR}">'
            f'{"".join(rows)}</TABLE>>')


# -- drawing (runs dot) --------------------------------------------------------------------

def render(layout: Layout, pods: Sequence[PodInfo], paths: Sequence[DrawnPath], stem: Path,
           *, vpc: VpcFacts | None = None, title: str = "") -> list[Path]:
    """Write stem.svg, and stem.png when this `dot` can draw PNG, in one run of dot (one
    layout); returns the files written."""
    source = graph(layout, pods, paths, vpc, title).source
    stem.parent.mkdir(parents=True, exist_ok=True)
    svg, png = stem.with_suffix(".svg"), stem.with_suffix(".png")
    try:
        _dot(source, ["-Tsvg", f"-o{svg}", "-Tpng", f"-o{png}"])
        return [svg, png]
    except PictureError:
        png.unlink(missing_ok=True)
    _dot(source, ["-Tsvg", f"-o{svg}"])  # a dot without PNG support draws SVG still
    return [svg]


def _dot(source: str, outputs: Sequence[str]) -> None:
    try:
        done = subprocess.run(["dot", *outputs], input=source, capture_output=True, text=True,
                              check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise PictureError(f"cannot run Graphviz's dot ({error}): install it with "
                           "scripts/install-deps") from None
    if done.returncode != 0:
        raise PictureError(f"dot failed: {done.stderr.strip().splitlines()[-1:]}")


def show_files(console: Console, what: str, files: Sequence[Path]) -> None:
    """Where the pictures are: each SVG (open it in a browser), and the PNGs beside them."""
    here = Path.cwd()
    svgs = [str(file.relative_to(here)) if file.is_relative_to(here) else str(file)
            for file in files if file.suffix == ".svg"]
    if svgs:
        beside = "each" if len(svgs) > 1 else "it"
        pngs = f" (and a .png beside {beside})" if any(f.suffix == ".png" for f in files) else ""
        console.print(f"{what}, drawn: {', '.join(svgs)}{pngs}", soft_wrap=True)
