//! The third view: how far a sample's features lie outside the range the clean probes span.
//!
//! A trigger is often a value no clean sample has (a pixel past its maximum, a sensor reading
//! beyond its scale). When the shadow can fit the label from the other features, neither the
//! loss trajectory nor the hidden layer need to notice it (measured: the out-of-range
//! clean-label triggers of optdigits and penbased passed 90 % of the time with the two other
//! views), but the inputs show it plainly. The view is a gate, not a score to rank by: a row is
//! out of range only when it lies further outside than any probe does from the others, so a
//! clean row is out of range with probability at most 1 / (probes + 1) and the view spends
//! almost none of the false-reject budget; rows inside the probes' spread are left to the other
//! two views. That bound holds over draws of the probes, not for each draw: ten probes a class
//! leave some of a class's clean range unreached, so a row past the probes only where window
//! samples of several labels lie as far out is in range too (a trigger's poisons are of one
//! label).

use super::repeated_values::NEARLY_ALL;
use ndarray::{ArrayView1, ArrayView2};

/// Every row's summed distance outside the probes' per-feature range (rows `sample_count..`
/// are the probes; a probe is measured against the other probes), each feature's distance in
/// units of that feature's range among the probes (for a probe, among the others). A feature the probes hardly vary on is
/// measured in a tenth of the median feature's range instead, so that a constant feature (a
/// blank image border) does not turn a faint stroke into an infinite distance. A window
/// sample past the probes only where window samples of several labels lie as far out
/// ([`shared_by_several_labels`]) is in range (0): what a few probes missed of the clean data.
/// Past them on one feature where it does not, its whole distance counts: a blend trigger
/// lies a little past the probes on many pixels, among clean ink of every digit on most of
/// them, and alone with its fellow poisons on a few (waiving feature by feature lost 1-2 %
/// of MNIST's blend poisons).
pub(crate) fn exceedances(features: ArrayView2<f32>, labels: &[i64], sample_count: usize) -> Vec<f32> {
    let columns: Vec<ColumnRange> = features
        .columns()
        .into_iter()
        .map(|column| ColumnRange::of(column.iter().skip(sample_count).copied()))
        .collect();
    let floor = unit_floor(&columns);
    let mut sums = vec![0.0f32; features.nrows()];
    // Whether a row lies beyond the probes on some feature its window company there does not waive.
    let mut measured = vec![false; features.nrows()];
    for (column, range) in features.columns().into_iter().zip(&columns) {
        let distances: Vec<f32> = column
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                let (low, high) = range.bounds(x, i >= sample_count);
                (x - high).max(low - x).max(0.0) / (high - low).max(floor)
            })
            .collect();
        let waived =
            shared_by_several_labels(&distances[..sample_count], column, range, &labels[..sample_count]);
        for (i, (sum, &distance)) in sums.iter_mut().zip(&distances).enumerate() {
            *sum += distance;
            measured[i] |= distance > 0.0 && !waived.get(i).copied().unwrap_or(false);
        }
    }
    sums.iter().zip(&measured).map(|(&sum, &measured)| if measured { sum } else { 0.0 }).collect()
}

/// Window samples beyond the probes on one side of a feature needed before their labels are
/// read as mixed: [`NEARLY_ALL`] of one label is the most a trigger's poisons can be asked for.
const MIXED_LABELS_AT_LEAST: usize = 10;

/// Which window samples lie beyond the probes' range on this feature where the window samples
/// as far out or further on the same side are of several labels: at least
/// [`MIXED_LABELS_AT_LEAST`] of them, no label holding [`NEARLY_ALL`] of them. A trigger value past every
/// clean sample's is set on poisons of one label (dirty-label, its target; clean-label, its
/// class), so the samples at or beyond it are of that label; clean samples a few probes failed
/// to reach are of whatever labels the data puts there (penbased at 100 probes: one feature's
/// probes stopped at 86 of 100 and 4 % of the window lay beyond, 70 % of them one class's).
/// The farthest few on a side stay measured, so a lone trigger value is never waived by
/// samples nearer in.
fn shared_by_several_labels(
    distances: &[f32],
    column: ArrayView1<f32>,
    range: &ColumnRange,
    labels: &[i64],
) -> Vec<bool> {
    let mut waived = vec![false; distances.len()];
    for above in [true, false] {
        let mut beyond: Vec<usize> = (0..distances.len())
            .filter(|&i| distances[i] > 0.0 && (column[i] > range.highest) == above)
            .collect();
        if beyond.len() < MIXED_LABELS_AT_LEAST {
            continue;
        }
        // Farthest first; samples at one distance join together.
        beyond.sort_by(|&a, &b| distances[b].total_cmp(&distances[a]));
        let mut counts: std::collections::HashMap<i64, usize> = std::collections::HashMap::new();
        let mut start = 0;
        while start < beyond.len() {
            let end = (start..beyond.len())
                .find(|&k| distances[beyond[k]] != distances[beyond[start]])
                .unwrap_or(beyond.len());
            for &i in &beyond[start..end] {
                *counts.entry(labels[i]).or_default() += 1;
            }
            let largest = counts.values().copied().max().unwrap_or(0);
            if end >= MIXED_LABELS_AT_LEAST && (largest as f64 / end as f64) < NEARLY_ALL {
                for &i in &beyond[start..end] {
                    waived[i] = true;
                }
            }
            start = end;
        }
    }
    waived
}

/// Which rows are out of range: beyond every probe's own distance (a probe: beyond every other
/// probe's), and outside at all.
pub(crate) fn out_of_range(exceedances: &[f32], sample_count: usize) -> Vec<bool> {
    let probes = &exceedances[sample_count..];
    let (first, second) = two_largest(probes);
    exceedances
        .iter()
        .enumerate()
        .map(|(i, &e)| {
            let others_max = match i >= sample_count && e == first {
                true => second,
                false => first,
            };
            e > 0.0 && e > others_max
        })
        .collect()
}

/// The largest and second-largest value (both -inf when absent).
fn two_largest(values: &[f32]) -> (f32, f32) {
    values.iter().fold((f32::NEG_INFINITY, f32::NEG_INFINITY), |(first, second), &v| {
        if v > first {
            (v, first)
        } else {
            (first, second.max(v))
        }
    })
}

/// A feature's two smallest and two largest probe values, so that a probe's range without
/// itself is at hand.
#[derive(Debug, Clone, Copy)]
struct ColumnRange {
    lowest: f32,
    second_lowest: f32,
    highest: f32,
    second_highest: f32,
}

impl ColumnRange {
    fn of(values: impl Iterator<Item = f32>) -> Self {
        let mut range = Self {
            lowest: f32::INFINITY,
            second_lowest: f32::INFINITY,
            highest: f32::NEG_INFINITY,
            second_highest: f32::NEG_INFINITY,
        };
        for v in values.filter(|v| v.is_finite()) {
            if v < range.lowest {
                range.second_lowest = range.lowest;
                range.lowest = v;
            } else if v < range.second_lowest {
                range.second_lowest = v;
            }
            if v > range.highest {
                range.second_highest = range.highest;
                range.highest = v;
            } else if v > range.second_highest {
                range.second_highest = v;
            }
        }
        range
    }

    fn width(&self) -> f32 {
        if self.highest >= self.lowest {
            self.highest - self.lowest
        } else {
            0.0
        }
    }

    /// The range `x` is measured against; for a probe, the range of the other probes (its own
    /// value, if it is an extreme, replaced by the runner-up), so that a probe is measured
    /// exactly as a new sample would be. A non-finite `x`, or no probes, give a range holding `x`.
    fn bounds(&self, x: f32, is_probe: bool) -> (f32, f32) {
        if !x.is_finite() || self.highest < self.lowest {
            return (x, x);
        }
        let (mut low, mut high) = (self.lowest, self.highest);
        if is_probe {
            // A lone probe has no others: its own value is the range.
            if x == low {
                low = if self.second_lowest.is_finite() { self.second_lowest } else { x };
            }
            if x == high {
                high = if self.second_highest.is_finite() { self.second_highest } else { x };
            }
        }
        (low, high)
    }
}

/// The smallest unit a feature is measured in: a tenth of the median feature's range (else of
/// the mean range, else 1).
fn unit_floor(columns: &[ColumnRange]) -> f32 {
    let mut widths: Vec<f32> = columns.iter().map(ColumnRange::width).collect();
    widths.sort_by(f32::total_cmp);
    let median = widths.get(widths.len() / 2).copied().unwrap_or(0.0);
    let mean = widths.iter().sum::<f32>() / widths.len().max(1) as f32;
    0.1 * [median, mean].into_iter().find(|&w| w > 0.0).unwrap_or(10.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    /// Rows: `samples`, then 50 probes spread over 0..1 on both features.
    fn rows(samples: &[[f32; 2]]) -> Array2<f32> {
        let probes = (0..50).map(|i| [i as f32 / 49.0, ((i * 7) % 50) as f32 / 49.0]);
        let all: Vec<f32> = samples.iter().copied().chain(probes).flatten().collect();
        Array2::from_shape_vec((samples.len() + 50, 2), all).unwrap()
    }

    #[test]
    fn only_a_row_beyond_every_probe_is_out_of_range() {
        let features = rows(&[[0.5, 0.5], [1.5, 0.5], [1.0, 1.0]]);
        let e = exceedances(features.view(), &[0; 53], 3);
        assert_eq!(e[0], 0.0);
        assert!((e[1] - 0.5).abs() < 1e-6, "{}", e[1]);
        let gate = out_of_range(&e, 3);
        assert_eq!(&gate[..3], &[false, true, false]);
    }

    #[test]
    fn clean_samples_of_several_labels_past_the_probes_are_in_range_a_triggers_poisons_are_not() {
        // Past the probes' top on feature 0 (1.0): twenty samples of three labels at 1.0-1.2,
        // and twenty poisons of label 7 at 3.0; one sample of label 1 also past the probes on
        // feature 1, where only the poisons' label lies besides it.
        let mut samples = Vec::new();
        let mut labels = Vec::new();
        for i in 0..20 {
            samples.push([1.0 + 0.01 * (i + 1) as f32, 0.5]);
            labels.push(i as i64 % 3);
        }
        for _ in 0..20 {
            samples.push([3.0, 0.5]);
            labels.push(7);
        }
        samples.push([1.05, 1.5]);
        labels.push(1);
        for _ in 0..12 {
            samples.push([0.5, 2.0]);
            labels.push(7);
        }
        let count = samples.len();
        let features = rows(&samples);
        labels.extend(std::iter::repeat_n(0, 50));
        let gate = out_of_range(&exceedances(features.view(), &labels, count), count);
        assert!(gate[..18].iter().all(|&g| !g), "mixed labels past the probes: in range");
        // The two farthest of them stay out: with the poisons beyond them, nine in ten of the
        // samples as far out or further are of label 7.
        assert!(gate[18] && gate[19]);
        assert!(gate[20..40].iter().all(|&g| g), "one label's trigger value past them: out of range");
        assert!(gate[40], "past the probes on a feature where one label's samples lie beside it");
    }

    #[test]
    fn fewer_than_ten_past_the_probes_are_measured_whatever_their_labels() {
        let samples: Vec<[f32; 2]> = (0..9).map(|i| [1.5 + 0.1 * i as f32, 0.5]).collect();
        let mut labels: Vec<i64> = (0..9).collect();
        labels.extend(std::iter::repeat_n(0, 50));
        let gate = out_of_range(&exceedances(rows(&samples).view(), &labels, 9), 9);
        assert!(gate[..9].iter().all(|&g| g));
    }

    #[test]
    fn a_probe_is_measured_against_the_others_and_at_most_one_is_out_of_range() {
        let mut features = rows(&[]);
        features[[0, 0]] = -2.0; // one probe far below the rest on feature 0
        let e = exceedances(features.view(), &[0; 50], 0);
        // Against the other probes' range, 1/49..1 on both features: feature 0 is 2 + 1/49
        // below it, feature 1 (its lowest) 1/49 below.
        let others = 48.0 / 49.0;
        let expected = (2.0 + 1.0 / 49.0) / others + (1.0 / 49.0) / others;
        assert!((e[0] - expected).abs() < 1e-5, "{}", e[0]);
        let gate = out_of_range(&e, 0);
        assert_eq!(gate.iter().filter(|&&g| g).count(), 1);
        assert!(gate[0]);
    }

    #[test]
    fn a_constant_feature_is_measured_in_a_tenth_of_the_median_range() {
        let mut features = rows(&[[0.5, 0.5], [0.5, 0.5]]);
        features.column_mut(1).fill(0.0);
        features[[1, 1]] = 0.2;
        let e = exceedances(features.view(), &[0; 52], 2);
        assert!((e[1] - 2.0).abs() < 1e-5, "{}", e[1]);
    }

    #[test]
    fn clean_rows_drawn_like_the_probes_are_rarely_out_of_range() {
        // Sparse, image-like rows: each of 100 features is inked (uniform 0..1) with a
        // probability from 0.001 to 0.5, so many features are blank in every probe and a
        // clean row often inks one of them. Drawn alike, a clean row is out of range with
        // probability at most 1 / (probes + 1); 20 windows of 2 000 rows, 250 probes each.
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let (samples, probes, features) = (2000, 250, 100);
        let mut gated = 0;
        for _ in 0..20 {
            let features = Array2::from_shape_fn((samples + probes, features), |(_, j)| {
                let ink = 0.001 + 0.5 * (j as f64 / features as f64).powi(3);
                if rng.random_bool(ink) {
                    rng.random::<f32>()
                } else {
                    0.0
                }
            });
            let gate =
                out_of_range(&exceedances(features.view(), &vec![0; samples + probes], samples), samples);
            gated += gate[..samples].iter().filter(|&&g| g).count();
        }
        let share = gated as f64 / (20 * samples) as f64;
        assert!(share <= 2.0 / (probes + 1) as f64, "{share}");
    }
}
