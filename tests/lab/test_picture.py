"""The lab's picture: the topology, each check's path and the stop mark as a graph (pure),
and that graph drawn by the real `dot` into SVG and PNG (no root needed)."""

from __future__ import annotations

import io
import re
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest
from rich.console import Console

from bootstrap.verify.checks import Check, Endpoint, Outcome, PodInfo, ProbeResult
from bootstrap.verify.diagnose import VpcFacts
from infra.plan import Settings, make_plan
from lab import cli, picture
from lab.layout import Layout, make_layout
from lab.lifecycle import LocalLab, seed_checks
from lab.picture import DrawnPath
from lab.story import Stage

PODS = [PodInfo("nginx-worker-1", "worker-1", "10.244.1.2", "web"),
        PodInfo("bash-worker-1", "worker-1", "10.244.1.3", "tools"),
        PodInfo("nginx-worker-2", "worker-2", "10.244.2.2", "web"),
        PodInfo("bash-worker-2", "worker-2", "10.244.2.3", "tools")]
SVG = "{http://www.w3.org/2000/svg}"


def layout(nodes: int = 3) -> Layout:
    return make_layout(make_plan(Settings(node_count=nodes)), "pic")


def outcomes(lab: Layout, failing: set[str]) -> list[Outcome]:
    """Every check as expected but those named in `failing`."""
    return [Outcome(check, ProbeResult(check.expect_reach != (check.name in failing),
                                       check.expect_seen), 0.1)
            for check in seed_checks(lab, PODS)]


def test_every_box_has_an_id_left_to_right():
    assert picture.element_ids(layout(), PODS) == (
        "internet", "igw", "router", "node:master", "bridge:master", "node:worker-1",
        "bridge:worker-1", "node:worker-2", "bridge:worker-2", "pod:nginx-worker-1",
        "pod:bash-worker-1", "pod:nginx-worker-2", "pod:bash-worker-2")


def test_each_check_of_the_lab_passes_the_hops_of_the_topology():
    lab = layout()
    paths = {check.name: picture.check_path(lab, PODS, check) for check in seed_checks(lab, PODS)}
    across = ("pod:bash-worker-1", "bridge:worker-1", "node:worker-1", "router",
              "node:worker-2", "bridge:worker-2", "pod:nginx-worker-2")
    assert paths == {
        "pod to its gateway": ("pod:bash-worker-1", "bridge:worker-1"),
        "pod to pod, same node": ("pod:bash-worker-1", "bridge:worker-1", "pod:nginx-worker-1"),
        "pod to pod, across nodes": across,
        "pod to pod, across nodes (back)": (
            "pod:bash-worker-2", "bridge:worker-2", "node:worker-2", "router",
            "node:worker-1", "bridge:worker-1", "pod:nginx-worker-1"),
        "large answer, across nodes": across,
        "node to pod": ("node:master", "router", "node:worker-2", "bridge:worker-2",
                        "pod:nginx-worker-2"),
        "pod to internet": ("pod:bash-worker-1", "bridge:worker-1", "node:worker-1", "router",
                            "igw", "internet"),
        "internet to pod": ("internet", "igw", "router", "node:worker-1", "bridge:worker-1",
                            "pod:nginx-worker-1"),
    }


def test_on_two_nodes_the_control_plane_runs_pods_and_a_node_reaches_its_own_pod():
    lab = layout(2)
    pods = [PodInfo("nginx-worker-1", "worker-1", "10.244.1.2", "web"),
            PodInfo("bash-worker-1", "worker-1", "10.244.1.3", "tools"),
            PodInfo("nginx-master", "master", "10.244.0.2", "web"),
            PodInfo("bash-master", "master", "10.244.0.3", "tools")]
    node_to_pod = next(c for c in seed_checks(lab, pods) if c.name == "node to pod")
    assert picture.check_path(lab, pods, node_to_pod) == (
        "node:worker-1", "router", "node:master", "bridge:master", "pod:nginx-master")
    here = Endpoint("node", "worker-1", "10.0.1.11", "worker-1")
    to_own_pod = Check("own pod", here, Endpoint(
        "pod", "nginx-worker-1", "10.244.1.2", "worker-1"), "ping")
    assert picture.check_path(lab, pods, to_own_pod) == (
        "node:worker-1", "bridge:worker-1", "pod:nginx-worker-1")


def test_an_endpoint_outside_the_picture_is_refused_by_name():
    lab = layout()
    check = seed_checks(lab, PODS)[0]
    ghost = Check("x", Endpoint("pod", "ghost", "10.244.1.9", "worker-1"),
                            check.target, "ping")
    with pytest.raises(ValueError, match="no pod named ghost"):
        picture.check_path(lab, PODS, ghost)
    service = Check("x", check.source, Endpoint("service", "kube-dns", "10.96.0.10"),
                              "dns")
    with pytest.raises(ValueError, match="service kube-dns is not in the lab's picture"):
        picture.check_path(lab, PODS, service)
    with pytest.raises(ValueError, match=r"names hops not in the lab: \['pod:ghost'\]"):
        picture.graph(lab, PODS, [DrawnPath("x", ("router", "pod:ghost"), False)])


def test_a_failed_check_is_red_with_its_cause_and_one_that_must_not_arrive_is_dashed():
    lab = layout()
    cause = "no route: the VPC route table does not send worker-2's pod CIDR to it"
    drawn = picture.check_paths(lab, PODS, outcomes(lab, {"node to pod"}),
                                {"node to pod": cause, "pod to internet": "not shown"})
    by_name = {path.label: path for path in drawn}
    assert not by_name["node to pod"].passed and by_name["node to pod"].reason == cause
    assert by_name["pod to internet"].passed and by_name["pod to internet"].reason == ""
    assert by_name["internet to pod"].must_not_arrive and by_name["internet to pod"].passed
    assert sum(not path.must_not_arrive for path in drawn) == len(drawn) - 1


def edges(source: str) -> list[str]:
    return [line.strip() for line in source.splitlines() if " -> " in line]


def test_the_graph_shows_every_address_and_each_path_along_its_wires():
    lab = layout()
    drawn = picture.check_paths(lab, PODS, outcomes(lab, {"node to pod"}), {})
    source = picture.graph(lab, PODS, drawn).source
    assert "rankdir=LR" in source
    for address in ["198.51.100.1", "198.51.100.254/24", "192.0.2.1/30", "192.0.2.2/30",
                    "10.0.1.1/24", "10.244.2.0/24 via 10.0.1.12", "10.0.1.11/24",
                    "203.0.113.11", "1:1 NAT 10.0.1.12 = 203.0.113.12", "10.244.1.1/24",
                    "pods 10.244.0.0/24", "eth0 10.244.2.3", "bash-worker-2"]:
        assert address in source, address
    red, green = picture.FAILED_COLOUR, picture.PASSED_COLOUR
    lines = edges(source)
    # Paths 3 and 5 (across nodes) share the wire router -> worker-2 with 6 (node to pod),
    # which failed: one green arrow for 3,5 and one red for 6, both pointing right.
    assert any(line.startswith("router -> \"node.worker-2\"") and 'label="3,5"' in line
               and f'color="{green}"' in line and "dir=forward" in line for line in lines)
    assert any(line.startswith("router -> \"node.worker-2\"") and 'label=6' in line
               and f'color="{red}"' in line for line in lines)
    # Path 4 goes right to left (worker-2 to the router): drawn along the wire, head back.
    assert any(line.startswith("router -> \"node.worker-2\"") and "label=4" in line
               and "dir=back" in line for line in lines)
    assert any("style=dashed" in line and "label=8" in line for line in lines)


def test_the_stopping_hop_is_marked_in_red_with_the_reason_and_no_other_is():
    lab = layout()
    trace = DrawnPath("trace bash-worker-1 -> nginx-worker-2",
                      ("pod:bash-worker-1", "bridge:worker-1", "node:worker-1", "router"),
                      passed=False, stopped_at="router", reason="no route to 10.244.2.0/24")
    source = picture.graph(lab, PODS, [trace], title="trace").source
    router = next(line for line in source.splitlines() if line.strip().startswith("router ["))
    assert "X 1 stopped here: no route to 10.244.2.0/24" in router
    assert f'color="{picture.FAILED_COLOUR}"' in router and "penwidth=3" in router
    assert source.count("stopped here") == 1 and source.count("penwidth=3") == 1
    assert 'label="lab pic: trace"' in source
    assert "trace bash-worker-1 -&gt; nginx-worker-2" in source  # in the legend, escaped
    assert len(edges(source)) == len(lab.nodes) * 2 + len(PODS) + 2 + 3  # wires, then hops


def test_a_route_missing_from_the_router_and_a_source_dest_check_are_shown_in_red():
    vpc = VpcFacts(routed={"master": True, "worker-1": True, "worker-2": False},
                   source_dest_check={"worker-1": True, "worker-2": False})
    source = picture.graph(layout(), PODS, [], vpc).source
    assert "missing: 10.244.2.0/24 via 10.0.1.12" in source
    assert source.count("source/dest check on") == 1
    worker_1 = next(line for line in source.splitlines() if "node.worker-1\" [" in line)
    assert "source/dest check on" in worker_1
    assert "10.244.1.0/24 via 10.0.1.11</TD>" in source
    assert "legend" not in source  # no paths, no legend


def test_a_route_to_the_wrong_node_is_shown_with_where_it_goes():
    vpc = VpcFacts(routed={"master": True, "worker-1": True, "worker-2": False},
                   next_hops={"10.244.2.0/24": "10.0.1.11"})
    source = picture.graph(layout(), PODS, [], vpc).source
    assert "wrong: 10.244.2.0/24 via 10.0.1.11, not 10.0.1.12" in source
    assert "missing:" not in source


def png_supported() -> bool:
    return subprocess.run(["dot", "-Tpng", "-o/dev/null"], input=b"digraph {}",
                          capture_output=True, check=False).returncode == 0


def test_render_writes_an_svg_with_the_boxes_and_addresses_and_a_png(tmp_path):
    lab = layout()
    drawn = [*picture.check_paths(lab, PODS, outcomes(lab, {"pod to internet"}),
                                  {"pod to internet": "no NAT on worker-1"}),
             DrawnPath("trace", ("pod:bash-worker-1", "bridge:worker-1"), False,
                       "bridge:worker-1", "FORWARD dropped on worker-1")]
    files = picture.render(lab, PODS, drawn, tmp_path / "sub" / "checks")
    svg = tmp_path / "sub" / "checks.svg"
    assert files[0] == svg
    root = ET.parse(svg).getroot()
    assert root.tag == f"{SVG}svg"
    text = " ".join(t.text or "" for t in root.iter(f"{SVG}text"))
    for shown in ["internet host", "VPC router", "worker-2", "nginx-worker-1", "10.0.1.12/24",
                  "203.0.113.12", "10.244.2.1/24", "eth0 10.244.1.3", "no NAT on worker-1",
                  "X 9 stopped here: FORWARD dropped on", "pod to internet"]:
        assert shown in text, shown
    ids = {g.get("id") for g in root.iter(f"{SVG}g")}
    assert set(picture.element_ids(lab, PODS)) <= ids
    if png_supported():
        assert files == [svg, svg.with_suffix(".png")]
        assert svg.with_suffix(".png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    else:
        assert files == [svg]


def test_without_dot_render_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(picture.PictureError, match="install it with scripts/install-deps"):
        picture.render(layout(), PODS, [], tmp_path / "checks")
    assert not (tmp_path / "checks.svg").exists()


def test_the_pictures_of_the_story_are_named_after_its_stages():
    slugs = [Stage(title, [], {}, VpcFacts()).slug for title in
             ["1 bridge only", "2 +FORWARD", "3 +NAT", "4 +routes", "5 -src/dst check"]]
    assert slugs == ["1-bridge-only", "2-forward", "3-nat", "4-routes", "5-src-dst-check"]
    odd = Stage("6 Übung: NAT & src/dst?", [], {}, VpcFacts()).slug  # a file name, whatever
    assert re.fullmatch(r"[a-z0-9-]+", odd), odd


def test_pictures_go_to_the_checkouts_out_directory_per_lab():
    assert picture.picture_stem("k8slab", "checks") == (
        Path(picture.__file__).resolve().parents[1] / "out" / "k8slab" / "checks")


def test_dot_reads_the_whole_graph_without_a_warning():
    lab = layout()
    drawn = [*picture.check_paths(lab, PODS, outcomes(lab, {"node to pod"}), {"node to pod": "x"}),
             DrawnPath("trace", ("internet", "igw"), False, "igw", "dropped & <gone>")]
    source = picture.graph(lab, PODS, drawn, VpcFacts({"worker-2": False}, {"master": True}),
                           title="all of it").source
    done = subprocess.run(["dot", "-Tsvg", "-o/dev/null"], input=source, capture_output=True,
                          text=True, check=False)
    assert (done.returncode, done.stderr) == (0, "")


def test_make_lab_draws_the_checks_or_says_in_one_line_why_not(tmp_path, monkeypatch):
    """cli.draw_checks reads only the lab's layout, pods and console: a plain stand-in."""
    out = io.StringIO()
    lab = cast(LocalLab, SimpleNamespace(layout=layout(), pods=PODS,
                                         console=Console(file=out, width=80)))
    monkeypatch.setattr(picture, "OUTPUT_DIR", tmp_path)
    files = cli.draw_checks(lab, "checks", outcomes(lab.layout, set()), {}, VpcFacts())
    assert files[0] == tmp_path / "pic" / "checks.svg" and files[0].exists()
    picture.show_files(lab.console, "The checks", files)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert cli.draw_checks(lab, "checks", outcomes(lab.layout, set()), {}, VpcFacts()) == []
    shown = out.getvalue()
    assert f"The checks, drawn: {files[0]}" in shown
    assert shown.count("no picture of the checks: cannot run Graphviz's dot") == 1
