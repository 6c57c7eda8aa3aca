#!/usr/bin/env bash
# Builds the trainer and operator images from trainer-image/Dockerfile{,.operator} without a
# Docker engine or a registry, as OCI archives that `ctr -n k8s.io images import` lists under
# their reference:
#
#   hack/build-images.sh [trainer] [operator]     # default: both
#
# prints one line per image on stdout, `REF ARCHIVE`, and logs its progress on stderr.
#
# - buildah (Debian's) runs the Dockerfile itself: every RUN step executes (chroot isolation,
#   overlay storage; MEDSFT_BUILDAH_DRIVER=vfs where overlay is not available).
# - The Dockerfiles' base images (nvidia/cuda, python:slim) are on registries this machine
#   cannot reach, so they are stood in for by Debian bookworm roots made here with
#   mmdebstrap and passed as build arguments (python 3.11, as constraints.txt is locked with).
#   No CUDA libraries: pods here have no GPU; torch's own CUDA wheels are in the image as on
#   a cluster, and the trainer falls back to the CPU.
# - Cached under ~/.cache/medsft/images (MEDSFT_IMAGE_CACHE): bases by their recipe, images
#   by the hash of every build input (Dockerfile, ignore file, the context it lets through,
#   base, build arguments, this script). An unchanged tree is a no-op; after a source edit
#   buildah's layer cache rebuilds only the project layer (the training stack is a layer
#   that depends on constraints.txt and pyproject.toml's dependency lists only).
# - Layers are zstd-compressed (level 1) in the archive: gzip of the ~6 GB training stack
#   took 15 minutes on two busy cores; containerd imports zstd layers.
#
# Needs root (buildah's storage and chroot) and the packages of hack/install-node-deps.sh.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${MEDSFT_IMAGE_CACHE:-$HOME/.cache/medsft/images}"
driver="${MEDSFT_BUILDAH_DRIVER:-overlay}"
mirror="${MEDSFT_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
suite=bookworm
mkdir -p "$cache/bases" "$cache/archives" "$cache/logs"

log() { printf '[images %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
bah() { buildah --root "$cache/storage-$driver" --runroot "$cache/run-$driver" --storage-driver "$driver" "$@"; }
hash_of() { sha256sum | cut -c1-16; }

# One build at a time per cache (pytest processes and `make testbin` may race).
exec 9>"$cache/lock"
flock 9
# Working containers of builds that were killed hold their copied layers (gigabytes) for
# good; under the lock no build is running, so every one of them is such a leftover.
bah rm --all >/dev/null

# Same recipe, same hash, same tag: a base is made once per cache.
base_debian_packages=(ca-certificates passwd)
base_python_packages=(python3 python3-venv python-is-python3)
# What the script does, not how its comments read, keys the images.
script_hash="$(grep -v '^[[:space:]]*#' "${BASH_SOURCE[0]}" | hash_of)"
recipe_hash="$(printf '%s\n' "$suite" "$mirror" "${base_debian_packages[*]}" \
  "${base_python_packages[*]}" | hash_of)"
base_debian="localhost/medsft-base/debian:$suite-$recipe_hash"
base_python="localhost/medsft-base/python:3.11-$suite-$recipe_hash"

have_image() { bah inspect --type image "$1" >/dev/null 2>&1; }

# The stand-in for nvidia/cuda:*-ubuntu24.04: a minimal Debian root with apt and useradd.
build_base_debian() {
  have_image "$base_debian" && return
  local tar="$cache/bases/debian-$suite-$recipe_hash.tar"
  if [[ ! -s "$tar" ]]; then
    log "base $base_debian: mmdebstrap $suite (about a minute, downloads ~40 MB)"
    local start=$SECONDS
    nice -n 10 mmdebstrap --quiet --variant=minbase \
      --include="$(IFS=,; echo "${base_debian_packages[*]}")" \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
      --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
      "$suite" "$tar.tmp" "$mirror" >&2
    mv "$tar.tmp" "$tar"
    log "base $base_debian: root made in $((SECONDS - start))s"
  fi
  local c
  c="$(bah from scratch)"
  bah add "$c" "$tar" / >/dev/null
  bah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd /bin/bash "$c"
  bah commit --quiet --rm "$c" "$base_debian" >/dev/null
  log "base $base_debian: committed"
}

# The stand-in for python:3.11-slim-bookworm: the same root with Debian's python 3.11.
build_base_python() {
  have_image "$base_python" && return
  build_base_debian
  local c
  c="$(bah from "$base_debian")"
  bah run --isolation chroot "$c" -- sh -ec "export DEBIAN_FRONTEND=noninteractive; \
    apt-get update -qq; apt-get install -y -qq --no-install-recommends ${base_python_packages[*]} \
    >/dev/null; rm -rf /var/lib/apt/lists/*" >&2
  bah commit --quiet --rm "$c" "$base_python" >/dev/null
  log "base $base_python: committed"
}

# The files the build context lets through: the `!` lines of the Dockerfile's ignore file.
context_hash() {
  local ignore="$1"
  local paths
  mapfile -t paths < <(sed -n 's#^!\(.*\)$#\1#p' "$ignore" | sed 's#/$##')
  (
    cd "$repo"
    find "${paths[@]}" -type f ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 \
      | LC_ALL=C sort -z | xargs -0 sha256sum
  ) | hash_of
}

# build NAME DOCKERFILE BUILD-ARG...
build() {
  local name="$1" dockerfile="$repo/$2"; shift 2
  local ignore="$dockerfile.dockerignore"
  local key
  key="$( { printf '%s\n' "$script_hash" "$driver" "$@"; sha256sum < "$dockerfile";
            sha256sum < "$ignore"; context_hash "$ignore"; } | hash_of)"
  local ref="localhost/medsft/$name:$key"
  local archive="$cache/archives/$name-$key.oci.tar"
  if [[ -s "$archive" ]]; then
    log "$name: cached ($ref)"
    echo "$ref $archive"
    return
  fi
  local logfile="$cache/logs/$name-$key.log"
  log "$name: building $ref from ${dockerfile#"$repo"/} (log: $logfile)"
  local start=$SECONDS args=()
  for a in "$@"; do args+=(--build-arg "$a"); done
  # The host's trust store and pip settings, lent read-only to the RUN steps (never part of
  # a layer): pip then reaches PyPI as it does on the host, also behind a TLS-inspecting proxy.
  for f in /etc/ssl/certs/ca-certificates.crt /etc/pip.conf; do
    [[ -f "$f" ]] && args+=(--volume "$f:$f:ro")
  done
  (
    while sleep 30; do log "$name: still building ($((SECONDS - start))s): $(grep -a 'STEP [0-9]' "$logfile" | tail -1)"; done
  ) &
  local ticker=$! rc=0
  nice -n 10 buildah --root "$cache/storage-$driver" --runroot "$cache/run-$driver" \
    --storage-driver "$driver" bud --isolation chroot --layers \
    --file "$dockerfile" --ignorefile "$ignore" "${args[@]}" --tag "$ref" "$repo" \
    >"$logfile" 2>&1 || rc=$?
  kill "$ticker" 2>/dev/null || true
  wait "$ticker" 2>/dev/null || true
  if (( rc != 0 )); then
    tail -n 40 "$logfile" >&2
    log "$name: FAILED (exit $rc), log: $logfile"
    return "$rc"
  fi
  log "$name: built in $((SECONDS - start))s; writing the archive"
  local pushed=$SECONDS
  rm -f "$archive.tmp"
  # The reference at the end names the image in the archive (else ctr imports it unnamed).
  bah push --quiet --compression-format zstd --compression-level 1 "$ref" "oci-archive:$archive.tmp:$ref" >&2
  mv "$archive.tmp" "$archive"
  log "$name: $archive ($(du -m "$archive" | cut -f1) MB) written in $((SECONDS - pushed))s"
  # Keep the two newest archives of this image (a few GB each, on a shared disk); buildah's
  # layer cache keeps what they share, so an older tree rebuilds in a minute.
  find "$cache/archives" -name "$name-*.oci.tar" -printf '%T@ %p\n' | sort -rn | tail -n +3 \
    | cut -d' ' -f2- | xargs -r rm -f
  # ...and untag the builds whose archive went (each held a few hundred MB of its own layers).
  local image tag
  while read -r image tag; do
    if [[ "$image" == "localhost/medsft/$name" && ! -e "$cache/archives/$name-$tag.oci.tar" ]]; then
      bah rmi "$image:$tag" > /dev/null || true
    fi
  done < <(bah images --noheading --format '{{.Name}} {{.Tag}}')
  echo "$ref $archive"
}

want="${*:-trainer operator}"
for part in $want; do
  case "$part" in
    trainer)
      build_base_debian
      build trainer trainer-image/Dockerfile \
        "CUDA_DEVEL_IMAGE=$base_debian" "CUDA_RUNTIME_IMAGE=$base_debian" ;;
    operator)
      build_base_python
      build operator trainer-image/Dockerfile.operator "PYTHON_IMAGE=$base_python" ;;
    *) log "unknown image: $part (trainer, operator)"; exit 2 ;;
  esac
done
