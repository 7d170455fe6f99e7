"""Config loading, error messages, and dvc.yaml ↔ params.yaml agreement."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from textclf.config import (
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


# Maps whose entries a user adds or removes (a task's own retry policy, a searched parameter, GPU
# overrides): deleting an entry changes the meaning, it is not a missing setting.
USER_KEYED = {("flow", "tasks"), ("tune", "space"), ("train", "gpu_profile")}


def _keys(tree: dict, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for key, value in tree.items():
        path = (*prefix, key)
        if prefix not in USER_KEYED:
            out.append(path)
        if isinstance(value, dict) and path != ("train", "gpu_profile"):
            out.extend(_keys(value, path))
    return out


PARAMS = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text(encoding="utf-8"))


@pytest.mark.parametrize("path", _keys(PARAMS), ids=".".join)
def test_deleting_any_key_fails_naming_it(tmp_path: Path, path: tuple[str, ...]) -> None:
    """params.yaml is the only source of a setting: config.py has no defaults to fall back on."""
    tree = copy.deepcopy(PARAMS)
    node = tree
    for part in path[:-1]:
        node = node[part]
    del node[path[-1]]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tree, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "params.yaml")
    dotted, parent = ".".join(path), ".".join(path[:-1])
    msg = str(err.value)
    assert f"{dotted}: missing" in msg or (f"{parent}: " in msg and repr(path[-1]) in msg), msg


def test_gate_baseline_off_survives_yaml_booleans(repo_root: Path, tmp_path: Path) -> None:
    """`gate.baseline: off` unquoted is YAML 1.1's false (DVC's --set-param writes it so): it means off."""
    text = (repo_root / "params.yaml").read_text().replace("  baseline: not_worse", "  baseline: off")
    (tmp_path / "params.yaml").write_text(text)
    assert load_config(tmp_path / "params.yaml").gate.baseline == "off"
    with pytest.raises(ConfigError, match="gate.baseline"):
        (tmp_path / "params.yaml").write_text(text.replace("  baseline: off", "  baseline: true"))
        load_config(tmp_path / "params.yaml")
