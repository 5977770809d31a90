"""`python -m lab`: the local lab's command line (what `make lab` and `make down` run).

    up     build the simulated VPC and nodes, bootstrap them over SSH, start pods, run the
           checks, print the table, and tear it all down (unless --keep)
    down   remove a lab, even after a crash; safe to repeat
    enter  a shell on a node of a kept lab, or inside one of its pods
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
    return parser.parse_args(argv)


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
    if os.geteuid() != 0:
        console.print("[red]The lab needs root[/] (namespaces, iptables): run it with sudo.")
        return 2
    show_progress(console)
    # A plain `kill` must tear the lab down like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
    from lab import cli  # after the checks: it imports paramiko and the bootstrap
    from lab.lifecycle import LabOptions

    if args.verb == "up":
        options = LabOptions(name=args.name, node_count=args.nodes, user=args.user)
        return cli.up(options, keep=args.keep, steps=args.steps, console=console)
    if args.verb == "down":
        return cli.down(args.name, console)
    return cli.enter(args.name, args.node, args.pod, args.command, console)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
