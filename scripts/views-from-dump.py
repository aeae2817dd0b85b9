#!/usr/bin/env python3
"""Which view sees an attack, from the windows `lossgate eval --dump-windows DIR` wrote: for each
attack (the dump's `origin` index, in the order of the attacks file), its poisons against the
clean window samples of the labels the poisons carry (a dirty-label backdoor's target class; for
label noise, every class), view by view.

    python3 scripts/views-from-dump.py DIR           # every attack: a row each, a view a column
    python3 scripts/views-from-dump.py DIR ATTACK    # one attack, a view a row, in detail

Per view: the ROC-AUC of poisons against those clean samples (1.0: the view alone orders every
poison above them; 0.5: it does not see the attack; below 0.5: the poisons look more ordinary
than the clean data), the poisons' median, the clean samples' and the probes' 90th percentile
(the probes of the same labels: what the calibration sees), and the share of the poisons above
that probe percentile. `score` is the fused score the threshold cuts; `trajectory` the paper's
view alone (BaDLoss); `loss_epochN` the shadow's loss at epoch N (the first, middle and last
epochs). A view the config left off is skipped. No NumPy.
"""
import csv
import glob
import sys
from collections import defaultdict

VIEWS = [
    "score", "trajectory", "representation", "label_disagreement", "range_exceedance", "label_vote",
    "input_signature", "input_distance", "repeated_values", "joint_recurrence",
]


def auc(positives, negatives):
    """Mann-Whitney: the chance a positive ranks above a negative, ties counted half."""
    ranked = sorted([(v, 1) for v in positives] + [(v, 0) for v in negatives])
    rank_sum, i = 0.0, 0
    while i < len(ranked):
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        mid_rank = (i + j + 1) / 2
        rank_sum += mid_rank * sum(flag for _, flag in ranked[i:j])
        i = j
    n, m = len(positives), len(negatives)
    return (rank_sum - n * (n + 1) / 2) / (n * m)


def quantile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(folder, only):
    files = sorted(glob.glob(f"{folder}/seed*-window*.csv"))
    if not files:
        sys.exit(f"no seed*-window*.csv in {folder}: write them with lossgate eval --dump-windows {folder}")
    # origin -> view -> label -> values
    rows = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    views = None
    for path in files:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if views is None:
                losses = [c for c in reader.fieldnames if c.startswith("loss_epoch")]
                views = [v for v in VIEWS if v in reader.fieldnames] + losses[:1] + losses[len(losses) // 2:][:1] + losses[-1:]
            for row in reader:
                for view in views:
                    if row[view] != "":
                        rows[row["origin"]][view][int(row["label"])].append(float(row[view]))
    attacks = sorted((o for o in rows if o not in ("clean", "probe")), key=int)
    print(f"{len(files)} windows from {folder}")
    if only is None:
        shown = [v for v in views if any(measure(rows, a, v) for a in attacks)]
        print("\nAUC / poisons past the probes' q90\n")
        print("| attack | " + " | ".join(shown) + " |")
        print("|---" * (len(shown) + 1) + "|")
        for attack in attacks:
            cells = [measure(rows, attack, v) for v in shown]
            print(f"| {attack} | " + " | ".join(f"{m[0]:.3f} / {100 * m[4]:.1f} %" if m else "-" for m in cells) + " |")
        return
    if only not in attacks:
        sys.exit(f"no attack {only} in {folder} (there: {', '.join(attacks)})")
    print(f"\nattack {only}")
    print("| view | AUC | poisons' median | clean q90 | probes' q90 | poisons above the probes' q90 |")
    print("|---|---|---|---|---|---|")
    for view in views:
        m = measure(rows, only, view)
        if m:
            print(f"| {view} | {m[0]:.3f} | {m[1]:.3f} | {m[2]:.3f} | {m[3]:.3f} | {100 * m[4]:.1f} % |")


def measure(rows, attack, view):
    """AUC, the poisons' median, the clean q90, the probes' q90 and the share of poisons past it;
    None where the view has no values for the attack's labels."""
    labels = rows[attack][view].keys()
    poisons = [v for label in labels for v in rows[attack][view][label]]
    clean = [v for label in labels for v in rows["clean"][view][label]]
    probes = [v for label in labels for v in rows["probe"][view][label]]
    if not poisons or not clean or not probes:
        return None
    level = quantile(probes, 0.9)
    above = sum(v > level for v in poisons) / len(poisons)
    return auc(poisons, clean), quantile(poisons, 0.5), quantile(clean, 0.9), level, above


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2] if len(sys.argv) == 3 else None)
