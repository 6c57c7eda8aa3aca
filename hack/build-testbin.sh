#!/usr/bin/env bash
# Builds the real binaries the test-suite runs (etcd, kube-apiserver,
# kube-controller-manager, kubectl, helm, minio, kube-score; for the test node: kubelet,
# kube-scheduler, the pause sandbox, containerd + its runc shim + ctr, CoreDNS and
# the Kubeflow training operator; Kueue, Kubeflow Trainer v2 and JobSet controllers)
# from their Go modules, once, into
# ~/.cache/medsft/testbin/<component>-<version>/. Re-running is a no-op when
# every binary is already there. Nothing is written into the repository.
# `hack/build-testbin.sh PART...` builds only those parts (see the end).
#
# KUBEBUILDER_ASSETS (the envtest convention) short-cuts the Kubernetes part:
# when it holds etcd, kube-apiserver and kubectl they are used as they are.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=hack/testbin.env
source "$here/testbin.env"

cache="${MEDSFT_TESTBIN_CACHE:-$HOME/.cache/medsft/testbin}"
work="$cache/src"
export CGO_ENABLED=0 GOFLAGS="-buildvcs=false -modcacherw"
# Go's module and build caches for these builds live beside the binaries and are removed once
# the binaries are built: ~13 GB, on a disk the images and the node's store need next, that
# only a new version in testbin.env would use again (and the user's own Go caches stay theirs).
export GOMODCACHE="$cache/go/mod" GOCACHE="$cache/go/build"
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

# k8s.io/kubernetes replaces its staging modules with ./staging/..., so it cannot
# be `go install`ed. A throwaway module requires it and points each staging
# module at its published v0.x twin instead.
prepare_k8s_module() { # prepare_k8s_module DIR CMD... : the module with tools.go importing the cmds
  local mod="$1"; shift
  local staging="v0.${K8S_VERSION#v1.}"
  mkdir -p "$mod"
  log "kubernetes $K8S_VERSION: preparing module in $mod (staging modules at $staging)"
  (
    cd "$mod"
    rm -f go.mod go.sum
    go mod init medsft.local/testbin-k8s >/dev/null 2>&1
    {
      printf '//go:build tools\n\npackage tools\n\nimport (\n'
      for cmd in "$@"; do printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$cmd"; done
      printf ')\n'
    } > tools.go
    go mod download -json "k8s.io/kubernetes@$K8S_VERSION" >/dev/null
    local kmod
    kmod="$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/$K8S_VERSION.mod"
    go mod edit -require="k8s.io/kubernetes@$K8S_VERSION"
    for m in $(sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => \./staging/.*#\1#p' "$kmod"); do
      go mod edit -replace="$m=$m@$staging"
    done
    go mod tidy -e >/dev/null 2>&1 || true
    with_ticker "go mod tidy (kubernetes: $*)" go mod tidy
  )
}

k8s_ldflags() {
  local ver="${K8S_VERSION#v}"
  echo "-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION \
    -X k8s.io/component-base/version.gitMajor=${ver%%.*} \
    -X k8s.io/component-base/version.gitMinor=$(cut -d. -f2 <<<"$ver") \
    -X k8s.io/component-base/version.gitTreeState=clean \
    -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"
}

build_k8s() { # build_k8s OUTDIR CMD... : k8s.io/kubernetes/cmd/CMD binaries into OUTDIR
  local out="$1"; shift
  if have "$out" "$@"; then log "kubernetes $K8S_VERSION ($*): cached in $out"; return; fi
  local mod="$work/$(basename "$out")"
  prepare_k8s_module "$mod" "$@"
  local pkgs=()
  for cmd in "$@"; do pkgs+=("k8s.io/kubernetes/cmd/$cmd"); done
  mkdir -p "$out.tmp"
  (
    cd "$mod"
    with_ticker "$*" go build -trimpath -ldflags "$(k8s_ldflags)" -o "$out.tmp/" "${pkgs[@]}"
  )
  rm -rf "$out"; mv "$out.tmp" "$out"
}

build_kubernetes() {
  build_k8s "$cache/k8s-$K8S_VERSION" kube-apiserver kube-controller-manager kubectl
}

# The node: kubelet and kube-scheduler from the same release, in their own folder
# so that a cached control plane stays valid.
build_node() {
  build_k8s "$cache/k8s-node-$K8S_VERSION" kubelet kube-scheduler
  local out="$cache/pause-$K8S_VERSION"
  if have "$out" pause; then log "pause $K8S_VERSION: cached in $out"; return; fi
  # The pod sandbox's process: Kubernetes' own pause.c, linked statically so the
  # sandbox image is a single file (no registry is reachable to pull one).
  local src
  src="$(go env GOMODCACHE)/k8s.io/kubernetes@$K8S_VERSION/build/pause/linux/pause.c"
  mkdir -p "$out.tmp"
  gcc -Os -static -DVERSION="$K8S_VERSION" -o "$out.tmp/pause" "$src"
  strip "$out.tmp/pause"
  rm -rf "$out"; mv "$out.tmp" "$out"
}

# containerd's go.mod has `exclude` lines, which `go install pkg@version` refuses;
# a wrapper module requiring it builds the same commands.
build_containerd() {
  local out="$cache/containerd-$CONTAINERD_VERSION"
  if have "$out" containerd containerd-shim-runc-v2 ctr; then
    log "containerd $CONTAINERD_VERSION: cached in $out"; return
  fi
  local mod="$work/containerd-$CONTAINERD_VERSION"
  local m=github.com/containerd/containerd/v2
  mkdir -p "$mod" "$out.tmp"
  (
    cd "$mod"
    rm -f go.mod go.sum
    go mod init medsft.local/testbin-containerd >/dev/null 2>&1
    printf '//go:build tools\n\npackage tools\n\nimport (\n\t_ "%s/cmd/containerd"\n\t_ "%s/cmd/containerd-shim-runc-v2"\n\t_ "%s/cmd/ctr"\n)\n' \
      "$m" "$m" "$m" > tools.go
    go mod edit -require="$m@$CONTAINERD_VERSION"
    with_ticker "go mod tidy (containerd)" go mod tidy
    with_ticker "containerd, containerd-shim-runc-v2, ctr" \
      go build -trimpath -tags "no_btrfs no_devmapper no_zfs" \
        -ldflags "-s -w -X $m/version.Version=$CONTAINERD_VERSION" -o "$out.tmp/" \
        "$m/cmd/containerd" "$m/cmd/containerd-shim-runc-v2" "$m/cmd/ctr"
  )
  rm -rf "$out"; mv "$out.tmp" "$out"
}

# CoreDNS with only the plugins the test node's Corefile uses (CoreDNS's documented way of
# a custom build: a main that imports them and sets the directive order). `forward` is not
# compiled in, so the node's DNS cannot ask any server outside it; it also builds in a
# fraction of the time of the full plugin set.
build_coredns() {
  local out="$cache/coredns-$COREDNS_VERSION"
  if have "$out" coredns; then log "coredns $COREDNS_VERSION: cached in $out"; return; fi
  local mod="$work/coredns-$COREDNS_VERSION"
  mkdir -p "$mod" "$out.tmp"
  (
    cd "$mod"
    rm -f go.mod go.sum
    go mod init medsft.local/testbin-coredns >/dev/null 2>&1
    cat > main.go <<'GO'
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/ready"
)

// The order of plugin.cfg, restricted to the plugins imported above.
func init() { dnsserver.Directives = []string{"bind", "ready", "errors", "kubernetes"} }

func main() { coremain.Run() }
GO
    go mod edit -require="github.com/coredns/coredns@$COREDNS_VERSION"
    with_ticker "go mod tidy (coredns)" go mod tidy
    with_ticker "coredns $COREDNS_VERSION (bind, ready, errors, kubernetes)" \
      go build -trimpath -ldflags "-s -w" -o "$out.tmp/coredns" .
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

# The batch-scheduling controllers (issue 16): Kueue admits workloads, Kubeflow
# Trainer v2 turns TrainJobs into JobSets, JobSet turns those into Jobs. Each is
# built inside its own downloaded module (its go.mod and go.sum exactly as
# released) rather than with `go install MODULE@VERSION`, which also asks the
# proxy for the module's version list and fails where the proxy hides it (it
# does for sigs.k8s.io/jobset). Next to each binary go the release's own CRDs
# and webhook manifests (upstream files, unmodified), which the test harness
# installs, so the tests never depend on Go's module cache still holding them.
go_build_module() { # go_build_module NAME MODULE VERSION PKG OUTDIR LDFLAGS ASSET...
  local name="$1" module="$2" version="$3" pkg="$4" out="$5" extra="$6"; shift 6
  if have "$out" "$name" && [[ -d "$out/upstream" ]]; then
    log "$name $version: cached in $out"; return
  fi
  local dir
  dir="$(go mod download -json "$module@$version" | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')"
  [[ -d "$dir" ]] || { log "$name: could not download $module@$version"; return 1; }
  rm -rf "$out.tmp"; mkdir -p "$out.tmp/upstream"
  if have "$out" "$name"; then
    cp "$out/$name" "$out.tmp/$name"
  else
    (
      cd "$dir"
      with_ticker "$name $version" \
        go build -mod=readonly -trimpath -ldflags "-s -w $extra" -o "$out.tmp/$name" "$pkg"
    )
  fi
  local asset
  for asset in "$@"; do # paths inside the module, copied with their folders
    mkdir -p "$out.tmp/upstream/$(dirname "$asset")"
    cp -r "$dir/$asset" "$out.tmp/upstream/$asset"
  done
  chmod -R u+w "$out.tmp/upstream"
  rm -rf "$out"; mv "$out.tmp" "$out"
}

build_kueue() {
  go_build_module kueue sigs.k8s.io/kueue "$KUEUE_VERSION" ./cmd/kueue \
    "$cache/kueue-$KUEUE_VERSION" "-X sigs.k8s.io/kueue/pkg/version.GitVersion=$KUEUE_VERSION" \
    config/components/crd config/components/webhook/manifests.yaml
}

build_trainer() {
  go_build_module trainer-controller-manager github.com/kubeflow/trainer/v2 "$TRAINER_VERSION" \
    ./cmd/trainer-controller-manager "$cache/trainer-$TRAINER_VERSION" "" \
    manifests/base/crds manifests/base/webhook/manifests.yaml
}

build_jobset() {
  go_build_module jobset sigs.k8s.io/jobset "$JOBSET_VERSION" . \
    "$cache/jobset-$JOBSET_VERSION" "-X sigs.k8s.io/jobset/pkg/version.GitVersion=$JOBSET_VERSION" \
    config/components/crd/bases config/components/webhook
}

want="${*:-etcd kubernetes helm minio kube-score node containerd coredns training-operator kueue trainer jobset}"
for part in $want; do
  case "$part" in
    etcd) build_etcd ;;
    kubernetes) build_kubernetes ;;
    helm) go_install helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION" "$cache/helm-$HELM_VERSION" \
      "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" ;;
    minio) go_install minio github.com/minio/minio "$MINIO_VERSION" "$cache/minio-$MINIO_VERSION" ;;
    kube-score) go_install kube-score github.com/zegl/kube-score/cmd/kube-score "$KUBE_SCORE_VERSION" \
      "$cache/kube-score-$KUBE_SCORE_VERSION" "-X main.version=$KUBE_SCORE_VERSION" ;;
    node) build_node ;;
    containerd) build_containerd ;;
    coredns) build_coredns ;;
    training-operator) go_install training-operator.v1 \
      github.com/kubeflow/training-operator/cmd/training-operator.v1 \
      "$TRAINING_OPERATOR_VERSION" "$cache/training-operator-$TRAINING_OPERATOR_VERSION" ;;
    kueue) build_kueue ;;
    trainer) build_trainer ;;
    jobset) build_jobset ;;
    *) log "unknown part: $part"; exit 2 ;;
  esac
done
rm -rf "$cache/go"
log "all test binaries ready under $cache"
