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
//! two views.

use ndarray::ArrayView2;

/// Every row's summed distance outside the probes' per-feature range (rows `sample_count..`
/// are the probes; a probe is measured against the other probes), each feature's distance in
/// units of that feature's range among the probes (for a probe, among the others). A feature the probes hardly vary on is
/// measured in a tenth of the median feature's range instead, so that a constant feature (a
/// blank image border) does not turn a faint stroke into an infinite distance.
pub(crate) fn exceedances(features: ArrayView2<f32>, sample_count: usize) -> Vec<f32> {
    let columns: Vec<ColumnRange> = features
        .columns()
        .into_iter()
        .map(|column| ColumnRange::of(column.iter().skip(sample_count).copied()))
        .collect();
    let floor = unit_floor(&columns);
    features
        .rows()
        .into_iter()
        .enumerate()
        .map(|(i, row)| {
            let is_probe = i >= sample_count;
            row.iter()
                .zip(&columns)
                .map(|(&x, range)| {
                    let (low, high) = range.bounds(x, is_probe);
                    (x - high).max(low - x).max(0.0) / (high - low).max(floor)
                })
                .sum()
        })
        .collect()
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
        let e = exceedances(features.view(), 3);
        assert_eq!(e[0], 0.0);
        assert!((e[1] - 0.5).abs() < 1e-6, "{}", e[1]);
        let gate = out_of_range(&e, 3);
        assert_eq!(&gate[..3], &[false, true, false]);
    }

    #[test]
    fn a_probe_is_measured_against_the_others_and_at_most_one_is_out_of_range() {
        let mut features = rows(&[]);
        features[[0, 0]] = -2.0; // one probe far below the rest on feature 0
        let e = exceedances(features.view(), 0);
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
        let e = exceedances(features.view(), 2);
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
            let gate = out_of_range(&exceedances(features.view(), samples), samples);
            gated += gate[..samples].iter().filter(|&&g| g).count();
        }
        let share = gated as f64 / (20 * samples) as f64;
        assert!(share <= 2.0 / (probes + 1) as f64, "{share}");
    }
}
