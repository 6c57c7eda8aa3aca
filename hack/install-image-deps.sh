#!/usr/bin/env bash
# Installs the Debian packages that build the container images here (no Docker engine, no
# registry): buildah builds trainer-image/Dockerfile*, mmdebstrap makes their base images.
# Idempotent: does nothing when every package is installed; otherwise one `apt-get update`
# and one `apt-get install`. Needs root (or sudo) only when something is missing.
set -euo pipefail

packages=(
  buildah      # builds the Dockerfiles (vfs/overlay storage, chroot isolation)
  mmdebstrap   # the local base images (Debian bookworm roots)
  uidmap       # newuidmap/newgidmap, which buildah's storage setup expects
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if (( ${#missing[@]} == 0 )); then
  echo "[image-deps] installed: ${packages[*]}" >&2
  exit 0
fi

sudo=()
if (( EUID != 0 )); then
  command -v sudo >/dev/null || { echo "[image-deps] need root to install: ${missing[*]}" >&2; exit 1; }
  sudo=(sudo)
fi
echo "[image-deps] installing: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 update -qq
"${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "[image-deps] installed: ${missing[*]}" >&2
