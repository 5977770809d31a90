"""The lab's command line draws the checks into the checkout's out/<lab>/, where they outlive
the lab; the test labs' pictures are removed when the session ends. `practice_lab`: a
healthy lab per test module, bootstrapped with its pods, removed even when a test fails."""

from __future__ import annotations

import io
import re
import shutil
from collections.abc import Iterator

import pytest
from rich.console import Console

from lab import lifecycle
from lab.picture import OUTPUT_DIR
from tests.lab.test_lab_e2e import lab_name

TEST_LAB = re.compile(r"t[0-9a-f]{6}")  # test_lab_e2e.lab_name()


@pytest.fixture(autouse=True, scope="session")
def _test_labs_pictures_removed() -> Iterator[None]:
    before = set(OUTPUT_DIR.iterdir()) if OUTPUT_DIR.exists() else set()
    yield
    drawn = set(OUTPUT_DIR.iterdir()) if OUTPUT_DIR.exists() else set()
    for directory in drawn - before:
        if TEST_LAB.fullmatch(directory.name):
            shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def practice_lab() -> Iterator[lifecycle.LocalLab]:
    name = lab_name()
    try:
        lab = lifecycle.build(lifecycle.LabOptions(name=name), Console(file=io.StringIO()))
        with lab.ssh:
            lifecycle.bootstrap(lab)
            lab.start_pods()
            yield lab
    finally:
        lifecycle.down(name)
