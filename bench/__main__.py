"""`make bench`: every benchmark of the project (the lab benchmark will join this one)."""

import sys

from bench import cni

if __name__ == "__main__":
    sys.exit(cni.main())
