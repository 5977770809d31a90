"""The lab's command line draws the checks into the checkout's out/<lab>/, where they outlive
the lab; the test labs' pictures are removed when the session ends."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator

import pytest

from lab.picture import OUTPUT_DIR

TEST_LAB = re.compile(r"t[0-9a-f]{6}")  # test_lab_e2e.lab_name()


@pytest.fixture(autouse=True, scope="session")
def _test_labs_pictures_removed() -> Iterator[None]:
    before = set(OUTPUT_DIR.iterdir()) if OUTPUT_DIR.exists() else set()
    yield
    drawn = set(OUTPUT_DIR.iterdir()) if OUTPUT_DIR.exists() else set()
    for directory in drawn - before:
        if TEST_LAB.fullmatch(directory.name):
            shutil.rmtree(directory, ignore_errors=True)
