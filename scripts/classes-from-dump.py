#!/usr/bin/env python3
"""Per class, from the windows `lossgate eval --dump-windows DIR` wrote: how much of its clean
data the threshold took, and whether its own clean probes say the same (the calibration: the
class pays more of the false-reject budget than the others) or the window's clean samples score
above their probes (the window: what the probes do not show of the class).

    python3 scripts/classes-from-dump.py DIR

Columns, over every window of every seed in DIR: the class's probe rows and clean window samples;
the share of its probes above the window's threshold; the share of its clean samples above it;
the share of them kept as hard clean data; the share quarantined (its false-reject). No NumPy.
"""
import csv
import glob
import sys
from collections import defaultdict


def main(folder):
    files = sorted(glob.glob(f"{folder}/seed*-window*.csv"))
    if not files:
        sys.exit(f"no seed*-window*.csv in {folder}: write them with lossgate eval --dump-windows {folder}")
    count = defaultdict(lambda: defaultdict(int))
    for path in files:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if row["score"] == "":
                    sys.exit(f"{path}: a probe row has no score; dump again with this lossgate")
                c = count[int(row["label"])]
                above = float(row["score"]) > float(row["threshold"])
                if row["origin"] == "probe":
                    c["probes"] += 1
                    c["probes_above"] += above
                elif row["origin"] == "clean":
                    c["clean"] += 1
                    c["clean_above"] += above
                    c["kept"] += row["kept_hard_clean"] == "true"
                    c["quarantined"] += row["flagged"] == "true"
    share = lambda c, k, of: f"{100 * c[k] / c[of]:.1f}" if c[of] else "-"
    print(f"{len(files)} windows from {folder}")
    print("class  probe rows  clean  probes above  clean above  kept hard clean  quarantined (%)")
    total = defaultdict(int)
    for label in sorted(count):
        c = count[label]
        for k, v in c.items():
            total[k] += v
        print(f"{label:5d}  {c['probes']:10d}  {c['clean']:5d}  {share(c, 'probes_above', 'probes'):>12}"
              f"  {share(c, 'clean_above', 'clean'):>11}  {share(c, 'kept', 'clean'):>15}"
              f"  {share(c, 'quarantined', 'clean'):>15}")
    print(f"  all  {total['probes']:10d}  {total['clean']:5d}  {share(total, 'probes_above', 'probes'):>12}"
          f"  {share(total, 'clean_above', 'clean'):>11}  {share(total, 'kept', 'clean'):>15}"
          f"  {share(total, 'quarantined', 'clean'):>15}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
