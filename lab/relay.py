#!/usr/bin/python3 -IS
"""stdin/stdout <-> TCP relay, used as the lab's SSH ProxyCommand.

The operator's SSH client runs on the host; the relay runs inside the lab's internet
namespace (`ip netns exec <lab>-inet relay.py HOST PORT`), so SSH reaches the nodes through
the simulated internet gateway at their public addresses, as it does on AWS, and the host's
own network is never touched.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from collections.abc import Callable


def pump(read_fd: int, write: Callable[[bytes], object]) -> None:
    while data := os.read(read_fd, 65536):
        write(data)


def pump_then_exit(read_fd: int, write: Callable[[bytes], object]) -> None:
    """The server closed: end the whole relay, so the SSH client sees EOF at once."""
    try:
        pump(read_fd, write)
    finally:
        os._exit(0)


def main(host: str, port: int) -> int:
    try:
        conn = socket.create_connection((host, port), timeout=5)
    except OSError as error:
        print(f"relay: {host}:{port}: {error}", file=sys.stderr)
        return 1
    conn.settimeout(None)
    stdout = sys.stdout.fileno()

    def to_stdout(data: bytes) -> None:
        os.write(stdout, data)

    threading.Thread(target=pump_then_exit, args=(conn.fileno(), to_stdout), daemon=True).start()
    try:
        pump(sys.stdin.fileno(), conn.sendall)
    finally:
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2])))
