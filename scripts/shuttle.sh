#!/usr/bin/env bash
# The shuttle data set for `make eval-shuttle` (outside-in, session 29): 58 000 rows of 9
# integer sensor readings from the space shuttle's radiators, 7 classes of very different
# sizes (79 % down to 0.02 %: ten rows of the rarest), relabelled 0-6 from the most common
# down. From Debian's r-cran-mlbench (its data/Shuttle.rda, pinned by sha256), read here by a
# small reader of R's XDR serialisation (no R, no NumPy). Written to
#   $LOSSGATE_CACHE/datasets/shuttle/{train,test}.csv
# every fifth row (after a fixed shuffle) the test split. Fills the folder only when it is
# empty; needs apt-get (download only: nothing is installed), dpkg-deb and python3.
set -euo pipefail

CACHE="${LOSSGATE_CACHE:-$HOME/.cache/lossgate}"
OUT="$CACHE/datasets/shuttle"
RDA_SHA256="5b1db218b76a47c83f575f1ff38d7a7d36e569b0e27d8bf4aa92eae6c0bcb826"
if [[ -f "$OUT/test.csv" ]]; then
  exit 0
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "shuttle: downloading Debian's r-cran-mlbench (1 MB, once)" >&2
(cd "$work" && apt-get download r-cran-mlbench >/dev/null 2>&1) || {
  echo "shuttle: apt-get download r-cran-mlbench failed: run apt-get update (or check the network) and retry" >&2
  exit 1
}
dpkg-deb -x "$work"/r-cran-mlbench_*.deb "$work/x"
rda="$(find "$work/x" -name Shuttle.rda)"
echo "$RDA_SHA256  $rda" | sha256sum --check --quiet || {
  echo "shuttle: Shuttle.rda checksum mismatch: refusing it" >&2
  exit 1
}
mkdir -p "$OUT"
python3 - "$rda" "$OUT" <<'PY'
import lzma, random, struct, sys

rda, out = sys.argv[1], sys.argv[2]
data = lzma.decompress(open(rda, "rb").read())
assert data[:7] == b"RDX2\nX\n", "not an XDR R data file"
at = 7 + 12  # the format and the three version numbers
refs = []

def ints(n):
    global at
    values = struct.unpack_from(f">{n}i", data, at)
    at += 4 * n
    return list(values)

def item():
    """One serialised R object: what a data frame of numbers and a factor needs."""
    global at
    (flags,) = ints(1)
    kind, has_attributes, has_tag = flags & 0xFF, flags & (1 << 9), flags & (1 << 10)
    if kind == 254:  # NULL
        return None
    if kind == 255:  # a reference to an earlier symbol
        index = flags >> 8 or ints(1)[0]
        return refs[index - 1]
    if kind == 1:  # symbol
        name = item()
        refs.append(name)
        return name
    if kind == 2:  # pairlist: attributes, tag, value, rest
        attributes = item() if has_attributes else None
        tag = item() if has_tag else None
        head = (tag, item())
        rest = item()
        return [head] + (rest or [])
    if kind == 9:  # string
        (n,) = ints(1)
        if n < 0:
            return None
        text = data[at:at + n].decode()
        at += n
        return text
    if kind in (10, 13):  # logical, integer
        (n,) = ints(1)
        value = ints(n)
    elif kind == 14:  # double
        (n,) = ints(1)
        value = list(struct.unpack_from(f">{n}d", data, at))
        at += 8 * n
    elif kind in (16, 19):  # strings, list
        (n,) = ints(1)
        value = [item() for _ in range(n)]
    else:
        raise SystemExit(f"shuttle: R object type {kind} not expected in Shuttle.rda")
    attributes = dict(item()) if has_attributes else {}
    return (value, attributes)

(name, (columns, attributes)), = item()
names = attributes["names"][0]
label = names.index("Class")
levels = columns[label][1]["levels"][0]
codes = [level - 1 for level in columns[label][0]]
by_size = sorted(range(len(levels)), key=lambda l: -codes.count(l))
renumber = {old: new for new, old in enumerate(by_size)}
features = [c[0] for i, c in enumerate(columns) if i != label]
rows = [[int(v) for v in values] + [renumber[c]] for *values, c in zip(*features, codes)]
random.Random(20261201).shuffle(rows)
header = ",".join(f"f{i}" for i in range(len(features))) + ",label\n"
for split, keep in [("train", lambda i: i % 5 != 0), ("test", lambda i: i % 5 == 0)]:
    with open(f"{out}/{split}.csv", "w") as f:
        f.write(header)
        f.writelines(",".join(map(str, r)) + "\n" for i, r in enumerate(rows) if keep(i))
print("shuttle: classes, most common first:", ", ".join(levels[l] for l in by_size), file=sys.stderr)
PY
