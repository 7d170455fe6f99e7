"""Config loading, error messages, and dvc.yaml ↔ params.yaml agreement."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from textclf.config import (
    PREPARED_CHECK_NAMES,
    RAW_CHECK_NAMES,
    CheckConfig,
    Config,
    apply_overrides,
    load_config,
)
from textclf.errors import ConfigError


def test_repo_params_load(repo_root: Path) -> None:
    cfg = load_config(repo_root / "params.yaml")
    assert cfg.paths.raw == Path("data/reviews.csv")
    assert cfg.data.labels == ("negative", "positive")
    with pytest.raises(ValidationError):  # frozen
        cfg.prepare.seed = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ({"prepare": {"sed": 1}}, "prepare.sed: unknown key"),
        ({"prepare": {"test_fraction": 1.5}}, "prepare.test_fraction"),
        ({"prepare": {"val_fraction": 0.5, "test_fraction": 0.5}}, "val_fraction + prepare.test_fraction"),
        ({"prepare": {"conflict_policy": "vote"}}, "prepare.conflict_policy"),
        ({"data": {"labels": ["only"]}}, "at least two classes"),
        ({"bogus": {}}, "bogus: unknown key"),
        ({"flow": {"notification_block": "textclf-failures"}}, "flow.notification_block"),  # no block type
        ({"flow": {"webhook_url": "https://hooks.example.com/x"}}, "flow.webhook_url: unknown key"),
    ],
)
def test_bad_values_name_the_key(repo_root: Path, override: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(repo_root / "params.yaml", overrides=override)
    assert fragment in str(err.value)


def test_missing_and_unparsable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("paths: [unclosed\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(bad)


def test_apply_overrides_revalidates(repo_root: Path) -> None:
    cfg = load_config(repo_root / "params.yaml")
    assert apply_overrides(cfg, {"prepare": {"seed": 7}}).prepare.seed == 7
    with pytest.raises(ConfigError):
        apply_overrides(cfg, {"prepare": {"seed": "x"}})


def _has_key(tree: dict, dotted: str) -> bool:
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def test_dvc_yaml_params_and_templates_exist_in_params(repo_root: Path) -> None:
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    dvc = yaml.safe_load((repo_root / "dvc.yaml").read_text())
    import re

    for name, stage in dvc["stages"].items():
        for entry in stage.get("params", []):
            keys = entry if isinstance(entry, str) else next(iter(entry.values()))
            for key in [keys] if isinstance(keys, str) else keys:
                assert _has_key(params, key), f"stage {name}: params key {key!r} missing in params.yaml"
        text = yaml.safe_dump(stage)
        for ref in re.findall(r"\$\{([^}]+)\}", text):
            assert _has_key(params, ref), f"stage {name}: template ${{{ref}}} missing in params.yaml"
    # every stage that reads a path from params takes it from the template, never a literal copy
    raw = (repo_root / "dvc.yaml").read_text()
    for literal in (params["paths"]["prepared"], params["paths"]["raw"]):
        assert literal not in raw, f"{literal} written literally in dvc.yaml; use ${{paths.*}}"


def _resolved(cfg: Config) -> dict:
    """The config as the code reads it: an absent check is CheckConfig(), an absent task the default."""
    raw = cfg.model_dump(mode="json")
    for section, known in (("raw", RAW_CHECK_NAMES), ("prepared", PREPARED_CHECK_NAMES)):
        checks = getattr(cfg.validation, section).checks
        raw["validation"][section]["checks"] = {
            name: checks.get(name, CheckConfig()).model_dump(mode="json") for name in known
        }
    return raw


def test_code_defaults_are_params_yaml(repo_root: Path) -> None:
    """params.yaml is the one source of every number: a default in config.py that differs is a second one.
    Only ``data.labels`` may differ: null (infer from the data) is the library's answer for an unknown
    corpus, params.yaml names the bundled corpus's classes."""
    code, params = _resolved(Config()), _resolved(load_config(repo_root / "params.yaml"))
    code["data"].pop("labels"), params["data"].pop("labels")

    def leaves(tree: dict, prefix: str = "") -> dict:
        out = {}
        for key, value in tree.items():
            if isinstance(value, dict) and value:
                out.update(leaves(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out

    code_leaves, params_leaves = leaves(code), leaves(params)
    differ = {
        k: (code_leaves.get(k), params_leaves.get(k))
        for k in code_leaves.keys() | params_leaves.keys()
        if code_leaves.get(k) != params_leaves.get(k)
    }
    assert not differ, f"config.py default vs params.yaml: {differ}"


def test_gate_baseline_off_survives_yaml_booleans(repo_root: Path, tmp_path: Path) -> None:
    """`gate.baseline: off` unquoted is YAML 1.1's false (DVC's --set-param writes it so): it means off."""
    text = (repo_root / "params.yaml").read_text().replace("  baseline: not_worse", "  baseline: off")
    (tmp_path / "params.yaml").write_text(text)
    assert load_config(tmp_path / "params.yaml").gate.baseline == "off"
    with pytest.raises(ConfigError, match="gate.baseline"):
        (tmp_path / "params.yaml").write_text(text.replace("  baseline: off", "  baseline: true"))
        load_config(tmp_path / "params.yaml")
