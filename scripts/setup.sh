#!/usr/bin/env bash
# Idempotent environment set-up: .venv with torch (CPU build unless an NVIDIA GPU is present) and
# textclf installed editable under constraints.txt. Re-running after it succeeded does nothing.
#
#   TORCH_INDEX_URL  force the index torch comes from (e.g. https://download.pytorch.org/whl/cu128)
#   PYTHON           interpreter to build the venv with (default: python3, needs >= 3.11)
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.13.0
PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.textclf-installed
want=$(cat pyproject.toml constraints.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && "$VENV/bin/python" -c "import textclf" 2>/dev/null; then
  echo "setup: environment up to date ($VENV)"
  exit 0
fi

"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "textclf needs Python >= 3.11")'
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip)
"${PIP[@]}" install -q --upgrade pip

# torch first: installing the project with no torch present would pull PyPI's multi-GB CUDA build.
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    "${PIP[@]}" install "torch==$TORCH_VERSION" --index-url "$TORCH_INDEX_URL"
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: NVIDIA GPU found: installing the CUDA build of torch $TORCH_VERSION"
    "${PIP[@]}" install "torch==$TORCH_VERSION"
  else
    echo "setup: no GPU: installing the CPU build of torch $TORCH_VERSION"
    # A local/mirrored CPU wheel if the configured indexes have one, else PyTorch's CPU index.
    "${PIP[@]}" install --only-binary=:all: "torch==$TORCH_VERSION+cpu" 2>/dev/null \
      || "${PIP[@]}" install "torch==$TORCH_VERSION" --index-url https://download.pytorch.org/whl/cpu
  fi
fi

"${PIP[@]}" install -e ".[dev]" -c constraints.txt
"$VENV/bin/python" - <<'PY'
import shutil, subprocess, torch
gpu = shutil.which("nvidia-smi") is not None and subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0
print(f"setup: torch {torch.__version__} (cuda={torch.version.cuda}, gpu available={torch.cuda.is_available()})")
if not gpu and torch.version.cuda:
    print("setup: WARNING: a CUDA build of torch is installed on a machine without a GPU")
PY
echo "$want" > "$STAMP"
echo "setup: done"
