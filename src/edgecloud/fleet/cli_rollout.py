"""``edgecloud fleet rollout|status|pause|resume|abort``: staged rollout of a model version."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from .cli import fleet_app

if TYPE_CHECKING:
    from ..server.fleet_telemetry import DeviceStatus
    from .rollout import AutoDecision, RolloutControl
    from .rollout_state import Rollout

__all__ = ["abort_cmd", "narrowed", "pause_cmd", "resume_cmd", "rollout_cmd", "status_cmd"]

FleetOption = Annotated[
    Path, typer.Option("--fleet", envvar="EDGECLOUD_FLEET", help="Update repository directory.")
]
KeysOption = Annotated[
    Path,
    typer.Option(
        "--keys", envvar="EDGECLOUD_FLEET_KEYS", help="Directory of the private signing keys."
    ),
]
ServerOption = Annotated[
    str | None,
    typer.Option(
        "--server",
        envvar="EDGECLOUD_FLEET_SERVER",
        help="URL of the server devices report to (telemetry for status and --auto).",
    ),
]
DbOption = Annotated[
    Path | None,
    typer.Option("--db", help="Read the telemetry store file directly instead of --server."),
]
ModelArgument = Annotated[str, typer.Argument(help="Model name.")]
TokenFileOption = Annotated[
    Path | None, typer.Option("--token-file", help="Bearer token of --server, in a file.")
]


def _control(fleet: Path, keys: Path | None) -> RolloutControl:
    from .rollout import RolloutControl

    return RolloutControl(fleet, keys)


def _describe(r: Rollout) -> str:
    """One line for the rollout's state; never a bare None (no stable version:
    devices outside the canary keep what they run)."""
    from .rollout import share

    groups = _of_groups(r.groups)
    others = f", others on {r.stable}" if r.stable is not None else ", others keep what they run"
    if r.percent >= 100 and not r.groups:
        others = ""  # every device takes the candidate: there are no others
    if r.state == "complete":
        what = f"complete: every device runs {r.stable}"
    elif r.state == "aborted":
        back = (
            f"version {r.stable}"
            if r.stable is not None
            else "the version it ran before (no stable version)"
        )
        what = f"aborted: every device on {r.candidate} goes back to {back}"
    else:
        what = f"{r.state}: {r.candidate} to {share(r.percent)}%{groups}{others}"
    # the reason a plain start records ("rollout of 2 to 5%") says nothing the line does not
    plain = r.reason == f"rollout of {r.candidate} to {r.percent:g}%"
    return f"rollout of {r.model} (generation {r.generation}) {what}" + (
        f" — {r.reason}" if r.reason and not plain else ""
    )


def _of_groups(groups: Sequence[str] | None) -> str:
    """`` of group lab`` / `` of groups lab,field`` / ``""`` (every group)."""
    if not groups:
        return ""
    return f" of group{'s' if len(groups) > 1 else ''} {','.join(groups)}"


def _fallback(r: Rollout) -> str:
    """Where a device that leaves the canary goes (the agent's side of
    :func:`~edgecloud.fleet.rollout_state.desired_version`)."""
    if r.stable is not None:
        return f"back to the stable version {r.stable}"
    return "back to the version it ran before (no stable version)"


def narrowed(
    prev: Rollout | None, r: Rollout, devices: Sequence[DeviceStatus] | None = None
) -> str | None:
    """The line for a rollout of the same candidate that now holds fewer devices
    (a lower ``--canary``, or ``--group`` limits added), else None.

    Narrowing is allowed (Argo Rollouts' ``setWeight`` may go down): the
    devices between the two shares leave the candidate. With ``devices``
    (telemetry), the known ones are named (at most 10).
    """
    from .rollout_state import in_canary

    if prev is None or prev.candidate != r.candidate or prev.state not in ("active", "paused"):
        return None
    fewer_groups = r.groups is not None and (
        prev.groups is None or set(r.groups) < set(prev.groups)
    )
    if r.percent >= prev.percent and not fewer_groups:
        return None
    was = f"{prev.percent:g}%{_of_groups(prev.groups)}"
    now = f"{r.percent:g}%{_of_groups(r.groups)}"
    line = f"narrowed from {was} to {now}: devices that leave the canary go {_fallback(r)}"
    if devices is not None:
        leaving = sorted(
            d.device
            for d in devices
            if in_canary(prev, d.device, d.group) and not in_canary(r, d.device, d.group)
        )
        names = ", ".join(leaving[:10]) + (
            f" and {len(leaving) - 10} more" if len(leaving) > 10 else ""
        )
        line += f"; known devices leaving: {names or 'none'}"
    return line


def telemetry_source(
    model: str, server: str | None, db: Path | None, token_file: Path | None
) -> Callable[[], Sequence[DeviceStatus]] | None:
    """A function returning every device's state for ``model``, or None without a source.

    Raises:
        ConfigError: both ``server`` and ``db`` given, or an unreadable token file.
    """
    from ..errors import ConfigError

    if server and db:
        raise ConfigError("give --server or --db, not both")
    if db is not None:
        from ..server.fleet_telemetry import FleetStore

        if not db.is_file():
            raise ConfigError(f"--db {db}: no such telemetry store")
        store = FleetStore(db)
        return lambda: store.devices(model)
    if server:
        headers = {}
        if token_file is not None:
            try:
                headers["Authorization"] = f"Bearer {token_file.read_text().strip()}"
            except OSError as exc:
                raise ConfigError(f"--token-file {token_file}: {exc.strerror}") from None
        return lambda: _fetch(server, model, headers)
    return None


def _fetch(server: str, model: str, headers: dict[str, str]) -> list[DeviceStatus]:
    from .._optional import require
    from ..errors import UnavailableError, error_for_http_status
    from ..server.fleet_telemetry import DeviceStatus

    httpx = require("httpx", extra="fleet", feature="fleet status from a server")
    url = f"{server.rstrip('/')}/fleet/status"
    try:
        reply = httpx.get(url, params={"model": model}, headers=headers, timeout=30)
    except httpx.TimeoutException as exc:
        raise UnavailableError(f"cannot reach {url} (no answer within 30 s)") from exc
    except httpx.HTTPError as exc:  # the words of `fleet check`: "connection refused"...
        from .http_auth import _transport_reason

        raise UnavailableError(f"cannot reach {url} ({_transport_reason(exc)})") from exc
    if reply.status_code != 200:
        raise error_for_http_status(reply.status_code, f"{url}: {reply.text[:200]}")
    return [DeviceStatus(**d) for d in reply.json()["devices"]]


@fleet_app.command("rollout")
def rollout_cmd(
    model: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[int, typer.Argument(help="Published version to roll out.", min=1)],
    canary: Annotated[
        str, typer.Option("--canary", help="Share of devices, by a stable hash of their id.")
    ] = "5%",
    group: Annotated[
        list[str] | None, typer.Option("--group", help="Only devices of this group (repeat).")
    ] = None,
    auto: Annotated[
        bool,
        typer.Option(
            "--auto", help="Promote stage by stage on passing health checks; abort on a rollback."
        ),
    ] = False,
    stages: Annotated[
        str | None,
        typer.Option(
            "--stages", help="With --auto: percentages after the canary [default: 25,100]."
        ),
    ] = None,
    interval_s: Annotated[
        float | None,
        typer.Option(
            "--interval-s", min=0.05, help="With --auto: seconds between reads [default: 2]."
        ),
    ] = None,
    timeout_s: Annotated[
        float | None,
        typer.Option(
            "--timeout-s", min=1, help="With --auto: give up after (seconds) [default: 3600]."
        ),
    ] = None,
    fleet: FleetOption = Path("fleet-repo"),
    keys: KeysOption = Path("fleet-keys"),
    server: ServerOption = None,
    db: DbOption = None,
    token_file: TokenFileOption = None,
) -> None:
    """Roll a version out to a canary share of the devices.

    The canary is the same devices every time (a stable hash of their id).
    Without --auto, re-run with a larger --canary to promote, or a smaller
    one to narrow (the devices that leave go back to the stable version).
    With --auto the command stays: it reads device telemetry from --server
    (or --db), promotes through --stages when every device of a stage runs
    VERSION with a passing health check, and aborts at the first rollback.
    """
    from ..errors import ConfigError
    from .rollout import parse_percent, parse_stages, run_auto, start

    if not auto:
        # refused, not ignored: a --stages without --auto would sign a manual
        # rollout that never promotes (the operator believes it will)
        for flag, value in (("--stages", stages), ("--interval-s", interval_s),
                            ("--timeout-s", timeout_s)):  # fmt: skip
            if value is not None:
                raise ConfigError(f"{flag} applies only with --auto; add --auto or drop {flag}")
    for g in group or ():
        if not g.strip():
            raise ConfigError(
                f"--group {g!r} is empty: give a group name (a device's updates.group)"
            )
    percent = parse_percent(canary)
    plan = parse_stages("25,100" if stages is None else stages, percent) if auto else ()
    fetch = telemetry_source(model, server, db, token_file)
    if auto and fetch is None:
        raise ConfigError("--auto reads device telemetry: give --server URL (or --db FILE)")
    # read the telemetry BEFORE signing: an unreachable --server must not leave a
    # live canary that nothing watches
    from ..errors import EdgecloudError, MissingDependencyError

    try:
        devices = list(fetch()) if fetch is not None else None
    except MissingDependencyError:
        raise
    except EdgecloudError as exc:
        raise type(exc)(f"{exc.message}; nothing was signed: fix --server and run again") from None
    control = _control(fleet, keys)
    before: list[Rollout | None] = []

    def change(prev: Rollout | None, published: set[int]) -> Rollout:
        before.append(prev)
        return start(
            prev,
            model=model,
            version=version,
            percent=percent,
            published=published,
            groups=group,
            stages=plan,
        )

    r = control.change(model, change)
    typer.echo(_describe(r))
    notice = narrowed(before[-1], r, devices)
    if notice:
        typer.echo(notice)
    if not auto:
        return
    if fetch is not None:

        def report(decision: AutoDecision) -> None:
            if decision.action != "wait":
                typer.echo(f"{decision.action}: {decision.detail}")

        final = run_auto(
            control,
            model,
            fetch,
            interval_s=2.0 if interval_s is None else interval_s,
            timeout_s=3600.0 if timeout_s is None else timeout_s,
            on_step=report,
        )
        typer.echo(_describe(final))
        if final.state == "aborted":
            raise typer.Exit(3)


def _simple(verb: str, model: str, fleet: Path, keys: Path, reason: str = "") -> None:
    from ..errors import ConflictError
    from . import rollout

    control = _control(fleet, keys)
    if verb == "abort":

        def do_abort(prev: Rollout | None, _: set[int]) -> Rollout:
            # a second abort changes nothing; saying so (rc 1) rather than
            # exiting 0 keeps a new --reason from being dropped silently
            if prev is not None and prev.state == "aborted":
                raise ConflictError(
                    f"the rollout of {model!r} is already aborted (reason: {prev.reason}); "
                    "nothing changed"
                )
            return rollout.abort(prev, model, reason or "aborted by operator")

        r = control.change(model, do_abort)
    else:
        change = rollout.pause if verb == "pause" else rollout.resume
        r = control.change(model, lambda prev, _: change(prev, model))
    typer.echo(_describe(r))


@fleet_app.command("pause")
def pause_cmd(
    model: ModelArgument,
    fleet: FleetOption = Path("fleet-repo"),
    keys: KeysOption = Path("fleet-keys"),
) -> None:
    """Pause a rollout: no new device starts the candidate.

    Devices that already run the candidate keep it.
    """
    _simple("pause", model, fleet, keys)


@fleet_app.command("resume")
def resume_cmd(
    model: ModelArgument,
    fleet: FleetOption = Path("fleet-repo"),
    keys: KeysOption = Path("fleet-keys"),
) -> None:
    """Resume a paused rollout."""
    _simple("resume", model, fleet, keys)


@fleet_app.command("abort")
def abort_cmd(
    model: ModelArgument,
    reason: Annotated[str, typer.Option("--reason", help="Recorded in rollout.json.")] = "",
    fleet: FleetOption = Path("fleet-repo"),
    keys: KeysOption = Path("fleet-keys"),
) -> None:
    """Abort a rollout: devices on the candidate roll back.

    They go back to the stable version, or to the version they ran before
    when there is none.
    """
    _simple("abort", model, fleet, keys, reason)


@fleet_app.command("status")
def status_cmd(
    model: ModelArgument,
    fleet: FleetOption = Path("fleet-repo"),
    server: ServerOption = None,
    db: DbOption = None,
    token_file: TokenFileOption = None,
) -> None:
    """Show a rollout's state and each device's version and health.

    With --server (or --db): each device's version, last contact, last health
    check and rollbacks.
    """
    from ..errors import ModelNotFoundError
    from .rollout import RolloutControl

    control = RolloutControl(fleet, None)
    targets = control.repo.targets()
    r = control._current(model, targets)
    if r is None:
        models = sorted(
            {
                str(m)
                for t in targets.values()
                if (m := t.unrecognized_fields.get("custom", {}).get("edgecloud", {}).get("model"))
            }
        )
        if model not in models:
            raise ModelNotFoundError(
                f"{model!r} was never published to {fleet}; "
                f"published: {', '.join(models) or 'none'}"
            )
    typer.echo(_describe(r) if r else f"{model} has no rollout")
    fetch = telemetry_source(model, server, db, token_file)
    if fetch is not None:
        print_devices(r, fetch())


def print_devices(
    r: Rollout | None, devices: Sequence[DeviceStatus], *, now: float | None = None
) -> None:
    """The device table of ``fleet status`` (rich)."""
    from rich.console import Console
    from rich.table import Table

    from .rollout_state import desired_version

    now = time.time() if now is None else now
    table = Table(
        "device", "group", "version", "wants", "last contact", "last health check", "rollbacks"
    )
    for d in devices:
        wants = desired_version(r, d.device, d.group, d.version) if r else None
        table.add_row(
            d.device, d.group or "-", _v(d.version), _v(wants), _ago(now - d.last_contact),
            _health(d, now), _rollbacks(d),
        )  # fmt: skip
    Console().print(table)


def _v(version: int | None) -> str:
    return "-" if version is None else str(version)


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{max(0.0, seconds):.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _health(d: DeviceStatus, now: float) -> str:
    if d.last_health_ok is None or d.last_health_at is None:
        return "-"
    verdict = "pass" if d.last_health_ok else f"FAIL {d.last_health_detail[:40]}"
    return f"{verdict} on {_v(d.last_health_version)}, {_ago(now - d.last_health_at)}"


def _rollbacks(d: DeviceStatus) -> str:
    if not d.rollbacks:
        return "0"
    return f"{d.rollbacks} (last from {_v(d.last_rollback_from)})"
