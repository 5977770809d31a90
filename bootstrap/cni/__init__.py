"""The CNI plugin's source (lab_cni/) and its installed layout (install.py)."""
