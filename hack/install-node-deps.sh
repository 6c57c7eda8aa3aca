#!/usr/bin/env bash
# Installs the Debian packages the real test node needs (runc, the CNI plugins,
# iptables, conntrack; busybox-static for the probe image; buildah and mmdebstrap, which
# build the trainer and operator images) — the parts of a node
# that Debian ships, as opposed to the Go components hack/build-testbin.sh builds. Idempotent: does nothing when every
# package is already installed; otherwise one `apt-get update` and one install.
# Needs root (or sudo) only when something is missing.
set -euo pipefail

packages=(runc containernetworking-plugins iptables conntrack busybox-static
  buildah mmdebstrap uidmap)  # the images: hack/build-images.sh

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if (( ${#missing[@]} == 0 )); then
  echo "[node-deps] all installed: ${packages[*]}" >&2
  exit 0
fi
sudo=()
if (( EUID != 0 )); then
  command -v sudo >/dev/null || { echo "[node-deps] need root to install: ${missing[*]}" >&2; exit 1; }
  sudo=(sudo)
fi
echo "[node-deps] installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# Other set-up steps may hold the dpkg lock for a while; wait instead of failing.
apt=("${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 -q -y)
"${apt[@]}" update >/dev/null
"${apt[@]}" install --no-install-recommends "${missing[@]}" >/dev/null
echo "[node-deps] installed ${missing[*]}" >&2
