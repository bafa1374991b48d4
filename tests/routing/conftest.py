from __future__ import annotations

from collections.abc import Iterator

import pytest

from edgecloud import ModelRepository

from ..server.conftest import Server, start_server


@pytest.fixture(scope="module")
def zoo_server(
    zoo_repo: ModelRepository, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """A real server on the demo zoo (digits-large is the cascade's remote model)."""
    server = start_server(zoo_repo, tmp_path_factory.mktemp("zoo-server"))
    yield server
    server.stop()


def metric(server: Server, name: str, model: str) -> float:
    """A counter's value from the server's /metrics (summed over labels of the model)."""
    import httpx

    total = 0.0
    for line in httpx.get(server.url + "/metrics").text.splitlines():
        if line.startswith(name + "{") and f'model="{model}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total
