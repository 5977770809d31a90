"""Bootstrap phases, kubeadm style: `Phase` and `Runner` in workflow, one module per phase."""

from bootstrap.phases.local import local_workflow, run_local_workflow
from bootstrap.phases.workflow import Phase, Runner

__all__ = ["Phase", "Runner", "local_workflow", "run_local_workflow"]
