"""Traffic, concurrency, DEL tolerance and address reuse on one simulated node."""

from __future__ import annotations

import json

import pytest

from tests.cni.conftest import Node, pod_ip, sh

pytestmark = pytest.mark.root  # namespaces, veths and bridges: skipped unless root

CONCURRENT = 64


def test_pods_on_one_node_reach_each_other_through_the_bridge(node: Node) -> None:
    conf = node.config()
    first, second = node.add_pod(), node.add_pod()
    first_ip = pod_ip(node.call("ADD", conf, first).json)
    second_ip = pod_ip(node.call("ADD", conf, second).json)

    ping = sh("ip", "netns", "exec", first, "ping", "-c", "2", "-W", "2", second_ip, check=False)
    back = sh("ip", "netns", "exec", second, "ping", "-c", "1", "-W", "2", first_ip, check=False)
    gateway = sh("ip", "netns", "exec", first, "ping", "-c", "1", "-W", "2", "10.244.1.1")

    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert back.returncode == 0, back.stdout + back.stderr
    assert gateway.returncode == 0


def test_64_concurrent_adds_then_64_concurrent_dels(node: Node) -> None:
    conf = node.config()
    pods = [node.add_pod() for _ in range(CONCURRENT)]

    adds = [node.spawn("ADD", conf, pod) for pod in pods]
    outputs = [process.communicate() for process in adds]

    assert [p.returncode for p in adds] == [0] * CONCURRENT, outputs
    ips = [pod_ip(json.loads(out)) for out, _ in outputs]
    assert len(set(ips)) == CONCURRENT
    reservations = node.reservations()
    assert sorted(reservations) == sorted(ips)
    assert {r[0] for r in reservations.values()} == {f"ctr-{pod}" for pod in pods}
    assert len(node.veths()) == CONCURRENT

    dels = [node.spawn("DEL", conf, pod) for pod in pods]
    outputs = [process.communicate() for process in dels]

    assert [p.returncode for p in dels] == [0] * CONCURRENT, outputs
    assert node.reservations() == {}
    assert node.veths() == set()


def test_racing_adds_of_one_attachment_reserve_it_once(node: Node) -> None:
    """The same container ID and interface, ADDed at once into different pods: the store's
    lock lets exactly one reserve; the others are duplicates and leave nothing."""
    conf = node.config()
    pods = [node.add_pod() for _ in range(16)]
    adds = [node.spawn("ADD", conf, pod, container_id="racer") for pod in pods]
    outputs = [process.communicate() for process in adds]

    codes = sorted(0 if p.returncode == 0 else json.loads(out)["code"]
                   for p, (out, _) in zip(adds, outputs, strict=True))
    assert codes == [0] + [101] * 15, outputs
    assert [owner for owner, *_ in node.reservations().values()] == ["racer"]
    assert len(node.veths()) == 1


def test_del_succeeds_without_a_netns_and_releases_the_address(node: Node) -> None:
    conf = node.config()
    gone, unset = node.add_pod(), node.add_pod()
    node.call("ADD", conf, gone)
    node.call("ADD", conf, unset)
    sh("ip", "netns", "del", gone)

    after_netns_deleted = node.call("DEL", conf, gone)
    without_cni_netns = node.call("DEL", conf, None, container_id=f"ctr-{unset}")

    assert after_netns_deleted.returncode == 0, after_netns_deleted.stdout
    assert without_cni_netns.returncode == 0, without_cni_netns.stdout
    assert node.reservations() == {}
    assert node.veths() == set()
    assert "eth0" not in node.link_names(unset)


def test_del_succeeds_when_the_pod_interface_is_already_gone(node: Node) -> None:
    conf = node.config()
    pod = node.add_pod()
    node.call("ADD", conf, pod)
    node.ip("link", "del", "eth0", pod=pod)  # takes the host end of the pair with it

    deleted = node.call("DEL", conf, pod)

    assert deleted.returncode == 0, deleted.stdout
    assert node.reservations() == {}


def test_del_twice_and_del_of_an_unknown_container_succeed(node: Node) -> None:
    conf = node.config()
    pod = node.add_pod()
    node.call("ADD", conf, pod)

    results = [node.call("DEL", conf, pod) for _ in range(2)]
    results.append(node.call("DEL", conf, pod, container_id="never-added"))

    assert [r.returncode for r in results] == [0, 0, 0]
    assert node.reservations() == {}


def test_del_releases_only_the_exact_attachment(node: Node) -> None:
    """Same container ID, two interface names: DEL of one leaves the other alone."""
    conf = node.config()
    first, second = node.add_pod(), node.add_pod()
    eth0 = node.call("ADD", conf, first, container_id="shared", ifname="eth0").json
    eth1 = node.call("ADD", conf, second, container_id="shared", ifname="eth1").json

    node.call("DEL", conf, first, container_id="shared", ifname="eth0")

    assert list(node.reservations()) == [pod_ip(eth1)]
    assert node.veths() == {eth1["interfaces"][0]["name"]}
    assert node.link_names(second) == {"lo", "eth1"}
    assert pod_ip(eth0) != pod_ip(eth1)


def test_add_after_del_reuses_nothing_in_use(node: Node) -> None:
    conf = node.config()
    pods = [node.add_pod() for _ in range(30)]
    ips = {pod: pod_ip(node.call("ADD", conf, pod).json) for pod in pods}
    assert ips[pods[0]] == "10.244.1.2"
    node.call("DEL", conf, pods[0])  # frees .2, which a prefix-matching delete would confuse
    in_use = {ip for pod, ip in ips.items() if pod != pods[0]}

    fresh = [node.add_pod() for _ in range(3)]
    new_ips = [pod_ip(node.call("ADD", conf, pod).json) for pod in fresh]

    assert not set(new_ips) & in_use
    assert new_ips == ["10.244.1.32", "10.244.1.33", "10.244.1.34"]  # round robin, no reuse yet
    assert len(node.reservations()) == 29 + 3
    # Container IDs too: ...-p1 is a prefix of ...-p10 to ...-p19, which must stay reserved.
    node.call("DEL", conf, pods[1])
    assert sorted(node.reservations()) == sorted(
        {ip for pod, ip in ips.items() if pod not in pods[:2]} | set(new_ips))


def test_a_second_add_of_the_same_attachment_is_rejected(node: Node) -> None:
    conf = node.config()
    pod = node.add_pod()
    node.call("ADD", conf, pod)
    before = (node.reservations(), node.veths(), node.link_names(pod))

    again = node.call("ADD", conf, pod)

    assert again.json["code"] == 101
    assert (node.reservations(), node.veths(), node.link_names(pod)) == before


def test_a_netns_outside_run_netns_works_for_every_verb(node: Node) -> None:
    """Runtimes may pass any path (e.g. a bind mount elsewhere, /proc/PID/ns/net)."""
    pod = node.add_pod()
    elsewhere = node.tmp / "netns-elsewhere"
    elsewhere.touch()
    sh("mount", "--bind", f"/run/netns/{pod}", str(elsewhere))
    try:
        env = node.env("ADD", None, "ctr-elsewhere", "eth0") | {"CNI_NETNS": str(elsewhere)}
        conf = node.config()
        added = node.call_raw(env, json.dumps(conf))
        assert added.returncode == 0, added.stdout
        assert "default via 10.244.1.1" in node.ip("route", pod=pod)
        checked = node.call_raw(
            env | {"CNI_COMMAND": "CHECK"}, json.dumps(conf | {"prevResult": added.json})
        )
        assert checked.returncode == 0, checked.stdout
        deleted = node.call_raw(env | {"CNI_COMMAND": "DEL"}, json.dumps(conf))
        assert deleted.returncode == 0, deleted.stdout
        assert node.link_names(pod) == {"lo"}
    finally:
        sh("umount", str(elsewhere), check=False)
