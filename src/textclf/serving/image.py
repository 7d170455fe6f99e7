"""``textclf package --image``: an OCI image of a Bento, built by ``bentoml containerize`` (which copies
the models into the build context; a plain ``docker build`` of the bento folder would lack them).

The image starts from the Bento's base image (``python:3.11-slim``, from bentofile.yaml's ``docker``
section) and installs the pinned requirements from the package index and the PyTorch CPU index. Offline
(no registry, no PyTorch site), build a local stand-in first with ``scripts/offline-base-image.sh``.
"""

from __future__ import annotations

import subprocess
import sys

from textclf.errors import TextclfError


def build_image(bento_tag: str, image_tag: str | None = None) -> str:
    """Build the image of ``bento_tag`` with the local Docker daemon; returns the image tag."""
    tag = image_tag or bento_tag
    proc = subprocess.run(
        [sys.executable, "-m", "bentoml", "containerize", bento_tag, "--image-tag", tag],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise TextclfError(f"bentoml containerize {bento_tag} failed: {(proc.stderr or proc.stdout)[-1500:]}")
    return tag
