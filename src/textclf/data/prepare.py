"""The prepare stage: normalize, drop empties, resolve label conflicts, dedup, stratified split.

Each step is a small pure function over a DataFrame; the stage (``textclf.stages.run_prepare``) reads and
writes, through ``write_prepared`` and ``read_split`` here.
The split is assigned per *normalized text*, after dedup, so a text can land in exactly one split:
the train/test leak is impossible by construction, and ``assert_disjoint`` re-checks it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from textclf import contracts as C
from textclf.config import DataConfig, NormalizeConfig, PrepareConfig
from textclf.data.normalize import normalize
from textclf.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepResult:
    frame: pd.DataFrame
    dropped: int
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PreparedData:
    splits: dict[str, pd.DataFrame]
    manifest: dict[str, Any]


def text_id(text: str) -> str:
    """Stable row id: a hash of the normalized text (unique after dedup)."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def select_columns(frame: pd.DataFrame, data_cfg: DataConfig) -> pd.DataFrame:
    missing = [c for c in (data_cfg.text_column, data_cfg.label_column) if c not in frame.columns]
    if missing:
        raise DataError(f"raw data has no column(s) {missing}; columns are {list(frame.columns)}")
    out = pd.DataFrame(
        {
            "text": frame[data_cfg.text_column].astype(object),
            "label": frame[data_cfg.label_column].astype(object),
        }
    )
    out["text"] = out["text"].map(
        lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)
    )
    out["label"] = out["label"].map(lambda v: "" if v is None else str(v).strip())
    return out.reset_index(drop=True)


def normalize_texts(frame: pd.DataFrame, cfg: NormalizeConfig) -> pd.DataFrame:
    out = frame.copy()
    out["text"] = [normalize(t, cfg) for t in out["text"]]
    return out


def drop_empty(frame: pd.DataFrame) -> StepResult:
    keep = frame["text"] != ""
    return StepResult(frame[keep].reset_index(drop=True), int((~keep).sum()))


def resolve_conflicts(frame: pd.DataFrame, policy: str) -> StepResult:
    """Texts seen with more than one label: ``drop`` all copies, keep the ``majority`` label
    (ties dropped), or keep the ``first`` occurrence's label."""
    labels_per_text = frame.groupby("text", sort=False)["label"].nunique()
    conflicting = labels_per_text[labels_per_text > 1].index
    is_conflict = frame["text"].isin(conflicting)
    if policy == "drop":
        out = frame[~is_conflict]
    elif policy == "first":
        first_label = frame.drop_duplicates("text", keep="first").set_index("text")["label"]
        out = frame[frame["label"].to_numpy() == frame["text"].map(first_label).to_numpy()]
    elif policy == "majority":
        counts = frame[is_conflict].groupby(["text", "label"], sort=True).size()
        winners: dict[str, str] = {}
        for text, group in counts.groupby(level=0, sort=True):
            ranked = group.sort_values(ascending=False, kind="stable")
            if len(ranked) == 1 or ranked.iloc[0] > ranked.iloc[1]:
                winners[text] = ranked.index[0][1]
        keep = ~is_conflict | (frame["text"].map(winners).to_numpy() == frame["label"].to_numpy())
        out = frame[keep]
    else:  # guarded by the config model; kept for direct callers
        raise ValueError(f"unknown conflict policy {policy!r}")
    out = out.reset_index(drop=True)
    return StepResult(out, len(frame) - len(out), {"conflicting_texts": int(len(conflicting))})


def dedupe(frame: pd.DataFrame) -> StepResult:
    """Exact dedup on normalized text; the first occurrence is kept."""
    out = frame.drop_duplicates("text", keep="first").reset_index(drop=True)
    return StepResult(out, len(frame) - len(out))


def stratified_split(
    frame: pd.DataFrame, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, pd.DataFrame]:
    """Per class: order rows by id (so input order does not matter), shuffle with ``seed``, cut.

    Rows of each split are sorted by id, so the same set of texts always gives the same bytes.
    """
    if frame["text"].duplicated().any():
        raise ValueError("stratified_split needs deduplicated texts")
    frame = frame.assign(id=[text_id(t) for t in frame["text"]])
    rng = np.random.default_rng(seed)
    parts: dict[str, list[pd.DataFrame]] = {s: [] for s in C.SPLITS}
    for label in sorted(frame["label"].unique()):
        rows = frame[frame["label"] == label].sort_values("id", kind="stable")
        order = rng.permutation(len(rows))
        n_test = int(round(len(rows) * test_fraction))
        n_val = int(round(len(rows) * val_fraction))
        shuffled = rows.iloc[order]
        parts["test"].append(shuffled.iloc[:n_test])
        parts["val"].append(shuffled.iloc[n_test : n_test + n_val])
        parts["train"].append(shuffled.iloc[n_test + n_val :])
    return {
        s: pd.concat(p, ignore_index=True)
        .sort_values("id", kind="stable")[["id", "text", "label"]]
        .reset_index(drop=True)
        for s, p in parts.items()
    }


def assert_disjoint(splits: Mapping[str, pd.DataFrame]) -> None:
    seen: dict[str, str] = {}
    for name, df in splits.items():
        for text in df["text"]:
            if text in seen and seen[text] != name:
                raise AssertionError(f"text shared between {seen[text]} and {name}: {text[:40]!r}")
            seen[text] = name


def add_feedback(
    splits: dict[str, pd.DataFrame], feedback: pd.DataFrame, data_cfg: DataConfig, cfg: PrepareConfig
) -> tuple[dict[str, pd.DataFrame], dict[str, int]]:
    """Feedback rows (text, label) join the TRAIN split only. With ``prepare.feedback.review`` only rows
    approved by ``textclf feedback approve`` count; each submitter adds at most ``max_per_submitter`` rows
    (earliest first). A feedback text equal to a val or test text is excluded (evaluation never sees its
    own answers in training), one equal to a train text or to another feedback text is a duplicate, and
    at most ``max_train_share`` of the raw train split is added (earliest first). The splits of the raw
    data do not move. Returns the new splits and the counts."""
    caps = cfg.feedback
    fb = feedback.sort_values("received_at", kind="stable") if "received_at" in feedback else feedback
    if caps.review:
        review = fb["review"] if "review" in fb else pd.Series("pending", index=fb.index)
        fb = fb[review == "approved"]
    approved = len(fb)
    if caps.max_per_submitter is not None:
        submitter = fb["submitter"] if "submitter" in fb else pd.Series("", index=fb.index)
        fb = fb[submitter.groupby(submitter).cumcount() < caps.max_per_submitter]
    capped = len(fb)
    fb = drop_empty(normalize_texts(select_columns(fb, data_cfg), cfg.normalize)).frame
    if data_cfg.labels is not None and (unknown := sorted(set(fb["label"]) - set(data_cfg.labels))):
        raise DataError(f"feedback labels not in data.labels {list(data_cfg.labels)}: {unknown[:5]}")
    held_out = set(splits["val"]["text"]) | set(splits["test"]["text"])
    in_eval = fb["text"].isin(held_out)
    fb = resolve_conflicts(fb[~in_eval], cfg.conflict_policy).frame
    new = dedupe(fb).frame
    new = new[~new["text"].isin(set(splits["train"]["text"]))]
    kept = len(new)
    if caps.max_train_share is not None:
        new = new.iloc[: int(caps.max_train_share * len(splits["train"]))]
    train = pd.concat(
        [splits["train"], new.assign(id=[text_id(t) for t in new["text"]])[["id", "text", "label"]]]
    )
    train = train.sort_values("id", kind="stable").reset_index(drop=True)
    return {**splits, "train": train}, {
        "rows": len(feedback),
        "added_to_train": len(new),
        "excluded_unapproved": len(feedback) - approved,
        "excluded_over_submitter_cap": approved - capped,
        "excluded_equal_to_val_or_test": int(in_eval.sum()),
        "dropped_duplicate_or_conflict": capped - int(in_eval.sum()) - kept,
        "excluded_over_train_share": kept - len(new),
    }


def prepare(
    frame: pd.DataFrame, data_cfg: DataConfig, cfg: PrepareConfig, feedback: pd.DataFrame | None = None
) -> PreparedData:
    """Raw table (plus optional feedback) → three disjoint splits and a manifest of counts (no I/O)."""
    rows_in = len(frame)
    base = normalize_texts(select_columns(frame, data_cfg), cfg.normalize)
    if data_cfg.labels is not None:
        unknown = sorted(set(base["label"]) - set(data_cfg.labels))
        if unknown:
            raise DataError(f"labels not in data.labels {list(data_cfg.labels)}: {unknown[:5]}")
    empty = drop_empty(base)
    conflicts = resolve_conflicts(empty.frame, cfg.conflict_policy)
    dedup = dedupe(conflicts.frame)
    splits = stratified_split(dedup.frame, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    fed = None
    if feedback is not None and len(feedback):
        splits, fed = add_feedback(splits, feedback, data_cfg, cfg)
    assert_disjoint(splits)
    labels = list(data_cfg.labels) if data_cfg.labels is not None else sorted(dedup.frame["label"].unique())
    manifest: dict[str, Any] = {
        "rows_in": rows_in,
        "dropped": {"empty": empty.dropped, "label_conflict": conflicts.dropped, "duplicate": dedup.dropped},
        "conflicting_texts": conflicts.detail["conflicting_texts"],
        "conflict_policy": cfg.conflict_policy,
        "rows_out": len(dedup.frame),
        "labels": labels,
        "splits": {
            name: {
                "rows": len(df),
                "per_class": {lab: int((df["label"] == lab).sum()) for lab in labels},
            }
            for name, df in splits.items()
        },
        "params": cfg.model_dump(mode="json"),
    }
    if fed is not None:
        manifest["feedback"] = fed
    return PreparedData(splits=splits, manifest=manifest)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_prepared(
    prepared: PreparedData, out_dir: Path, input_name: Path | None = None, input_path: Path | None = None
) -> dict[str, Any]:
    """Write ``{train,val,test}.parquet`` and ``manifest.json`` (byte-identical for the same input)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = dict(prepared.manifest)
    hashes: dict[str, str] = {}
    for name, df in prepared.splits.items():
        path = out_dir / C.split_file(name)
        table = pa.Table.from_pandas(df, preserve_index=False).replace_schema_metadata(None)
        pq.write_table(table, path, compression="zstd")
        hashes[name] = sha256_file(path)
    manifest["sha256"] = hashes
    if input_name is not None and input_path is not None:
        manifest["input"] = {"path": input_name.as_posix(), "sha256": sha256_file(input_path)}
    (out_dir / C.MANIFEST_FILE).write_text(
        json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    )
    return manifest


def read_split(prepared_dir: Path, split: str) -> pd.DataFrame:
    """One prepared split: columns ``id, text, label`` as strings."""
    path = Path(prepared_dir) / C.split_file(split)
    if not path.is_file():
        raise DataError(f"prepared split not found: {path} (run `textclf prepare` first)")
    frame = pd.read_parquet(path)
    missing = sorted({"id", "text", "label"} - set(frame.columns))
    if missing:
        raise DataError(f"{path} lacks columns {missing}")
    if frame.empty:
        raise DataError(f"the {split} split in {prepared_dir} is empty")
    return frame[["id", "text", "label"]].astype(str)


def split_digest(frame: pd.DataFrame) -> str:
    """sha256 over every (id, text, label) row sorted by id: the one content digest of a split
    (logged on runs, compared by the gate, part of the training resume fingerprint)."""
    h = hashlib.sha256()
    for row in sorted(zip(frame["id"], frame["text"], frame["label"], strict=True)):
        h.update(json.dumps(row, ensure_ascii=False).encode("utf-8") + b"\n")
    return h.hexdigest()
