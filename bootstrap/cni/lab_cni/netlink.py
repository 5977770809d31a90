"""A minimal rtnetlink client: the plugin configures the host side of a pod with it.

Running `ip` for each host-side step would cost an exec each; a netlink socket costs a
syscall. `socket` imports enum and more (about 4 ms), so this uses the module it wraps,
`_socket`, and `_struct` to pack the messages. The numbers are the kernel's, from the uapi
headers named beside each group.
"""

from __future__ import annotations

import _socket
import os
import time
from _struct import calcsize, pack, unpack_from

ENODEV, ETIMEDOUT = 19, 110  # <asm-generic/errno*.h>: `import errno` would build its table
# <linux/netlink.h>, <linux/socket.h>
AF_NETLINK, AF_INET, NETLINK_ROUTE = 16, 2, 0
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF  # without the nested and byte-order flags
ALIGN_TO = 4  # messages and attributes are padded to 4 bytes
# <linux/rtnetlink.h>
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_NEWADDR, RTM_GETADDR = 16, 17, 18, 20, 22
# <linux/if_link.h>, <linux/if.h>, <linux/veth.h>
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_MASTER = 1, 3, 4, 10
IFLA_LINKINFO, IFLA_NET_NS_FD = 18, 28
IFLA_INFO_KIND, IFLA_INFO_DATA, IFLA_INFO_SLAVE_KIND, IFLA_INFO_SLAVE_DATA = 1, 2, 4, 5
IFLA_BRPORT_MODE = 4  # the bridge port's hairpin mode
VETH_INFO_PEER = 1
IFF_UP = 0x1
# <linux/if_addr.h>
IFA_ADDRESS, IFA_LOCAL, IFA_BROADCAST = 1, 2, 4

# The fixed headers, native byte order ("=", no padding).
NLMSGHDR = "=IHHII"  # length, type, flags, sequence, port id
IFINFOMSG = "=BxHiII"  # family, (pad), device type, index, flags, change mask
IFADDRMSG = "=BBBBI"  # family, prefix length, flags, scope, index
RTATTR = "=HH"  # length, type
NLMSGHDR_LEN, IFINFOMSG_LEN = calcsize(NLMSGHDR), calcsize(IFINFOMSG)
IFADDRMSG_LEN, RTATTR_LEN = calcsize(IFADDRMSG), calcsize(RTATTR)
RECV_BUFFER = 1 << 16
UNLIST_POLL_S = 0.0002


def aligned(length: int) -> int:
    return (length + ALIGN_TO - 1) & ~(ALIGN_TO - 1)


def nl_attr(kind: int, data: bytes) -> bytes:
    padding = b"\0" * (aligned(len(data)) - len(data))
    return pack(RTATTR, RTATTR_LEN + len(data), kind) + data + padding


def nl_str(kind: int, text: str) -> bytes:
    return nl_attr(kind, text.encode() + b"\0")


def nl_u32(kind: int, value: int) -> bytes:
    return nl_attr(kind, pack("=I", value))


def nl_nested(kind: int, data: bytes) -> bytes:
    return nl_attr(kind | NLA_F_NESTED, data)


def nl_ipv4(kind: int, ip: int) -> bytes:
    return nl_attr(kind, pack(">I", ip))  # addresses travel in network byte order


def nl_parse_attrs(data: bytes, offset: int = 0) -> dict[int, bytes]:
    attrs = {}
    while offset + RTATTR_LEN <= len(data):
        length, kind = unpack_from(RTATTR, data, offset)
        if length < RTATTR_LEN:
            break
        attrs[kind & NLA_TYPE_MASK] = data[offset + RTATTR_LEN : offset + length]
        offset += aligned(length)
    return attrs


def ifinfomsg(index: int = 0, flags: int = 0, change: int = 0) -> bytes:
    return pack(IFINFOMSG, 0, 0, index, flags, change)


def linkinfo(kind: str, data: bytes = b"") -> bytes:
    """IFLA_LINKINFO: the link's kind (bridge, veth), and its kind-specific attributes."""
    info = nl_str(IFLA_INFO_KIND, kind) + (nl_nested(IFLA_INFO_DATA, data) if data else b"")
    return nl_nested(IFLA_LINKINFO, info)


class Link:
    """What the plugin reads back about a link."""

    __slots__ = ("index", "kind", "master", "name", "up")

    def __init__(self, payload: bytes) -> None:
        _, _, self.index, flags, _ = unpack_from(IFINFOMSG, payload)
        attrs = nl_parse_attrs(payload, IFINFOMSG_LEN)
        info = nl_parse_attrs(attrs.get(IFLA_LINKINFO, b""))
        self.name = attrs.get(IFLA_IFNAME, b"").rstrip(b"\0").decode()
        self.kind = info.get(IFLA_INFO_KIND, b"").rstrip(b"\0").decode()
        self.master = unpack_from("=I", attrs[IFLA_MASTER])[0] if IFLA_MASTER in attrs else 0
        self.up = bool(flags & IFF_UP)


class Netlink:
    """An rtnetlink socket in the current network namespace. A refusal by the kernel raises
    OSError with its errno (FileExistsError for EEXIST, and so on)."""

    def __init__(self) -> None:
        self.sock = _socket.socket(
            AF_NETLINK, _socket.SOCK_RAW | _socket.SOCK_CLOEXEC, NETLINK_ROUTE
        )
        self.sock.bind((0, 0))  # port id 0: the kernel assigns one
        self.seq = 0

    def request(self, msg_type: int, flags: int, body: bytes) -> list[bytes]:
        """Send one request; return the payloads of the replies. Raises OSError on a NACK."""
        self.seq += 1
        header = pack(NLMSGHDR, NLMSGHDR_LEN + len(body), msg_type, NLM_F_REQUEST | flags,
                      self.seq, 0)
        self.sock.send(header + body)
        replies: list[bytes] = []
        while True:
            data, offset = self.sock.recv(RECV_BUFFER), 0
            while offset + NLMSGHDR_LEN <= len(data):
                length, kind, _, seq, _ = unpack_from(NLMSGHDR, data, offset)
                payload = data[offset + NLMSGHDR_LEN : offset + length]
                offset += aligned(length)
                if seq != self.seq:
                    continue
                if kind == NLMSG_DONE:
                    return replies
                if kind == NLMSG_ERROR:  # an ACK is an "error" 0
                    code = -unpack_from("=i", payload)[0]
                    if code:
                        raise OSError(code, os.strerror(code))
                    return replies
                replies.append(payload)
                if not flags & NLM_F_DUMP:
                    return replies

    def get_link(self, name: str) -> Link | None:
        try:
            replies = self.request(RTM_GETLINK, 0, ifinfomsg() + nl_str(IFLA_IFNAME, name))
        except OSError as e:
            if e.errno == ENODEV:
                return None
            raise
        return Link(replies[0])

    def list_ports(self, master: int) -> list[Link]:
        """The links attached to a bridge."""
        body = ifinfomsg() + nl_u32(IFLA_MASTER, master)
        links = (Link(p) for p in self.request(RTM_GETLINK, NLM_F_DUMP, body))
        return [link for link in links if link.master == master]

    def create_bridge(self, name: str, mtu: int) -> None:
        """A new bridge, up; FileExistsError if the name is taken."""
        body = ifinfomsg(0, IFF_UP, IFF_UP) + nl_str(IFLA_IFNAME, name)
        body += nl_u32(IFLA_MTU, mtu) + linkinfo("bridge")
        self.request(RTM_NEWLINK, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body)

    def create_veth(self, name: str, mac: bytes, *, mtu: int, master: int, peer_name: str,
                    peer_mac: bytes, peer_netns_fd: int) -> None:
        """A veth pair, up: this end on `master`, the peer born in another namespace (so its
        name never exists here). FileExistsError if either name is taken."""
        peer = ifinfomsg() + nl_str(IFLA_IFNAME, peer_name) + nl_u32(IFLA_MTU, mtu)
        peer += nl_attr(IFLA_ADDRESS, peer_mac) + nl_u32(IFLA_NET_NS_FD, peer_netns_fd)
        body = ifinfomsg(0, IFF_UP, IFF_UP) + nl_str(IFLA_IFNAME, name) + nl_u32(IFLA_MTU, mtu)
        body += nl_attr(IFLA_ADDRESS, mac) + nl_u32(IFLA_MASTER, master)
        body += linkinfo("veth", nl_attr(VETH_INFO_PEER, peer))
        self.request(RTM_NEWLINK, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body)

    def set_up(self, index: int) -> None:
        self.request(RTM_NEWLINK, NLM_F_ACK, ifinfomsg(index, IFF_UP, IFF_UP))

    def set_hairpin(self, name: str) -> None:
        """Hairpin mode on a bridge port: the bridge may send a frame back where it came from.
        (RTM_NEWLINK without NLM_F_CREATE changes the link that has this name.)"""
        port = nl_nested(IFLA_INFO_SLAVE_DATA, nl_attr(IFLA_BRPORT_MODE, b"\x01"))
        slave = nl_nested(IFLA_LINKINFO, nl_str(IFLA_INFO_SLAVE_KIND, "bridge") + port)
        body = ifinfomsg(0, IFF_UP, IFF_UP) + nl_str(IFLA_IFNAME, name) + slave
        self.request(RTM_NEWLINK, NLM_F_ACK, body)

    def delete_link(self, name: str) -> bool:
        """Delete a link by name; False when it was already gone."""
        try:
            self.request(RTM_DELLINK, NLM_F_ACK, ifinfomsg() + nl_str(IFLA_IFNAME, name))
        except OSError as e:
            if e.errno == ENODEV:
                return False
            raise
        return True

    def ipv4_addresses(self, index: int) -> list[tuple[int, int]]:
        """(address, prefix length) of each IPv4 address on a link."""
        found = []
        dump = self.request(RTM_GETADDR, NLM_F_DUMP, pack(IFADDRMSG, AF_INET, 0, 0, 0, 0))
        for payload in dump:
            _, prefix, _, _, ifindex = unpack_from(IFADDRMSG, payload)
            local = nl_parse_attrs(payload, IFADDRMSG_LEN).get(IFA_LOCAL)
            if ifindex == index and local:
                found.append((unpack_from(">I", local)[0], prefix))
        return found

    def add_ipv4_address(self, index: int, ip: int, prefix: int, broadcast: int) -> None:
        body = pack(IFADDRMSG, AF_INET, prefix, 0, 0, index)
        body += nl_ipv4(IFA_LOCAL, ip) + nl_ipv4(IFA_ADDRESS, ip)
        body += nl_ipv4(IFA_BROADCAST, broadcast)
        self.request(RTM_NEWADDR, NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE, body)


def delete_link_unlisted(name: str, timeout_s: float) -> None:
    """Delete a link and return as soon as the kernel has unlisted it.

    The kernel unregisters a veth pair in ~2 ms; the deleting syscall then waits another
    15-40 ms for an RCU grace period, only to reclaim memory. A forked child makes that call
    and does the waiting; this returns once the name no longer resolves, so the link is gone
    for every observer. Raises OSError with the child's errno, or TimeoutError.
    """
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = _delete_in_child(name)
        finally:
            os._exit(code)  # whatever happened, the child never runs the parent's code
    nl, deadline, reaped = Netlink(), time.monotonic() + timeout_s, False
    while nl.get_link(name) is not None:
        if not reaped:
            finished, status = os.waitpid(pid, os.WNOHANG)
            reaped = finished != 0
            code = os.waitstatus_to_exitcode(status) if reaped else 0
            if code:
                raise OSError(code, os.strerror(code))
        if time.monotonic() > deadline:
            raise TimeoutError(ETIMEDOUT, "still present")
        time.sleep(UNLIST_POLL_S)


def _delete_in_child(name: str) -> int:
    """The child's side: no inherited stdio, so the runtime reading the plugin's output never
    waits for it. Its exit status is the errno of the deletion, or 0."""
    try:
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        Netlink().delete_link(name)
    except OSError as e:
        return e.errno or 1
    return 0
