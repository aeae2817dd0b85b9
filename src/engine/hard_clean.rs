//! Keeping the hard clean data (`decision.keep_hard_clean`): a sample only just above the
//! window's threshold is forwarded after all when the shadow learned it as well as it learned
//! the clean probes of its label.
//!
//! The calibrated threshold quarantines the most unusual alpha of the clean data, and among
//! them are samples that are merely hard or atypical. The grey zone is the score range above
//! the threshold at `alpha` and not above the one at `alpha / 5`; a sample there is forwarded
//! when its loss in the shadow's last kept epoch is within what its label's probes reach at
//! the same conformal level (a label flip, never learned as well, stays out), and the
//! input-range gate did not catch it. Forwarding only lowers the quarantine, so the
//! false-reject bound of alpha still holds; what it costs is the poisons in the grey zone
//! that the shadow learned well.
//!
//! Measured (3 seeds, `lossgate eval --sweep keep-hard-clean`, docs/RESULTS.md): clean
//! false-reject MNIST 8.9 -> 5.3 %, optdigits 7.9 -> 5.1 %, penbased 7.6 -> 3.0 %, texture
//! 9.8 -> 4.6 % with every dirty-label backdoor caught as before and the victim closer to the
//! clean-only one; but on satimage its in-range clean-label poisons are learned like hard clean
//! samples (correctly labelled, in the grey zone) and go through: caught 61 -> 16 %, mean
//! success 20.5 -> 28.7 %. Off by default for that: catching comes first.
//!
//! Tried and dropped: also asking that the sample be learned no earlier than its label's
//! typical probe (against backdoors, learned early), or that no other view put it in the
//! alpha tail (the hidden-layer view alone, or with the label neighbours): each kept most of
//! the hard clean samples in quarantine (the other views flag many of them) and still let
//! satimage's clean-label poisons through.

use ndarray::ArrayView2;

use crate::decision::conformal_quantile;

/// The grey zone's upper edge: the threshold at this share of alpha. Above it a sample is
/// quarantined whatever its dynamics.
const STRICT_SHARE_OF_ALPHA: f64 = 0.2;

/// The rule for one window, built from its probes.
pub(crate) struct GreyZone {
    strict_threshold: f32,
    /// The labels seen in the window, sorted; `last_loss_limits` follows their order.
    labels: Vec<i64>,
    /// Per label: the last-epoch loss its probes stay within at the conformal level alpha.
    last_loss_limits: Vec<f32>,
}

impl GreyZone {
    /// `trajectories`: the kept epochs of every row (samples, then probes); `probe_scores`:
    /// the probes' leave-one-out fused scores.
    pub(crate) fn new(
        trajectories: ArrayView2<f32>,
        labels: &[i64],
        sample_count: usize,
        probe_scores: &[f32],
        alpha: f64,
    ) -> Self {
        let strict_threshold = conformal_quantile(probe_scores, alpha * STRICT_SHARE_OF_ALPHA);
        let probe_rows: Vec<usize> = (sample_count..labels.len()).collect();
        let mut seen: Vec<i64> = labels.to_vec();
        seen.sort_unstable();
        seen.dedup();
        let last_loss_limits = seen
            .iter()
            .map(|&label| {
                let own: Vec<usize> = probe_rows.iter().copied().filter(|&r| labels[r] == label).collect();
                let rows = if own.len() >= 2 { &own } else { &probe_rows };
                let last: Vec<f32> = rows.iter().map(|&r| last_loss(trajectories, r)).collect();
                conformal_quantile(&last, alpha)
            })
            .collect();
        Self { strict_threshold, labels: seen, last_loss_limits }
    }

    /// Whether sample `row` (label `label`), above the window's threshold with fused `score`,
    /// is forwarded as hard clean data; `out_of_range`: the input-range gate caught it.
    pub(crate) fn keeps(
        &self,
        trajectories: ArrayView2<f32>,
        row: usize,
        label: i64,
        score: f32,
        out_of_range: bool,
    ) -> bool {
        let Ok(at) = self.labels.binary_search(&label) else { return false };
        score <= self.strict_threshold
            && !out_of_range
            && last_loss(trajectories, row) <= self.last_loss_limits[at]
    }
}

fn last_loss(trajectories: ArrayView2<f32>, row: usize) -> f32 {
    let losses = trajectories.row(row);
    losses[losses.len() - 1]
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    #[test]
    fn only_a_sample_just_above_the_threshold_and_learned_as_well_as_its_probes_is_kept() {
        // Rows: samples 0 (learned), 1 (never learned), then 20 probes of label 0 whose last
        // losses run 0.05..1.0; all trajectories two epochs long.
        let mut trajectories = Array2::<f32>::zeros((22, 2));
        trajectories[[0, 1]] = 0.1;
        trajectories[[1, 1]] = 3.0;
        for p in 0..20 {
            trajectories[[2 + p, 1]] = 0.05 * (p + 1) as f32;
        }
        let labels = vec![0; 22];
        let probe_scores: Vec<f32> = (1..=20).map(|s| s as f32).collect();
        let zone = GreyZone::new(trajectories.view(), &labels, 2, &probe_scores, 0.5);
        // At alpha 0.5 the threshold is the 11th probe score, the strict one (alpha 0.1) the 19th.
        let in_grey_zone = 15.0;
        assert!(zone.keeps(trajectories.view(), 0, 0, in_grey_zone, false));
        assert!(!zone.keeps(trajectories.view(), 1, 0, in_grey_zone, false), "never learned");
        assert!(!zone.keeps(trajectories.view(), 0, 0, 19.5, false), "beyond the strict threshold");
        assert!(!zone.keeps(trajectories.view(), 0, 0, in_grey_zone, true), "out of range");
        assert!(!zone.keeps(trajectories.view(), 0, 7, in_grey_zone, false), "a label the window lacks");
    }
}
