"""Every verb, for every supported version, through the real executable in real namespaces."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bootstrap.cni.lab_cni import plugin
from tests.cni.conftest import GATEWAY, Node, pod_ip, sh

pytestmark = pytest.mark.root  # namespaces, veths and bridges: skipped unless root

VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def test_version_reports_exactly_what_is_implemented(node: Node) -> None:
    for version in VERSIONS:
        result = node.call_raw(node.env("VERSION", None, "", ""), f'{{"cniVersion":"{version}"}}')
        assert result.returncode == 0, result.stdout
        assert result.json["supportedVersions"] == VERSIONS


@pytest.mark.parametrize("version", VERSIONS)
def test_add_check_del_round_trip(node: Node, version: str) -> None:
    pod = node.add_pod()
    conf = node.config(version)

    added = node.call("ADD", conf, pod)

    assert added.returncode == 0, added.stdout
    result = added.json
    assert result["cniVersion"] == version
    host, container = result["interfaces"]
    assert container == {
        "name": "eth0",
        "mac": container["mac"],
        "sandbox": f"/run/netns/{pod}",
    }
    assert host["name"] in node.veths() and "sandbox" not in host
    [address] = result["ips"]
    assert address["gateway"] == GATEWAY and address["interface"] == 1
    assert ("version" in address) == (version_tuple(version) < (1, 0, 0))
    assert result["routes"] == [{"dst": "0.0.0.0/0", "gw": GATEWAY}]
    pod_links = {link["ifname"]: link for link in node.links(pod)}
    assert pod_links["eth0"]["address"] == container["mac"]
    assert "default via 10.244.1.1 dev eth0" in node.ip("route", pod=pod)
    ip = pod_ip(result)
    assert node.reservations() == {ip: [f"ctr-{pod}", "eth0", host["name"]]}

    checked = node.call("CHECK", conf | {"prevResult": result}, pod)
    if version_tuple(version) >= (0, 4, 0):
        assert checked.returncode == 0, checked.stdout
    else:
        assert checked.json["code"] == 1  # CHECK did not exist before 0.4.0

    deleted = node.call("DEL", conf | {"prevResult": result}, pod)

    assert deleted.returncode == 0, deleted.stdout
    assert deleted.stdout == ""
    assert node.reservations() == {}
    assert node.veths() == set()
    assert "eth0" not in node.link_names(pod)


@pytest.mark.parametrize("version", VERSIONS)
def test_status_and_gc_exist_from_1_1_0(node: Node, version: str) -> None:
    conf = node.config(version)
    status = node.call_raw(node.env("STATUS", None, "", ""), json.dumps(conf))
    gc_conf = conf | {"cni.dev/valid-attachments": []}
    gc = node.call_raw(node.env("GC", None, "", ""), json.dumps(gc_conf))
    if version == "1.1.0":
        assert (status.returncode, status.stdout) == (0, "")
        assert (gc.returncode, gc.stdout) == (0, "")
    else:
        assert status.json["code"] == 1 and gc.json["code"] == 1


def test_status_reports_an_exhausted_pool(node: Node) -> None:
    conf = node.config("1.1.0", subnet="10.244.1.0/30", clusterCidr="10.244.0.0/16")
    assert node.call("ADD", conf, node.add_pod()).returncode == 0

    status = node.call_raw(node.env("STATUS", None, "", ""), json.dumps(conf))

    assert status.returncode != 0 and status.json["code"] == 50


def test_gc_keeps_valid_attachments_and_removes_the_rest(node: Node) -> None:
    conf = node.config("1.1.0")
    pods = [node.add_pod() for _ in range(3)]
    results = [node.call("ADD", conf, pod).json for pod in pods]
    node.ip("link", "add", "stray0", "type", "veth", "peer", "name", "stray1")
    node.ip("link", "set", "stray0", "master", "cni0")
    keep = {"containerID": f"ctr-{pods[1]}", "ifname": "eth0"}

    gc = node.call_raw(
        node.env("GC", None, "", ""), json.dumps(conf | {"cni.dev/valid-attachments": [keep]})
    )

    assert gc.returncode == 0, gc.stdout
    kept_ip = pod_ip(results[1])
    assert set(node.reservations()) == {kept_ip}
    assert node.veths() == {results[1]["interfaces"][0]["name"]}


def test_check_reports_each_mismatch(node: Node) -> None:
    conf = node.config("1.0.0")
    pod = node.add_pod()
    result = node.call("ADD", conf, pod).json
    address = result["ips"][0]["address"]
    with_prev = conf | {"prevResult": result}

    wrong_ip = {**result, "ips": [{**result["ips"][0], "address": "10.244.1.200/24"}]}
    assert "no reservation" in _check_error(node, conf | {"prevResult": wrong_ip}, pod)
    host_veth = result["interfaces"][0]["name"]
    node.ip("link", "set", host_veth, "nomaster")
    assert "not attached" in _check_error(node, with_prev, pod)
    node.ip("link", "set", host_veth, "master", "cni0")
    wrong_mac = {**result, "interfaces": [result["interfaces"][0], {**result["interfaces"][1]}]}
    wrong_mac["interfaces"][1]["mac"] = "02:00:00:00:00:01"
    assert "has MAC" in _check_error(node, conf | {"prevResult": wrong_mac}, pod)
    node.ip("route", "del", "default", pod=pod)
    assert "default route" in _check_error(node, with_prev, pod)
    node.ip("addr", "del", address, "dev", "eth0", pod=pod)
    assert "lacks address" in _check_error(node, with_prev, pod)
    # The pod's end moved away while the host end stays: the pod side is what is missing.
    sh("ip", "netns", "add", f"{pod}-elsewhere")
    try:
        node.ip("link", "set", "eth0", "netns", f"{pod}-elsewhere", pod=pod)
        assert "container interface 'eth0' is missing" in _check_error(node, with_prev, pod)
        # Deleting one end removes the pair at once; a namespace's deletion does it later.
        sh("ip", "-n", f"{pod}-elsewhere", "link", "del", "eth0")
    finally:
        sh("ip", "netns", "del", f"{pod}-elsewhere")
    assert f"host veth {host_veth!r} is missing" in _check_error(node, with_prev, pod)
    assert "needs prevResult" in node.call("CHECK", conf, pod).json["msg"]


def _check_error(node: Node, conf: dict, pod: str) -> str:
    checked = node.call("CHECK", conf, pod)
    assert checked.returncode != 0
    assert checked.json["code"] in (7, 105)
    return checked.json["msg"]


def test_prefix_lengths_from_16_to_30_work(node: Node) -> None:
    for i, (subnet, expected) in enumerate(
        [("10.244.0.0/16", "10.244.0.2/16"), ("10.244.1.4/30", "10.244.1.6/30")]
    ):
        conf = node.config(name=f"net{i}", subnet=subnet, bridge=f"br{i}")
        added = node.call("ADD", conf, node.add_pod())
        assert added.returncode == 0, added.stdout
        assert added.json["ips"][0]["address"] == expected


def test_the_labs_network_key_is_accepted_as_cluster_cidr(node: Node) -> None:
    conf = node.config()
    del conf["clusterCidr"]
    assert node.call("ADD", conf | {"network": "10.244.0.0/16"}, node.add_pod()).returncode == 0
    outside = node.call("ADD", conf | {"network": "10.9.0.0/16"}, node.add_pod())
    assert outside.json["code"] == 7


def test_log_has_one_line_per_call_and_no_config(node: Node) -> None:
    conf = node.config(secretish="do-not-log-me")
    pod = node.add_pod()
    node.call("ADD", conf, pod)
    node.call("DEL", conf, pod)

    lines = node.log_file.read_text().splitlines()

    assert [line.split()[1:3] for line in lines] == [["ADD", f"ctr-{pod}"], ["DEL", f"ctr-{pod}"]]
    assert all(" ok " in line and line.endswith("ms") for line in lines)
    assert "do-not-log-me" not in node.log_file.read_text()


def test_a_rejected_call_is_logged_with_its_code(node: Node) -> None:
    node.call("ADD", node.config(subnet="10.244.1.0/8"), node.add_pod(), container_id="bad")

    [line] = node.log_file.read_text().splitlines()

    assert line.split()[1:3] == ["ADD", "bad"] and " error 7: invalid network" in line


def test_log_is_size_bounded(node: Node) -> None:
    node.log_file.write_bytes(b"x" * (1 << 20) + b"\n")
    conf = node.config()
    node.call("ADD", conf, node.add_pod())

    assert node.log_file.stat().st_size < 1000
    assert node.log_file.with_name(node.log_file.name + ".1").stat().st_size > 1 << 20


def test_a_second_rotation_of_the_same_full_log_keeps_the_rotated_one(tmp_path: Path) -> None:
    """Two calls that both found the log full: the later one must not move the fresh log
    over the rotated one (it finds another file at the path and leaves it)."""
    log = tmp_path / "lab-cni.log"
    log.write_bytes(b"old\n" * 300_000)
    first, second = plugin.open_log(str(log)), plugin.open_log(str(log))
    os.close(plugin.rotate_log(str(log), first))
    plugin.write_log(str(log), "after the first rotation\n")
    os.close(plugin.rotate_log(str(log), second))
    assert log.with_name(log.name + ".1").read_bytes() == b"old\n" * 300_000
    assert log.read_text() == "after the first rotation\n"


@pytest.mark.parametrize("hairpin", [True, False])
def test_mtu_and_hairpin_mode_are_applied(node: Node, hairpin: bool) -> None:
    pod = node.add_pod()
    result = node.call("ADD", node.config(mtu=1400, hairpinMode=hairpin), pod).json
    host = next(link for link in node.links() if link["ifname"] == result["interfaces"][0]["name"])
    container = next(link for link in node.links(pod) if link["ifname"] == "eth0")
    assert (host["mtu"], container["mtu"]) == (1400, 1400)
    assert host["linkinfo"]["info_slave_data"]["hairpin"] is hairpin
