"""The GitHub workflows, checked offline: schema, zizmor's audits, and our own rules."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = [ROOT / ".github/workflows/test.yml", ROOT / ".github/workflows/preview.yml"]
BIN = Path(sys.executable).parent


def load(path: Path) -> dict:
    # PyYAML reads the `on:` key as True (YAML 1.1); normalise it back.
    document = yaml.safe_load(path.read_text())
    document["on"] = document.pop(True, document.get("on"))
    return document


def tool(name: str) -> str:
    path = BIN / name
    assert path.exists(), f"{name} is missing from the virtualenv: run `make setup`"
    return str(path)


def test_workflows_match_githubs_schema():
    result = subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows",
         *map(str, WORKFLOWS)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_zizmor_finds_nothing():
    result = subprocess.run(
        [tool("zizmor"), "--offline", "--persona=auditor", "--no-progress",
         *map(str, WORKFLOWS)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_action_is_pinned_to_a_commit_with_its_version(path):
    lines = [line for line in path.read_text().splitlines() if "uses:" in line]
    assert lines
    for line in lines:
        assert re.search(r"uses: [\w.-]+/[\w./-]+@[0-9a-f]{40} # v\d+\.\d+\.\d+$", line), line


# The first major of each action that runs on Node 24 (GitHub removes Node 20 from runners).
NODE24_MAJORS = {"actions/checkout": 5, "actions/setup-python": 6,
                 "aws-actions/configure-aws-credentials": 5, "pulumi/actions": 7}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_action_runs_on_node_24(path):
    for action, major in re.findall(r"uses: ([\w.-]+/[\w.-]+)@[0-9a-f]{40} # v(\d+)\.",
                                    path.read_text()):
        assert int(major) >= NODE24_MAJORS[action], f"{action} v{major} runs on Node 20"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_permissions_are_granted_per_job_only(path):
    workflow = load(path)
    assert workflow["permissions"] == {}
    for name, job in workflow["jobs"].items():
        assert "permissions" in job, name
        assert job["permissions"].get("contents") == "read", name


def test_test_workflow_runs_make_test_on_push_and_pull_requests():
    workflow = load(WORKFLOWS[0])
    assert set(workflow["on"]) == {"push", "pull_request"}
    (job,) = workflow["jobs"].values()
    assert job["permissions"] == {"contents": "read"}
    assert any(step.get("run", "").endswith("make test") for step in job["steps"])


def test_preview_runs_pulumi_preview_on_pull_requests_with_one_edited_comment():
    workflow = load(WORKFLOWS[1])
    assert set(workflow["on"]) == {"pull_request"}
    (job,) = workflow["jobs"].values()
    assert job["permissions"] == {"contents": "read", "id-token": "write",
                                  "pull-requests": "write"}
    pulumi = next(step for step in job["steps"] if step.get("uses", "").startswith("pulumi/"))
    assert pulumi["with"]["command"] == "preview"
    assert pulumi["with"]["comment-on-pr"] is True
    assert pulumi["with"]["edit-pr-comment"] is True


def test_preview_uses_oidc_and_skips_forks():
    (job,) = load(WORKFLOWS[1])["jobs"].values()
    assert "github.event.pull_request.head.repo.full_name == github.repository" in job["if"]
    aws = next(step for step in job["steps"]
               if step.get("uses", "").startswith("aws-actions/configure-aws-credentials@"))
    assert aws["with"]["role-to-assume"] == "${{ vars.AWS_ROLE_ARN }}"
    text = WORKFLOWS[1].read_text()
    assert "aws-access-key-id" not in text and "AWS_SECRET_ACCESS_KEY" not in text
