"""The idempotency checks of test_idempotency again, on ``edgecloud serve --workers 2``.

Every worker opens the one SQLite store, so a key binds and replays the same
whichever worker (HTTP or gRPC, each on its own connection) gets the request.
The imported tests use this module's ``server`` fixture.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ..models import make_repo
from ..server.conftest import Server, start_server
from .test_idempotency import (
    test_a_failed_request_is_not_stored,
    test_concurrent_duplicates_share_one_computation,
    test_requested_outputs_are_part_of_the_binding,
    test_same_key_same_payload_replays_and_other_payload_is_422,
)

__all__ = [
    "test_a_failed_request_is_not_stored",
    "test_concurrent_duplicates_share_one_computation",
    "test_requested_outputs_are_part_of_the_binding",
    "test_same_key_same_payload_replays_and_other_payload_is_422",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("idem-workers")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGECLOUD_STATE_DIR", str(tmp / "state"))
        running = start_server(make_repo(tmp), tmp, "--workers", "2")
    yield running
    running.stop()
