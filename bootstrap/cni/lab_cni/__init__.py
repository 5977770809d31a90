"""lab-cni, the lab's CNI plugin. Start with plugin.py: the CNI calls, top to bottom.

The other modules are the machinery that keeps a call fast: fastjson (JSON), netlink (the
host side) and iproute2 (the pod side). The package needs the standard library only; on a node
it lives in /opt/cni/lib/lab-cni/ (see bootstrap/cni/install.py).
"""
