"""``edgecloud fleet agent`` and ``edgecloud fleet check``: the device side of fleet updates."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from .cli import fleet_app

if TYPE_CHECKING:
    from .agent import Outcome, UpdateAgent

DeploymentOption = Annotated[
    Path, typer.Option("--deployment", "-d", help="Deployment YAML with an updates: section.")
]


TokenFileOption = Annotated[
    Path | None,
    typer.Option(
        "--token-file",
        help="File with the fleet server's bearer token (else EDGECLOUD_FLEET_TOKEN, "
        "else updates.token_file).",
    ),
]


def _agent(deployment: Path, token_file: Path | None = None) -> UpdateAgent:
    from ..deployment import load
    from ..errors import ConfigError
    from .device import agent_for

    loaded = load(deployment)
    agent = agent_for(loaded, token_file=token_file)
    if agent is None:
        raise ConfigError(f"{deployment}: no updates: section, so there is nothing to update")
    return agent


def _say(outcome: Outcome) -> None:
    moved = f", {outcome.downloaded} B downloaded" if outcome.downloaded else ""
    resumed = f", resumed {outcome.resumed} B" if outcome.resumed else ""
    again = f", re-downloaded {outcome.redownloaded} B" if outcome.redownloaded else ""
    detail = f": {outcome.detail}" if outcome.detail else ""
    serving = "nothing installed" if outcome.version is None else f"version {outcome.version}"
    head = f"{outcome.model}: {outcome.action} ({serving})"
    typer.echo(f"{head}{moved}{resumed}{again}{detail}")


@fleet_app.command("agent")
def agent_command(
    deployment: DeploymentOption,
    once: Annotated[bool, typer.Option(help="One round, then exit.")] = False,
    token_file: TokenFileOption = None,
) -> None:
    """Keep this device's models current, without serving them.

    The gateway (edgecloud edge) runs the same agent beside its requests.
    SIGUSR1 makes a running agent check at once.
    """
    import logging

    from ..errors import EdgecloudError, UpdateAuthError

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("httpx", "httpcore", "urllib3", "tuf"):  # our own line says what failed
        logging.getLogger(noisy).setLevel(logging.ERROR)
    agent = _agent(deployment, token_file)
    try:
        for model, version in agent.start().items():
            serving = "nothing yet" if version is None else f"version {version}"
            typer.echo(f"{model}: serving {serving}")
        if once:
            outcomes = agent.check()
            for outcome in outcomes:
                _say(outcome)
            failed = [o.model for o in outcomes if o.action == "failed"]
            try:
                agent.drain_telemetry()
            except UpdateAuthError as exc:  # the events stay queued; the operator must act
                typer.echo(f"telemetry: {exc.message} (events kept queued)", err=True)
                raise typer.Exit(1) from None
            except EdgecloudError:
                pass  # offline: the outbox keeps the events
            if failed:  # a failed update is not a success: scripts and cron must see it
                raise typer.Exit(1)
            return
        stop = threading.Event()
        signal.signal(signal.SIGUSR1, lambda *_: agent.wake())
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        agent.run(stop)
    finally:
        agent.close()


@fleet_app.command("check")
def check_command(deployment: DeploymentOption, token_file: TokenFileOption = None) -> None:
    """Check for updates now: one round of the agent, then exit.

    When an agent already runs on this state directory, the error says how to
    wake it instead. Exits 1 when an update of any model failed (the device keeps
    what it serves).
    """
    agent_command(deployment, once=True, token_file=token_file)
