//! The scoring stage: a window's recorded loss matrix (and, when on, the other views of its
//! rows) to one score per sample, a threshold, and a decision per sample.

use ndarray::{s, Array2, ArrayView2, Axis};

use super::hard_clean::GreyZone;
use super::input_range::out_of_range;
use super::trajectory::kept_epochs;
use super::{EngineConfig, OtherViews, WindowOutcome};
use crate::decision::Policy;
use crate::scorer::ProbeScorer;

/// Appended to the reason of a quarantined sample the input-range view caught.
pub(crate) const OUT_OF_RANGE_REASON: &str =
    "; its features lie further outside the clean probes' range than any probe does (scorer.input_range)";

/// Scoring and decision on a recorded `[samples + probes, epochs]` loss matrix (samples first)
/// with the label of every row; `learning_rate` is the shadow's, recorded in the outcome;
/// the `views` given (one value per row each) are fused with the trajectory scores.
pub fn score_and_decide(
    config: &EngineConfig,
    losses: Array2<f32>,
    labels: Vec<i64>,
    sample_count: usize,
    learning_rate: f32,
    views: OtherViews,
) -> WindowOutcome {
    let kept = kept_epochs(losses.view());
    let trajectories = losses.select(Axis(1), &kept).as_standard_layout().into_owned();
    let (samples, probes) = if config.scorer.per_label {
        score_per_label(config, trajectories.view(), &labels, sample_count)
    } else {
        let samples = trajectories.slice(s![..sample_count, ..]);
        let probes = trajectories.slice(s![sample_count.., ..]);
        let scorer = ProbeScorer::build(&config.scorer, probes);
        (scorer.score_rows(samples), scorer.leave_one_out_scores(probes))
    };
    let (sample_scores, probe_scores) = match views.is_empty() {
        true => (samples, probes),
        false => fuse(&samples, &probes, &views, &labels),
    };
    let decision = &config.decision;
    let threshold = decision.threshold(&probe_scores, &sample_scores);
    let outside = views.range_exceedance.as_ref().map(|e| out_of_range(e, sample_count));
    let is_outside = |i: usize| outside.as_ref().is_some_and(|o| o[i]);
    // Without the neighbours (a config that did not ask for them when the window ran) nothing
    // is kept: the rule is never applied without its cluster check.
    let grey_zone = views
        .sample_neighbours
        .as_deref()
        .filter(|_| decision.keep_hard_clean && decision.policy == Policy::Calibrated)
        .map(|neighbours| {
            GreyZone::new(
                trajectories.view(),
                &labels,
                sample_count,
                &probe_scores,
                neighbours,
                decision.alpha,
            )
        });
    let decisions = sample_scores
        .iter()
        .enumerate()
        .map(|(i, &s)| {
            let mut decided = decision.decide(s, &threshold);
            let hard_clean = |zone: &GreyZone| {
                zone.keeps(
                    trajectories.view(),
                    i,
                    labels[i],
                    s,
                    is_outside(i),
                    &sample_scores,
                    threshold.value,
                )
            };
            if decided.flagged && grey_zone.as_ref().is_some_and(hard_clean) {
                decided = decision.keep_as_hard_clean(decided);
            } else if decided.flagged && is_outside(i) {
                decided.reason.push_str(OUT_OF_RANGE_REASON);
            }
            decided
        })
        .collect();
    WindowOutcome {
        losses,
        labels,
        sample_scores,
        threshold,
        decisions,
        learning_rate,
        views,
        out_of_range: outside.map(|mut o| {
            o.truncate(sample_count);
            o
        }),
        pace: None,
        rate_recheck: None,
    }
}

/// A clean sample lies out of the probes' range with probability at most 1 / (probes + 1), and
/// poisons are a few percent of a stream; past this share of a window, the stream has most
/// likely moved away from the probes.
const STALE_PROBES_SHARE: f64 = 0.2;

/// What to tell the operator when so much of a window is out of the probes' range that the
/// probes, not the samples, are the likely cause.
pub(crate) fn stale_probes_warning(out_of_range: &[bool]) -> Option<String> {
    let count = out_of_range.iter().filter(|&&o| o).count();
    let share = count as f64 / out_of_range.len().max(1) as f64;
    (share > STALE_PROBES_SHARE).then(|| {
        format!(
            "{count} of {} samples ({:.0} %) lie outside the clean probes' input range and are \
             quarantined: the stream has probably moved away from the probes (new units, a new \
             sensor range); refresh the probes from current clean data, or set \
             scorer.input_range = false until then",
            out_of_range.len(),
            100.0 * share
        )
    })
}

/// The trajectory scores (samples', probes' leave-one-out) and the other views of every row
/// (samples first), fused: each scored view turned into its tail share among all probes
/// (leave-one-out for a probe), and the smaller share decides, so a sample is as suspect as
/// its most unusual view. The trajectory scores are taken as they are (already within each
/// label, and pooled across labels as the calibrated threshold pools them); the
/// representation scores are first standardised against the probes of the row's label, whose
/// spreads differ from class to class. Both views are put on the same footing this way:
/// the larger of two z-scores let the heavier-tailed trajectory view decide alone (SIG caught
/// 2 % on MNIST), and standardising the trajectory scores by 25 probes a label as well made
/// their calibration noisy (the frequency backdoor 10 % -> 59 % success). A row out of the
/// probes' input range (`input_range`) gets a share below any other, so it ranks above every
/// row that is not. The fused score is -ln(share), plus less than two share steps so that it
/// is always above 0 (an absolute threshold of 0 quarantines everything); the probes' fused
/// scores go to the same conformal calibration, so the false-reject budget covers every view
/// together.
fn fuse(samples: &[f32], probes: &[f32], views: &OtherViews, labels: &[i64]) -> (Vec<f32>, Vec<f32>) {
    let sample_count = samples.len();
    let trajectory: Vec<f32> = samples.iter().chain(probes).copied().collect();
    let gate = views.range_exceedance.as_ref().map(|e| out_of_range(e, sample_count));
    // The scored views besides the trajectory, each standardised against its label's probes.
    let standardised: Vec<Vec<f32>> = [&views.representation, &views.label_disagreement]
        .into_iter()
        .flatten()
        .map(|scores| standardised_per_label(scores, labels, sample_count))
        .collect();
    // Shares are steps of 1/(probes + 1): every sample beyond all probes in a view shares the
    // top score. Ties are broken by the largest standardised score of the scored views,
    // squashed into less than the smallest step between two shares, so that no two samples
    // whose shares differ swap (a reject-fraction rule and the quarantine's ordering need a
    // strict order).
    let first = standardised_per_label(&trajectory, labels, sample_count);
    let probes_n = (labels.len() - sample_count).max(1) as f64;
    // A quarter of the smallest step between two shares, ln((n + 1) / n).
    let step = (0.25 * ((probes_n + 1.0) / probes_n).ln()) as f32;
    let largest_z = |i: usize| standardised.iter().fold(first[i], |z, view| z.max(view[i]));
    let tie_break = |i: usize| step * largest_z(i).atan() / std::f32::consts::FRAC_PI_2;
    let mut shares = tail_shares(&trajectory, sample_count);
    for view in &standardised {
        for (share, other) in shares.iter_mut().zip(tail_shares(view, sample_count)) {
            *share = share.min(other);
        }
    }
    // Below the smallest share a sample can have, 1 / (n + 1).
    let out_of_range_share = 0.5 / (probes_n + 1.0);
    let fused: Vec<f32> = (0..trajectory.len())
        .map(|i| {
            let mut share = shares[i];
            if gate.as_ref().is_some_and(|g| g[i]) {
                share = share.min(out_of_range_share);
            }
            -(share.ln()) as f32 + step + tie_break(i)
        })
        .collect();
    (fused[..sample_count].to_vec(), fused[sample_count..].to_vec())
}

/// Every row's score as (score - centre) / spread of the probes of its label (rows
/// `sample_count..` are the probes).
fn standardised_per_label(scores: &[f32], labels: &[i64], sample_count: usize) -> Vec<f32> {
    let probe_labels = &labels[sample_count..];
    let mut out = vec![0.0; scores.len()];
    let mut distinct: Vec<i64> = labels.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    let everyone = &scores[sample_count..];
    for label in distinct {
        let own: Vec<f32> = (0..probe_labels.len())
            .filter(|&i| probe_labels[i] == label)
            .map(|i| scores[sample_count + i])
            .collect();
        let (centre, spread) = robust_centre_and_spread(if own.len() >= 2 { &own } else { everyone });
        for (i, _) in labels.iter().enumerate().filter(|(_, &l)| l == label) {
            out[i] = (scores[i] - centre) / spread;
        }
    }
    out
}

/// The share of probes scoring at least as high as each row: (above + 1) / (n + 1) for a
/// sample, above / n for a probe (itself among them), as conformal p-values are.
fn tail_shares(scores: &[f32], sample_count: usize) -> Vec<f64> {
    let mut reference: Vec<f32> = scores[sample_count..].to_vec();
    reference.sort_by(f32::total_cmp);
    let n = reference.len();
    scores
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let above = n - reference.partition_point(|&r| r < x);
            match i < sample_count {
                true => (above + 1) as f64 / (n + 1) as f64,
                false => above as f64 / n as f64,
            }
        })
        .collect()
}

/// Median and MAD (scaled to a normal's standard deviation), the MAD floored so that a label
/// whose probes score alike does not divide by zero.
fn robust_centre_and_spread(values: &[f32]) -> (f32, f32) {
    let median = |v: &mut Vec<f32>| {
        v.sort_by(f32::total_cmp);
        let n = v.len();
        if n == 0 {
            0.0
        } else if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    };
    let centre = median(&mut values.to_vec());
    let mut deviations: Vec<f32> = values.iter().map(|v| (v - centre).abs()).collect();
    let mad = 1.4826 * median(&mut deviations);
    (centre, mad.max(1e-3 * centre.abs()).max(1e-6))
}

/// Each sample against the probes of its own label only (k capped at that label's probe count
/// less one); each probe's leave-one-out score within its label. A label with fewer than two
/// probes falls back to all probes, for its samples and its probe alike.
fn score_per_label(
    config: &EngineConfig,
    trajectories: ArrayView2<f32>,
    labels: &[i64],
    sample_count: usize,
) -> (Vec<f32>, Vec<f32>) {
    let probes = trajectories.slice(s![sample_count.., ..]);
    let probe_labels = &labels[sample_count..];
    let row = |i: usize| trajectories.row(i).to_slice().expect("standard layout");
    // Built only if some label needs the fallback.
    let mut all: Option<(ProbeScorer, Vec<f32>)> = None;
    let mut sample_scores = vec![0.0; sample_count];
    let mut probe_scores = vec![0.0; probe_labels.len()];
    let mut distinct: Vec<i64> = labels.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    for label in distinct {
        let members: Vec<usize> = (0..probe_labels.len()).filter(|&i| probe_labels[i] == label).collect();
        let samples: Vec<usize> = (0..sample_count).filter(|&i| labels[i] == label).collect();
        if members.len() < 2 {
            let (scorer, loo) = all.get_or_insert_with(|| {
                let scorer = ProbeScorer::build(&config.scorer, probes);
                let loo = scorer.leave_one_out_scores(probes);
                (scorer, loo)
            });
            for &i in &members {
                probe_scores[i] = loo[i];
            }
            for &i in &samples {
                sample_scores[i] = scorer.score(row(i));
            }
            continue;
        }
        let mut scorer_config = config.scorer.clone();
        scorer_config.k = config.scorer.k.min(members.len() - 1);
        let own = probes.select(Axis(0), &members);
        let scorer = ProbeScorer::build(&scorer_config, own.view());
        for (&i, score) in members.iter().zip(scorer.leave_one_out_scores(own.view())) {
            probe_scores[i] = score;
        }
        for &i in &samples {
            sample_scores[i] = scorer.score(row(i));
        }
    }
    (sample_scores, probe_scores)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_unusual_in_either_view_is_fused_above_the_probes() {
        // Rows: samples 0 (ordinary), 1 (odd trajectory), 2 (odd representation), then 20
        // probes, all of one label.
        let probes: Vec<f32> = (0..20).map(|i| i as f32 / 20.0).collect();
        let trajectory = [0.5, 10.0, 0.5];
        let mut representation = vec![0.5, 0.5, 10.0];
        representation.extend(&probes);
        let labels = vec![0i64; 23];
        let views = OtherViews { representation: Some(representation), ..Default::default() };
        let (samples, probe_scores) = fuse(&trajectory, &probes, &views, &labels);
        let highest_probe = probe_scores.iter().copied().fold(f32::MIN, f32::max);
        assert!(samples[1] > highest_probe && samples[2] > highest_probe, "{samples:?} {probe_scores:?}");
        assert!(samples[0] < highest_probe, "{samples:?}");
        assert!(samples.iter().chain(&probe_scores).all(|&s| s > 0.0), "fused scores are positive");
    }

    #[test]
    fn a_sample_out_of_range_is_fused_above_every_sample_in_range() {
        // Rows: samples 0 (odd trajectory), 1 (out of range, ordinary trajectory), 2 (ordinary),
        // then 20 probes of one label, one of them slightly outside the others' range.
        let probes: Vec<f32> = (0..20).map(|i| i as f32 / 20.0).collect();
        let trajectory = [10.0, 0.5, 0.5];
        let mut exceedance = vec![0.0, 3.0, 0.0];
        exceedance.extend((0..20).map(|i| if i == 7 { 0.1 } else { 0.0 }));
        let labels = vec![0i64; 23];
        let views = OtherViews { range_exceedance: Some(exceedance), ..Default::default() };
        let (samples, probe_scores) = fuse(&trajectory, &probes, &views, &labels);
        assert!(samples[1] > samples[0] && samples[0] > samples[2], "{samples:?}");
        let above = probe_scores.iter().filter(|&&p| p >= samples[1]).count();
        assert_eq!(above, 0, "{probe_scores:?}");
    }

    #[test]
    fn a_quarantined_sample_out_of_range_says_so() {
        // Rows: 3 samples then 40 probes, one label; sample 1 alone is out of range.
        let losses = Array2::from_shape_fn((43, 4), |(i, e)| 2.0 / (1.0 + e as f32) + (i % 7) as f32 * 0.01);
        let mut exceedance = vec![0.0; 43];
        exceedance[1] = 5.0;
        let views = OtherViews { range_exceedance: Some(exceedance), ..Default::default() };
        let outcome = score_and_decide(&EngineConfig::default(), losses, vec![0; 43], 3, 0.01, views);
        assert!(outcome.decisions[1].flagged, "{:?}", outcome.decisions[1]);
        assert!(
            outcome.decisions[1].reason.ends_with(OUT_OF_RANGE_REASON),
            "{}",
            outcome.decisions[1].reason
        );
        assert!(!outcome.decisions[0].reason.contains("input_range"), "{}", outcome.decisions[0].reason);
    }

    #[test]
    fn a_window_mostly_out_of_range_warns_that_the_probes_are_stale() {
        let mut outside = vec![false; 100];
        outside[..5].fill(true);
        assert_eq!(stale_probes_warning(&outside), None, "a few poisons are no drift");
        outside[..30].fill(true);
        let warning = stale_probes_warning(&outside).expect("30 % out of range");
        assert!(warning.contains("30 of 100") && warning.contains("refresh the probes"), "{warning}");
    }

    #[test]
    fn per_label_scoring_compares_within_a_label_and_falls_back_for_a_lone_probe() {
        // Label 0: trajectories near 0; label 1: near 10; label 2 has a single probe.
        // Rows: samples (0, 1, 2) then probes (0, 0, 0, 1, 1, 1, 2).
        let values = [0.1f32, 10.1, 5.0, 0.0, 0.2, 0.3, 10.0, 10.2, 10.3, 5.0];
        let labels = vec![0, 1, 2, 0, 0, 0, 1, 1, 1, 2];
        let trajectories = Array2::from_shape_fn((10, 2), |(i, _)| values[i]);
        let mut config = EngineConfig::default();
        config.scorer.k = 2;
        let (samples, probes) = score_per_label(&config, trajectories.view(), &labels, 3);
        // Each sample sits among its own label's probes.
        assert!(samples[0] < 0.5 && samples[1] < 0.5, "{samples:?}");
        // The lone probe of label 2 is scored against all probes, not left at zero.
        assert!(probes[6] > 1.0, "{probes:?}");
        assert!(samples[2] > 1.0, "{samples:?}");
    }
}
