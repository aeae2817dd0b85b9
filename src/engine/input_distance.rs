//! A score from the inputs alone for trigger values that are each possible but not together:
//! the squared Mahalanobis distance of a row from the probes' mean, under the probes'
//! covariance.
//!
//! A backdoor on tabular data sets a few features to rare but possible values. Feature by
//! feature such a row lies inside the probes' range (the range gate cannot see it), and the
//! shadow, when it learns the trigger, makes the poisons look learned. But features measured
//! together vary together (the four bands of one pixel and its neighbours', a pen's successive
//! coordinates), and one feature set to its tail while its companions stay ordinary breaks that:
//! along the directions the probes hardly vary in, the row lies far out. Measured on window
//! dumps (3 seeds, Python replica): satimage's in-range rare band values AUC 0.998 within their
//! label (the input signature 0.729), its in-range clean-label trigger 1.000 (0.001: the poisons
//! are most of their class), texture's rare values 1.000, penbased's in-range backdoors 0.990
//! and 0.999; label noise about 0.5, as it should be (a relabelled row's inputs are ordinary).
//!
//! Each feature is measured in its own unit (its spread among the probes, [`feature_units`]),
//! and the covariance is shrunk towards a multiple of the identity by the Ledoit-Wolf estimate;
//! it needs more probes than features to say anything: with a few hundred probes and 784
//! pixels the distance of an image is mostly its distance from the mean image (Animal-MNIST's
//! backdoors: AUC 0.40-0.89), one more view to share the false-reject budget with and little to
//! add, so the view is off for inputs that wide ([`ProbeSpread::fit`]).
//!
//! The probes calibrate the view, so they must stay exchangeable with the window's clean
//! samples: each half of the probes (even, odd) fits a mean and covariance that score the
//! other half and the window samples of its own parity, as the input signature's subspaces do.

use ndarray::{Array1, Array2, ArrayView2, Axis};

use super::input_signature::ledoit_wolf_ridge;
use super::representation::whitening;

/// The probes' mean and shrunk covariance, one fitted on each half (even and odd probes):
/// fitted once, since the probes are fixed for an engine's life.
#[derive(Debug, Clone)]
pub(crate) struct ProbeSpread {
    halves: [HalfSpread; 2],
}

/// One half of the probes: its mean, each feature's unit (its spread among the half) and the
/// whitening transform of the shrunk covariance of the features in those units.
#[derive(Debug, Clone)]
struct HalfSpread {
    mean: Array1<f32>,
    units: Array1<f32>,
    whitening: Array2<f32>,
}

impl ProbeSpread {
    /// `None` when a half of the probes is not more than the features: a covariance fitted on
    /// fewer rows than it is wide is mostly the shrinkage target, and the distance mostly the
    /// distance from the mean.
    pub(crate) fn fit(probes: ArrayView2<f32>) -> Option<Self> {
        if probes.nrows() / 2 <= probes.ncols() {
            return None;
        }
        let half = |parity: usize| {
            let rows: Vec<usize> = (parity..probes.nrows()).step_by(2).collect();
            HalfSpread::fit(probes.select(Axis(0), &rows).view())
        };
        Some(Self { halves: [half(0), half(1)] })
    }

    /// The fewest probes that switch the view on for inputs `features` wide.
    pub(crate) fn probes_needed(features: usize) -> usize {
        2 * (features + 1)
    }
}

impl HalfSpread {
    fn fit(probes: ArrayView2<f32>) -> Self {
        let mean = probes.mean_axis(Axis(0)).expect("at least one probe");
        let units = feature_units(probes.std_axis(Axis(0), 0.0));
        let centred = (&probes - &mean) / &units;
        let covariance = centred.t().dot(&centred) / probes.nrows() as f32;
        let ridge = ledoit_wolf_ridge(centred.view(), covariance.view());
        let whitening = whitening(covariance.mapv(f64::from), ridge).mapv(|v| v as f32);
        Self { mean, units, whitening }
    }

    fn squared_distance(&self, row: ndarray::ArrayView1<f32>) -> f32 {
        let whitened = self.whitening.dot(&((&row - &self.mean) / &self.units));
        whitened.dot(&whitened)
    }
}

/// Each feature's unit: its spread among the probes, at least a tenth of the median feature's
/// (a feature the probes hardly vary on, a blank border pixel, does not turn a faint value into
/// an infinite distance; the input range floors its units the same way). Why per feature: the
/// shrinkage pulls the covariance towards one variance for every feature, and with features in
/// different units (metres beside dollars) that variance is the widest feature's, which drowns
/// the others. Measured on window dumps with each feature multiplied by a random factor
/// (lognormal, sigma 3): the in-range backdoors' AUCs 0.70-0.93 in one shared unit, 0.88-1.00
/// per feature; 0.99-1.00 either way on the features as they are.
fn feature_units(spreads: Array1<f32>) -> Array1<f32> {
    let mut positive: Vec<f32> = spreads.iter().copied().filter(|&s| s > 0.0).collect();
    positive.sort_by(f32::total_cmp);
    let floor = positive.get(positive.len() / 2).map_or(1.0, |median| 0.1 * median);
    spreads.mapv(|s| s.max(floor))
}

/// Every row's squared distance (window samples, rows `..sample_count`, then the probes): a
/// window sample by the half of its parity, a probe by the other half.
pub(crate) fn distances(spread: &ProbeSpread, features: ArrayView2<f32>, sample_count: usize) -> Vec<f32> {
    features
        .rows()
        .into_iter()
        .enumerate()
        .map(|(i, row)| {
            let half = match i.checked_sub(sample_count) {
                None => i % 2,
                Some(probe) => 1 - probe % 2,
            };
            spread.halves[half].squared_distance(row)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows on a line through the origin (feature 1 = feature 0) plus a little noise: a row off
    /// the line lies far out although each of its features is within the probes' range.
    fn probes_on_a_line(count: usize) -> Array2<f32> {
        Array2::from_shape_fn((count, 2), |(i, j)| {
            let t = (i as f32 / count as f32) * 2.0 - 1.0;
            let wobble = ((i * 7919) % 13) as f32 / 13.0 - 0.5;
            t + if j == 1 { 0.05 * wobble } else { 0.0 }
        })
    }

    /// The two samples' distances and the farthest probe's, the view fitted on `probes`.
    fn two_samples_and_the_farthest_probe(probes: &Array2<f32>, samples: Array2<f32>) -> (f32, f32, f32) {
        let spread = ProbeSpread::fit(probes.view()).expect("100 probes a half, a few features");
        let rows = ndarray::concatenate(Axis(0), &[samples.view(), probes.view()]).unwrap();
        let distances = distances(&spread, rows.view(), 2);
        let farthest_probe = distances[2..].iter().copied().fold(0.0, f32::max);
        (distances[0], distances[1], farthest_probe)
    }

    #[test]
    fn a_row_whose_features_are_each_in_range_but_not_together_lies_beyond_every_probe() {
        // Sample 0 lies on the line; sample 1 sets feature 1 to the opposite end of its range.
        let samples = ndarray::arr2(&[[0.5, 0.5], [0.5, -0.5]]);
        let (on, off, farthest) = two_samples_and_the_farthest_probe(&probes_on_a_line(200), samples);
        assert!(on < farthest, "on the line: {on} vs {farthest}");
        assert!(off > 10.0 * farthest, "off the line: {off} vs {farthest}");
    }

    #[test]
    fn a_probe_is_measured_by_the_half_it_is_not_in() {
        let probes = probes_on_a_line(200);
        let spread = ProbeSpread::fit(probes.view()).unwrap();
        let distances = distances(&spread, probes.view(), 0);
        for (probe, &d) in distances.iter().enumerate() {
            let other = &spread.halves[1 - probe % 2];
            assert_eq!(d, other.squared_distance(probes.row(probe)));
        }
    }

    #[test]
    fn a_feature_in_larger_units_does_not_drown_a_trigger_on_another() {
        // The line of `probes_on_a_line` with feature 0 in units a thousand times smaller
        // (values a thousand times larger), and a third feature of independent noise: a row off
        // the line still lies beyond every probe. In one shared unit (the shrinkage's target
        // then the wide feature's variance) this row was inside the probes (0.7 against 3.0).
        let line = probes_on_a_line(200);
        let probes = Array2::from_shape_fn((200, 3), |(i, j)| match j {
            0 => 1000.0 * line[[i, 0]],
            1 => line[[i, 1]],
            _ => ((i * 37) % 17) as f32 / 17.0 - 0.5,
        });
        let samples = ndarray::arr2(&[[500.0, 0.5, 0.0], [500.0, -0.5, 0.0]]);
        let (on, off, farthest) = two_samples_and_the_farthest_probe(&probes, samples);
        assert!(on < farthest, "on the line: {on} vs {farthest}");
        assert!(off > 2.0 * farthest, "off the line: {off} vs {farthest}");
    }

    #[test]
    fn a_feature_no_probe_varies_on_is_measured_in_a_tenth_of_the_median_unit() {
        let units = feature_units(ndarray::arr1(&[0.0, 1.0, 2.0, 4.0]));
        assert_eq!(units.to_vec(), vec![0.2, 1.0, 2.0, 4.0]);
        assert_eq!(feature_units(ndarray::arr1(&[0.0, 0.0])).to_vec(), vec![1.0, 1.0]);
    }

    #[test]
    fn with_no_more_probes_a_half_than_features_the_view_is_off() {
        let wide = Array2::from_shape_fn((20, 10), |(i, j)| ((i * 31 + j * 17) % 11) as f32);
        assert!(ProbeSpread::fit(wide.view()).is_none());
        assert_eq!(ProbeSpread::probes_needed(10), 22);
        let enough = Array2::from_shape_fn((22, 10), |(i, j)| ((i * 31 + j * 17) % 11) as f32);
        assert!(ProbeSpread::fit(enough.view()).is_some());
    }
}
