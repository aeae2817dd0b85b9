#!/usr/bin/env python3
"""A NumPy replica of a variant of the input signature (`src/engine/input_signature.rs`), run on
the windows `lossgate eval --dump-windows DIR` wrote, beside the engine's own signature (the
dump's `input_signature` column) and the larger of the two per row.

    python3 scripts/signature-replica.py [--neighbours N] [--width W] [--random-width W] [--no-strip] CSV...

The variant whitens each label by the covariance of a neighbourhood of it rather than by the
window's pooled within-class covariance: its window samples' N nearest window samples of other
labels (input space), each centred on its class's median, shrunk by Ledoit-Wolf. The rest is the
engine's method: each probe half's principal subspace (fitted within classes here, 95 % of the
variance) strips its world (every window sample and the other half's probes; none with
--no-strip), four folds of cross-fitted top directions per label, scores standardised per label
on the window samples (median and MAD). --width W first projects every residual onto the top W
directions of the world's pooled within-class covariance, --random-width W onto W fixed Gaussian
directions (the cheaper forms measured in session 32).

Per window and attack (the dump's `origin` index): the ROC-AUC of its poisons against the clean
window samples of the label most of them carry, and per view the share of clean window samples
beyond every probe (`clean beyond`). Needs NumPy; a 784-pixel window takes 15-25 s.
"""
import argparse
import csv

import numpy as np

VARIANCE_KEPT = 0.95
RANDOM_WIDTH = 0
FOLDS = 4


def load(path):
    with open(path) as handle:
        reader = csv.reader(handle)
        header = next(reader)
        rows = list(reader)
    first_feature = header.index("feature0")
    signature = header.index("input_signature")
    origin = np.array([r[1] for r in rows])
    labels = np.array([int(r[2]) for r in rows])
    engine = np.array([float(r[signature]) if r[signature] else 0.0 for r in rows])
    features = np.array([r[first_feature:] for r in rows], dtype=np.float64)
    return origin, labels, features, engine


def auc(positives, negatives):
    values = np.concatenate([positives, negatives])
    ranks = values.argsort().argsort() + 1.0
    n = len(positives)
    return (ranks[:n].sum() - n * (n + 1) / 2) / (n * len(negatives))


def within_class_subspace(probes, labels):
    """The probes' mean and the unit directions holding VARIANCE_KEPT of their within-class variance."""
    centred = probes.copy()
    for label in np.unique(labels):
        members = labels == label
        centred[members] -= probes[members].mean(0)
    _, singular, directions = np.linalg.svd(centred, full_matrices=False)
    variance = singular**2
    width = np.searchsorted(np.cumsum(variance) / variance.sum(), VARIANCE_KEPT) + 1
    return probes.mean(0), directions[:width]


def ledoit_wolf(rows):
    """The Ledoit-Wolf shrinkage of the covariance of `rows` (already centred)."""
    n, width = rows.shape
    covariance = rows.T @ rows / n
    mean_variance = np.trace(covariance) / width
    dispersion = ((covariance - mean_variance * np.eye(width)) ** 2).sum()
    fourth = ((rows**2).sum(1) ** 2).mean()
    noise = max((fourth - (covariance**2).sum()) / n, 0.0)
    rho = min(noise / dispersion, 1.0) if dispersion > 0 else 1.0
    return (1 - rho) * covariance + rho * mean_variance * np.eye(width)


def other_label_neighbours(features, labels, count):
    squared = (features**2).sum(1)
    distances = squared[:, None] + squared[None, :] - 2 * features @ features.T
    distances[labels[:, None] == labels[None, :]] = np.inf
    return np.argsort(distances, 1)[:, :count]


def label_scores(whitened, rows, probes):
    """|projection| of the label's rows and probes on the top direction of the other folds' rows."""
    scores = np.zeros(len(rows) + len(probes))
    row_folds, probe_folds = np.arange(len(rows)) % FOLDS, np.arange(len(probes)) % FOLDS
    for fold in range(FOLDS):
        fit = whitened[rows[row_folds != fold]]
        centre = np.median(fit, 0)
        direction = np.linalg.svd(fit - centre, full_matrices=False)[2][0]
        scored = np.concatenate([np.where(row_folds == fold)[0], len(rows) + np.where(probe_folds == fold)[0]])
        members = np.concatenate([rows, probes])[scored]
        scores[scored] = np.abs((whitened[members] - centre) @ direction)
    return scores


def neighbourhood_signature(origin, labels, features, neighbours, width, strip):
    is_probe = origin == "probe"
    samples, probes = np.where(~is_probe)[0], np.where(is_probe)[0]
    n = len(samples)
    nearest = other_label_neighbours(features[samples], labels[samples], neighbours)
    out = np.zeros(len(origin))
    for parity in (0, 1):
        half, other_half = probes[parity::2], probes[1 - parity::2]
        world = np.concatenate([samples, other_half])
        world_labels = labels[world]
        residuals = features[world].copy()
        if strip:
            mean, basis = within_class_subspace(features[half], labels[half])
            residuals -= mean
            residuals -= residuals @ basis.T @ basis
        centred = residuals.copy()
        present = np.unique(world_labels[:n])
        for label in present:
            centred[world_labels == label] -= np.median(residuals[:n][world_labels[:n] == label], 0)
        if width and width < residuals.shape[1]:
            top = np.linalg.eigh(centred.T @ centred / len(centred))[1][:, ::-1][:, :width]
            residuals, centred = residuals @ top, centred @ top
        if RANDOM_WIDTH and RANDOM_WIDTH < residuals.shape[1]:
            projection = np.random.RandomState(0).standard_normal((residuals.shape[1], RANDOM_WIDTH))
            residuals, centred = residuals @ projection, centred @ projection
        for label in present:
            rows = np.where(world_labels[:n] == label)[0]
            label_probes = n + np.where(world_labels[n:] == label)[0]
            pool = np.unique(nearest[rows].ravel())
            values, vectors = np.linalg.eigh(ledoit_wolf(centred[pool]))
            whitened = residuals @ (vectors / np.sqrt(np.maximum(values, 1e-12)))
            raw = label_scores(whitened, rows, label_probes)
            centre = np.median(raw[: len(rows)])
            spread = 1.4826 * np.median(np.abs(raw[: len(rows)] - centre)) + 1e-9
            for member, value in zip(np.concatenate([rows, label_probes]), raw):
                row = world[member]
                if row >= n or row % 2 == parity:
                    out[row] = (value - centre) / spread
    return out


def report(name, origin, labels, scores):
    cells = []
    for attack in sorted(set(origin) - {"clean", "probe"}, key=int):
        poisons = origin == attack
        target = np.bincount(labels[poisons]).argmax()
        clean = (origin == "clean") & (labels == target)
        cells.append(f"{attack}: {auc(scores[poisons], scores[clean]):.3f}")
    beyond = (scores[origin == "clean"] > scores[origin == "probe"].max()).mean()
    print(f"  {name:<12} {'  '.join(cells)}  clean beyond {100 * beyond:.2f} %", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--neighbours", type=int, default=10)
    parser.add_argument("--width", type=int, default=0)
    parser.add_argument("--no-strip", action="store_true")
    parser.add_argument("--random-width", type=int, default=0)
    parser.add_argument("windows", nargs="+")
    args = parser.parse_args()
    global RANDOM_WIDTH
    RANDOM_WIDTH = args.random_width
    for path in args.windows:
        origin, labels, features, engine = load(path)
        local = neighbourhood_signature(origin, labels, features, args.neighbours, args.width, not args.no_strip)
        print(path)
        report("engine", origin, labels, engine)
        report("neighbourhood", origin, labels, local)
        report("larger", origin, labels, np.maximum(engine, local))


if __name__ == "__main__":
    main()
