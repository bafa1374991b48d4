"""``edgecloud fleet rollout|status|pause|resume|abort`` and the automatic mode, end to end
against a real signed update repository (the tuf part) and a real telemetry store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from edgecloud.errors import ConflictError, ModelNotFoundError
from edgecloud.fleet.rollout_state import bucket, in_canary
from edgecloud.server.fleet_telemetry import FleetStore, parse_events

update_repo = pytest.importorskip("edgecloud.fleet.update_repo")
keys_mod = pytest.importorskip("edgecloud.fleet.keys")

from edgecloud.fleet import cli_rollout  # noqa: E402  (registers the commands)
from edgecloud.fleet.cli import fleet_app  # noqa: E402
from edgecloud.fleet.rollout import RolloutControl, run_auto, start  # noqa: E402

DEVICES = [f"dev-{i:02d}" for i in range(20)]


@pytest.fixture
def fleet(tmp_path: Path) -> tuple[Path, Path]:
    signers = keys_mod.new_signers()
    keys_mod.write_signers(tmp_path / "keys", signers)
    repo = update_repo.UpdateRepository.create(tmp_path / "fleet", signers)
    for v in (1, 2, 3):
        custom = {"edgecloud": {"kind": "model", "model": "m", "version": v, "files": []}}
        repo.put_target(f"m/{v}/model.onnx", f"model {v}".encode(), custom)
    repo.sign()
    return tmp_path / "fleet", tmp_path / "keys"


def cli(fleet: tuple[Path, Path], *args: str) -> Any:
    where = ["--fleet", str(fleet[0])]
    if args[0] != "status":
        where += ["--keys", str(fleet[1])]
    return CliRunner().invoke(fleet_app, [*args, *where], env={"COLUMNS": "250"})


def report(store: FleetStore, device: str, seq: int, kind: str, version: int, **over: Any) -> None:
    event = {
        "id": f"{device}:{seq}", "device": device, "group": None, "model": "m", "event": kind,
        "version": version, "from_version": None, "ok": True, "detail": "", "bytes": 0,
        "at": float(seq),
    } | over  # fmt: skip
    store.record(parse_events(json.dumps(event).encode()))


def test_commands(fleet: tuple[Path, Path], tmp_path: Path) -> None:
    assert cli(fleet, "rollout", "m", "1", "--canary", "100%").exit_code == 0
    done = cli(fleet, "rollout", "m", "2", "--canary", "5%")
    assert done.exit_code == 0 and "active: 2 to 5%, others on 1" in done.output
    assert "paused" in cli(fleet, "pause", "m").output
    assert "active" in cli(fleet, "resume", "m").output
    refused = cli(fleet, "rollout", "m", "7")
    assert isinstance(refused.exception, ModelNotFoundError)
    busy = cli(fleet, "rollout", "m", "3")
    assert isinstance(busy.exception, ConflictError)
    assert "aborted" in cli(fleet, "abort", "m", "--reason", "bad labels").output
    store = FleetStore(tmp_path / "t.db")
    report(store, "dev-01", 1, "rollback", 1, from_version=2)
    report(store, "dev-01", 2, "health", 2, ok=False, detail="accuracy 0.08")
    status = cli(fleet, "status", "m", "--db", str(tmp_path / "t.db"))
    assert status.exit_code == 0, status.output
    assert "bad labels" in status.output and "dev-01" in status.output
    assert "1 (last from 2)" in status.output and "FAIL" in status.output


def test_auto_promotes_a_healthy_version_stage_by_stage(
    fleet: tuple[Path, Path], tmp_path: Path
) -> None:
    store = FleetStore(tmp_path / "t.db")
    for i, d in enumerate(DEVICES):
        report(store, d, i, "check", 1, from_version=1)
    control = RolloutControl(*fleet)
    control.change("m", lambda p, pub: start(p, model="m", version=1, percent=100, published=pub))
    control.change(
        "m",
        lambda p, pub: start(
            p, model="m", version=2, percent=5, published=pub, stages=(5, 50, 100)
        ),
    )
    seq = iter(range(100, 10_000))
    percents = []

    def devices_follow(_: float) -> None:  # what 20 healthy agents would report
        r = control.current("m")
        assert r is not None
        percents.append(r.percent)
        for d in DEVICES:
            if r.candidate and in_canary(r, d, None):
                report(store, d, next(seq), "health", 2)
                report(store, d, next(seq), "swap", 2, from_version=1)

    final = run_auto(control, "m", lambda: store.devices("m"), interval_s=0, sleep=devices_follow)
    assert (final.state, final.stable, final.candidate) == ("complete", 2, None)
    first = min(DEVICES, key=lambda d: bucket(d, "m"))
    assert percents[0] > bucket(first, "m")  # the canary held at least one device
    assert 50 in percents


def test_auto_aborts_on_a_canary_rollback(fleet: tuple[Path, Path], tmp_path: Path) -> None:
    store = FleetStore(tmp_path / "t.db")
    for i, d in enumerate(DEVICES):
        report(store, d, i, "check", 1, from_version=1)
    control = RolloutControl(*fleet)
    control.change("m", lambda p, pub: start(p, model="m", version=1, percent=100, published=pub))
    control.change(
        "m",
        lambda p, pub: start(p, model="m", version=2, percent=5, published=pub, stages=(5, 100)),
    )
    seq = iter(range(100, 10_000))
    reached: set[str] = set()

    def devices_reject(_: float) -> None:  # the candidate fails every health check
        r = control.current("m")
        assert r is not None
        for d in DEVICES:
            if r.state == "active" and in_canary(r, d, None) and d not in reached:
                reached.add(d)
                report(store, d, next(seq), "health", 2, ok=False, detail="accuracy 0.1")
                report(store, d, next(seq), "rollback", 1, from_version=2)

    final = run_auto(control, "m", lambda: store.devices("m"), interval_s=0, sleep=devices_reject)
    assert final.state == "aborted" and "rolled back 2" in final.reason
    assert 0 < len(reached) < len(DEVICES) / 4  # the rest never got it
    assert cli_rollout is not None


def test_no_stable_version_is_said_in_words(fleet: tuple[Path, Path]) -> None:
    """atk-newuser #2: "others on None" — never a Python None in output."""
    first = cli(fleet, "rollout", "m", "2", "--canary", "30%")
    assert first.exit_code == 0 and "others keep what they run" in first.output
    assert "None" not in cli(fleet, "pause", "m").output
    aborted = cli(fleet, "abort", "m")
    assert "None" not in aborted.output
    assert "goes back to the version it ran before (no stable version)" in aborted.output


def test_narrowing_says_which_devices_leave_the_canary(
    fleet: tuple[Path, Path], tmp_path: Path
) -> None:
    """Argo Rollouts' setWeight may go down: allowed, and said."""
    store = FleetStore(tmp_path / "t.db")
    for i, d in enumerate(DEVICES):
        report(store, d, i, "check", 1, from_version=1)
    db = ["--db", str(tmp_path / "t.db")]
    assert cli(fleet, "rollout", "m", "2", "--canary", "60%").exit_code == 0
    no_stable = cli(fleet, "rollout", "m", "2", "--canary", "30%", *db)
    assert no_stable.exit_code == 0, no_stable.output
    leaving = sorted(d for d in DEVICES if 30 <= bucket(d, "m") < 60)
    assert leaving  # 20 devices: some lie between 30% and 60%
    assert "narrowed from 60% to 30%" in no_stable.output
    assert "back to the version it ran before (no stable version)" in no_stable.output
    assert f"known devices leaving: {', '.join(leaving[:10])}" in no_stable.output
    # with a stable version; without telemetry the line still says where they go
    assert cli(fleet, "rollout", "m", "2", "--canary", "100%").exit_code == 0
    assert cli(fleet, "rollout", "m", "3", "--canary", "50%").exit_code == 0
    stable = cli(fleet, "rollout", "m", "3", "--canary", "10%")
    assert "narrowed from 50% to 10%: devices that leave the canary go back to the stable " \
        "version 2" in stable.output  # fmt: skip
    groups = cli(fleet, "rollout", "m", "3", "--canary", "10%", "--group", "lab")
    assert "narrowed from 10% to 10% of group lab" in groups.output
    widened = cli(fleet, "rollout", "m", "3", "--canary", "20%", "--group", "lab")
    assert widened.exit_code == 0 and "narrowed" not in widened.output


def test_auto_with_an_unreachable_server_signs_nothing(fleet: tuple[Path, Path]) -> None:
    """atk-newuser #6: the server is read before the rollout is signed."""
    import subprocess
    import sys

    from edgecloud.server.launch import free_port

    targets_before = update_repo.UpdateRepository(fleet[0], None).version()
    args = ["rollout", "m", "2", "--canary", "5%", "--auto", "--fleet", str(fleet[0])]
    args += ["--keys", str(fleet[1]), "--server", f"http://127.0.0.1:{free_port()}"]
    run = subprocess.run(
        [sys.executable, "-m", "edgecloud.cli", "fleet", *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode != 0
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach" in lines[0] and "nothing was signed" in lines[0]
    assert "Traceback" not in run.stderr
    assert update_repo.UpdateRepository(fleet[0], None).version() == targets_before
    assert RolloutControl(fleet[0], None).current("m") is None


def test_fleet_help_reads_well_at_80_columns() -> None:
    """atk-newuser #9: docstrings wrapped mid-sentence in the command list."""
    from edgecloud.fleet import cli_agent, cli_tuf  # noqa: F401  (register their commands)

    names = [c.name for c in fleet_app.registered_commands]
    assert {"rollout", "status", "pause", "resume", "abort", "keys", "publish"} <= set(names)
    shown = CliRunner().invoke(fleet_app, ["--help"], env={"COLUMNS": "80", "TERM": "dumb"})
    assert shown.exit_code == 0
    lines = shown.output.splitlines()
    assert max(len(line) for line in lines) <= 80
    start = next(i for i, line in enumerate(lines) if "Commands" in line) + 1
    rows = [line.strip("│ ").rstrip() for line in lines[start:] if line.startswith("│")]
    # one line per command, each a whole sentence: no continuation lines
    assert len(rows) == len(names), rows
    assert all(row.split()[0] in names and row.endswith(".") for row in rows), rows
    for name in names:
        page = CliRunner().invoke(fleet_app, [name, "--help"], env={"COLUMNS": "80"})
        assert page.exit_code == 0 and max(len(x) for x in page.output.splitlines()) <= 80


def test_flags_of_another_mode_and_bad_values_name_their_flag(fleet: tuple[Path, Path]) -> None:
    """atk2-newuser: --stages/--interval-s/--timeout-s without --auto were ignored;
    --stages 200 blamed --canary; --group '' leaked validator text."""
    for flag, value in (("--stages", "x"), ("--interval-s", "1"), ("--timeout-s", "60")):
        run = cli(fleet, "rollout", "m", "2", "--canary", "5%", flag, value)
        assert run.exit_code != 0 and f"{flag} applies only with --auto" in str(run.exception)
    db = ["--db", str(fleet[0])]  # never read: the stages are refused first
    for stages in ("200", "0", "nan", "x"):
        run = cli(fleet, "rollout", "m", "2", "--canary", "5%", "--auto", "--stages", stages, *db)
        assert run.exit_code != 0 and str(run.exception).startswith(f"--stages {stages!r}")
    for group in ("", " "):
        run = cli(fleet, "rollout", "m", "2", "--group", group)
        message = str(run.exception)
        assert run.exit_code != 0 and message.startswith(f"--group {group!r} is empty")
        assert "Value error" not in message
    assert RolloutControl(fleet[0], None).current("m") is None  # nothing was signed


def test_a_second_abort_says_the_first_reason_and_fails(fleet: tuple[Path, Path]) -> None:
    assert cli(fleet, "rollout", "m", "2", "--canary", "5%").exit_code == 0
    assert cli(fleet, "abort", "m", "--reason", "one").exit_code == 0
    again = cli(fleet, "abort", "m", "--reason", "two")
    assert isinstance(again.exception, ConflictError)
    assert "already aborted (reason: one)" in str(again.exception)
    assert RolloutControl(fleet[0], None).current("m").reason == "one"  # type: ignore[union-attr]


def test_lines_say_what_is_true(fleet: tuple[Path, Path]) -> None:
    """No "others" at 100% of every group; no tail repeating the line; group singular."""
    full = cli(fleet, "rollout", "m", "1", "--canary", "100%")
    assert full.output.strip() == "rollout of m (generation 1) active: 1 to 100%"
    lab = cli(fleet, "rollout", "m", "1", "--canary", "100%", "--group", "lab")
    assert "1 to 100% of group lab, others keep what they run" in lab.output
    nope = cli(fleet, "status", "nope")
    assert isinstance(nope.exception, ModelNotFoundError)
    assert "'nope' was never published" in str(nope.exception) and "published: m" in str(
        nope.exception
    )
    assert cli(fleet, "status", "m").exit_code == 0


def test_status_from_a_server_that_is_down_says_so_in_words(fleet: tuple[Path, Path]) -> None:
    from edgecloud.errors import UnavailableError
    from edgecloud.server.launch import free_port

    url = f"http://127.0.0.1:{free_port()}"
    down = cli(fleet, "status", "m", "--server", url)
    assert isinstance(down.exception, UnavailableError)
    assert str(down.exception) == f"cannot reach {url}/fleet/status (connection refused)"
