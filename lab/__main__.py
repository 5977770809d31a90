"""`python -m lab`: the local lab's command line (what `make lab` and `make down` run).

    up     build the simulated VPC and nodes, bootstrap them over SSH, start pods, run the
           checks, print the table, and tear it all down (unless --keep)
    down   remove a lab, even after a crash; safe to repeat
    enter  a shell on a node of a kept lab, or inside one of its pods
    check  the connectivity checks on a kept lab, with the likely cause of each failure
    status what each node of a kept lab holds, marked where it differs from the plan
    trace  one probe between two endpoints of a kept lab, traced hop by hop by the kernel
           (with --stack NAME: between two test pods, on both pods' nodes)
    bootstrap  run bootstrap phases (comma-separated) on a kept lab, idempotently
    ssh    an interactive shell on a node of a Pulumi stack (check, status and bootstrap
           also take --stack NAME)
    pods, run, exec, delete  list, start, use and remove a kept lab's pods, as kubectl does
    exercises  list the exercises; exercise [NAME] breaks the lab for you to fix;
           hint, solution help with the open one (each also takes --stack NAME)
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from rich.console import Console

from infra.plan import NODE_LOGIN
from lab.layout import LAB_NAME


def lab_name(value: str) -> str:
    if not LAB_NAME.match(value):
        raise argparse.ArgumentTypeError("1-20 lowercase letters or digits, starting with a letter")
    return value


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lab", description=__doc__.splitlines()[0])
    parser.add_argument("--name", type=lab_name, default="k8slab",
                        help="prefix of the lab's namespaces (default k8slab)")
    verbs = parser.add_subparsers(dest="verb", required=True)
    up = verbs.add_parser("up", help="build, bootstrap, check, and tear down")
    up.add_argument("--nodes", type=int, default=3, help="node count, master included")
    up.add_argument("--keep", action="store_true", help="leave the lab up to explore")
    up.add_argument("--user", default=NODE_LOGIN,
                    help=f"the bootstrap's SSH login: {NODE_LOGIN} (with sudo, as on EC2) or root")
    up.add_argument("--steps", action="store_true",
                    help="replay the seed lab's story: checks before and after each fix")
    verbs.add_parser("down", help="remove the lab and everything it made")
    enter = verbs.add_parser("enter", help="a shell on a node, or in a pod on that node")
    enter.add_argument("node")
    enter.add_argument("pod", nargs="?")
    enter.add_argument("-c", "--command", help="run this (bash -c) instead of a shell")
    on_stack = argparse.ArgumentParser(add_help=False)
    on_stack.add_argument("--stack", help="a Pulumi stack instead of the kept lab (read "
                          "through `pulumi stack output`)")
    verbs.add_parser("check", parents=[on_stack], help="run the connectivity checks")
    verbs.add_parser("status", parents=[on_stack],
                     help="what each node holds, against the plan")
    trace = verbs.add_parser("trace", parents=[on_stack],
                             help="one probe, hop by hop, with the rules it met")
    trace.add_argument("source", help="a pod, a node, internet, or an address")
    trace.add_argument("target", help="a pod, a node, internet, or an address")
    trace.add_argument("--port", type=int, help="probe this TCP port with HTTP (default: "
                       "a pod's web server, the internet's echo server, else a ping)")
    phases = verbs.add_parser("bootstrap", parents=[on_stack],
                              help="run bootstrap phases, idempotently (make phases lists them)")
    phases.add_argument("phases", type=phase_list,
                        help="comma-separated: node-network,cni; or all")
    add_pod_verbs(verbs)
    verbs.add_parser("exercises", parents=[on_stack], help="list the exercises")
    exercise = verbs.add_parser("exercise", parents=[on_stack],
                                help="inject one fault for you to find and fix")
    exercise.add_argument("exercise", nargs="?", default="",
                          help="its name (make exercises lists them); empty: a random one")
    exercise.add_argument("--node", help="the node to break (default: the first worker)")
    verbs.add_parser("hint", parents=[on_stack], help="the next hint for the open exercise")
    verbs.add_parser("solution", parents=[on_stack],
                     help="the commands that fix the open exercise, and why")
    ssh = verbs.add_parser("ssh", help="an interactive shell on a node of a Pulumi stack")
    ssh.add_argument("node")
    ssh.add_argument("--stack", required=True, help="the Pulumi stack")
    return parser.parse_args(argv)


def add_pod_verbs(verbs: argparse._SubParsersAction) -> None:
    verbs.add_parser("pods", help="the kept lab's pods: node, address, running or not")
    run = verbs.add_parser("run", help="start a pod (CNI ADD) running the echo server")
    run.add_argument("pod", help="its name: a DNS label, e.g. web-2")
    run.add_argument("--node", help="where it runs (default: the first worker, worker-1)")
    execute = verbs.add_parser("exec", help="run a command in a pod (a shell if none)",
                               usage="python -m lab exec POD [-- COMMAND ...]")
    execute.add_argument("pod", help="its name (pods lists them); its node is found for you")
    execute.add_argument("command", nargs=argparse.REMAINDER,
                         help="the command and its arguments, after --")
    delete = verbs.add_parser("delete", help="remove a pod (CNI DEL)")
    delete.add_argument("pod", help="its name (pods lists them)")


def phase_list(value: str) -> list[str]:
    """Comma-separated phase names; `all` is every phase of the workflow (an empty list)."""
    names = [name.strip() for name in value.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("name at least one phase, e.g. node-network, or all "
                                         "(make phases lists them)")
    return [] if names == ["all"] else names


def show_progress(console: Console) -> None:
    """The bootstrap's phase lines ("[cni] worker-1: installed ..."), as kubeadm prints."""
    from rich.logging import RichHandler

    handler = RichHandler(console=console, show_path=False, show_level=False,
                          log_time_format="[%X]")
    project = logging.getLogger("k8s_cni_lab")
    project.addHandler(handler)
    project.setLevel(logging.INFO)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    console = Console(log_path=False)
    if not console.is_terminal:
        console = Console(log_path=False, width=120)  # logs and CI: room for the table
    if args.verb == "ssh" and not args.stack:
        console.print("[red]ssh needs a stack:[/] make ssh NODE=worker-1 STACK=dev (on a kept "
                      "lab: python -m lab enter worker-1)", soft_wrap=True)
        return 2
    if args.verb == "exercises":  # the catalog: no lab or stack needed
        from lab import exercise

        return exercise.listing(args.name, console, on_stack=bool(args.stack))
    if getattr(args, "stack", None):
        return on_stack(args, console)
    if os.geteuid() != 0:
        console.print("[red]The lab needs root[/] (namespaces, iptables): run it with sudo.")
        return 2
    show_progress(console)
    # A plain `kill` must tear the lab down like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
    from bootstrap.errors import LabError  # after the checks: lab.cli imports paramiko
    from lab import cli
    from lab.lifecycle import LabOptions

    if args.verb == "up":
        options = LabOptions(name=args.name, node_count=args.nodes, user=args.user)
        return cli.up(options, keep=args.keep, steps=args.steps, console=console)
    try:
        return _on_kept_lab(args, console)
    except LabError as error:  # no kept lab, an unknown phase, a node that fails
        console.print(f"[red]{args.verb} failed:[/] {error}", soft_wrap=True)
        return 1


def on_stack(args: argparse.Namespace, console: Console) -> int:
    """check, status, bootstrap, trace, ssh and the exercises on a Pulumi stack: no root
    needed; nothing local changes but the open exercise's record."""
    from bootstrap import stack_commands
    from bootstrap.errors import LabError
    from bootstrap.stack import read_stack

    show_progress(console)
    try:
        stack = read_stack(args.stack)
        if args.verb == "check":
            return stack_commands.check(stack, console)
        if args.verb == "status":
            return stack_commands.status(stack, console)
        if args.verb == "bootstrap":
            return stack_commands.run(stack, args.phases)
        if args.verb == "ssh":
            return stack_commands.ssh(stack, args.node)
        if args.verb == "exercise":
            return stack_commands.start_exercise(stack, args.exercise or None, args.node,
                                                 console)
        if args.verb == "hint":
            return stack_commands.hint(stack, console)
        if args.verb == "solution":
            return stack_commands.solution(stack, console)
        if args.verb == "trace":
            return stack_commands.trace(stack, args.source, args.target, args.port, console)
    except LabError as error:
        console.print(f"[red]{args.verb} failed:[/] {error}", soft_wrap=True)
        return 1
    console.print(f"[red]{args.verb} works on a kept lab only[/], not on a stack")
    return 2


def _on_kept_lab(args: argparse.Namespace, console: Console) -> int:
    from lab import cli, exercise, pods

    if args.verb == "exercise":
        return exercise.start(args.name, args.exercise or None, args.node, console)
    if args.verb == "hint":
        return exercise.hint(args.name, console)
    if args.verb == "solution":
        return exercise.solution(args.name, console)

    if args.verb == "down":
        return cli.down(args.name, console)
    if args.verb == "check":
        return cli.check(args.name, console)
    if args.verb == "status":
        return cli.status(args.name, console)
    if args.verb == "bootstrap":
        return cli.run(args.name, args.phases, console)
    if args.verb == "trace":
        from lab import trace

        return trace.trace(args.name, args.source, args.target, args.port, console)
    if args.verb == "pods":
        return pods.show(args.name, console)
    if args.verb == "run":
        return pods.run(args.name, args.pod, args.node, console)
    if args.verb == "exec":
        return pods.execute(args.name, args.pod, args.command, console)
    if args.verb == "delete":
        return pods.delete(args.name, args.pod, console)
    return cli.enter(args.name, args.node, args.pod, args.command)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
