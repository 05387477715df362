"""Shared test helpers: the fixture folder and the repository root on sys.path."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from utils.cpu import configure_cpu_runtime  # noqa: E402  (before paddle is imported)

configure_cpu_runtime()

FIXTURES = os.path.join(os.path.dirname(ROOT), "shared", "fixtures")


@pytest.fixture(scope="session")
def fixtures_dir():
    """Path of `../shared/fixtures` (read in place, never copied). Fails, never skips, if absent."""
    if not os.path.isdir(FIXTURES):
        raise FileNotFoundError(
            f"test fixtures not found at {FIXTURES}: the shared/ folder must sit beside the checkout"
        )
    return FIXTURES
