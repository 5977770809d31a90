"""TCP connections that start inside a network namespace, from this process.

The operator's SSH client runs on the host but must reach the nodes the way it does on AWS:
from the internet, through the gateway, at their public addresses. setns(2) moves only the
calling thread, and a socket stays in the namespace it was created in, so a short-lived
thread joins the lab's internet namespace, connects, and hands the socket back: no helper
process, and the host's own network is never touched.
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def enter_network_namespace(path: str) -> None:
    """Move the calling thread (only) into the network namespace at `path`."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"setns into {path}: {os.strerror(error)}")
    finally:
        os.close(fd)


def connect_in_namespace(namespace: str, host: str, port: int,
                         timeout: float | None) -> socket.socket:
    outcome: list[socket.socket | BaseException] = []

    def connect() -> None:
        try:
            enter_network_namespace(f"/run/netns/{namespace}")
            outcome.append(socket.create_connection((host, port), timeout=timeout))
        except BaseException as error:  # handed to the caller's thread below
            outcome.append(error)

    thread = threading.Thread(target=connect, name=f"netns-{namespace}")
    thread.start()
    thread.join()
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]
