"""Fixtures of the serving tests."""

import pytest

from tests.serving.helpers import shared_server


@pytest.fixture(scope="module")
def server():
    """The server every API test talks to (started once, for the whole session)."""
    return shared_server()
