#!/usr/bin/env bash
# Build, for a machine that reaches no container registry (and not the PyTorch wheel site), the local base
# image a Bento's Dockerfile starts from (python:3.11-slim): a Debian bookworm rootfs made by debootstrap,
# the host's CA certificates, uv, and a wheel folder with the Bento's requirements that uv and pip use
# instead of any index. With registry access you do not need this: `bentoml containerize` pulls the real one.
#
#   scripts/offline-base-image.sh BENTO_REQUIREMENTS_TXT [TAG]      (as root; dockerd running)
#
# Slow parts are cached in $TEXTCLF_IMAGE_CACHE (default /var/tmp/textclf-image-cache) and rebuilt when
# missing: the rootfs tarball (debootstrap, ~1 min) and the wheels (pip download, ~250 MB for a Bento).
# WHEELS names the cache's wheel folder (default `wheels`): the compose tier's image (the whole project,
# ~1.5 GB of wheels) keeps its own, so the Bento's base image does not carry them.
set -euo pipefail
req=$1
tag=${2:-python:3.11-slim}
cache=${TEXTCLF_IMAGE_CACHE:-/var/tmp/textclf-image-cache}
here=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-$here/.venv/bin/python}
mkdir -p "$cache"

if [ ! -s "$cache/rootfs.tar" ]; then
  rootfs=$(mktemp -d)
  debootstrap --variant=minbase --include=python3,python3-pip,python3-venv,ca-certificates bookworm "$rootfs" >"$cache/debootstrap.log"
  ln -sf python3 "$rootfs/usr/bin/python"
  ln -sf pip3 "$rootfs/usr/bin/pip"
  rm -f "$rootfs"/usr/lib/python3*/EXTERNALLY-MANAGED
  # TLS to the package registries may be intercepted by a local CA: trust what the host trusts.
  cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/" 2>/dev/null || true
  chroot "$rootfs" update-ca-certificates >/dev/null
  tar -C "$rootfs" -cf "$cache/rootfs.tar.partial" . && mv "$cache/rootfs.tar.partial" "$cache/rootfs.tar"
  rm -rf "$rootfs"
fi

wheels="$cache/${WHEELS:-wheels}"
stamp="$wheels/.requirements-$(sha256sum "$req" | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  mkdir -p "$wheels"
  grep -v -- '--extra-index-url' "$req" >"$wheels.requirements.txt"  # the PyTorch site is not reachable
  "$py" -m pip download -q -d "$wheels" -r "$wheels.requirements.txt" 2>"$wheels.pip-download.log"
  touch "$stamp"
fi

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
ln "$cache/rootfs.tar" "$ctx/rootfs.tar" 2>/dev/null || cp "$cache/rootfs.tar" "$ctx/rootfs.tar"
cp -rl "$wheels" "$ctx/wheels" 2>/dev/null || cp -r "$wheels" "$ctx/wheels"
cp "$(dirname "$py")/uv" "$ctx/uv"  # the Dockerfile skips its own (pip) install of uv when one is there
printf '[pip]\nno-index = true\nfind-links = ["/opt/wheels"]\n' >"$ctx/uv.toml"
printf '[global]\nno-index = true\nfind-links = /opt/wheels\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$ctx/pip.conf"
cat >"$ctx/Dockerfile" <<'EOF'
FROM scratch
ADD rootfs.tar /
COPY wheels /opt/wheels
COPY uv /usr/local/bin/uv
COPY uv.toml /etc/uv/uv.toml
COPY pip.conf /etc/pip.conf
ENV UV_CONFIG_FILE=/etc/uv/uv.toml LANG=C.UTF-8
CMD ["python3"]
EOF
docker build -q -t "$tag" "$ctx" >/dev/null
echo "$tag"
