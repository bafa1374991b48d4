"""The ``edgecloud`` command line: typer commands, rich output, one-line errors."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Column, Table

from . import __version__
from ._config_files import checked_path
from .backends.local import LocalBackend
from .errors import ConfigError, EdgecloudError, InvalidRequestError, ModelNotFoundError, describe
from .fleet import cli_agent as _cli_agent  # noqa: F401  (registers fleet agent/check)
from .fleet import cli_rollout as _fleet_rollout  # noqa: F401  (registers fleet rollout/status/...)
from .fleet import cli_tuf as _fleet_tuf  # noqa: F401  (registers fleet keys/publish)
from .fleet.cli import fleet_app
from .io import load_inputs
from .repository import ModelRepository
from .tensors import InferRequest, InferResponse

app = typer.Typer(
    help="Run ML inference on the device, on a server, or split between them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
zoo_app = typer.Typer(help="The demo model zoo, built offline.", no_args_is_help=True)
models_app = typer.Typer(help="Inspect a model repository.", no_args_is_help=True)
app.add_typer(zoo_app, name="zoo")
app.add_typer(models_app, name="models")
app.add_typer(fleet_app, name="fleet")

console = Console()
errors = Console(stderr=True)

RepoOption = Annotated[
    Path,
    typer.Option("--repo", envvar="EDGECLOUD_REPO", help="Model repository directory."),
]
DEFAULT_REPO = Path("model-repo")


@app.command()
def version() -> None:
    """Print edgecloud's version."""
    console.print(f"edgecloud {__version__}")


@zoo_app.command("build")
def zoo_build(
    repo: RepoOption = DEFAULT_REPO,
    only: Annotated[
        list[str] | None, typer.Option("--only", "-m", help="Build just these models.")
    ] = None,
    force: Annotated[bool, typer.Option(help="Rebuild even when up to date.")] = False,
) -> None:
    """Build the demo models into the repository (cached; nothing is downloaded)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from .zoo import build_zoo

    checked_path(repo, "directory", "model repository", may_be_missing=True)
    columns = (
        TextColumn("{task.fields[model]:<14}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:

        def reporter(name: str) -> Any:
            task = progress.add_task("waiting", total=1.0, model=name)
            return lambda fraction, text: progress.update(
                task, completed=fraction, description=text
            )

        results = build_zoo(ModelRepository(repo), only, force=force, progress=reporter)
    for r in results:
        state = "up to date" if r.cached else "built"
        console.print(f"[green]{r.name}[/] version {r.version.version} {state} at {r.version.path}")


@zoo_app.command("list")
def zoo_list() -> None:
    """List the recipes the zoo can build."""
    from .zoo import RECIPES

    table = Table("model", "revision", "what it is")
    for recipe in RECIPES.values():
        table.add_row(recipe.name, str(recipe.revision), recipe.summary)
    console.print(table)


@models_app.command("list")
def models_list(repo: RepoOption = DEFAULT_REPO) -> None:
    """Every model in the repository: versions, tensors, batching, metrics, status.

    "ready" means the config is valid and every served version's files are
    there with the sha256 recorded when they were added; a Triton model
    directory (config.pbtxt, "source" column) has no sha256: its model files
    are checked against the graph instead.
    """
    if not repo.is_dir():
        raise ConfigError(
            f"model repository {repo} does not exist; build the demo zoo with: "
            f"edgecloud zoo build --repo {repo}"
        )
    repository = ModelRepository(repo)
    statuses = repository.status()
    if not statuses:
        console.print(f"no models in {repo}; build the demo zoo with: edgecloud zoo build")
        return
    table = Table("versions", "inputs", "outputs", "batch", "metrics", "source", "status")
    table.columns.insert(0, Column("model", no_wrap=True))
    for s in statuses:
        cfg = s.config
        table.add_row(
            s.name,
            ",".join(map(str, s.versions)) or "-",
            _specs(cfg.inputs) if cfg else "-",
            _specs(cfg.outputs) if cfg else "-",
            str(cfg.max_batch_size) if cfg else "-",
            "\n".join(f"{k}={v:.4g}" for k, v in cfg.metrics.items()) if cfg else "-",
            _source(repository, s.name),
            f"[red]{escape(s.error)}[/]" if s.error else "[green]ready[/]",
        )
    console.print(table)
    for s in statuses:
        if s.ignored:
            console.print(
                f"{escape(s.name)}: ignored {', '.join(map(escape, s.ignored))}: version "
                "directories are named 1, 2, ... (ASCII digits, no leading zero)"
            )
    if any(repository.is_triton(s.name) for s in statuses):
        console.print(
            "triton: a Triton model directory (config.pbtxt), only read: its files have no "
            "sha256 and are checked against the graph instead"
        )


@app.command()
def infer(
    model: Annotated[str, typer.Argument(help="Model name in the repository.")],
    input: Annotated[Path, typer.Option("--input", "-i", help=".npy, .npz or .json file.")],
    repo: RepoOption = DEFAULT_REPO,
    model_version: Annotated[str | None, typer.Option("--version", help="Model version.")] = None,
    threads: Annotated[int | None, typer.Option(help="onnxruntime intra-op threads.")] = None,
) -> None:
    """Run one inference locally and print the outputs and the trace."""
    checked_path(input, "file", "input file")
    _repo(repo)
    with LocalBackend(repo, intra_op_threads=threads) as local:
        loaded = local.load(model, model_version)
        inputs = load_inputs(input, local.repository.config(model))
        response = local.infer(InferRequest(model, inputs, version=model_version))
        print_response(response, loaded.entry.config.labels)


@app.command("import")
def import_model(
    model_file: Annotated[
        Path | None, typer.Argument(metavar="MODEL.onnx", help="The ONNX model file to add.")
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            "--name", help="Model name in the repository (--from-triton: default its directory)."
        ),
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option(
            "--labels",
            help="Text file of class names, one per line, one per entry of the first "
            "output's last dimension.",
        ),
    ] = None,
    samples: Annotated[
        Path | None,
        typer.Option(
            "--samples",
            help=".npz of inputs by name (and optional 'labels', one per row): run before "
            "the version is added, then stored with it as samples.npz.",
        ),
    ] = None,
    max_batch_size: Annotated[
        int | None,
        typer.Option(
            "--max-batch-size",
            min=0,
            max=2**31 - 1,  # int32, as Triton's model config (repository.INT32_MAX)
            help="0: no batching (shapes are full); N>0: the leading dimension is the "
            "batch and rows are independent. Default: 0, or the model's for a new version.",
        ),
    ] = None,
    from_triton: Annotated[
        Path | None,
        typer.Option(
            "--from-triton",
            metavar="DIR",
            help="Convert a Triton model directory (<triton repo>/<model> with config.pbtxt) "
            "instead: every version its version_policy serves, labels and batching carried.",
        ),
    ] = None,
    latest: Annotated[
        bool, typer.Option("--latest", help="--from-triton: only the newest served version.")
    ] = False,
    repo: RepoOption = DEFAULT_REPO,
) -> None:
    """Add an ONNX model as a new version, its config inferred from the graph.

    Before anyone sees the version, every sample row is run through it; a
    model that fails on its samples, or gives NaN/Inf, is not added. Without
    --samples it is only loaded and warmed up on zeros (the output says so).
    With --from-triton DIR, a Triton model's config.pbtxt gives the config.
    """
    import onnxruntime as ort

    from .importing import import_onnx

    checked_path(repo, "directory", "model repository", may_be_missing=True)
    # A model that fails on its samples is reported in one line below, not also
    # in onnxruntime's own multi-line log on stderr (severity 4: fatal only).
    ort.set_default_logger_severity(4)
    if from_triton is not None or model_file is None:
        _import_triton(model_file, from_triton, name, repo, latest, labels, samples, max_batch_size)
        return
    if name is None:
        raise ConfigError("pass --name NAME: the model's name in the repository")
    imported = import_onnx(
        ModelRepository(repo),
        model_file,
        name,
        labels=labels,
        samples=samples,
        max_batch_size=max_batch_size,
    )
    entry = imported.version
    config = entry.config
    checked = (
        f"ran {_count(imported.rows, 'sample row')}"
        if imported.rows
        else "no samples given: loaded and warmed up on zeros only (pass --samples FILE.npz)"
    )
    tensors = ", ".join(f"{s.name} {s.datatype}{list(s.shape)}" for s in config.inputs)
    outputs = ", ".join(f"{s.name} {s.datatype}{list(s.shape)}" for s in config.outputs)
    console.print(
        f"imported {escape(entry.name)} version {entry.version}: inputs {escape(tensors)} -> "
        f"outputs {escape(outputs)}; {checked}",
        highlight=False,
        soft_wrap=True,
    )


def _import_triton(
    model_file: Path | None,
    directory: Path | None,
    name: str | None,
    repo: Path,
    latest: bool,
    *others: Any,
) -> None:
    """``edgecloud import --from-triton DIR``: one line per version added."""
    from .importing import import_triton

    if directory is None:
        raise ConfigError("pass the ONNX model file to import (or --from-triton DIR)")
    if model_file is not None or any(o is not None for o in others):
        raise ConfigError(
            "--from-triton takes its model, labels and batching from config.pbtxt: drop "
            "MODEL.onnx, --labels, --samples and --max-batch-size"
        )
    for item in import_triton(ModelRepository(repo), directory, name, latest=latest):
        entry = item.version
        notes = entry.config.metadata.get("triton_ignored")
        console.print(
            f"imported {escape(entry.name)} version {entry.version} from Triton "
            f"{escape(str(directory))}: batch {entry.config.max_batch_size}, "
            f"{len(entry.config.labels or [])} labels; loaded and warmed up on zeros"
            + (f"; {escape(notes)}" if notes else ""),
            highlight=False,
            soft_wrap=True,
        )


ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="Server settings file (YAML: any ServerSettings field). "
        "Precedence: flag > EDGECLOUD_SERVER_* variable > this file > default.",
    ),
]
PrintConfigOption = Annotated[
    bool, typer.Option("--print-config", help="Print the resolved settings (YAML) and exit.")
]


@app.command()
def serve(
    repo: RepoOption = DEFAULT_REPO,
    config: ConfigOption = None,
    host: Annotated[
        str | None, typer.Option(help="Interface to bind (default 127.0.0.1, loopback).")
    ] = None,
    http_port: Annotated[int | None, typer.Option(help="HTTP port (default 8000).")] = None,
    grpc_port: Annotated[
        int | None, typer.Option(help="gRPC port (default 8001); -1 disables gRPC.")
    ] = None,
    token_file: Annotated[
        Path | None, typer.Option(help="File with the bearer token clients must send.")
    ] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="PEM certificate for TLS.")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="PEM private key for TLS.")] = None,
    max_request_mb: Annotated[
        float | None, typer.Option(help="Largest request body, MiB (default 64).")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(help="Per-request timeout, seconds (default 30).")
    ] = None,
    access_log: Annotated[
        bool | None, typer.Option("--access-log/--no-access-log", help="JSON access log on stderr.")
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="auto (default; CUDA via torch when present), cpu or cuda.")
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            help="onnxruntime intra-op threads per call in each worker (default 1). "
            "0 means all available cores: with --workers N each worker gets cores / N "
            "(at least 1), so the workers together use every core once."
        ),
    ] = None,
    fleet: Annotated[
        Path | None, typer.Option(help="Update repository to serve at /fleet/ (with HTTP Range).")
    ] = None,
    fleet_keys: Annotated[
        Path | None,
        typer.Option(help="Keys directory holding the timestamp key: re-sign it before expiry."),
    ] = None,
    model_control: Annotated[
        str | None,
        typer.Option(
            help="none (default: load all at start), poll (follow the repository) or "
            "explicit (load/unload on request), as Triton's --model-control-mode."
        ),
    ] = None,
    poll_interval_s: Annotated[
        float | None,
        typer.Option(
            help="Seconds between repository scans (default 5); only with --model-control poll."
        ),
    ] = None,
    load_model: Annotated[
        list[str] | None,
        typer.Option(help="Model to load at start in explicit mode (repeat; * for all)."),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Server processes sharing the ports (default: one per core); 1: a single "
            "process, no supervisor."
        ),
    ] = None,
    print_config: PrintConfigOption = False,
) -> None:
    """Serve every model in the repository over the Open Inference Protocol (HTTP + gRPC).

    Every setting also comes from an EDGECLOUD_SERVER_<FIELD> environment
    variable (e.g. EDGECLOUD_SERVER_TOKEN) or the --config file; a flag given
    here wins over the environment, which wins over the file.
    """
    import logging

    from .server.app import Listening
    from .server.app import serve as run_server
    from .server.settings import ServerSettings
    from .server.workers import serve_workers, worker_count

    _config(config)

    settings = ServerSettings.resolve(
        file=config,
        cli={
            "host": host,
            "http_port": http_port,
            "grpc_port": grpc_port,
            "token_file": token_file,
            "tls_cert": tls_cert,
            "tls_key": tls_key,
            "max_request_bytes": _mib(max_request_mb),
            "request_timeout_s": timeout,
            "access_log": access_log,
            "device": device,
            "intra_op_threads": threads,
            "fleet": fleet,
            "fleet_keys": fleet_keys,
            "model_control": model_control,
            "poll_interval_s": poll_interval_s,
            "load_models": load_model or None,
            "workers": workers,
        },
    )
    if print_config:
        _print_settings(settings)
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    repository = ModelRepository(_repo(repo))
    if not repository.model_names():
        raise ModelNotFoundError(
            f"no models in {repo}; build the demo zoo with: edgecloud zoo build"
        )

    def announce(listening: Listening) -> None:  # the ports bound: --http-port 0 resolved
        grpc = f" and grpc {listening.grpc}" if listening.grpc else ""
        text = f"edgecloud {__version__} serving {repo} on {listening.url}{grpc}"
        errors.print(text, highlight=False, soft_wrap=True)

    count = worker_count(settings)
    if count == 1:
        run_server(repository, settings, on_ready=announce)
    else:
        serve_workers(repository, settings, count, on_ready=announce)


def _mib(megabytes: float | None) -> int | None:
    return None if megabytes is None else int(megabytes * 1024 * 1024)


def _print_settings(settings: Any) -> None:
    import yaml

    console.print(yaml.safe_dump(settings.redacted(), sort_keys=False), end="", highlight=False)


@app.command()
def compress(
    model: Annotated[str, typer.Argument(help="Model name in the repository.")],
    method: Annotated[
        str,
        typer.Option(
            "--method", "-m", help="int8-dynamic, int8-static, fp16, int4-weight, prune, distill."
        ),
    ],
    repo: RepoOption = DEFAULT_REPO,
    model_version: Annotated[
        str | None,
        typer.Option("--version", help="Version to start from (default: newest uncompressed)."),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(
            help="Evaluation .npz (inputs by name, optional 'labels'; default: the version's "
            "samples; 'random': random inputs, no measure of accuracy). prune/distill: the "
            "training .npz."
        ),
    ] = None,
    val: Annotated[
        str | None, typer.Option(help="prune/distill: evaluation .npz (default: the samples).")
    ] = None,
    tolerance: Annotated[
        float | None,
        typer.Option(
            help="Max accuracy loss in points (or 1 - min cosine without labels) allowed "
            "(default: 1 point, or cosine >= 0.98): a version that loses more is not added."
        ),
    ] = None,
    calibration: Annotated[
        Path | None, typer.Option(help="int8-static: calibration .npz (default: the samples).")
    ] = None,
    per_channel: Annotated[
        bool | None,
        typer.Option("--per-channel/--per-tensor", help="int8: weight scales (per channel)."),
    ] = None,
    outlier_ratio: Annotated[
        float | None, typer.Option(help="int8-static: dynamic above max/p99.9 (3).")
    ] = None,
    block_size: Annotated[int | None, typer.Option(help="int4-weight: block size (32).")] = None,
    module: Annotated[
        str | None,
        typer.Option(help="prune/distill: torch module factory, pkg.module:fn or file.py:fn."),
    ] = None,
    amount: Annotated[
        float | None, typer.Option(help="prune: share of channels removed (0.5).")
    ] = None,
    ignore: Annotated[
        str | None, typer.Option(help="prune: submodule names kept whole, comma-separated.")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="prune/distill: training epochs (10).")] = None,
    lr: Annotated[
        float | None, typer.Option(help="prune/distill: Adam learning rate (1e-3).")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="prune/distill: rows per step (64).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="prune/distill: torch seed (0).")] = None,
    temperature: Annotated[float | None, typer.Option(help="distill: temperature (4).")] = None,
    alpha: Annotated[float | None, typer.Option(help="distill: soft-target weight (0.7).")] = None,
    time_limit: Annotated[
        float, typer.Option(min=0.001, help="Seconds building and evaluating may take.")
    ] = 1800.0,
) -> None:
    """Compress a model into a new version, with an evaluation report beside it.

    Methods: int8-dynamic, int8-static, fp16, int4-weight (onnxruntime), and
    prune, distill (torch: --module package.module:factory --data train.npz
    [--val val.npz]). A flag the method does not take is refused by name.
    """
    from .compress import REPORT_FILES as report_files
    from .compress import compress as run_compress
    from .compress import report
    from .compress.methods import resolve

    _repo(repo)
    given = {
        "calibration": calibration, "per_channel": per_channel, "outlier_ratio": outlier_ratio,
        "block_size": block_size, "module": module, "amount": amount, "epochs": epochs,
        "lr": lr, "batch_size": batch_size, "seed": seed, "temperature": temperature,
        "alpha": alpha, "ignore": None if ignore is None else _names(ignore, "--ignore"),
    }  # fmt: skip
    options = {k: v for k, v in given.items() if v is not None}
    evaluation = data
    if resolve(method).trains:
        options.update({} if data is None else {"data": Path(data)})
        evaluation = val
    elif val is not None:
        raise ConfigError(f"{method} does not take --val (prune and distill do); use --data")

    with _task_progress() as progress:
        task = progress.add_task(f"{method} on {model}", total=1.0)

        def report_progress(fraction: float, text: str) -> None:
            progress.update(task, completed=fraction, description=f"{method} on {model}: {text}")

        result = run_compress(
            ModelRepository(repo), model, method, version=model_version, options=options,
            data=evaluation, tolerance="default" if tolerance is None else tolerance,
            time_limit_s=time_limit,
            progress=report_progress, spell=_flag, report=True,
        )  # fmt: skip
    console.print(report.table([result]))
    beside = [name for name in report_files if name in result.version.files]
    console.print(f"version {result.version.version} written to {result.version.path} "
                  f"({', '.join(beside)} beside it)")  # fmt: skip


def _flag(option: str) -> str:
    """An option's command-line spelling (``per_channel`` -> ``--per-channel``)."""
    return "--" + option.replace("_", "-")


def _names(text: str, flag: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    if not names:
        raise ConfigError(f"{flag} takes names separated by commas, not {text!r}")
    return names


@app.command()
def edge(
    deployment: Annotated[Path, typer.Option("--deployment", "-d", help="Deployment YAML.")],
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Interface to bind (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port (default 8080).")] = None,
    timeout: Annotated[
        float | None, typer.Option(help="Per-request timeout, seconds (default 30).")
    ] = None,
    print_config: PrintConfigOption = False,
) -> None:
    """Run a hybrid deployment behind the Open Inference Protocol on this device.

    Any v2 client calls it like a server; each response carries its routing
    trace in the edgecloud_trace parameter. The outbox is drained in the background.
    Settings: flag > EDGECLOUD_SERVER_* variable > --config file > default (the
    gateway listens on 8080 unless told otherwise; it serves no gRPC).
    """
    from .gateway import run_gateway
    from .server.app import Listening
    from .server.settings import ServerSettings

    _config(config)

    settings = ServerSettings.resolve(
        file=config,
        cli={"http_port": port, "host": host, "request_timeout_s": timeout, "grpc_port": -1},
        defaults={"http_port": GATEWAY_PORT},
    )
    if print_config:
        _print_settings(settings)
        return
    checked_path(deployment, "file", "deployment file")
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per forwarded request

    def announce(listening: Listening) -> None:  # the port bound: --port 0 resolved
        text = f"edgecloud edge gateway for {deployment} on {listening.url}"
        errors.print(text, highlight=False, soft_wrap=True)

    run_gateway(deployment, settings, on_ready=announce)


#: The gateway's HTTP port when no source gives one (the server's is 8000).
GATEWAY_PORT = 8080


@app.command("outbox")
def outbox_status(
    path: Annotated[Path, typer.Argument(help="The outbox's SQLite file.")],
) -> None:
    """What an outbox holds and what became of the rest: counters, dead letters, quarantines.

    Read-only: the file is opened read-only, and a file that is not an outbox
    (or a corrupt one) is reported and left exactly as it is.
    """
    from ._outbox_report import read_outbox

    report = read_outbox(path)
    table = Table("counter", "value")
    for name, value in report.stats.items():
        table.add_row(name, str(value))
    console.print(table)
    if report.dead_reasons:
        console.print("dead letters: " + ", ".join(
            f"{n} {r}" for r, n in sorted(report.dead_reasons.items())))  # fmt: skip
    for _, moved_to, problem in report.quarantines:
        errors.print(f"[red]damaged outbox file kept at {moved_to}:[/] {problem}", highlight=False)


@app.command()
def calibrate(
    deployment: Annotated[Path, typer.Option("--deployment", "-d", help="Deployment YAML.")],
    data: Annotated[
        Path | None,
        typer.Option(
            help="Labelled rows (.npz): the request's inputs by name plus 'labels'. "
            "Default: the large model's samples, if they carry labels."
        ),
    ] = None,
    at: Annotated[
        str | None,
        typer.Option(help="YAML path of the cascade (e.g. root.fallback.primary.cascade)."),
    ] = None,
    target: Annotated[
        float | None,
        typer.Option(
            "--target-accuracy", "--target", help="Accuracy to keep, relative to the large model."
        ),
    ] = None,
    max_escalation: Annotated[
        float | None, typer.Option(help="Largest share of requests to escalate.")
    ] = None,
    guarantee: Annotated[
        float | None,
        typer.Option(
            help="δ: choose a threshold that meets the target with probability >= 1 - δ "
            "(Learn then Test); refused when the rows cannot certify one."
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="Report only; leave the file as it is.")] = False,
) -> None:
    """Pick a cascade's threshold on labelled rows and write it into the deployment.

    Only the threshold's value changes in the file (comments, order and
    layout stay). The table gives the escalation rate and the relative
    accuracy on the rows with 95 % Clopper–Pearson intervals; a warning says
    when the target lies inside the interval (the rows cannot back it).
    """
    from .calibration import calibrate_deployment

    checked_path(deployment, "file", "deployment file")
    if data is not None:
        checked_path(data, "file", "samples file")
    result = calibrate_deployment(
        deployment, data=data, at=at, target=target, max_escalation=max_escalation,
        guarantee=guarantee, write=not dry_run,
    )  # fmt: skip
    c = result.calibration
    (esc_lo, esc_hi), (rel_lo, rel_hi) = c.escalation_interval, c.relative_accuracy_interval
    table = Table(
        "threshold", "escalated", "relative accuracy", "accuracy", "rows", "guaranteed",
        title=f"{result.at} ({result.small_model} → {result.large_model}, {result.measure})",
    )  # fmt: skip
    table.add_row(
        f"{c.point.threshold:g}",
        f"{c.point.escalation_rate:.1%} [{esc_lo:.1%}, {esc_hi:.1%}]",
        f"{c.point.relative_accuracy:.4f} [{rel_lo:.4f}, {rel_hi:.4f}]",
        f"{c.point.accuracy:.2%} (large {c.large_accuracy:.2%})",
        str(c.rows),
        f"yes, 1 - δ = {1 - c.guarantee:g}" if c.guarantee is not None else "no (on average)",
    )
    console.print(table)
    console.print(
        f"in brackets: {c.level:.0%} Clopper–Pearson intervals from {c.rows} rows of {result.data}",
        highlight=False,
    )
    for line in c.warnings:
        errors.print(f"[yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True)
    if result.written:
        console.print(f"wrote threshold {c.point.threshold!r} into {deployment} at {result.at}")


@app.command()
def advise(
    spec: Annotated[
        Path | None, typer.Argument(help="Workload YAML (see the built-in --scenario files).")
    ] = None,
    scenario: Annotated[
        str | None, typer.Option("--scenario", "-s", help="A built-in example workload.")
    ] = None,
    list_scenarios: Annotated[
        bool, typer.Option("--list", help="List the built-in scenarios.")
    ] = False,
    out: Annotated[
        Path | None, typer.Option(help="Directory for report.md, PNGs, deployment.yaml.")
    ] = None,
    plot: Annotated[
        bool | None,
        typer.Option(
            "--plot/--no-plot",
            help="Draw cost, latency and sensitivity PNGs (default: when matplotlib, the "
            "'bench' extra, is installed; --plot insists).",
        ),
    ] = None,
    measure: Annotated[
        bool, typer.Option(help="Measure the model locally and the server, then re-decide.")
    ] = False,
    repo: Annotated[
        Path | None, typer.Option("--repo", help="--measure: model repository to run.")
    ] = None,
    remote: Annotated[
        str | None, typer.Option(help="--measure: a v2 server to probe (http://host:port).")
    ] = None,
    token_env: Annotated[
        str | None, typer.Option(help="--measure: variable holding the server's token.")
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="--measure: the model's inputs (.npz, one row per request). Default: the "
            "version's samples; random only for fixed-shape inputs without value domains.",
        ),
    ] = None,
    small_data: Annotated[
        Path | None,
        typer.Option("--small-data", help="--measure: the small model's inputs, as --data."),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Replace files in --out that differ from what advise writes and are not "
            "its own older outputs (hand edits, a calibrated threshold, your own files).",
        ),
    ] = False,
) -> None:
    """Recommend local, remote or a hybrid pattern for a workload, with the reasons,
    costs, latency, what would flip it, and a deployment.yaml that runs it."""
    from . import advisor
    from .advisor.report import render, write_outputs

    if list_scenarios:
        for name in advisor.scenario_names():
            console.print(f"{name}: {' '.join(advisor.scenario(name).description.split())}")
        return
    if (spec is None) == (scenario is None):
        raise ConfigError("give a workload file or --scenario NAME (--list shows them)")
    if spec is not None:
        checked_path(spec, "file", "workload file")
    if out is not None:
        checked_path(out, "directory", "output directory", may_be_missing=True)
    workload = advisor.scenario(scenario) if scenario else advisor.load_workload(spec)  # type: ignore[arg-type]
    if not measure and (data is not None or small_data is not None):
        raise ConfigError("--data and --small-data are inputs for --measure; add --measure")
    if measure:
        if repo is not None:
            _repo(repo)
        for path, option in ((data, "--data"), (small_data, "--small-data")):
            if path is not None:
                checked_path(path, "file", f"{option} file")
        from .advisor.measure import measure as run_measure

        before = advisor.advise(workload).strategy
        token = os.environ.get(token_env) if token_env else None
        workload, rows = run_measure(workload, repo=repo, remote_url=remote, token=token,
                                     data=data, small_data=small_data)  # fmt: skip
        table = Table("quantity", "estimate", "measured", "inputs", title="Estimate vs measured")
        for row in rows:
            table.add_row(row.quantity, f"{row.estimate:,.3f} {row.unit}",
                          f"{row.measured:,.3f} {row.unit}", row.inputs)  # fmt: skip
        console.print(table)
        console.print(f"estimated recommendation: {before}")
    decision = advisor.advise(workload)
    flips = advisor.sensitivity(workload)
    render(decision, flips, console)
    target = out or Path("advice") / workload.name
    if plot is None:
        from ._optional import available

        plot = available("matplotlib")
        if not plot:
            errors.print(
                "note: no plots (matplotlib is not installed: pip install 'edgecloud[bench]')",
                highlight=False,
                markup=False,
            )
    # the deployment names the repository as seen from where it is written
    where = Path(os.path.relpath((repo or Path("model-repo")).resolve(), target.resolve()))
    paths = write_outputs(
        decision, flips, target, with_plots=plot, force=force, repository=where.as_posix()
    )
    console.print("wrote " + ", ".join(str(p) for p in paths))


@app.command("split")
def split_command(
    model: Annotated[str, typer.Argument(help="Model name in the repository.")],
    repo: RepoOption = DEFAULT_REPO,
    model_version: Annotated[
        str | None,
        typer.Option(
            "--version",
            help="Version to split: any on disk that matches its sha256 (default: newest served).",
        ),
    ] = None,
    codec: Annotated[
        str, typer.Option(help="Activation codecs to offer, comma-separated: fp32, fp16, int8.")
    ] = "fp32,int8",
    cuts: Annotated[
        str | None,
        typer.Option(help="Cuts to write, e.g. cut17,cut28 (default: those that can win)."),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="Inputs to split on (.npz, arrays named as the model's inputs): the first "
            "row is timed, up to 32 check fidelity. Default: the version's samples.",
        ),
    ] = None,
    device_threads: Annotated[int, typer.Option(min=1, help="Threads the device runs with.")] = 1,
    remote: Annotated[
        str | None, typer.Option(help="Time the tails through this server (it must serve them).")
    ] = None,
    tail_profile: Annotated[
        Path | None, typer.Option(help="Tail times recorded on the server with --profile-out.")
    ] = None,
    profile_out: Annotated[
        Path | None, typer.Option(help="Where to write the profile (default: beside the model).")
    ] = None,
    bandwidths: Annotated[
        str, typer.Option(help="Bandwidths (Mbit/s) for the predicted-latency columns.")
    ] = "1,10,50,200",
    rtt_ms: Annotated[float, typer.Option(min=0, help="RTT for the predictions.")] = 20.0,
    objective: Annotated[str, typer.Option(help="latency or energy.")] = "latency",
    plot: Annotated[
        Path | None, typer.Option(help="Draw latency vs bandwidth for every split to this PNG.")
    ] = None,
) -> None:
    """Partition a model: write head/tail versions of the useful cuts and profile them.

    The tail of cut N is served as the model <model>.tail.cutN (.int8/.fp16 for
    compressed activations), the head as <model>.head.cutN. Without --remote or
    --tail-profile the tails are timed on this machine, as if it were the server.
    Cuts, timings and fidelity are measured on --data or the version's samples.
    """
    from .split import (
        ProfileTailTimer,
        RemoteTailTimer,
        SplitProfile,
        default_profile_path,
        split_model,
    )
    from .split import report as split_report
    from .split.artifacts import all_or_nothing

    if remote is not None and tail_profile is not None:
        raise ConfigError("give --remote or --tail-profile, not both")
    if objective not in ("latency", "energy"):
        raise ConfigError(f"--objective is latency or energy, not {objective!r}")
    codecs = [c.strip() for c in codec.split(",") if c.strip()]
    mbps = _floats(bandwidths, "--bandwidths")
    if tail_profile is not None:
        checked_path(tail_profile, "file", "tail profile")
    if data is not None:
        checked_path(data, "file", "samples file")
    if plot is not None:
        _plot_path(plot)
    repository = ModelRepository(_repo(repo))
    timer: Any = None
    if remote is not None:
        from .backends.remote import RemoteBackend

        timer = RemoteTailTimer(RemoteBackend(remote, timeout=30.0))
    elif tail_profile is not None:
        timer = ProfileTailTimer(SplitProfile.load(tail_profile))
    target = profile_out or default_profile_path(repository, model)
    if profile_out is not None:
        _profile_target(profile_out, SplitProfile)
    with (
        _task_progress() as progress,
        all_or_nothing(repository, model),
        repository.transaction() as journal,
    ):
        result = split_model(
            repository, model, version=model_version, codecs=codecs,
            cuts=[c.strip() for c in cuts.split(",") if c.strip()] if cuts else None,
            data=data, tail_timer=timer, device_threads=device_threads, progress=progress,
        )  # fmt: skip
        if target.resolve().is_relative_to(repository.root.resolve()):
            journal.protect(target)  # a crash restores the old profile with the old splits
        result.profile.save(target)  # splits without their profile are not kept either
    console.print(split_report.table(result.profile, mbps, rtt_ms / 1e3, objective=objective))
    heads = sorted({p.head.name for p in result.pairs})
    console.print(
        f"{result.cuts_considered} cut points; {_count(len(result.pairs), 'split')} written "
        f"({_count(len(heads), 'head')}, {_count(len(result.pairs), 'tail')}) to "
        f"{repository.root}; "
        f"profile: {target}"
    )
    if plot is not None:
        from ._outputs import replaced

        with replaced(plot) as scratch:
            split_report.plot(result.profile, scratch, rtt_ms / 1e3)
        console.print(f"plot: {plot}")


@app.command("filter")
def filter_stream(
    input_file: Annotated[
        Path, typer.Option("--input", "-i", help="A 16 kHz WAV (vad), or .npy chunks.")
    ],
    trigger: Annotated[str, typer.Option(help="vad, anomaly or frame-diff.")] = "vad",
    repo: RepoOption = DEFAULT_REPO,
    threshold: Annotated[float | None, typer.Option(help="Trigger threshold.")] = None,
    fit: Annotated[
        Path | None, typer.Option(help="anomaly: .npy of normal readings [N, channels].")
    ] = None,
    chunk_s: Annotated[float, typer.Option(help="anomaly/frame-diff: seconds per chunk.")] = 1.0,
    pre_roll: Annotated[float, typer.Option(help="Seconds kept before an event.")] = 0.25,
    post_roll: Annotated[float, typer.Option(help="Seconds kept after an event.")] = 0.25,
    merge_gap: Annotated[float, typer.Option(help="Quiet seconds that still merge.")] = 0.5,
    min_duration: Annotated[float, typer.Option(help="Shortest triggered span kept.")] = 0.1,
    plot: Annotated[
        Path | None, typer.Option(help="Draw the signal, trigger scores and events (PNG).")
    ] = None,
) -> None:
    """Screen a stream on the device: print its events and the uplink bandwidth saved."""
    from .filter import AnomalyTrigger, Filter, FrameDiffTrigger, SegmentConfig, Trigger
    from .filter.audio import chunks as audio_chunks
    from .filter.audio import read_wav

    checked_path(input_file, "file", "input file")
    if fit is not None:
        checked_path(fit, "file", "--fit file")
    if trigger not in _THRESHOLDS:
        raise ConfigError(f"unknown trigger {trigger!r}; use vad, anomaly or frame-diff")
    if threshold is not None:
        low, high, closed = _THRESHOLDS[trigger]
        if not (low < threshold <= high or (closed and threshold == low)):
            raise ConfigError(
                f"--threshold for {trigger} is a number in {'[' if closed else '('}{low:g}, "
                f"{high:g}{']' if math.isfinite(high) else ')'}, got {threshold}"
            )
    if plot is not None:
        _plot_path(plot)
    if trigger == "vad":
        _repo(repo)
    segment = SegmentConfig(pre_roll, post_roll, min_duration, merge_gap)
    signal: np.ndarray
    made: Trigger
    if trigger == "vad":
        signal = read_wav(input_file)
        parts = audio_chunks(signal)
        from .filter import VadTrigger

        made = VadTrigger(ModelRepository(repo))
    elif trigger in ("anomaly", "frame-diff"):
        signal = _load_npy(input_file, "--input file")
        if signal.ndim == 0 or len(signal) == 0:
            raise ConfigError(
                f"{input_file} holds no chunks (shape {list(signal.shape)}); expected an "
                "array [chunks, ...] with one chunk per row"
            )
        parts = list(signal)
        if trigger == "anomaly":
            if fit is None:
                raise ConfigError("--trigger anomaly needs --fit normal.npy to learn from")
            try:
                made = AnomalyTrigger(chunk_s=chunk_s).fit(_load_npy(fit, "--fit file"))
            except InvalidRequestError as exc:
                raise ConfigError(f"--fit {fit}: {exc.message}") from None
        else:
            made = FrameDiffTrigger(chunk_s=chunk_s)
    else:
        raise ConfigError(f"unknown trigger {trigger!r}; use vad, anomaly or frame-diff")
    if threshold is not None:
        made.threshold = threshold
    stream = Filter(made, segment=segment)
    try:
        events = stream.feed_all(parts)
    except InvalidRequestError as exc:
        raise ConfigError(f"{input_file}: {exc.message}") from None
    table = Table("event", "start s", "end s", "duration s", "peak score", "bytes sent",
                  title=f"{input_file.name}: {len(events)} events")  # fmt: skip
    for e in events:
        table.add_row(str(e.index), f"{e.start_s:.2f}", f"{e.end_s:.2f}", f"{e.duration_s:.2f}",
                      f"{e.peak_score:.3f}", f"{e.bytes_sent:,}")  # fmt: skip
    console.print(table)
    st = stream.stats
    console.print(
        f"sent {st.bytes_sent:,} of {st.bytes_total:,} bytes: "
        f"[bold]{st.bytes_saved:.1%} of the uplink saved[/] "
        f"({st.triggered_chunks} of {st.chunks} chunks triggered)"
    )
    if st.unreadable_chunks:
        errors.print(
            f"[yellow]warning:[/] {st.unreadable_chunks} of {st.chunks} chunks hold NaN or "
            "infinite readings (a sensor dropout?): counted as triggered and sent",
            highlight=False,
            soft_wrap=True,
        )
    if plot is not None:
        from ._outputs import replaced
        from .filter.plot import plot_events

        with replaced(plot) as scratch:
            plot_events(signal, stream.scores, events, made.threshold, made.chunk_s, scratch)
        console.print(f"wrote {plot}")


_THRESHOLDS = {"vad": (0.0, 1.0, True), "anomaly": (0.0, math.inf, False),
               "frame-diff": (0.0, math.inf, True)}  # fmt: skip
"""Each trigger's threshold range (low, high, low allowed), as the deployment's
filter node checks it (edgecloud.deployment.filter_node); NaN is in none."""


def _plot_path(path: Path) -> Path:
    """A ``--plot`` target: a ``.png`` that is not a directory (the plot replaces
    an older PNG, told by its signature, never a file of another kind, such as
    the data it plots; through a symlink, its target is replaced)."""
    if path.suffix.lower() != ".png":
        raise ConfigError(f"--plot writes a PNG: name it FILE.png, not {path}")
    if path.is_dir():
        raise ConfigError(f"--plot {path} is a directory; name a FILE.png")
    from ._outputs import PNG_SIGNATURE, is_png

    if path.exists():
        try:
            with path.open("rb") as f:
                head = f.read(len(PNG_SIGNATURE))
        except OSError as exc:
            raise ConfigError(f"--plot {path}: cannot read it ({exc.strerror or exc})") from exc
        if not is_png(head):
            raise ConfigError(
                f"--plot {path} exists and is not a PNG; not replaced: move it away or "
                "name another FILE.png"
            )
    return path


def _profile_target(path: Path, profile: Any) -> None:
    """``--profile-out``: a new file, or an older split profile (replaced); never a
    file of another kind (a deployment, the data), which ConfigError keeps."""
    if path.is_dir():
        raise ConfigError(f"--profile-out {path} is a directory; name a FILE.json")
    if path.exists():
        try:
            profile.load(path)
        except (EdgecloudError, OSError):
            raise ConfigError(
                f"--profile-out {path} exists and is not a split profile; not replaced: "
                "name another file"
            ) from None


def _repo(repo: Path) -> Path:
    """The model repository directory, checked (ConfigError naming what is wrong)."""
    return checked_path(repo, "directory", "model repository")


def _config(config: Path | None) -> None:
    if config is not None:
        checked_path(config, "file", "settings file")


def _load_npy(path: Path, what: str) -> np.ndarray:
    """``path``'s array, its header checked before numpy allocates (ConfigError)."""
    from .samples import read_npy

    return read_npy(path, what)


@app.command("schema")
def schema(
    what: Annotated[str, typer.Argument(help="The file whose schema to print: deployment.")],
) -> None:
    """Print the JSON Schema of a file edgecloud reads (for editors: yaml-language-server).

    ``edgecloud schema deployment > deployment.schema.json``, then put
    ``# yaml-language-server: $schema=deployment.schema.json`` at the top of the file.
    """
    import json

    from .deployment import DeploymentSpec

    schemas = {"deployment": DeploymentSpec.json_schema}
    if what not in schemas:
        raise ConfigError(f"no schema for {what!r}; use one of {', '.join(schemas)}")
    sys.stdout.write(json.dumps(schemas[what](), indent=2) + "\n")


@app.command()
def demo(repo: RepoOption = DEFAULT_REPO) -> None:
    """A tour on the demo zoo: digits on both models, sentence similarity, latency."""
    from .demo import run_demo

    run_demo(ModelRepository(repo), console)


def print_response(response: InferResponse, labels: Sequence[str] | None) -> None:
    console.print(f"[bold]{response.model}[/] version {response.version}")
    for name, array in response.outputs.items():
        console.print(f"[cyan]{name}[/] {list(array.shape)} {array.dtype}")
        if labels and array.ndim == 2 and array.shape[1] == len(labels):
            for row in array[:8]:
                top = np.argsort(row)[::-1][:3]
                console.print("  " + "   ".join(f"{labels[i]}: {row[i]:.3f}" for i in top))
        else:
            console.print(np.array2string(array, threshold=20, precision=4))
    console.print(response.trace.describe(), highlight=False)


def _task_progress() -> Progress:
    """A bar per long task (description, bar, %, elapsed) that clears when done."""
    columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
               TimeElapsedColumn())  # fmt: skip
    return Progress(*columns, console=console, transient=True)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _floats(text: str, option: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"{option} takes numbers like 1,10,50, not {text!r}") from None
    if not values or min(values) <= 0:
        raise ConfigError(f"{option} takes positive numbers, not {text!r}")
    return values


def _source(repository: ModelRepository, name: str) -> str:
    """``models list``'s source column: a Triton directory is read-only and not hashed."""
    return "triton" if repository.is_triton(name) else "edgecloud"


def _specs(specs: Any) -> str:
    return "\n".join(f"{s.name} {s.datatype}[{','.join(map(str, s.shape))}]" for s in specs)


def main() -> None:
    """Entry point: errors are one clear line on stderr, never a traceback."""
    try:
        app()
    except EdgecloudError as exc:
        errors.print(f"[red]error:[/] {escape(describe(exc))}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        errors.print("interrupted")
        sys.exit(130)
    except Exception as exc:  # last resort: still one line, the traceback on request
        if os.environ.get("EDGECLOUD_DEBUG"):
            raise
        if isinstance(exc, OSError) and exc.filename is not None:
            # a path the user gave that no check caught: still the user's to fix
            reason = exc.strerror or type(exc).__name__
            errors.print(f"[red]error:[/] {escape(f'{exc.filename}: {reason}')}",
                         highlight=False, soft_wrap=True)  # fmt: skip
            sys.exit(1)
        errors.print(
            f"[red]internal error:[/] {escape(describe(exc))} "
            "(set EDGECLOUD_DEBUG=1 for the traceback, and please report it)",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(2)


if __name__ == "__main__":
    main()
