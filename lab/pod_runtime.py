#!/usr/bin/python3 -IS
"""The local lab's container-runtime stand-in: what containerd does for a pod's network.

    pod_runtime.py run NAME --port PORT   create the pod netns, CNI ADD, start the workload
    pod_runtime.py stop NAME              stop the workload, CNI DEL, remove the netns
    pod_runtime.py list                   each pod started here: name, address, running

Like libcni it reads the first *.conflist in /etc/cni/net.d, runs each plugin from
/opt/cni/bin with the CNI_* variables and the plugin's config on stdin (adding name,
cniVersion and prevResult), and caches the ADD result for DEL. Runs on a lab
node as root; standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

CONF_DIR = Path("/etc/cni/net.d")
CNI_PATH = "/opt/cni/bin"
STATE_DIR = Path("/var/lib/k8s-cni-lab/pods")
LOG_DIR = Path("/var/log/pods")
WORKLOAD = Path(__file__).with_name("echo_server.py")
IFNAME = "eth0"
# A pod's name names its netns and its files here; Kubernetes makes it a DNS label.
POD_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class PodRuntimeError(Exception):
    pass


def load_conflist() -> dict:
    lists = sorted(CONF_DIR.glob("*.conflist"))
    if not lists:
        raise PodRuntimeError(f"no *.conflist in {CONF_DIR}: has the bootstrap's cni phase run?")
    return json.loads(lists[0].read_text())


def invoke(conflist: dict, plugin: dict, command: str, pod: dict, prev: dict | None) -> dict:
    config = {**plugin, "name": conflist["name"], "cniVersion": conflist["cniVersion"]}
    if prev is not None:
        config["prevResult"] = prev
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": command,
           "CNI_CONTAINERID": pod["id"], "CNI_NETNS": pod["netns"], "CNI_IFNAME": IFNAME,
           "CNI_PATH": CNI_PATH}
    done = subprocess.run([f"{CNI_PATH}/{plugin['type']}"], input=json.dumps(config).encode(),
                          env=env, capture_output=True, check=False)
    output = done.stdout.decode()
    if done.returncode != 0:
        raise PodRuntimeError(f"CNI {command} by {plugin['type']} failed ({done.returncode}): "
                            f"{output.strip() or done.stderr.decode().strip()}")
    return json.loads(output) if output.strip() else {}


def name_problem(name: str) -> str | None:
    if POD_NAME.match(name):
        return None
    return (f"{name!r} is not a pod name: use up to 63 lowercase letters, digits or '-', "
            "starting and ending with a letter or digit (e.g. web-2)")


def pod_record(name: str) -> dict:
    # containerd's sandbox IDs are 64 hex characters; derive one so a retry reuses it.
    return {"name": name, "id": hashlib.sha256(name.encode()).hexdigest(),
            "netns": f"/run/netns/{name}"}


def state_file(name: str) -> Path:
    return STATE_DIR / f"{name}.json"


def run_pod(name: str, port: int) -> dict:
    """Like RunPodSandbox: on any failure, undo what was done (no netns, no address kept)."""
    problem = name_problem(name)
    if problem:
        raise PodRuntimeError(problem)
    pod = pod_record(name)
    if state_file(name).exists() or Path(pod["netns"]).exists():
        raise PodRuntimeError(f"a pod named {name} exists already on this node: stop it first")
    conflist = load_conflist()
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        result: dict | None = None
        for plugin in conflist["plugins"]:
            result = invoke(conflist, plugin, "ADD", pod, result)
            pod["result"] = result
        assert result is not None, "a conflist has at least one plugin"
        pod["ip"] = result["ips"][0]["address"].split("/")[0]
        workload = start_workload(name, port)
        pod["pid"] = workload.pid
        wait_listening(workload, pod["ip"], port)
    except BaseException:
        try:
            remove_pod(pod, conflist)
        except Exception as cleanup:  # report both; the first failure is the one to fix
            print(f"pod_runtime run: undoing {name} failed too: {cleanup}", file=sys.stderr)
        raise
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    state_file(name).write_text(json.dumps(pod))
    return pod


def start_workload(name: str, port: int) -> subprocess.Popen[bytes]:
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    # nsenter, not `ip netns exec`: the workload must stay in the node's mount namespace,
    # which is how the lab finds (and stops) every process of a node.
    with (LOG_DIR / f"{name}.log").open("ab") as log:  # the child keeps its own copy
        return subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{name}", "/usr/bin/python3", "-IS", str(WORKLOAD),
             "serve", "--port", str(port), "--name", name],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)


def wait_listening(workload: subprocess.Popen[bytes], ip: str, port: int,
                   timeout: float = 10.0) -> None:
    """Return once the workload accepts connections (the node reaches its pods via cni0)."""
    deadline = time.monotonic() + timeout
    while True:
        if workload.poll() is not None:
            raise PodRuntimeError(f"workload exited with status {workload.returncode}; "
                                  f"see {LOG_DIR}")
        try:
            socket.create_connection((ip, port), timeout=1).close()
            return
        except OSError as error:
            if time.monotonic() > deadline:
                raise PodRuntimeError(f"workload on {ip}:{port} not listening: {error}") from None
            time.sleep(0.02)


def stop_pod(name: str) -> None:
    """Idempotent, like a runtime's StopPodSandbox: whatever is already gone is fine."""
    path = state_file(name)
    remove_pod(json.loads(path.read_text()) if path.exists() else pod_record(name),
               load_conflist())
    path.unlink(missing_ok=True)


def remove_pod(pod: dict, conflist: dict) -> None:
    """Stop the workload, CNI DEL in reverse plugin order, remove the netns."""
    if pod.get("pid"):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pod["pid"], signal.SIGTERM)
    try:
        for plugin in reversed(conflist["plugins"]):
            invoke(conflist, plugin, "DEL", pod, pod.get("result"))
    finally:  # a failed DEL must not also leak the namespace
        subprocess.run(["ip", "netns", "del", pod["name"]], check=False, capture_output=True)


def list_pods() -> list[dict]:
    """Every pod started here and whether it runs, read from the kernel: its netns exists and
    its workload process lives in that netns (what `crictl pods` reports as Ready)."""
    pods = [json.loads(path.read_text()) for path in sorted(STATE_DIR.glob("*.json"))]
    return [{"name": pod["name"], "ip": pod["ip"], "running": is_running(pod)} for pod in pods]


def is_running(pod: dict) -> bool:
    try:
        return os.stat(f"/proc/{pod['pid']}/ns/net").st_ino == os.stat(pod["netns"]).st_ino
    except OSError:  # the process or the netns is gone
        return False


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    run_args = verbs.add_parser("run")
    run_args.add_argument("name")
    run_args.add_argument("--port", type=int, required=True)
    verbs.add_parser("stop").add_argument("name")
    verbs.add_parser("list")
    args = parser.parse_args(argv)
    try:
        if args.verb == "run":
            print(json.dumps(run_pod(args.name, args.port)))
        elif args.verb == "list":
            print(json.dumps(list_pods()))
        else:
            stop_pod(args.name)
    except Exception as error:  # one line for the operator; nothing was left behind
        print(f"pod_runtime {args.verb}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
