"""Shared fixtures of the unit tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from m2gate.protocol import messages


@pytest.fixture(scope="module", params=["c-codec", "pure-codec"])
def both_codecs(request: pytest.FixtureRequest) -> Iterator[None]:
    """Run a module's tests with the optional C header decoder and without it.

    Use with ``pytestmark = pytest.mark.usefixtures("both_codecs")``.
    """
    on = messages.use_accelerator(request.param == "c-codec")
    if request.param == "c-codec" and not on:
        pytest.skip("tnetstring3 is not installed")
    yield
    messages.use_accelerator(True)
