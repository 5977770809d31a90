#!/usr/bin/python3 -IS
"""lab-cni: the lab's CNI plugin (bridge + veth + host-local style IPAM), CNI 0.3.0 to 1.1.0.

One file on purpose: it is copied to /opt/cni/bin/lab-cni on every node and must run with the
node's system Python and iproute2 only. It runs once per pod event, so start-up cost is the
budget: modules are imported only by the verbs that need them, the host side is configured over
raw netlink, and the pod side with one batched `ip` process.

Layers, top to bottom: CNI plumbing (env, config, errors, results) -> verbs (cmd_*) -> network
helpers (ensure_bridge, setup_veth, ...) over a tiny netlink client -> a pure allocator over a
Store protocol, with DiskStore (production) and MemoryStore (tests).
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~9 ms at start-up: only type checkers import it
    from collections.abc import Callable, Iterator
    from typing import Any, Protocol

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
    "clusterCidr": "10.244.0.0/16",
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


# --------------------------------------------------------------------------- JSON
# `import json` costs ~8 ms (it pulls in `re`); the C accelerator alone does the same work.


class _ScannerContext:
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float


def json_loads(text: str) -> Any:
    from _json import make_scanner

    start = len(text) - len(text.lstrip(" \t\r\n"))
    try:
        value, end = make_scanner(_ScannerContext())(text, start)  # type: ignore[arg-type]
    except (StopIteration, SystemError):
        # Bad input only. The accelerator can only describe the error once json.decoder is
        # imported (else SystemError), so let the json module produce the message.
        import json

        return json.loads(text)
    if text[end:].strip(" \t\r\n"):
        raise ValueError(f"extra data at offset {end}")
    return value


def json_dumps(value: Any) -> str:
    from _json import encode_basestring_ascii, make_encoder

    def reject(obj: object) -> None:
        raise TypeError(f"not JSON serialisable: {type(obj).__name__}")

    encode = make_encoder(
        {}, reject, encode_basestring_ascii, None, ": ", ", ", False, False, False
    )
    return "".join(encode(value, 0))


# --------------------------------------------------------------------------- IPv4 math (pure)


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


def calc_gateway(network: int, prefix: int) -> int:
    """The default gateway is the first host of the subnet."""
    return network + 1


def cidr_contains(outer: tuple[int, int], inner: tuple[int, int]) -> bool:
    return outer[1] <= inner[1] and inner[0] & calc_netmask(outer[1]) == outer[0]


# --------------------------------------------------------------------------- allocator (pure)


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


# --------------------------------------------------------------------------- disk store


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
        import fcntl
        from _signal import ITIMER_REAL, SIGALRM, setitimer, signal  # `signal` imports enum

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


# --------------------------------------------------------------------------- netlink
# `socket` imports enum (~4 ms); `_socket` and `_struct` are the same code without it.

AF_NETLINK, AF_INET, NETLINK_ROUTE = 16, 2, 0
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_NEWADDR, RTM_GETADDR = 16, 17, 18, 20, 22
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
NLMSG_ERROR, NLMSG_DONE = 2, 3
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_MASTER, IFLA_LINKINFO, IFLA_NET_NS_FD = (
    1,
    3,
    4,
    10,
    18,
    28,
)
IFLA_INFO_KIND, IFLA_INFO_DATA, IFLA_INFO_SLAVE_KIND, IFLA_INFO_SLAVE_DATA = 1, 2, 4, 5
IFLA_BRPORT_MODE, VETH_INFO_PEER = 4, 1
IFA_ADDRESS, IFA_LOCAL, IFA_BROADCAST = 1, 2, 4
IFF_UP = 0x1
NLA_F_NESTED = 0x8000


def nl_attr(kind: int, data: bytes) -> bytes:
    from _struct import pack

    return pack("=HH", 4 + len(data), kind) + data + b"\0" * (-len(data) % 4)


def nl_str(kind: int, text: str) -> bytes:
    return nl_attr(kind, text.encode() + b"\0")


def nl_u32(kind: int, value: int) -> bytes:
    from _struct import pack

    return nl_attr(kind, pack("=I", value))


def nl_parse_attrs(data: bytes, offset: int = 0) -> dict[int, bytes]:
    from _struct import unpack_from

    attrs = {}
    while offset + 4 <= len(data):
        length, kind = unpack_from("=HH", data, offset)
        if length < 4:
            break
        attrs[kind & 0x3FFF] = data[offset + 4 : offset + length]
        offset += (length + 3) & ~3
    return attrs


def ifinfomsg(index: int = 0, flags: int = 0, change: int = 0, family: int = 0) -> bytes:
    from _struct import pack

    return pack("=BxHiII", family, 0, index, flags, change)


class Link:
    """What the plugin reads back about a link."""

    __slots__ = ("index", "kind", "master", "name", "up")

    def __init__(self, payload: bytes) -> None:
        from _struct import unpack_from

        _, _, self.index, flags, _ = unpack_from("=BxHiII", payload)
        attrs = nl_parse_attrs(payload, 16)
        info = nl_parse_attrs(attrs.get(IFLA_LINKINFO, b""))
        self.name = attrs.get(IFLA_IFNAME, b"").rstrip(b"\0").decode()
        self.kind = info.get(IFLA_INFO_KIND, b"").rstrip(b"\0").decode()
        self.master = unpack_from("=I", attrs[IFLA_MASTER])[0] if IFLA_MASTER in attrs else 0
        self.up = bool(flags & IFF_UP)


class Netlink:
    """A minimal rtnetlink client in the current network namespace."""

    def __init__(self) -> None:
        import _socket

        self.sock = _socket.socket(
            AF_NETLINK, _socket.SOCK_RAW | _socket.SOCK_CLOEXEC, NETLINK_ROUTE
        )
        self.sock.bind((0, 0))
        self.seq = 0

    def request(self, msg_type: int, flags: int, body: bytes) -> list[bytes]:
        """Send one request; return the payloads of the replies. Raises OSError on a NACK."""
        from _struct import pack, unpack_from

        self.seq += 1
        header = pack("=IHHII", 16 + len(body), msg_type, NLM_F_REQUEST | flags, self.seq, 0)
        self.sock.send(header + body)
        replies: list[bytes] = []
        while True:
            data, offset = self.sock.recv(1 << 16), 0
            while offset + 16 <= len(data):
                length, kind, _, seq, _ = unpack_from("=IHHII", data, offset)
                payload = data[offset + 16 : offset + length]
                offset += (length + 3) & ~3
                if seq != self.seq:
                    continue
                if kind == NLMSG_DONE:
                    return replies
                if kind == NLMSG_ERROR:
                    errno = -unpack_from("=i", payload)[0]
                    if errno:
                        raise OSError(errno, os.strerror(errno))
                    return replies
                replies.append(payload)
                if not flags & NLM_F_DUMP:
                    return replies

    def get_link(self, name: str) -> Link | None:
        try:
            replies = self.request(RTM_GETLINK, 0, ifinfomsg() + nl_str(IFLA_IFNAME, name))
        except OSError as e:
            if e.errno == 19:  # ENODEV
                return None
            raise
        return Link(replies[0])

    def list_ports(self, master: int) -> list[Link]:
        body = ifinfomsg() + nl_u32(IFLA_MASTER, master)
        links = (Link(p) for p in self.request(RTM_GETLINK, NLM_F_DUMP, body))
        return [link for link in links if link.master == master]

    def delete_link(self, name: str) -> bool:
        """Delete a link by name; False when it was already gone."""
        try:
            self.request(RTM_DELLINK, NLM_F_ACK, ifinfomsg() + nl_str(IFLA_IFNAME, name))
        except OSError as e:
            if e.errno == 19:
                return False
            raise
        return True

    def set_up(self, index: int, extra: bytes = b"") -> None:
        self.request(RTM_NEWLINK, NLM_F_ACK, ifinfomsg(index, IFF_UP, IFF_UP) + extra)

    def ipv4_addresses(self, index: int) -> list[tuple[int, int]]:
        from _struct import pack, unpack_from

        found = []
        for payload in self.request(RTM_GETADDR, NLM_F_DUMP, pack("=BBBBI", AF_INET, 0, 0, 0, 0)):
            _, prefix, _, _, ifindex = unpack_from("=BBBBI", payload)
            local = nl_parse_attrs(payload, 8).get(IFA_LOCAL)
            if ifindex == index and local:
                found.append((unpack_from(">I", local)[0], prefix))
        return found

    def add_ipv4_address(self, index: int, ip: int, prefix: int, broadcast: int) -> None:
        from _struct import pack

        body = pack("=BBBBI", AF_INET, prefix, 0, 0, index)
        body += nl_attr(IFA_LOCAL, pack(">I", ip)) + nl_attr(IFA_ADDRESS, pack(">I", ip))
        body += nl_attr(IFA_BROADCAST, pack(">I", broadcast))
        self.request(RTM_NEWADDR, NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE, body)


# --------------------------------------------------------------------------- iproute2


def find_ip_binary() -> str:
    for path in ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"):
        if os.access(path, os.X_OK):
            return path
    raise CniError(ERR_LINK, "iproute2's ip command was not found")


class IpBatch:
    """One `ip -batch -` inside a network namespace, started before its commands are known.

    Starting it early lets iproute2's exec and namespace switch overlap the plugin's own work;
    it reads its commands from stdin when `run` is called.
    """

    def __init__(self, netns_path: str, ip_options: list[str]) -> None:
        argv = [find_ip_binary(), *ip_options, "-batch", "-"]
        directory, name = os.path.split(netns_path)
        if directory in ("/run/netns", "/var/run/netns") and not name.startswith("-"):
            argv[1:1] = ["-n", name]  # where runtimes put them: `ip -n` saves an exec
        else:
            argv[:0] = ["nsenter", f"--net={netns_path}"]  # any other path: /proc/PID/ns/net
        stdin_r, self.stdin = os.pipe()
        self.stdout, out_w = os.pipe()
        self.stderr, err_w = os.pipe()
        actions = [(os.POSIX_SPAWN_DUP2, stdin_r, 0), (os.POSIX_SPAWN_DUP2, out_w, 1)]
        actions.append((os.POSIX_SPAWN_DUP2, err_w, 2))
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
        try:
            self.pid = os.posix_spawnp(argv[0], argv, env, file_actions=actions)
        finally:
            for fd in (stdin_r, out_w, err_w):
                os.close(fd)

    def run(self, batch: str) -> str:
        """Feed the commands, wait, and return stdout; a failed command raises."""
        try:
            os.write(self.stdin, batch.encode())
        except BrokenPipeError:
            batch = ""  # ip already exited (say, the namespace vanished): its stderr says why
        code, out, err = self.finish()
        if code != 0:
            raise CniError(ERR_LINK, "ip failed in the container namespace", err.decode().strip())
        return out.decode()

    def finish(self) -> tuple[int, bytes, bytes]:
        """Close its stdin (an empty batch is a no-op), collect output and reap it; idempotent."""
        if not self.pid:
            return 0, b"", b""
        os.close(self.stdin)
        out, err = read_all(self.stdout), read_all(self.stderr)
        status, self.pid = os.waitpid(self.pid, 0)[1], 0
        return os.waitstatus_to_exitcode(status), out, err


def read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


# --------------------------------------------------------------------------- configuration


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
        self.gateway = (
            calc_gateway(self.network, self.prefix) if gateway is None else parse_ipv4(gateway)
        )
        self.cluster_cidr = parse_cidr(
            raw.get("clusterCidr", raw.get("network", DEFAULTS["clusterCidr"]))
        )
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
    if ("clusterCidr" in conf.raw or "network" in conf.raw) and not cidr_contains(
        conf.cluster_cidr, (conf.network, conf.prefix)
    ):
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


# --------------------------------------------------------------------------- environment


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


# --------------------------------------------------------------------------- network helpers


def ensure_bridge(nl: Netlink, conf: NetConf) -> Link:
    """Create the bridge or accept the existing one; make sure it is up and holds the gateway."""
    try:
        body = ifinfomsg(0, IFF_UP, IFF_UP) + nl_str(IFLA_IFNAME, conf.bridge)
        body += nl_u32(IFLA_MTU, conf.mtu) + linkinfo("bridge")
        nl.request(RTM_NEWLINK, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body)
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


def linkinfo(kind: str, data: bytes = b"") -> bytes:
    info = nl_str(IFLA_INFO_KIND, kind) + (
        nl_attr(IFLA_INFO_DATA | NLA_F_NESTED, data) if data else b""
    )
    return nl_attr(IFLA_LINKINFO | NLA_F_NESTED, info)


def random_mac() -> bytes:
    """A random unicast, locally administered MAC (set here so the result needs no read-back)."""
    raw = bytearray(os.urandom(6))
    raw[0] = (raw[0] & 0xFE) | 0x02
    return bytes(raw)


def format_mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def new_host_veth_name() -> str:
    return HOST_VETH_PREFIX + os.urandom(4).hex()


def setup_veth(
    nl: Netlink, conf: NetConf, bridge: Link, netns_fd: int, ifname: str, host_veth: str
) -> tuple[bytes, bytes]:
    """Create the pair: the host end on the bridge, the peer born in the pod as `ifname`."""
    from _struct import pack

    host_mac, pod_mac = random_mac(), random_mac()
    peer = ifinfomsg() + nl_str(IFLA_IFNAME, ifname) + nl_u32(IFLA_MTU, conf.mtu)
    peer += nl_attr(IFLA_ADDRESS, pod_mac) + nl_attr(IFLA_NET_NS_FD, pack("=I", netns_fd))
    body = (
        ifinfomsg(0, IFF_UP, IFF_UP) + nl_str(IFLA_IFNAME, host_veth) + nl_u32(IFLA_MTU, conf.mtu)
    )
    body += nl_attr(IFLA_ADDRESS, host_mac) + nl_u32(IFLA_MASTER, bridge.index)
    body += linkinfo("veth", nl_attr(VETH_INFO_PEER, peer))
    try:
        nl.request(RTM_NEWLINK, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body)
    except FileExistsError:
        raise CniError(ERR_LINK, f"interface {ifname!r} already exists in the container") from None
    except OSError as e:
        raise CniError(ERR_LINK, f"failed to create veth {host_veth!r}: {e.strerror}") from None
    return host_mac, pod_mac


def setup_hairpin(nl: Netlink, host_veth: str) -> None:
    """Let a pod reach itself through a service address (the bridge port reflects its frames)."""
    link = nl.get_link(host_veth)
    if link is None:
        raise CniError(ERR_LINK, f"veth {host_veth!r} vanished during setup")
    port = nl_attr(IFLA_BRPORT_MODE, b"\x01")
    slave = nl_str(IFLA_INFO_SLAVE_KIND, "bridge") + nl_attr(
        IFLA_INFO_SLAVE_DATA | NLA_F_NESTED, port
    )
    try:
        nl.set_up(link.index, nl_attr(IFLA_LINKINFO | NLA_F_NESTED, slave))
    except OSError as e:
        raise CniError(ERR_LINK, f"failed to set hairpin on {host_veth!r}: {e.strerror}") from None


def setup_pod_side(conf: NetConf, pod_ip: IpBatch, ifname: str, ip: int) -> None:
    """Address, link up and default route inside the pod, in the already started `ip`."""
    address = f"{format_ipv4(ip)}/{conf.prefix}"
    pod_ip.run(
        f"addr add {address} broadcast {format_ipv4(conf.broadcast)} dev {ifname}\n"
        f"link set {ifname} up\n"
        f"route add default via {format_ipv4(conf.gateway)} dev {ifname}\n"
    )


def open_netns(path: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise CniError(ERR_NETNS, f"cannot open network namespace {path!r}: {e.strerror}") from None


def delete_host_veth(nl: Netlink, name: str) -> None:
    if not name:
        return
    try:
        nl.delete_link(name)
    except OSError as e:
        raise CniError(ERR_LINK, f"failed to delete veth {name!r}: {e.strerror}") from None


def unlist_host_veth(name: str) -> None:
    """Delete a veth pair and return as soon as the kernel has unlisted both ends.

    The kernel unregisters the pair in ~2 ms; the deleting syscall then waits another 15-40 ms
    for an RCU grace period, only to reclaim memory. A forked child makes that call and does
    the waiting; we return once the name no longer resolves, so the links are gone for every
    observer and a later ADD can never meet them.
    """
    import time

    if not name:
        return
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = delete_in_child(name)
        finally:
            os._exit(code)  # whatever happened, the child never runs the parent's code
    nl, deadline = Netlink(), time.monotonic() + LOCK_TIMEOUT_S
    while nl.get_link(name) is not None:
        finished, status = os.waitpid(pid, os.WNOHANG)
        errno = os.waitstatus_to_exitcode(status) if finished else 0
        if errno or time.monotonic() > deadline:
            reason = os.strerror(errno) if errno else "still present"
            raise CniError(ERR_LINK, f"failed to delete veth {name!r}: {reason}")
        time.sleep(0.0002)


def delete_in_child(name: str) -> int:
    """The child's side of unlist_host_veth: no inherited stdio, so the runtime never waits."""
    try:
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        Netlink().delete_link(name)
    except OSError as e:
        return e.errno or 1
    return 0


# --------------------------------------------------------------------------- results


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


# --------------------------------------------------------------------------- verbs


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


def cmd_add(conf: NetConf, args: CallArgs) -> dict:
    host_veth = new_host_veth_name()
    with Rollback() as rollback:
        pod_ip = IpBatch(args.netns, [])
        rollback.callback(pod_ip.finish)
        ip = reserve_address(conf, args, host_veth)
        rollback.callback(release_address, conf, args)
        nl = Netlink()
        bridge = ensure_bridge(nl, conf)
        netns_fd = open_netns(args.netns)
        rollback.callback(os.close, netns_fd)
        macs = setup_veth(nl, conf, bridge, netns_fd, args.ifname, host_veth)
        rollback.callback(delete_host_veth, nl, host_veth)
        if conf.hairpin:
            setup_hairpin(nl, host_veth)
        setup_pod_side(conf, pod_ip, args.ifname, ip)
        result = build_result(conf, args, ip, macs, host_veth)
        rollback.pop_all()
        os.close(netns_fd)
    return result


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


def cmd_del(conf: NetConf, args: CallArgs) -> None:
    """Release by (container ID, ifname). Needs no netns: the host veth name is in the store.

    The veth goes first and outside the lock, so concurrent DELs overlap; the address is freed
    only once its interface is gone.
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
        output = IpBatch(args.netns, ["-j"]).run(batch)
    except CniError as e:
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


# --------------------------------------------------------------------------- plumbing

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
    import fcntl

    try:
        fcntl.flock(full, fcntl.LOCK_EX)
        if os.stat(log_file).st_ino == os.fstat(full).st_ino:
            os.replace(log_file, log_file + ".1")
    finally:
        os.close(full)  # and its lock
    return open_log(log_file)


def log_call(env: dict[str, str], log_file: str, outcome: str, started: float) -> None:
    import time

    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    elapsed_ms = (time.perf_counter() - started) * 1000
    command, container = env.get("CNI_COMMAND", "-")[:16], env.get("CNI_CONTAINERID", "-")[:80]
    line = f"{stamp} {command} {container} {env.get('CNI_IFNAME', '-')[:16]!r} {outcome}"
    write_log(log_file, f"{line} {elapsed_ms:.1f}ms\n")


def main() -> int:
    import time

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


if __name__ == "__main__":
    sys.exit(main())
