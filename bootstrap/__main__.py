"""`python -m bootstrap`: the bootstrap's command line (what `make phases` runs).

    phases   every phase of the local and the cloud workflow, in run order, with what it does
"""

from __future__ import annotations

import argparse
import sys

from bootstrap.phases import cloud_workflow, local_workflow
from bootstrap.phases.workflow import describe


def print_phases() -> None:
    for title, phases in (("local lab (make lab)", local_workflow()),
                          ("cloud (pulumi up)", cloud_workflow())):
        described = describe(phases)
        width = max(len(path) for path, _ in described)
        print(f"{title}:")
        for path, short in described:
            print(f"  {path:<{width}}  {short}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bootstrap",
                                     description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    verbs.add_parser("phases", help="list the workflows' phases")
    parser.parse_args(argv)
    print_phases()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
