"""`make bench`: the plugin against Debian's reference plugins, then the local lab with 3
and with 12 nodes. Each prints ratios measured side by side in one run. Needs root."""

import sys

from bench import cni, lab

if __name__ == "__main__":
    status = cni.main()
    lab.main()
    sys.exit(status)
