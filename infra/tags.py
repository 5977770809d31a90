"""Tags shared by every taggable resource, so the console and billing show what owns what."""

from __future__ import annotations

import pulumi


def resource_tags(suffix: str, **extra: str) -> dict[str, str]:
    """A Name tag unique to this stack, plus the project and stack that own the resource."""
    project, stack = pulumi.get_project(), pulumi.get_stack()
    return {"Name": f"{project}-{stack}-{suffix}", "project": project, "stack": stack, **extra}
