//! Keeping the hard clean data (`decision.keep_hard_clean`, on by default): a sample only just
//! above the window's threshold is forwarded after all when the shadow learned it as well as
//! the clean probes of its label and it does not sit among other suspects.
//!
//! The calibrated threshold quarantines the most unusual alpha of the clean data, and among
//! them are samples that are merely hard or atypical. The grey zone is the score range above
//! the threshold at `alpha` and not above the one at `alpha / 5`; a sample there is forwarded
//! when
//! - its loss in the shadow's last kept epoch is within what its label's probes reach at the
//!   same conformal level (a label flip, never learned as well, stays out),
//! - most of its [`NEIGHBOURS`] nearest window samples of its label (input space) are below
//!   the threshold: the poisons of one attack share a trigger and sit together, while hard
//!   clean samples each differ in their own way (without this, satimage's in-range clean-label
//!   poisons, learned like hard clean samples, passed: caught 61 -> 16 %),
//! - and the input-range gate did not catch it.
//!
//! Forwarding only lowers the quarantine, so the false-reject bound of alpha still holds; what
//! it costs is the poisons in the grey zone that pass both checks. Measured with
//! `lossgate eval --sweep keep-hard-clean` (3 seeds, README "Keeping the hard clean data"):
//! clean false-reject MNIST 8.9 -> 5.6 %, optdigits 7.9 -> 5.1 %, penbased 7.6 -> 4.8 %,
//! satimage 8.6 -> 6.5 %, texture 9.8 -> 6.1 %, every victim closer to the clean-only one; mean
//! attack success the same within the seeds' spread (satimage 20.5 -> 23.5 ± 6 %).
//!
//! Tried and dropped: also asking that the sample be learned no earlier than its label's
//! typical probe (against backdoors, learned early), or that the hidden-layer view (alone, or
//! with the label neighbours) not flag it: each kept most hard clean samples in quarantine.

use ndarray::ArrayView2;

use crate::decision::conformal_quantile;

/// The grey zone's upper edge: the threshold at this share of alpha. Above it a sample is
/// quarantined whatever its dynamics.
const STRICT_SHARE_OF_ALPHA: f64 = 0.2;

/// The rule for one window, built from its probes and its samples' neighbours.
pub(crate) struct GreyZone<'a> {
    strict_threshold: f32,
    /// The labels seen in the window, sorted; `last_loss_limits` follows their order.
    labels: Vec<i64>,
    /// Per label: the last-epoch loss its probes stay within at the conformal level alpha.
    last_loss_limits: Vec<f32>,
    /// Each window sample's nearest window samples of its label.
    neighbours: &'a [Vec<u32>],
}

impl<'a> GreyZone<'a> {
    /// `trajectories`: the kept epochs of every row (samples, then probes); `probe_scores`:
    /// the probes' leave-one-out fused scores; `neighbours`: each sample's nearest samples of
    /// its label (`neighbours::same_label_neighbours`).
    pub(crate) fn new(
        trajectories: ArrayView2<f32>,
        labels: &[i64],
        sample_count: usize,
        probe_scores: &[f32],
        neighbours: &'a [Vec<u32>],
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
        Self { strict_threshold, labels: seen, last_loss_limits, neighbours }
    }

    /// The grey zone's upper edge: a score above it is quarantined whatever the dynamics.
    pub(crate) fn top(&self) -> f32 {
        self.strict_threshold
    }

    /// Whether sample `row` (label `label`), above the window's `threshold` with fused
    /// `score`, is forwarded as hard clean data; `out_of_range`: the input-range gate caught
    /// it; `sample_scores`: every window sample's fused score.
    #[allow(clippy::too_many_arguments)] // one sample's facts, read once each
    pub(crate) fn keeps(
        &self,
        trajectories: ArrayView2<f32>,
        row: usize,
        label: i64,
        score: f32,
        out_of_range: bool,
        sample_scores: &[f32],
        threshold: f32,
    ) -> bool {
        let Ok(at) = self.labels.binary_search(&label) else { return false };
        score <= self.strict_threshold
            && !out_of_range
            && last_loss(trajectories, row) <= self.last_loss_limits[at]
            && !mostly_flagged(&self.neighbours[row], sample_scores, threshold)
    }
}

/// Same-label window neighbours asked about each grey-zone sample.
pub(crate) const NEIGHBOURS: usize = 10;

/// Whether most of a sample's nearest same-label window samples are above the threshold too:
/// poisons of one attack share a trigger and sit together, hard clean samples each differ in
/// their own way.
fn mostly_flagged(neighbours: &[u32], sample_scores: &[f32], threshold: f32) -> bool {
    let flagged = neighbours.iter().filter(|&&j| sample_scores[j as usize] > threshold).count();
    2 * flagged > neighbours.len()
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
        // Each sample's one neighbour is the other: sample 0 scores in the grey zone and
        // sample 1 below the threshold.
        let neighbours = vec![vec![1], vec![0]];
        let zone = GreyZone::new(trajectories.view(), &labels, 2, &probe_scores, &neighbours, 0.5);
        // At alpha 0.5 the threshold is the 11th probe score, the strict one (alpha 0.1) the 19th.
        let (threshold, in_grey_zone) = (11.0, 15.0);
        let calm = [in_grey_zone, 5.0];
        let keeps = |row, label, score, outside, scores: &[f32]| {
            zone.keeps(trajectories.view(), row, label, score, outside, scores, threshold)
        };
        assert!(keeps(0, 0, in_grey_zone, false, &calm));
        assert!(!keeps(1, 0, in_grey_zone, false, &calm), "never learned");
        assert!(!keeps(0, 0, 19.5, false, &calm), "beyond the strict threshold");
        assert!(!keeps(0, 0, in_grey_zone, true, &calm), "out of range");
        assert!(!keeps(0, 7, in_grey_zone, false, &calm), "a label the window lacks");
        assert!(!keeps(0, 0, in_grey_zone, false, &[in_grey_zone, 12.0]), "its neighbour is flagged too");
    }

    #[test]
    fn a_sample_is_in_a_flagged_cluster_when_most_of_its_neighbours_are_above_the_threshold() {
        let scores = [5.0f32, 5.0, 1.0, 5.0];
        assert!(mostly_flagged(&[0, 1, 2], &scores, 2.0), "two of three");
        assert!(!mostly_flagged(&[0, 2], &scores, 2.0), "one of two is not most");
        assert!(!mostly_flagged(&[], &scores, 2.0), "a sample alone in its label");
    }
}
