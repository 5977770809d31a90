"""Property-based tests of the pure layers: allocator over MemoryStore, IPv4 math, JSON codec.

No root needed: these import the plugin's modules from the source tree.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bootstrap.cni.lab_cni import fastjson
from bootstrap.cni.lab_cni import plugin as lab_cni

# A small pool keeps exhaustion and wrap-around reachable: 10.0.0.0/28, gateway .1 -> 13 hosts.
NETWORK, PREFIX = lab_cni.parse_cidr("10.0.0.0/28")
GATEWAY = NETWORK + 1
BROADCAST = lab_cni.calc_broadcast(NETWORK, PREFIX)

keys = st.tuples(st.sampled_from("abcdefg"), st.sampled_from(["eth0", "eth1"]))
operations = st.lists(st.tuples(st.sampled_from(["allocate", "release"]), keys), max_size=60)


def run_model(store: Any, ops: list[tuple[str, tuple[str, str]]]) -> list[object]:
    """Apply operations to a store; check the allocator's invariants after each; return outcomes."""
    pool = lab_cni.Pool(NETWORK, PREFIX, GATEWAY)
    owned: dict[tuple[str, str], int] = {}
    outcomes: list[object] = []
    for op, key in ops:
        if op == "allocate":
            outcomes.append(allocate_one(store, pool, owned, key))
        else:
            released = lab_cni.release(store, *key)
            assert (released.ip if released else None) == owned.pop(key, None)
            outcomes.append(released.ip if released else None)
        reserved = {ip: r.key() for ip, r in store.reserved().items()}
        assert reserved == {ip: key for key, ip in owned.items()}
    return outcomes


def next_free_after(last: int | None, taken: set[int]) -> int:
    """The round-robin rule, computed without the plugin: the first free host after the
    last one handed out, wrapping around, never the gateway."""
    hosts = [ip for ip in range(NETWORK + 1, BROADCAST) if ip != GATEWAY]
    start = hosts.index(last) + 1 if last in hosts else 0
    return next(ip for ip in hosts[start:] + hosts[:start] if ip not in taken)


def allocate_one(store: Any, pool: Any, owned: dict, key: tuple[str, str]) -> object:
    last = store.last_reserved()
    try:
        ip = lab_cni.allocate(store, pool, *key, "vethx")
    except lab_cni.DuplicateAttachment:
        assert key in owned
        return "duplicate"
    except lab_cni.PoolExhausted:
        assert key not in owned and len(owned) == pool.size()
        return "exhausted"
    assert key not in owned
    assert ip not in owned.values()
    assert NETWORK < ip < BROADCAST and ip != GATEWAY
    assert ip == next_free_after(last, set(owned.values()))  # round robin

    owned[key] = ip
    return ip


@given(operations)
def test_allocator_never_hands_out_an_address_twice_or_a_reserved_one(ops: list) -> None:
    run_model(lab_cni.MemoryStore(), ops)


@settings(max_examples=40, deadline=None)
@given(operations)
def test_disk_store_behaves_like_the_memory_store(
    tmp_path_factory: pytest.TempPathFactory, ops: list
) -> None:
    data_dir = Path(tmp_path_factory.mktemp("store"))
    disk = lab_cni.DiskStore(str(data_dir), "net")
    with disk:
        assert run_model(disk, ops) == run_model(lab_cni.MemoryStore(), ops)


@given(st.integers(16, 30), st.integers(0, 2**32 - 1), st.integers(0, 300))
def test_pool_candidates_cover_every_host_but_the_gateway(prefix: int, seed: int, k: int) -> None:
    network = seed & lab_cni.calc_netmask(prefix)
    gateway = lab_cni.calc_gateway(network)
    pool = lab_cni.Pool(network, prefix, gateway)
    after = network + k % (2 ** (32 - prefix))
    first = list(itertools.islice(pool.candidates(after), 300))
    hosts = ipaddress.ip_network(f"{lab_cni.format_ipv4(network)}/{prefix}").num_addresses - 2
    assert pool.size() == hosts - 1
    assert len(set(first)) == len(first) == min(300, pool.size())
    assert all(ip in pool and ip != gateway for ip in first)


@given(st.ip_addresses(v=4))
def test_ipv4_parse_and_format_round_trip(address: ipaddress.IPv4Address) -> None:
    assert lab_cni.parse_ipv4(str(address)) == int(address)
    assert lab_cni.format_ipv4(int(address)) == str(address)


@given(st.integers(0, 2**32 - 1), st.integers(0, 32))
def test_parse_cidr_agrees_with_ipaddress(seed: int, prefix: int) -> None:
    text = f"{ipaddress.IPv4Address(seed)}/{prefix}"
    try:
        expected = ipaddress.ip_network(text, strict=True)
    except ValueError:
        with pytest.raises(ValueError):
            lab_cni.parse_cidr(text)
        return
    assert lab_cni.parse_cidr(text) == (int(expected.network_address), prefix)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


@given(json_values)
def test_json_codec_matches_the_json_module(value: object) -> None:
    text = json.dumps(value)
    assert fastjson.json_loads(text) == json.loads(text)
    assert json.loads(fastjson.json_dumps(value)) == json.loads(text)


@pytest.mark.parametrize("text", ['{"a": ', "[1, 2", "", "{} {}", "nul", '{"a": 1,}'])
def test_json_loads_rejects_what_the_json_module_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        fastjson.json_loads(text)


def test_rollback_runs_every_undo_in_reverse_and_keeps_the_adds_error() -> None:
    ran: list[str] = []

    def undo(name: str) -> None:
        ran.append(name)
        if name == "veth":
            raise OSError("device busy")

    with pytest.raises(lab_cni.CniError) as failure, lab_cni.Rollback() as rollback:
        for step in ("reservation", "veth", "netns"):
            rollback.callback(undo, step)
        raise lab_cni.CniError(104, "pod side failed", "ip said no")

    assert ran == ["netns", "veth", "reservation"]
    assert failure.value.code == 104
    assert failure.value.details == "ip said no; rollback failed: undo: device busy"


def test_rollback_does_nothing_after_pop_all() -> None:
    ran: list[str] = []
    with lab_cni.Rollback() as rollback:
        rollback.callback(ran.append, "undo")
        rollback.pop_all()
    assert ran == []


@pytest.mark.parametrize("kind", ["memory", "disk"])
def test_release_if_unchanged_spares_an_address_that_changed_hands(
        kind: str, tmp_path: Path) -> None:
    disk = lab_cni.DiskStore(str(tmp_path), "n")
    store = lab_cni.MemoryStore() if kind == "memory" else disk
    old = lab_cni.Reservation(GATEWAY + 1, "old", "eth0", "veth1")
    new = lab_cni.Reservation(GATEWAY + 1, "new", "eth0", "veth2")
    with disk if kind == "disk" else contextlib.nullcontext():  # the disk store's lock
        assert store.get(old.ip) is None
        assert store.reserve(old) and store.get(old.ip) == old
        store.release(old.ip)
        assert store.reserve(new)  # a racing ADD took the address meanwhile
        lab_cni.release_if_unchanged(store, old)
        assert store.get(new.ip) == new
        lab_cni.release_if_unchanged(store, new)
        assert store.get(new.ip) is None and store.reserved() == {}
