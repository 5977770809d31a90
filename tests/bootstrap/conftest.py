"""Fixtures for the bootstrap tests: a real sshd on loopback, and root-only skips."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bootstrap.sshd import SSHD, TestSSHServer

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
needs_sshd = pytest.mark.skipif(not Path(SSHD).exists() or os.geteuid() != 0,
                                reason="needs root and OpenSSH's sshd")
needs_netns = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip")
                                 or not shutil.which("iptables-restore"),
                                 reason="needs root, iproute2 and iptables")


@pytest.fixture
def sshd_server(tmp_path: Path) -> Iterator[TestSSHServer]:
    """An sshd that is not started yet: tests call start() when they want it to answer."""
    server = TestSSHServer(tmp_path / "sshd")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sshd(sshd_server: TestSSHServer) -> TestSSHServer:
    sshd_server.start()
    return sshd_server
