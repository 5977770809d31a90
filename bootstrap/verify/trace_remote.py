"""A packet trace on nodes reached over SSH (a cloud stack's; the lab's nodes in the tests).

On each node the agent (trace_agent.py, sent on its command line: nothing is installed) runs
detached, as root, until it is told to stop or its deadline passes: a lost connection or a
Ctrl-C here leaves no trace rule behind for longer than that. Its report goes to a file in
a directory of its own under /run, read and removed when it stops.
"""

from __future__ import annotations

import json
import secrets
import shlex
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bootstrap.node_network import NODE_PYTHON
from bootstrap.remote import NodeCluster
from bootstrap.verify import trace_agent
from bootstrap.verify.checks import ProbeResult
from bootstrap.verify.trace import (
    Flow,
    TraceError,
    TraceUnavailable,
    traced_part,
    untraceable,
)

DEADLINE_S = 60  # the longest an agent keeps its rules if nobody stops it
READY_TIMEOUT_S = 15.0
POLL_S = 0.1
COMMAND_TIMEOUT_S = 30


def agent_directory() -> str:
    """One directory per trace, so two traces on a node never mix."""
    return f"/run/k8s-cni-lab-trace-{secrets.token_hex(4)}"


def start_command(flow: Flow, directory: str) -> str:
    """Start the agent in its own session (setsid: the SSH command's end does not end it),
    its process id in the directory."""
    source = Path(trace_agent.__file__).read_text()
    spec = json.dumps(flow.agent_spec(bridge=False))
    # Only the agent goes to the background: a backgrounded `a && b` would keep a shell,
    # and the SSH command, waiting for it.
    return (f"mkdir -m 700 {directory} && {{ setsid {NODE_PYTHON} -c {shlex.quote(source)} "
            f"{shlex.quote(spec)} {DEADLINE_S} > {directory}/out 2>&1 < /dev/null & "
            f"echo $! > {directory}/pid; }}")


def report_command(directory: str) -> str:
    return f"cat {directory}/out"


def stop_command(directory: str) -> str:
    """SIGTERM: the agent removes its rules and reports; wait for it, print, clean up (also
    where it did not start)."""
    # Done is gone or a zombie: the agent's parent, the shell that started it, is gone, and
    # whoever inherited it may reap it late.
    return (f"pid=$(cat {directory}/pid 2>/dev/null) && kill -TERM $pid 2>/dev/null && "
            f"while kill -0 $pid 2>/dev/null && ! grep -qs '^State:[[:space:]]*Z' "
            f"/proc/$pid/status; do sleep 0.02; done; "
            f"cat {directory}/out 2>/dev/null; rm -rf {directory}")


def traced_on_nodes(ssh: NodeCluster, names: Sequence[str], flow: Flow,
                    send: Callable[[], ProbeResult]) -> tuple[ProbeResult, dict[str, str]]:
    """Start an agent on each node, send the probe once all listen, stop every agent that
    started whatever happens; returns the probe's result and what each node traced."""
    directory, tried = agent_directory(), []
    try:
        for name in names:
            tried.append(name)
            ssh.node(name).run(start_command(flow, directory), timeout=COMMAND_TIMEOUT_S,
                               quiet=True)
        for name in names:
            _wait_ready(ssh, name, directory)
        result = send()
    finally:
        outputs = {name: ssh.node(name).run(stop_command(directory),
                                            timeout=COMMAND_TIMEOUT_S, check=False,
                                            quiet=True).output
                   for name in tried}
    return result, {name: traced_part(output) for name, output in outputs.items()}


def _wait_ready(ssh: NodeCluster, name: str, directory: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        report = ssh.node(name).run(report_command(directory), timeout=COMMAND_TIMEOUT_S,
                                    check=False, quiet=True).output
        if trace_agent.READY in report.splitlines():
            return
        reason = untraceable(report)
        if reason:
            raise TraceUnavailable(f"{name}: {reason}")
        if time.monotonic() > deadline:
            raise TraceError(f"the trace agent on {name} did not start: {report.strip()}")
        time.sleep(POLL_S)
