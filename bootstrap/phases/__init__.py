"""Bootstrap phases, kubeadm style: `Phase` and `Runner` in workflow, one module per phase,
the workflows in local and cloud."""

from bootstrap.phases.cloud import cloud_workflow, run_cloud_workflow
from bootstrap.phases.local import local_workflow, run_local_workflow
from bootstrap.phases.workflow import Phase, Runner

__all__ = ["Phase", "Runner", "cloud_workflow", "local_workflow", "run_cloud_workflow",
           "run_local_workflow"]
