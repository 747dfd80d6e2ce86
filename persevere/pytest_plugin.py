"""The pytest plugin installed with persevere: the ``persevere_harness`` fixture."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .testing import Harness, harness


@pytest.fixture
def persevere_harness() -> Iterator[Harness]:
    """A temporary persevere database and a test clock (see ``persevere.testing``)."""
    with harness() as h:
        yield h
