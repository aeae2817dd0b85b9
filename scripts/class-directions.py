#!/usr/bin/env python3
"""Where a class's poisons lie among the class's leading directions, in the space the input
signature scores (`src/engine/input_signature.rs`), from the windows `lossgate eval
--dump-windows DIR` wrote (README, "Image triggers written from outside", session 33).

    python3 scripts/class-directions.py [--directions K] CSV...

Per window and per attack whose poisons make up at least ten rows of one label: the label's
window rows are stripped of the even probes' principal subspace (95 % of their variance),
whitened by the pooled within-class covariance (Ledoit-Wolf) and centred on their median, as the
engine does (on the features as dumped, before the engine's scaling, so the numbers are a
replica's, not the engine's); then
- `singular`: the class's top K singular values over the first (a flat spectrum: no direction
  stands out of the noise a few hundred rows in hundreds of dimensions fit);
- `|cos|`: how closely the poisons' mean offset from the class's clean rows lines up with each
  of those K directions (which of them holds the trigger, if any);
- `window/probes`: the class's window rows' mean squared projection on each direction over its
  probes' (directions fitted to the rows themselves vary along them more than clean data does
  anywhere else: 1 where a direction is the class's own, well above where it is noise fitted).
Needs NumPy.
"""
import argparse
import csv
import importlib.util
import pathlib

import numpy as np

# The Ledoit-Wolf shrinkage, as the other replica of the signature computes it.
_spec = importlib.util.spec_from_file_location(
    "signature_replica", pathlib.Path(__file__).with_name("signature-replica.py"))
_replica = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_replica)
ledoit_wolf = _replica.ledoit_wolf

VARIANCE_KEPT = 0.95


def load(path):
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        rows = list(reader)
    first_feature = header.index("feature0")
    origin = np.array([r[1] for r in rows])
    labels = np.array([int(r[2]) for r in rows])
    features = np.array([r[first_feature:] for r in rows], dtype=np.float64)
    return origin, labels, features


def signature_space(origin, labels, features):
    """Every row stripped of the even probes' principal subspace and whitened."""
    probes = np.where(origin == "probe")[0][0::2]
    mean = features[probes].mean(0)
    _, singular, directions = np.linalg.svd(features[probes] - mean, full_matrices=False)
    variance = singular**2
    basis = directions[: np.searchsorted(np.cumsum(variance) / variance.sum(), VARIANCE_KEPT) + 1]
    residuals = features - mean
    residuals -= residuals @ basis.T @ basis
    window = origin != "probe"
    centred = residuals.copy()
    for label in np.unique(labels):
        members = labels == label
        centred[members] -= np.median(residuals[members & window], 0)
    values, vectors = np.linalg.eigh(ledoit_wolf(centred))
    return residuals @ (vectors / np.sqrt(np.maximum(values, 1e-12)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--directions", type=int, default=8)
    parser.add_argument("windows", nargs="+")
    args = parser.parse_args()
    k = args.directions
    for path in args.windows:
        origin, labels, features = load(path)
        whitened = signature_space(origin, labels, features)
        print(path)
        for attack in sorted(set(origin) - {"clean", "probe"}, key=int):
            poisons = origin == attack
            label = np.bincount(labels[poisons]).argmax()
            if (poisons & (labels == label)).sum() < 10:
                continue
            rows = (labels == label) & (origin != "probe")
            centre = np.median(whitened[rows], 0)
            _, singular, directions = np.linalg.svd(whitened[rows] - centre, full_matrices=False)
            offset = whitened[poisons & rows].mean(0) - whitened[rows & (origin == "clean")].mean(0)
            alignment = np.abs(directions[:k] @ offset) / np.linalg.norm(offset)
            on_rows = (((whitened[rows] - centre) @ directions[:k].T) ** 2).mean(0)
            probe_rows = (labels == label) & (origin == "probe")
            on_probes = (((whitened[probe_rows] - centre) @ directions[:k].T) ** 2).mean(0)
            print(f"  attack {attack}, label {label}: {(poisons & rows).sum()} poisons of {rows.sum()} rows, "
                  f"{probe_rows.sum()} probes")
            print(f"    singular       {np.round(singular[:k] / singular[0], 2)}")
            print(f"    |cos|          {np.round(alignment, 2)}")
            print(f"    window/probes  {np.round(on_rows / np.maximum(on_probes, 1e-12), 1)}")


if __name__ == "__main__":
    main()
