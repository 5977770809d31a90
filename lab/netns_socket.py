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


def connect_in_namespace(namespace: str, host: str, port: int,
                         timeout: float | None) -> socket.socket:
    outcome: list[socket.socket | BaseException] = []

    def connect() -> None:
        try:
            fd = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    error = ctypes.get_errno()
                    raise OSError(error, f"setns into {namespace}: {os.strerror(error)}")
            finally:
                os.close(fd)
            outcome.append(socket.create_connection((host, port), timeout=timeout))
        except BaseException as error:  # handed to the caller's thread below
            outcome.append(error)

    thread = threading.Thread(target=connect, name=f"netns-{namespace}")
    thread.start()
    thread.join()
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]
