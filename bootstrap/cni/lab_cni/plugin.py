"""lab-cni: the lab's CNI plugin (bridge, veth pair, host-local style addresses), CNI 0.3.0
to 1.1.0.

Read this module top to bottom as the story of a CNI call:
1. ADD and DEL (cmd_add, cmd_del), then the address allocator they call, over a Store;
2. the links ADD makes: the bridge, the veth pair, the pod's side, and the result;
3. CHECK, STATUS, GC and VERSION;
4. the address store on disk (host-local's layout, under a lock);
5. the configuration and the CNI_* environment, all checked before anything changes;
6. IPv4 arithmetic;
7. the dispatch from CNI_COMMAND to a verb, the call log, and main().

It runs once per pod event, with the node's system Python and iproute2 only, so start-up time
is its budget. The machinery that keeps it fast sits in the package's other modules: fastjson
(JSON without `import json`), netlink (the host side without running `ip`) and iproute2 (the
pod side, one `ip -batch` started early). It never imports typing, contextlib, signal, socket,
subprocess or re (milliseconds each); json only to describe a config that is not JSON.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from _signal import ITIMER_REAL, SIGALRM, setitimer, signal  # `signal` would import enum

from .fastjson import json_dumps, json_loads
from .iproute2 import IpBatch, IpFailed
from .netlink import Netlink, delete_link_unlisted

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~9 ms at start-up: only type checkers import it
    from collections.abc import Callable, Iterator
    from typing import Any, Protocol

    from .netlink import Link

    class Store(Protocol):
        """What the allocator needs from persistence; the caller holds the store's lock."""

        def reserved(self) -> dict[int, Reservation]: ...
        def get(self, ip: int) -> Reservation | None: ...
        def reserve(self, reservation: Reservation) -> bool: ...
        def release(self, ip: int) -> None: ...
        def last_reserved(self) -> int | None: ...
        def set_last_reserved(self, ip: int) -> None: ...


SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST_VERSION = SUPPORTED_VERSIONS[-1]
DEFAULTS: dict[str, Any] = {
    "bridge": "cni0",
    "mtu": 1500,
    "hairpinMode": True,
    "dataDir": "/var/lib/cni/networks",
    "logFile": "/var/log/lab-cni.log",
}
LOCK_TIMEOUT_S = 10.0
LOG_MAX_BYTES = 1 << 20
HOST_VETH_PREFIX = "veth"

# Error codes: 1-11 and 50 come from the CNI spec; 100+ are ours (docs/cni.md has the table).
ERR_INCOMPATIBLE_VERSION = 1
ERR_INVALID_ENV = 4
ERR_IO = 5
ERR_DECODE = 6
ERR_INVALID_CONFIG = 7
ERR_TRY_AGAIN = 11
ERR_NOT_AVAILABLE = 50
ERR_POOL_EXHAUSTED = 100
ERR_DUPLICATE_ATTACHMENT = 101
ERR_BRIDGE = 102
ERR_NETNS = 103
ERR_LINK = 104
ERR_CHECK_MISMATCH = 105
ERR_INTERNAL = 199


class CniError(Exception):
    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details


# -------------------------------------------------------------------------------------- ADD and DEL


def cmd_add(conf: NetConf, args: CallArgs) -> dict:
    """Connect the pod: an address, the bridge, a veth pair, the pod's side; undo on failure.

    Each step registers its undo as soon as it has changed something; if a later step fails,
    the undos run in reverse (Rollback), so a failed ADD leaves nothing behind.
    """
    host_veth = new_host_veth_name()
    with Rollback() as rollback:
        pod_ip = start_pod_ip(args.netns)  # runs alongside the steps below (iproute2.py)
        rollback.callback(pod_ip.finish)
        ip = reserve_address(conf, args, host_veth)
        rollback.callback(release_address, conf, args)
        nl = Netlink()
        bridge = ensure_bridge(nl, conf)
        netns_fd = open_netns(args.netns)
        rollback.callback(os.close, netns_fd)
        macs = setup_veth(nl, conf, bridge, netns_fd, args.ifname, host_veth)
        rollback.callback(delete_host_veth, nl, host_veth)
        setup_pod_side(conf, pod_ip, args.ifname, ip)  # `ip` works in the pod meanwhile:
        if conf.hairpin:
            setup_hairpin(nl, host_veth)
        result = build_result(conf, args, ip, macs, host_veth)
        finish_pod_side(pod_ip)
        rollback.pop_all()
        os.close(netns_fd)
    return result


def cmd_del(conf: NetConf, args: CallArgs) -> None:
    """Release by (container ID, ifname). Needs no netns: the host veth name is in the store.

    The veth goes first and outside the lock, so concurrent DELs overlap; the address is freed
    only once its interface is gone. Nothing to release is not an error: DEL may run twice.
    """
    try:
        with conf.store() as store:
            found = find_reservation(store, args.container_id, args.ifname)
        if found is None:
            return
        unlist_host_veth(found.host_veth)  # its peer in the pod goes with it
        with conf.store() as store:
            release_if_unchanged(store, found)
    except OSError as e:
        raise CniError(ERR_IO, f"cannot update the address store: {e}") from None


def reserve_address(conf: NetConf, args: CallArgs, host_veth: str) -> int:
    try:
        with conf.store() as store:
            return allocate(store, conf.pool(), args.container_id, args.ifname, host_veth)
    except PoolExhausted as e:
        raise CniError(
            ERR_POOL_EXHAUSTED, f"network {conf.name!r} has no free address", str(e)
        ) from None
    except DuplicateAttachment as e:
        raise CniError(ERR_DUPLICATE_ATTACHMENT, str(e)) from None
    except OSError as e:
        raise CniError(ERR_IO, f"cannot write the address store: {e}") from None


def release_address(conf: NetConf, args: CallArgs) -> Reservation | None:
    with conf.store() as store:
        return release(store, args.container_id, args.ifname)


class Rollback:
    """ExitStack's callback/pop_all subset: undo steps in reverse unless the ADD succeeded.

    contextlib itself costs 4 ms of start-up (collections, functools), a sixth of the budget.
    """

    def __init__(self) -> None:
        self.undo: list[tuple[Callable[..., object], tuple[object, ...]]] = []

    def __enter__(self) -> Rollback:
        return self

    def callback(self, fn: Callable[..., object], *args: object) -> None:
        self.undo.append((fn, args))

    def pop_all(self) -> None:
        self.undo = []

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        """Run every undo even if one fails; the ADD's own error stays the one reported."""
        failures = []
        while self.undo:
            fn, args = self.undo.pop()
            try:
                fn(*args)
            except Exception as e:
                failures.append(f"{getattr(fn, '__name__', fn)}: {e}")
        if not failures:
            return
        note = "rollback failed: " + ", ".join(failures)
        if isinstance(exc, CniError):
            exc.details = f"{exc.details}; {note}" if exc.details else note
        else:
            raise CniError(ERR_INTERNAL, f"internal error: {exc!r}", note) from exc


# ----------------------------------------------------------------------------- the allocator (pure)


class Reservation:
    """One allocated address and the attachment (container ID, interface) that owns it."""

    __slots__ = ("container_id", "host_veth", "ifname", "ip")

    def __init__(self, ip: int, container_id: str, ifname: str, host_veth: str) -> None:
        self.ip = ip
        self.container_id = container_id
        self.ifname = ifname
        self.host_veth = host_veth  # recorded so DEL can remove the pair without the pod netns

    def key(self) -> tuple[str, str]:
        return (self.container_id, self.ifname)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Reservation) and self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        return f"Reservation({format_ipv4(self.ip)}, {self.container_id!r}, {self.ifname!r})"

    def _values(self) -> tuple[int, str, str, str]:
        return (self.ip, self.container_id, self.ifname, self.host_veth)


class Pool:
    """The assignable addresses of a subnet: all hosts except the gateway."""

    def __init__(self, network: int, prefix: int, gateway: int) -> None:
        self.first = network + 1
        self.last = calc_broadcast(network, prefix) - 1
        self.gateway = gateway

    def __contains__(self, ip: int) -> bool:
        return self.first <= ip <= self.last and ip != self.gateway

    def size(self) -> int:
        return self.last - self.first + 1 - (self.first <= self.gateway <= self.last)

    def candidates(self, after: int | None) -> Iterator[int]:
        """Every address once, starting after `after` and wrapping around (round robin)."""
        start = after + 1 if after is not None and self.first <= after <= self.last else self.first
        for ip in range(start, self.last + 1):
            if ip != self.gateway:
                yield ip
        for ip in range(self.first, start):
            if ip != self.gateway:
                yield ip


class PoolExhausted(Exception):
    pass


class DuplicateAttachment(Exception):
    pass


def find_reservation(store: Store, container_id: str, ifname: str) -> Reservation | None:
    return owned_by(store.reserved(), container_id, ifname)


def owned_by(taken: dict[int, Reservation], container_id: str, ifname: str) -> Reservation | None:
    """Exact match on both parts of the key: never a prefix, never the address alone."""
    return next((r for r in taken.values() if r.key() == (container_id, ifname)), None)


def allocate(store: Store, pool: Pool, container_id: str, ifname: str, host_veth: str) -> int:
    """Reserve the next free address after the last one handed out. Caller holds the lock."""
    taken = store.reserved()
    if owned_by(taken, container_id, ifname) is not None:
        raise DuplicateAttachment(f"{container_id}/{ifname} already has an address")
    for ip in pool.candidates(store.last_reserved()):
        if ip not in taken and store.reserve(Reservation(ip, container_id, ifname, host_veth)):
            store.set_last_reserved(ip)
            return ip
    raise PoolExhausted(f"no free address among {pool.size()}")


def release(store: Store, container_id: str, ifname: str) -> Reservation | None:
    """Release the address of exactly this attachment, if any. Caller holds the lock."""
    found = find_reservation(store, container_id, ifname)
    if found is not None:
        store.release(found.ip)
    return found


def release_if_unchanged(store: Store, reservation: Reservation) -> None:
    """Free the address unless it changed hands since it was read (a racing ADD may have
    reserved it again while its old interface was being removed). Caller holds the lock."""
    if store.get(reservation.ip) == reservation:
        store.release(reservation.ip)


class MemoryStore:
    """In-memory Store for allocator tests."""

    def __init__(self) -> None:
        self.entries: dict[int, Reservation] = {}
        self.last: int | None = None

    def reserved(self) -> dict[int, Reservation]:
        return dict(self.entries)

    def get(self, ip: int) -> Reservation | None:
        return self.entries.get(ip)

    def reserve(self, reservation: Reservation) -> bool:
        if reservation.ip in self.entries:
            return False
        self.entries[reservation.ip] = reservation
        return True

    def release(self, ip: int) -> None:
        self.entries.pop(ip, None)

    def last_reserved(self) -> int | None:
        return self.last

    def set_last_reserved(self, ip: int) -> None:
        self.last = ip


# ------------------------------------------------------------------------------ the links ADD makes


def start_pod_ip(netns: str, *ip_options: str) -> IpBatch:
    """Start `ip -batch` in the pod's namespace now; it gets its commands later."""
    try:
        return IpBatch(netns, list(ip_options))
    except IpFailed as e:
        raise CniError(ERR_LINK, e.msg, e.details) from None


def ensure_bridge(nl: Netlink, conf: NetConf) -> Link:
    """Create the bridge or accept the existing one; make sure it is up and holds the gateway."""
    try:
        nl.create_bridge(conf.bridge, conf.mtu)
    except FileExistsError:
        pass  # another ADD won the race, or it existed already: verify it below
    except OSError as e:
        raise CniError(
            ERR_BRIDGE, f"failed to create bridge {conf.bridge!r}: {e.strerror}"
        ) from None
    bridge = nl.get_link(conf.bridge)
    if bridge is None or bridge.kind != "bridge":
        kind = bridge.kind if bridge else "missing"
        raise CniError(ERR_BRIDGE, f"{conf.bridge!r} exists and is not a bridge (kind {kind!r})")
    try:
        if not bridge.up:
            nl.set_up(bridge.index)
        if (conf.gateway, conf.prefix) not in nl.ipv4_addresses(bridge.index):
            nl.add_ipv4_address(bridge.index, conf.gateway, conf.prefix, conf.broadcast)
    except OSError as e:
        raise CniError(
            ERR_BRIDGE, f"failed to configure bridge {conf.bridge!r}: {e.strerror}"
        ) from None
    return bridge


def open_netns(path: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise CniError(ERR_NETNS, f"cannot open network namespace {path!r}: {e.strerror}") from None


def setup_veth(
    nl: Netlink, conf: NetConf, bridge: Link, netns_fd: int, ifname: str, host_veth: str
) -> tuple[bytes, bytes]:
    """Create the pair: the host end on the bridge, the peer born in the pod as `ifname`."""
    host_mac, pod_mac = random_mac(), random_mac()
    try:
        nl.create_veth(host_veth, host_mac, mtu=conf.mtu, master=bridge.index,
                       peer_name=ifname, peer_mac=pod_mac, peer_netns_fd=netns_fd)
    except FileExistsError:
        raise CniError(ERR_LINK, f"interface {ifname!r} already exists in the container") from None
    except OSError as e:
        raise CniError(ERR_LINK, f"failed to create veth {host_veth!r}: {e.strerror}") from None
    return host_mac, pod_mac


def new_host_veth_name() -> str:
    return HOST_VETH_PREFIX + os.urandom(4).hex()


def random_mac() -> bytes:
    """A random unicast, locally administered MAC (set here so the result needs no read-back)."""
    raw = bytearray(os.urandom(6))
    raw[0] = (raw[0] & 0xFE) | 0x02
    return bytes(raw)


def format_mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def setup_pod_side(conf: NetConf, pod_ip: IpBatch, ifname: str, ip: int) -> None:
    """Address, link up and default route inside the pod: sent to the already started `ip`,
    which runs them while the plugin goes on (finish_pod_side collects the outcome)."""
    address = f"{format_ipv4(ip)}/{conf.prefix}"
    pod_ip.send(
        f"addr add {address} broadcast {format_ipv4(conf.broadcast)} dev {ifname}\n"
        f"link set {ifname} up\n"
        f"route add default via {format_ipv4(conf.gateway)} dev {ifname}\n"
    )


def setup_hairpin(nl: Netlink, host_veth: str) -> None:
    """Let a pod reach itself through a service address (the bridge port reflects its frames)."""
    try:
        nl.set_hairpin(host_veth)
    except OSError as e:
        raise CniError(ERR_LINK, f"failed to set hairpin on {host_veth!r}: {e.strerror}") from None


def finish_pod_side(pod_ip: IpBatch) -> None:
    try:
        pod_ip.wait()
    except IpFailed as e:
        raise CniError(ERR_LINK, e.msg, e.details) from None


def delete_host_veth(nl: Netlink, name: str) -> None:
    """Delete a veth pair (the kernel removes the pod's end with it), waiting for the kernel."""
    if not name:
        return
    try:
        nl.delete_link(name)
    except OSError as e:
        raise CniError(ERR_LINK, f"failed to delete veth {name!r}: {e.strerror}") from None


def unlist_host_veth(name: str) -> None:
    """Delete a veth pair and return as soon as both ends are gone for every observer, so a
    later ADD can never meet them; a child process waits out the kernel's slower reclaim."""
    if not name:
        return
    try:
        delete_link_unlisted(name, LOCK_TIMEOUT_S)
    except OSError as e:
        raise CniError(ERR_LINK, f"failed to delete veth {name!r}: {e.strerror}") from None


# --------------------------------------------------------------------------------------- the result


def build_result(
    conf: NetConf, args: CallArgs, ip: int, macs: tuple[bytes, bytes], veth: str
) -> dict:
    host_mac, pod_mac = macs
    address: dict[str, object] = {"address": f"{format_ipv4(ip)}/{conf.prefix}"}
    address["gateway"] = format_ipv4(conf.gateway)
    if version_tuple(conf.version) < (1, 0, 0):
        address["version"] = "4"  # 0.3.x and 0.4.0 tag the family; 1.0.0 dropped the field
    address["interface"] = 1
    return {
        "cniVersion": conf.version,
        "interfaces": [
            {"name": veth, "mac": format_mac(host_mac)},
            {"name": args.ifname, "mac": format_mac(pod_mac), "sandbox": args.netns},
        ],
        "ips": [address],
        "routes": [{"dst": "0.0.0.0/0", "gw": format_ipv4(conf.gateway)}],
        "dns": {},
    }


# ----------------------------------------------------------------------- CHECK, STATUS, GC, VERSION


def cmd_check(conf: NetConf, args: CallArgs) -> None:
    require_version(conf, "0.4.0", "CHECK")
    expected = expected_from_prev_result(conf, args)
    with conf.store() as store:
        found = find_reservation(store, args.container_id, args.ifname)
    if found is None or found.ip != expected["ip"]:
        raise mismatch(f"no reservation of {format_ipv4(expected['ip'])} for this attachment")
    check_host_side(conf, found.host_veth)
    check_pod_side(conf, args, expected)


def mismatch(msg: str) -> CniError:
    return CniError(ERR_CHECK_MISMATCH, msg)


def expected_from_prev_result(conf: NetConf, args: CallArgs) -> dict[str, Any]:
    prev = conf.raw.get("prevResult")
    if not isinstance(prev, dict):
        raise CniError(ERR_INVALID_CONFIG, "CHECK needs prevResult")
    interfaces = prev.get("interfaces") or []
    index = next(
        (i for i, f in enumerate(interfaces) if f.get("name") == args.ifname and f.get("sandbox")),
        None,
    )
    if index is None:
        raise mismatch(f"prevResult has no container interface {args.ifname!r}")
    ip_entry = next((e for e in prev.get("ips") or [] if e.get("interface") == index), None)
    if ip_entry is None:
        raise mismatch(f"prevResult has no address for {args.ifname!r}")
    try:
        address, prefix = ip_entry["address"].split("/")
        return {
            "ip": parse_ipv4(address),
            "prefix": int(prefix),
            "mac": interfaces[index].get("mac"),
        }
    except (KeyError, ValueError, AttributeError):
        raise CniError(ERR_INVALID_CONFIG, "prevResult has an invalid address") from None


def check_host_side(conf: NetConf, host_veth: str) -> None:
    nl = Netlink()
    bridge, veth = nl.get_link(conf.bridge), nl.get_link(host_veth)
    if bridge is None or bridge.kind != "bridge":
        raise mismatch(f"bridge {conf.bridge!r} is missing")
    if veth is None:
        raise mismatch(f"host veth {host_veth!r} is missing")
    if veth.master != bridge.index:
        raise mismatch(f"host veth {host_veth!r} is not attached to {conf.bridge!r}")


def check_pod_side(conf: NetConf, args: CallArgs, expected: dict[str, Any]) -> None:
    if not os.path.exists(args.netns):
        raise mismatch(f"network namespace {args.netns!r} is gone")
    try:
        batch = f"addr show dev {args.ifname}\nroute show default\n"
        output = start_pod_ip(args.netns, "-j").run(batch)
    except (CniError, IpFailed) as e:
        raise mismatch(f"container interface {args.ifname!r} is missing: {e.details}") from None
    links, routes = parse_json_stream(output)
    link = links[0] if links else {}
    if expected["mac"] and link.get("address") != expected["mac"]:
        raise mismatch(f"{args.ifname!r} has MAC {link.get('address')}, expected {expected['mac']}")
    addresses = {(a.get("local"), a.get("prefixlen")) for a in link.get("addr_info", [])}
    if (format_ipv4(expected["ip"]), expected["prefix"]) not in addresses:
        raise mismatch(f"{args.ifname!r} lacks address {format_ipv4(expected['ip'])}")
    gateway = format_ipv4(conf.gateway)
    if not any(r.get("gateway") == gateway and r.get("dev") == args.ifname for r in routes):
        raise mismatch(f"no default route via {gateway} on {args.ifname!r}")


def parse_json_stream(text: str) -> list[Any]:
    """`ip -j -batch` prints one JSON document per command."""
    return [json_loads(line) for line in text.splitlines() if line.strip()]


def cmd_status(conf: NetConf, args: CallArgs | None) -> None:
    require_version(conf, "1.1.0", "STATUS")
    store = conf.store()
    try:
        os.makedirs(store.dir, mode=0o755, exist_ok=True)
        writable = os.access(store.dir, os.W_OK)
        used = len(store.reserved())
    except OSError as e:
        raise CniError(ERR_NOT_AVAILABLE, f"address store unavailable: {e}") from None
    if not writable:
        raise CniError(ERR_NOT_AVAILABLE, f"address store {store.dir} is not writable")
    if used >= conf.pool().size():
        raise CniError(ERR_NOT_AVAILABLE, f"network {conf.name!r} has no free address")


def cmd_gc(conf: NetConf, args: CallArgs | None) -> None:
    """Release every reservation, and remove every port veth, not in the valid attachments."""
    require_version(conf, "1.1.0", "GC")
    valid = valid_attachments(conf.raw.get("cni.dev/valid-attachments"))
    with conf.store() as store:
        stale = [r for r in store.reserved().values() if r.key() not in valid]
    # Links go outside the lock (each deletion waits for the kernel), as in DEL; the
    # addresses are freed after, and only if still held by the same attachment.
    nl = Netlink()
    for reservation in stale:
        delete_host_veth(nl, reservation.host_veth)
    with conf.store() as store:
        for reservation in stale:
            release_if_unchanged(store, reservation)
        # A port no reservation names is a leftover; one named is a pod, perhaps an ADD
        # in progress, so the list is made under the lock.
        held = {r.host_veth for r in store.reserved().values()}
        bridge = nl.get_link(conf.bridge)
        strays = [port.name for port in (nl.list_ports(bridge.index) if bridge else [])
                  if port.kind == "veth" and port.name not in held]
    for name in strays:
        delete_host_veth(nl, name)


def valid_attachments(raw: object) -> set[tuple[str, str]]:
    if not isinstance(raw, list) or not all(isinstance(a, dict) for a in raw):
        raise CniError(ERR_INVALID_CONFIG, "GC needs cni.dev/valid-attachments (a list)")
    return {(a.get("containerID"), a.get("ifname")) for a in raw}


def cmd_version() -> dict:
    return {"cniVersion": LATEST_VERSION, "supportedVersions": list(SUPPORTED_VERSIONS)}


# ------------------------------------------------------------------------ the address store on disk


class LockTimeout(Exception):
    pass


def raise_lock_timeout(signum: int, frame: object) -> None:
    raise LockTimeout


class DiskStore:
    """host-local's layout: <dataDir>/<network>/<ip> holds "<container id>\\n<ifname>\\n<veth>"."""

    LAST_RESERVED = "last_reserved_ip.0"

    def __init__(self, data_dir: str, network_name: str) -> None:
        self.dir = os.path.join(data_dir, network_name)
        self.lock_fd = -1

    def __enter__(self) -> DiskStore:
        self.lock(LOCK_TIMEOUT_S)
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.lock_fd)  # closing the descriptor drops the flock
        self.lock_fd = -1

    def lock(self, timeout: float) -> None:
        """flock the store; block (no polling, so waiters wake at once) up to `timeout` s."""
        os.makedirs(self.dir, mode=0o755, exist_ok=True)
        self.lock_fd = os.open(os.path.join(self.dir, "lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return  # uncontended: no timer needed
        except BlockingIOError:
            pass
        previous = signal(SIGALRM, raise_lock_timeout)
        setitimer(ITIMER_REAL, timeout)
        try:
            fcntl.flock(self.lock_fd, fcntl.LOCK_EX)
        except LockTimeout:
            os.close(self.lock_fd)
            raise CniError(ERR_TRY_AGAIN, f"timed out locking {self.dir}") from None
        finally:
            setitimer(ITIMER_REAL, 0)
            signal(SIGALRM, previous)

    def reserved(self) -> dict[int, Reservation]:
        found = {}
        for name in os.listdir(self.dir):
            try:
                ip = parse_ipv4(name)
            except ValueError:
                continue  # the lock and last-reserved files
            found[ip] = self._read(name, ip)
        return found

    def get(self, ip: int) -> Reservation | None:
        """One reservation, without reading the others."""
        try:
            return self._read(format_ipv4(ip), ip)
        except FileNotFoundError:
            return None

    def _read(self, name: str, ip: int) -> Reservation:
        fields = read_small_file(os.path.join(self.dir, name)).split("\n")
        container_id, ifname, host_veth = [*fields, "", "", ""][:3]
        return Reservation(ip, container_id, ifname, host_veth)

    def reserve(self, reservation: Reservation) -> bool:
        path = os.path.join(self.dir, format_ipv4(reservation.ip))
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        try:
            r = reservation
            os.write(fd, f"{r.container_id}\n{r.ifname}\n{r.host_veth}".encode())
        except OSError:
            os.unlink(path)  # never leave a half-written reservation behind
            raise
        finally:
            os.close(fd)
        return True

    def release(self, ip: int) -> None:
        try:
            os.unlink(os.path.join(self.dir, format_ipv4(ip)))
        except FileNotFoundError:  # contextlib costs 4 ms of start-up; DEL must stay cheap
            return

    def last_reserved(self) -> int | None:
        try:
            return parse_ipv4(read_small_file(os.path.join(self.dir, self.LAST_RESERVED)).strip())
        except (OSError, ValueError):
            return None

    def set_last_reserved(self, ip: int) -> None:
        path = os.path.join(self.dir, self.LAST_RESERVED)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, format_ipv4(ip).encode())
        finally:
            os.close(fd)


def read_small_file(path: str) -> str:
    """os-level read: open() would build a TextIOWrapper and import a codec, per file."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 4096).decode("utf-8", "replace")
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------ configuration


class NetConf:
    """The validated network configuration of one call."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw
        self.version: str = raw["cniVersion"]
        self.name: str = raw["name"]
        self.bridge: str = raw.get("bridge", DEFAULTS["bridge"])
        self.network, self.prefix = parse_cidr(raw.get("subnet"), 16, 30)
        self.broadcast = calc_broadcast(self.network, self.prefix)
        gateway = raw.get("gateway")
        self.gateway = calc_gateway(self.network) if gateway is None else parse_ipv4(gateway)
        # Only checked against the subnet: the node network uses it (NAT), not the plugin.
        cluster_key = next((k for k in ("clusterCidr", "network") if k in raw), None)
        self.cluster_cidr = parse_cidr(raw[cluster_key]) if cluster_key else None
        self.mtu: int = raw.get("mtu", DEFAULTS["mtu"])
        self.hairpin: bool = raw.get("hairpinMode", DEFAULTS["hairpinMode"])
        self.data_dir: str = raw.get("dataDir", DEFAULTS["dataDir"])
        self.log_file: str = raw.get("logFile", DEFAULTS["logFile"])

    def pool(self) -> Pool:
        return Pool(self.network, self.prefix, self.gateway)

    def store(self) -> DiskStore:
        return DiskStore(self.data_dir, self.name)


def load_netconf(raw: object) -> NetConf:
    """Parse and validate the config of ADD, DEL, CHECK, STATUS and GC (error 7 when invalid)."""
    check_version(raw)
    try:
        conf = NetConf(raw)  # type: ignore[arg-type]
        validate_netconf(conf)
    except (ValueError, TypeError, KeyError) as e:
        raise CniError(ERR_INVALID_CONFIG, f"invalid network configuration: {e}") from None
    return conf


def validate_netconf(conf: NetConf) -> None:
    if not isinstance(conf.name, str) or not is_valid_id(conf.name):
        raise ValueError(f"name {conf.name!r} must match [a-zA-Z0-9][a-zA-Z0-9_.-]*")
    if not isinstance(conf.bridge, str) or not is_valid_ifname(conf.bridge):
        raise ValueError(f"bridge {conf.bridge!r} is not a valid interface name")
    if not conf.network < conf.gateway < conf.broadcast:
        raise ValueError(f"gateway {format_ipv4(conf.gateway)} is not a host of the subnet")
    subnet = (conf.network, conf.prefix)
    if conf.cluster_cidr is not None and not cidr_contains(conf.cluster_cidr, subnet):
        raise ValueError("subnet is not inside clusterCidr")
    if type(conf.mtu) is not int or not 68 <= conf.mtu <= 65535:
        raise ValueError(f"mtu {conf.mtu!r} must be an integer from 68 to 65535")
    if type(conf.hairpin) is not bool:
        raise ValueError("hairpinMode must be true or false")
    for key, path in (("dataDir", conf.data_dir), ("logFile", conf.log_file)):
        if not isinstance(path, str) or not path.startswith("/"):
            raise ValueError(f"{key} must be an absolute path")


def check_version(raw: object) -> str:
    if not isinstance(raw, dict):
        raise CniError(ERR_DECODE, "network configuration is not a JSON object")
    version = raw.get("cniVersion")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(
            ERR_INCOMPATIBLE_VERSION,
            f"incompatible CNI version {version!r}",
            f"supported: {', '.join(SUPPORTED_VERSIONS)}",
        )
    return version


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def require_version(conf: NetConf, minimum: str, verb: str) -> None:
    if version_tuple(conf.version) < version_tuple(minimum):
        raise CniError(
            ERR_INCOMPATIBLE_VERSION, f"config version {conf.version} does not allow {verb}"
        )


def is_valid_id(text: str) -> bool:
    """The spec's rule for container IDs and network names: [a-zA-Z0-9][a-zA-Z0-9_.-]*."""
    allowed = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-"
    return (
        bool(text) and text[0].isascii() and text[0].isalnum() and all(c in allowed for c in text)
    )


def is_valid_ifname(text: str) -> bool:
    """The spec's (and the kernel's) rule for interface names, less the characters that
    iproute2's batch mode reads as a comment or quoting (#, quotes, backslash)."""
    return (
        0 < len(text) <= 15
        and text not in (".", "..")
        and not any(c in "/:#'\"\\" or c.isspace() for c in text)
    )


# -------------------------------------------------------------------------------------- environment


class CallArgs:
    """The CNI_* environment of one call, validated."""

    def __init__(self, env: dict[str, str], needs_netns: bool) -> None:
        self.container_id = env.get("CNI_CONTAINERID", "")
        self.ifname = env.get("CNI_IFNAME", "")
        self.netns = env.get("CNI_NETNS", "")
        if not is_valid_id(self.container_id):
            raise CniError(
                ERR_INVALID_ENV, "CNI_CONTAINERID is missing or invalid", self.container_id
            )
        if not is_valid_ifname(self.ifname):
            raise CniError(ERR_INVALID_ENV, "CNI_IFNAME is missing or invalid", self.ifname)
        if needs_netns and not self.netns:
            raise CniError(ERR_INVALID_ENV, "CNI_NETNS is required")
        if not env.get("CNI_PATH"):
            raise CniError(ERR_INVALID_ENV, "CNI_PATH is required")


# --------------------------------------------------------------------------------- IPv4 math (pure)


def parse_ipv4(text: object) -> int:
    parts = text.split(".") if isinstance(text, str) else []
    if len(parts) != 4 or not all(p.isdigit() and len(p) <= 3 and int(p) <= 255 for p in parts):
        raise ValueError(f"{text!r} is not an IPv4 address")
    a, b, c, d = (int(p) for p in parts)
    return a << 24 | b << 16 | c << 8 | d


def format_ipv4(ip: int) -> str:
    return f"{ip >> 24 & 255}.{ip >> 16 & 255}.{ip >> 8 & 255}.{ip & 255}"


def parse_cidr(text: object, min_prefix: int = 0, max_prefix: int = 32) -> tuple[int, int]:
    """Return (network, prefix); host bits must be zero."""
    addr, _, prefix = text.partition("/") if isinstance(text, str) else ("", "", "")
    if not prefix.isdigit() or not min_prefix <= int(prefix) <= max_prefix:
        raise ValueError(
            f"{text!r} is not a CIDR with a prefix from /{min_prefix} to /{max_prefix}"
        )
    network, length = parse_ipv4(addr), int(prefix)
    if network & ~calc_netmask(length) & 0xFFFFFFFF:
        raise ValueError(f"{text!r} has host bits set")
    return network, length


def calc_netmask(prefix: int) -> int:
    return (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF


def calc_broadcast(network: int, prefix: int) -> int:
    return network | (~calc_netmask(prefix) & 0xFFFFFFFF)


def calc_gateway(network: int) -> int:
    """The default gateway is the first host of the subnet."""
    return network + 1


def cidr_contains(outer: tuple[int, int], inner: tuple[int, int]) -> bool:
    return outer[1] <= inner[1] and inner[0] & calc_netmask(outer[1]) == outer[0]


# ------------------------------------------------------------------------------ dispatch, log, main


# verb -> (handler, needs CNI_CONTAINERID/CNI_IFNAME, needs CNI_NETNS)
VERBS: dict[str, tuple[Callable[..., Any], bool, bool]] = {
    "ADD": (cmd_add, True, True),
    "DEL": (cmd_del, True, False),
    "CHECK": (cmd_check, True, True),
    "STATUS": (cmd_status, False, False),
    "GC": (cmd_gc, False, False),
}


def run(env: dict[str, str], stdin: str) -> tuple[dict | None, NetConf | None]:
    """Validate everything before changing anything, then run the verb."""
    command = env.get("CNI_COMMAND", "")
    if command == "VERSION":
        return cmd_version(), None  # answers whatever version the caller speaks
    if command not in VERBS:
        raise CniError(ERR_INVALID_ENV, f"unknown CNI_COMMAND {command!r}")
    try:
        raw = json_loads(stdin)
    except ValueError as e:
        raise CniError(ERR_DECODE, f"cannot decode network configuration: {e}") from None
    handler, needs_attachment, needs_netns = VERBS[command]
    args = CallArgs(env, needs_netns) if needs_attachment else None
    conf = load_netconf(raw)
    return handler(conf, args), conf


def write_log(log_file: str, line: str) -> None:
    """Best effort, size-bounded: past LOG_MAX_BYTES the file moves to <file>.1 (one kept)."""
    try:
        fd = open_log(log_file)
        if os.fstat(fd).st_size > LOG_MAX_BYTES:
            fd = rotate_log(log_file, fd)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
    except OSError as e:
        os.write(2, f"lab-cni: cannot write log {log_file}: {e}\n".encode())


def open_log(log_file: str) -> int:
    return os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)


def rotate_log(log_file: str, full: int) -> int:
    """Move the full log to <file>.1 and open a fresh one. Rotations take the full file's
    lock, and only a caller that still finds that file at the path moves it: two calls
    rotating at once cannot push the kept log out with an almost empty one."""
    try:
        fcntl.flock(full, fcntl.LOCK_EX)
        if os.stat(log_file).st_ino == os.fstat(full).st_ino:
            os.replace(log_file, log_file + ".1")
    finally:
        os.close(full)  # and its lock
    return open_log(log_file)


def log_call(env: dict[str, str], log_file: str, outcome: str, started: float) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    elapsed_ms = (time.perf_counter() - started) * 1000
    command, container = env.get("CNI_COMMAND", "-")[:16], env.get("CNI_CONTAINERID", "-")[:80]
    line = f"{stamp} {command} {container} {env.get('CNI_IFNAME', '-')[:16]!r} {outcome}"
    write_log(log_file, f"{line} {elapsed_ms:.1f}ms\n")


def main() -> int:
    started, env = time.perf_counter(), dict(os.environ)
    stdin = sys.stdin.read()
    try:
        result, conf = run(env, stdin)
        log_file, outcome, code = conf.log_file if conf else None, "ok", 0
    except Exception as e:  # every failure, even a bug, answers in the spec's format
        error = e if isinstance(e, CniError) else internal_error(e)
        hint = config_hint(stdin)
        result, code = error_json(error, hint), 1
        log_file, outcome = hint_log_file(hint), f"error {error.code}: {error.msg}"
    if result is not None:
        os.write(1, json_dumps(result).encode() + b"\n")
    if env.get("CNI_COMMAND") != "VERSION":  # runtimes probe VERSION often; it changes nothing
        log_call(env, log_file or DEFAULTS["logFile"], outcome, started)
    return code


def internal_error(e: Exception) -> CniError:
    return CniError(ERR_INTERNAL, f"internal error: {type(e).__name__}: {e}")


def config_hint(stdin: str) -> dict[str, Any]:
    """What a rejected config still tells us (its version, its log file), or nothing."""
    try:
        raw = json_loads(stdin)
    except ValueError:
        return {}
    return raw if isinstance(raw, dict) else {}


def hint_log_file(hint: dict[str, Any]) -> str | None:
    path = hint.get("logFile")
    return path if isinstance(path, str) and path.startswith("/") else None


def error_json(error: CniError, hint: dict[str, Any]) -> dict:
    version = hint.get("cniVersion")
    return {
        "cniVersion": version if version in SUPPORTED_VERSIONS else LATEST_VERSION,
        "code": error.code,
        "msg": error.msg,
        "details": error.details,
    }
