#!/usr/bin/env bash
# Builds the real binaries the test-suite runs (etcd, kube-apiserver,
# kube-controller-manager, kubectl, helm, minio, kube-score) from their Go modules, once,
# into ~/.cache/medsft/testbin/<component>-<version>/. Re-running is a no-op when
# every binary is already there. Nothing is written into the repository.
#
# KUBEBUILDER_ASSETS (the envtest convention) short-cuts the Kubernetes part:
# when it holds etcd, kube-apiserver and kubectl they are used as they are.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=hack/testbin.env
source "$here/testbin.env"

cache="${MEDSFT_TESTBIN_CACHE:-$HOME/.cache/medsft/testbin}"
work="$cache/src"
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false
mkdir -p "$cache" "$work"

log() { printf '[testbin %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

have() { # have DIR BIN... : all binaries present and executable
  local dir="$1"; shift
  for b in "$@"; do [[ -x "$dir/$b" ]] || return 1; done
}

# Go prints nothing while compiling; a ticker keeps the log alive so a first
# build of several minutes never looks hung.
with_ticker() {
  local what="$1"; shift
  local start=$SECONDS
  ( while sleep 30; do log "$what: still building ($((SECONDS - start))s)"; done ) &
  local ticker=$!
  local rc=0
  "$@" || rc=$?
  kill "$ticker" 2>/dev/null || true
  wait "$ticker" 2>/dev/null || true
  if (( rc != 0 )); then log "$what: FAILED (exit $rc)"; return "$rc"; fi
  log "$what: built in $((SECONDS - start))s"
}

build_kubernetes() {
  local out="$cache/k8s-$K8S_VERSION"
  if have "$out" kube-apiserver kube-controller-manager kubectl; then
    log "kubernetes $K8S_VERSION: cached in $out"; return
  fi
  # k8s.io/kubernetes replaces its staging modules with ./staging/..., so it cannot
  # be `go install`ed. A throwaway module requires it and points each staging
  # module at its published v0.x twin instead.
  local staging="v0.${K8S_VERSION#v1.}"
  local mod="$work/k8s-$K8S_VERSION"
  mkdir -p "$mod"
  log "kubernetes $K8S_VERSION: preparing module in $mod (staging modules at $staging)"
  (
    cd "$mod"
    rm -f go.mod go.sum
    go mod init medsft.local/testbin-k8s >/dev/null 2>&1
    cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
    go mod download -json "k8s.io/kubernetes@$K8S_VERSION" >/dev/null
    local kmod
    kmod="$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/$K8S_VERSION.mod"
    go mod edit -require="k8s.io/kubernetes@$K8S_VERSION"
    for m in $(sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => \./staging/.*#\1#p' "$kmod"); do
      go mod edit -replace="$m=$m@$staging"
    done
    go mod tidy -e >/dev/null 2>&1 || true
    with_ticker "go mod tidy (kubernetes)" go mod tidy
  )
  local ver="${K8S_VERSION#v}"
  local ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION \
    -X k8s.io/component-base/version.gitMajor=${ver%%.*} \
    -X k8s.io/component-base/version.gitMinor=$(cut -d. -f2 <<<"$ver") \
    -X k8s.io/component-base/version.gitTreeState=clean \
    -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"
  mkdir -p "$out.tmp"
  (
    cd "$mod"
    with_ticker "kube-apiserver, kube-controller-manager, kubectl" \
      go build -trimpath -ldflags "$ldflags" -o "$out.tmp/" \
        k8s.io/kubernetes/cmd/kube-apiserver \
        k8s.io/kubernetes/cmd/kube-controller-manager \
        k8s.io/kubernetes/cmd/kubectl
  )
  rm -rf "$out"; mv "$out.tmp" "$out"
}

build_etcd() {
  local out="$cache/etcd-$ETCD_VERSION"
  if have "$out" etcd; then log "etcd $ETCD_VERSION: cached in $out"; return; fi
  # etcd's root module replaces its sub-modules; server/v3/etcdmain is the same
  # entry point its main.go calls, so a two-line main builds the real server.
  local mod="$work/etcd-$ETCD_VERSION"
  mkdir -p "$mod" "$out.tmp"
  (
    cd "$mod"
    rm -f go.mod go.sum
    go mod init medsft.local/testbin-etcd >/dev/null 2>&1
    cat > main.go <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
    go mod edit -require="go.etcd.io/etcd/server/v3@$ETCD_VERSION"
    with_ticker "go mod tidy (etcd)" go mod tidy
    with_ticker "etcd" go build -trimpath -ldflags "-s -w" -o "$out.tmp/etcd" .
  )
  rm -rf "$out"; mv "$out.tmp" "$out"
}

go_install() { # go_install NAME MODULE/PKG VERSION OUTDIR [EXTRA_LDFLAGS]
  local name="$1" pkg="$2" version="$3" out="$4" extra="${5:-}"
  if have "$out" "$name"; then log "$name $version: cached in $out"; return; fi
  mkdir -p "$out.tmp"
  with_ticker "$name $version" env GOBIN="$out.tmp" \
    go install -trimpath -ldflags "-s -w $extra" "$pkg@$version"
  rm -rf "$out"; mv "$out.tmp" "$out"
}

want="${*:-etcd kubernetes helm minio kube-score}"
for part in $want; do
  case "$part" in
    etcd) build_etcd ;;
    kubernetes) build_kubernetes ;;
    helm) go_install helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION" "$cache/helm-$HELM_VERSION" \
      "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" ;;
    minio) go_install minio github.com/minio/minio "$MINIO_VERSION" "$cache/minio-$MINIO_VERSION" ;;
    kube-score) go_install kube-score github.com/zegl/kube-score/cmd/kube-score "$KUBE_SCORE_VERSION" \
      "$cache/kube-score-$KUBE_SCORE_VERSION" "-X main.version=$KUBE_SCORE_VERSION" ;;
    *) log "unknown part: $part"; exit 2 ;;
  esac
done
log "all test binaries ready under $cache"
