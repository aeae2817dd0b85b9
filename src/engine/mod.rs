//! The detection engine: one window of samples plus the clean probes in, a decision per sample
//! out. Pure computation: no Kafka, no files, no clocks. The daemon, the demo and the
//! evaluation harness all drive it.

pub mod calibration;
mod hard_clean;
mod input_distance;
mod input_range;
mod input_signature;
mod neighbours;
pub mod pool;
mod repeated_values;
mod representation;
mod scoring;
pub mod trajectory;

/// For `lossgate bench`: the hard-clean rule's joint recurrence is the one input view whose
/// cost grows with the square of the features; its value crowds are asked once a window.
pub(crate) use repeated_values::{joint_excess, value_codes, ValueGroups};

use anyhow::{Context, Result};
use ndarray::{s, Array2, ArrayView2};

use std::time::Duration;

use serde::Deserialize;

use crate::data::InputConfig;
use crate::data::{FeatureScaling, LabelledSamples};
use crate::decision::{Decision, DecisionConfig, Threshold};
use crate::probes::ProbesConfig;
use crate::scorer::ScorerConfig;
use crate::shadow::{LearningRate, LossRecording, MlpShape, Runtime, Sgd, ShadowConfig, ShadowModel};
use crate::validation::{ensure, ConfigError};
use calibration::{Calibration, Trial, CANDIDATES, FALLBACK_LEARNING_RATE, MIN_CALIBRATION_SAMPLES};
use trajectory::{record_loss_matrix_resident, record_loss_matrix_training_on, TrainingPlan};

/// How samples are grouped for one shadow run.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WindowConfig {
    /// Samples per window: a fresh shadow model is trained on each window plus the probes.
    pub size: usize,
    /// The daemon closes a window early when this long has passed since its first record.
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
}

impl Default for WindowConfig {
    fn default() -> Self {
        Self { size: 4096, max_wait: Duration::from_secs(30) }
    }
}

impl WindowConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        ensure(self.size > 0, "window.size", "must be at least 1 sample")?;
        ensure(!self.max_wait.is_zero(), "window.max_wait", "must be longer than 0 (e.g. \"30s\")")
    }
}

/// Everything the detection engine needs: window in, decisions out.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EngineConfig {
    pub input: InputConfig,
    pub window: WindowConfig,
    pub shadow: ShadowConfig,
    pub probes: ProbesConfig,
    pub scorer: ScorerConfig,
    pub decision: DecisionConfig,
}

impl EngineConfig {
    /// Checks every field; the first problem found is returned with its field name.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.input.validate()?;
        self.window.validate()?;
        self.shadow.validate()?;
        self.probes.validate()?;
        self.scorer.validate(self.probes.count)?;
        self.decision.validate()
    }
}

/// Everything one window produced, for the sinks, the metrics and the evaluation plots.
#[derive(Debug, Clone)]
pub struct WindowOutcome {
    /// `[samples + probes, epochs]` losses; the probes are the last rows.
    pub losses: Array2<f32>,
    /// The label of every row of `losses`.
    pub labels: Vec<i64>,
    /// One score per window sample.
    pub sample_scores: Vec<f32>,
    /// One score per probe, on the samples' scale: the clean scores the threshold was
    /// calibrated on (each probe scored as a window sample is, without itself).
    pub probe_scores: Vec<f32>,
    /// The trajectory view alone (BaDLoss), before the other views are fused with it: each row's
    /// distance to its nearest probe trajectories (samples, then probes without themselves),
    /// from the shadow whose fused score the row took (with two shadows, the first for a
    /// first-pass suspect, sample or probe).
    pub trajectory_scores: Vec<f32>,
    pub threshold: Threshold,
    /// One decision per window sample, in input order.
    pub decisions: Vec<Decision>,
    /// The shadow's learning rate for this window (chosen, or from the config).
    pub learning_rate: f32,
    /// The views of every row of `losses` beside its trajectory, fused into the scores.
    pub views: OtherViews,
    /// Which window samples lie outside the probes' input range (`scorer.input_range`).
    pub out_of_range: Option<Vec<bool>>,
    /// The grey zone's upper edge (`decision.keep_hard_clean`): a flagged sample scoring at
    /// most this, in range, was asked whether it is hard clean data; `None` when the rule is off.
    pub grey_zone_top: Option<f32>,
    /// The probes' loss after the first epoch as a share of chance, at the pool's rate
    /// (`calibration::first_epoch_pace`); `None` when the trajectories are too short to say.
    pub pace: Option<f64>,
    /// Set when that pace was outside the band and the rate was chosen again on this window.
    pub rate_recheck: Option<RateRecheck>,
    /// The first shadow's record when a second one ran (`shadow.second_pass`); `losses` and
    /// the hidden-layer view are then the second shadow's.
    pub first_pass: Option<FirstPass>,
}

/// What the first of a window's two shadows recorded, for the decision and to score again.
#[derive(Debug, Clone, PartialEq)]
pub struct FirstPass {
    /// `[samples + probes, epochs]` losses, like [`WindowOutcome::losses`].
    pub losses: Array2<f32>,
    /// Its hidden-layer score of every row (`scorer.representation`).
    pub representation: Option<Vec<f32>>,
    /// The samples it flagged: held out of the second shadow and judged by the first.
    pub held_out: Vec<bool>,
}

/// A window that learned outside the pace band at the pool's rate, and the rate chosen again
/// on it for it alone (`shadow.recheck_rate`).
#[derive(Debug, Clone, PartialEq)]
pub struct RateRecheck {
    /// The probes' loss after the first epoch as a share of chance, at `base_rate`.
    pub pace: f64,
    /// The pool's rate, chosen on the first window (or fixed).
    pub base_rate: f32,
    /// The trials on this window and the rate this window ran at.
    pub calibration: Calibration,
}

impl RateRecheck {
    fn log(&self, window_samples: usize) {
        let (low, high) = calibration::PACE_BAND;
        tracing::info!(
            window_samples,
            pace = format!("{:.3}", self.pace),
            band = format!("{low:.3}-{high:.3}"),
            base_rate = format!("{:.5}", self.base_rate),
            learning_rate = format!("{:.5}", self.calibration.learning_rate),
            "the probes' loss after one epoch left the band the learning rate was chosen for (the \
             stream learns faster or slower than the first window did): rate chosen again for \
             this window"
        );
    }
}

/// What the engine measured of every row of a window (samples, then probes) besides its loss
/// trajectory; each is present when its `scorer` switch is on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OtherViews {
    /// The hidden-layer score (`scorer.representation`, [`representation`]).
    pub representation: Option<Vec<f32>>,
    /// The distance outside the probes' input range (`scorer.input_range`, [`input_range`]).
    pub range_exceedance: Option<Vec<f32>>,
    /// How much nearer the probes of other labels are than those of its own
    /// (`scorer.neighbour_labels`, [`neighbours`]).
    pub label_disagreement: Option<Vec<f32>>,
    /// The share of each row's nearest window samples that carry another label
    /// (`scorer.label_vote`, [`neighbours::label_votes`]).
    pub label_vote: Option<Vec<f32>>,
    /// How far each row lies along the direction its label's window samples share off the
    /// probes' principal subspace, standardised per label (`scorer.input_signature`,
    /// [`input_signature`]).
    pub input_signature: Option<Vec<f32>>,
    /// Each row's squared Mahalanobis distance from the probes' mean (`scorer.input_distance`,
    /// [`input_distance`]); `None` also when the probes are too few for the input's width.
    pub input_distance: Option<Vec<f32>>,
    /// How much more often each row's feature values recur among the window's samples than
    /// among the probes (`scorer.repeated_values`, [`repeated_values`]); `None` also when the
    /// inputs are too wide for it.
    pub repeated_values: Option<Vec<f32>>,
    /// Not a score: how much more often each row's values recur together than the window's
    /// counts of each value alone expect, beyond the probes on the same pair of features, on
    /// its furthest pair ([`repeated_values::joint_excess`]), which the hard-clean rule asks;
    /// measured with the repeated-values view when the rule is on.
    pub joint_recurrence: Option<Vec<f32>>,
    /// Not a score: which window samples share each feature value, which the hard-clean rule
    /// asks ([`repeated_values::ValueGroups`]); with the joint recurrence.
    pub value_groups: Option<ValueGroups>,
    /// Not a score: each window sample's neighbourhood in input space, which
    /// `decision.keep_hard_clean` asks about ([`hard_clean`]).
    pub sample_neighbours: Option<SampleNeighbours>,
}

/// Each window sample's neighbourhood among the window's samples, in the scaled input space.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleNeighbours {
    /// Its nearest window samples of its label, nearest first ([`neighbours::same_label_neighbours`]).
    pub same_label: Vec<Vec<u32>>,
    /// The same off the probes' principal subspace, where a trigger the class's poisons share
    /// is most of what is left (`scorer.input_signature`; `None` when that view is off).
    pub same_label_off_probes: Option<Vec<Vec<u32>>>,
    /// For every row (the window's samples, then its probes), the share of its nearest window
    /// samples, of any label, that carry its label ([`neighbours::label_votes`]).
    pub label_agreement: Vec<f32>,
}

impl OtherViews {
    pub fn is_empty(&self) -> bool {
        self.representation.is_none()
            && self.range_exceedance.is_none()
            && self.label_disagreement.is_none()
            && self.label_vote.is_none()
            && self.input_signature.is_none()
            && self.input_distance.is_none()
            && self.repeated_values.is_none()
    }
}

impl WindowOutcome {
    pub fn sample_count(&self) -> usize {
        self.decisions.len()
    }

    /// Per label of the probes, the share of its probes scoring above the threshold: the
    /// clean data of that class the threshold takes before hard clean data is kept. Pooled,
    /// the shares hold alpha; a class far above it pays more of the false-reject budget than
    /// the others (its clean data varies more than theirs, or its probes are few).
    pub fn probes_above_threshold_by_label(&self) -> Vec<(i64, f64)> {
        let mut by_label = std::collections::BTreeMap::<i64, (usize, usize)>::new();
        let probe_labels = &self.labels[self.sample_count()..];
        for (&label, &score) in probe_labels.iter().zip(&self.probe_scores) {
            let (above, all) = by_label.entry(label).or_default();
            *above += usize::from(score > self.threshold.value);
            *all += 1;
        }
        by_label.into_iter().map(|(label, (above, all))| (label, above as f64 / all as f64)).collect()
    }

    /// Whether window sample `i` was judged by the first of two shadows (held out of the
    /// second as a first-pass suspect).
    pub fn judged_by_first_pass(&self, i: usize) -> bool {
        self.first_pass.as_ref().is_some_and(|f| f.held_out[i])
    }

    /// Whether window sample `i` is quarantined from the grey zone: above the threshold, not
    /// above [`Self::grey_zone_top`], in the probes' input range, and not kept as hard clean
    /// data (its dynamics or its neighbours kept it out).
    pub fn rejected_in_grey_zone(&self, i: usize) -> bool {
        let decision = &self.decisions[i];
        let out_of_range = self.out_of_range.as_ref().is_some_and(|o| o[i]);
        decision.flagged
            && self
                .grey_zone_top
                .is_some_and(|top| hard_clean::in_grey_zone(decision.score, top, out_of_range))
    }

    /// The loss matrix of the shadow that judged window sample `i`.
    fn judging_losses(&self, i: usize) -> &Array2<f32> {
        match (&self.first_pass, self.judged_by_first_pass(i)) {
            (Some(first), true) => &first.losses,
            _ => &self.losses,
        }
    }

    /// Window sample `i`'s loss in every epoch, under the shadow that judged it.
    pub fn trajectory(&self, i: usize) -> Vec<f32> {
        self.judging_losses(i).row(i).to_vec()
    }

    /// The 10th, 50th and 90th percentile of the probes' losses in each epoch under the shadow
    /// that judged window sample `i`, among the probes of its label (all probes when fewer than
    /// two have it): the clean band its trajectory is shown against.
    pub fn probe_band(&self, i: usize) -> Vec<[f32; 3]> {
        let (losses, label) = (self.judging_losses(i), self.labels[i]);
        let probes: Vec<usize> = (self.sample_count()..self.labels.len()).collect();
        let same: Vec<usize> = probes.iter().copied().filter(|&r| self.labels[r] == label).collect();
        let rows = if same.len() >= 2 { same } else { probes };
        (0..losses.ncols())
            .map(|epoch| {
                let mut column: Vec<f32> = rows.iter().map(|&r| losses[[r, epoch]]).collect();
                column.sort_by(f32::total_cmp);
                let at = |q: f32| column[((column.len() - 1) as f32 * q).round() as usize];
                [at(0.1), at(0.5), at(0.9)]
            })
            .collect()
    }
}

pub struct Engine {
    config: EngineConfig,
    model: ShadowModel,
    /// The probes, already scaled.
    probes: LabelledSamples,
    /// Fitted on the probes (trusted, and fixed for the engine's life).
    scaling: FeatureScaling,
    windows_done: u64,
    /// Set once the learning rate is known: from the config, or by calibration.
    learning_rate: Option<f32>,
    /// What the input views fit on the probes, once: the probes are fixed for the engine's life.
    fitted_on_probes: FittedOnProbes,
}

/// The input views' models of the probes, fitted when the engine starts.
#[derive(Debug, Clone, Default)]
struct FittedOnProbes {
    /// The probes' principal subspaces (`scorer.input_signature`).
    subspaces: Option<input_signature::ProbeSubspaces>,
    /// The probes' means and covariances (`scorer.input_distance`), when they are enough.
    spread: Option<input_distance::ProbeSpread>,
    /// Whether the repeated-values view is measured (`scorer.repeated_values`, inputs narrow
    /// enough).
    repeated_values: bool,
}

impl FittedOnProbes {
    fn fit(scorer: &ScorerConfig, probes: ArrayView2<f32>) -> Self {
        let subspaces =
            scorer.input_signature.then(|| input_signature::ProbeSubspaces::fit(probes)).flatten();
        if subspaces.is_some() && probes.ncols() > input_signature::MAX_WHITENED_WIDTH {
            tracing::info!(
                features = probes.ncols(),
                whitened_up_to = input_signature::MAX_WHITENED_WIDTH,
                "scorer.input_signature: inputs this wide are scored unwhitened (whitening costs \
                 the width cubed); small triggers stand out less"
            );
        }
        let spread = scorer.input_distance.then(|| input_distance::ProbeSpread::fit(probes)).flatten();
        if scorer.input_distance && spread.is_none() {
            tracing::info!(
                features = probes.ncols(),
                probes = probes.nrows(),
                probes_needed = input_distance::ProbeSpread::probes_needed(probes.ncols()),
                "scorer.input_distance: off, the probes are too few to measure how this many \
                 features vary together (each half of them must outnumber the features)"
            );
        }
        let repeated_values = scorer.repeated_values && repeated_values::applies(probes);
        if scorer.repeated_values && !repeated_values {
            tracing::info!(
                features = probes.ncols(),
                probes = probes.nrows(),
                "scorer.repeated_values: off, the inputs are as wide as half the probes or wider \
                 (images: the input range and signature views see their triggers)"
            );
        }
        Self { subspaces, spread, repeated_values }
    }
}

impl Engine {
    /// Opens the shadow model on `runtime` and checks the probes against the configured shape.
    pub fn new(runtime: &Runtime, config: EngineConfig, probes: LabelledSamples) -> Result<Self> {
        config.validate()?;
        probes.check_shape(config.input.features, config.input.classes).context("probes")?;
        anyhow::ensure!(
            probes.len() > config.scorer.k,
            "{} probes loaded, scorer.k = {} needs more than k",
            probes.len(),
            config.scorer.k
        );
        let shape = MlpShape {
            features: config.input.features,
            hidden: config.shadow.hidden.clone(),
            classes: config.input.classes,
        };
        let learning_rate = match config.shadow.learning_rate {
            LearningRate::Fixed(rate) => Some(rate),
            LearningRate::Auto => None,
        };
        let sgd = Sgd {
            learning_rate: learning_rate.unwrap_or(FALLBACK_LEARNING_RATE),
            momentum: config.shadow.momentum,
            weight_decay: config.shadow.weight_decay,
        };
        let model = ShadowModel::new(runtime, shape, sgd, config.shadow.seed)?;
        let scaling = if config.shadow.standardize {
            FeatureScaling::fit(probes.features.view())
        } else {
            FeatureScaling::identity(config.input.features)
        };
        if !scaling.own_units().is_empty() {
            tracing::info!(
                features = ?scaling.own_units(),
                "these features' spread lies over an order of magnitude from the median feature's: each is \
                 scaled by its own spread, the rest by one common scale (shadow.standardize)"
            );
        }
        let probes = scaling.applied(&probes);
        let fitted_on_probes = FittedOnProbes::fit(&config.scorer, probes.features.view());
        Ok(Self { config, model, probes, scaling, windows_done: 0, learning_rate, fitted_on_probes })
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Applies a new decision section from the next window on (live reload).
    pub fn set_decision(&mut self, decision: DecisionConfig) -> Result<()> {
        decision.validate()?;
        self.config.decision = decision;
        Ok(())
    }

    /// True while the learning rate is `auto` and not chosen yet.
    pub fn needs_calibration(&self) -> bool {
        self.learning_rate.is_none()
    }

    /// Whether `window` is large enough to choose the learning rate on.
    pub fn can_calibrate_on(window: &LabelledSamples) -> bool {
        window.len() >= MIN_CALIBRATION_SAMPLES
    }

    /// Chooses the learning rate on `window` (see [`calibration`]) and uses it from now on:
    /// one epoch on window + probes per candidate rate, slowest first, until the probes' loss
    /// falls below the target.
    pub fn calibrate(&mut self, window: &LabelledSamples) -> Result<Calibration> {
        let calibration = self.choose_rate(window)?;
        self.adopt(&calibration)?;
        Ok(calibration)
    }

    /// The calibration's trials on `window`; leaves the model at the last rate tried.
    fn choose_rate(&mut self, window: &LabelledSamples) -> Result<Calibration> {
        window.check_shape(self.config.input.features, self.config.input.classes).context("window")?;
        let joined = self.scaling.applied(window).concat(&self.probes)?;
        let everything: Vec<usize> = (0..joined.len()).collect();
        let plan = TrainingPlan {
            epochs: 1,
            batch_size: self.config.shadow.batch_size,
            seed: self.config.shadow.seed ^ 0xca11_b7a7,
            // The target is the probes' loss after the epoch.
            recording: LossRecording::AfterEpoch,
        };
        let chance = (self.config.input.classes as f64).ln();
        let mut trials = Vec::with_capacity(CANDIDATES.len());
        for &rate in &CANDIDATES {
            self.model.set_learning_rate(rate)?;
            let losses = record_loss_matrix_training_on(
                &mut self.model,
                joined.features.view(),
                &joined.labels,
                &everything,
                plan,
                |_| {},
            )?;
            let probe_loss = losses.slice(s![window.len().., 0]).mean().unwrap_or(f32::NAN) as f64;
            trials.push(Trial { learning_rate: rate, first_epoch_loss: probe_loss / chance });
            if Calibration::reached(&trials) {
                break;
            }
        }
        Ok(Calibration::from_trials(trials))
    }

    /// Uses a learning rate another engine of the same pool chose.
    pub fn adopt(&mut self, calibration: &Calibration) -> Result<()> {
        self.model.set_learning_rate(calibration.learning_rate)?;
        self.learning_rate = Some(calibration.learning_rate);
        Ok(())
    }

    /// Runs the next window, numbered by how many this engine has run, with no window before it.
    pub fn process(&mut self, window: &LabelledSamples) -> Result<WindowOutcome> {
        let sequence = self.windows_done;
        self.process_numbered(window, None, sequence)
    }

    /// Runs the next window after `earlier`, the stream's window before it (see
    /// [`Self::process_seeded`]).
    pub fn process_after(
        &mut self,
        window: &LabelledSamples,
        earlier: &LabelledSamples,
    ) -> Result<WindowOutcome> {
        let sequence = self.windows_done;
        self.process_numbered(window, Some(earlier), sequence)
    }

    /// Runs window number `sequence` of a stream with that window's seed, after `earlier` (the
    /// stream's window before it, if any), so that the same window gets the same decisions
    /// whichever engine of a pool runs it.
    pub fn process_numbered(
        &mut self,
        window: &LabelledSamples,
        earlier: Option<&LabelledSamples>,
        sequence: u64,
    ) -> Result<WindowOutcome> {
        let seed = self.config.shadow.seed.wrapping_add(sequence.wrapping_mul(0x9e37_79b9));
        self.windows_done += 1;
        self.process_seeded(window, earlier, seed, |_| {})
    }

    /// Trains a fresh shadow model on `window` + probes, scores every sample against the
    /// probes' trajectories and decides. `earlier`, the stream's window before this one, is
    /// never judged again: its samples only help fit each class's input signature
    /// ([`input_signature::EarlierRows`]). `on_epoch` reports training progress.
    pub fn process_seeded(
        &mut self,
        window: &LabelledSamples,
        earlier: Option<&LabelledSamples>,
        seed: u64,
        mut on_epoch: impl FnMut(usize),
    ) -> Result<WindowOutcome> {
        window.check_shape(self.config.input.features, self.config.input.classes).context("window")?;
        if let Some(earlier) = earlier {
            earlier
                .check_shape(self.config.input.features, self.config.input.classes)
                .context("the window before this one")?;
        }
        // Scaled only where the input signature asks for it.
        let earlier = earlier
            .filter(|_| self.config.scorer.window_before && self.fitted_on_probes.subspaces.is_some())
            .map(|e| self.scaling.applied(e));
        let calibrates_now = self.needs_calibration() && Self::can_calibrate_on(window);
        if calibrates_now {
            let calibration = self.calibrate(window)?;
            log_calibration(&calibration);
        }
        let base_rate = self.learning_rate.unwrap_or(FALLBACK_LEARNING_RATE);
        // A window whose rate was chosen again left the model at that rate.
        if self.model.learning_rate() != base_rate {
            self.model.set_learning_rate(base_rate)?;
        }
        let joined = self.scaling.applied(window).concat(&self.probes)?;
        let everything: Vec<usize> = (0..joined.len()).collect();
        // The views of the inputs alone need no shadow and are the same for both passes: they
        // are computed on a second thread while the first shadow trains (ONNX Runtime runs on
        // one thread by default), which takes them off the window's time, not its CPU time.
        let (inputs, losses) = std::thread::scope(|scope| {
            let (scorer, decision) = (&self.config.scorer, &self.config.decision);
            let (fitted, rows, sample_count) = (&self.fitted_on_probes, &joined, window.len());
            let earlier = earlier.as_ref();
            let inputs = scope.spawn(move || {
                input_views(scorer, decision.keep_hard_clean, fitted, (rows, sample_count), earlier)
            });
            let losses = averaged_losses(
                &mut self.model,
                &self.config.shadow,
                &joined,
                &everything,
                seed,
                &mut on_epoch,
            );
            (inputs.join(), losses)
        });
        let inputs = inputs.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        let mut losses = losses?;
        let pace = calibration::first_epoch_pace(
            losses.view(),
            window.len(),
            self.config.input.classes,
            self.config.shadow.losses,
        );
        let recheck = match pace {
            Some(pace)
                if !calibrates_now
                    && self.rechecks_rate()
                    && Self::can_calibrate_on(window)
                    && !calibration::within_pace_band(pace) =>
            {
                let recheck = RateRecheck { pace, base_rate, calibration: self.choose_rate(window)? };
                recheck.log(window.len());
                self.model.set_learning_rate(recheck.calibration.learning_rate)?;
                losses = self.shadow_losses(&joined, &everything, seed, &mut on_epoch)?;
                Some(recheck)
            }
            _ => None,
        };
        let rate = recheck.as_ref().map_or(base_rate, |r| r.calibration.learning_rate);
        let views = OtherViews {
            representation: self.representation_scores(&joined, window.len())?,
            ..inputs.clone()
        };
        let sample_count = window.len();
        let first = scoring::score(&self.config, losses, &joined.labels, sample_count, views);
        // With a second pass to come, the first forwards only what its shadow vouches for: the
        // second shadow trains on it ([`hard_clean`]).
        let evidence = match self.config.shadow.second_pass {
            true => scoring::Evidence::Learned,
            false => scoring::Evidence::AnyKind,
        };
        let first_judged = scoring::judge(&self.config, &first, &joined.labels, sample_count, evidence);
        // Once per window: the range is the same in both passes.
        if let Some(warning) = first_judged
            .out_of_range
            .as_deref()
            .and_then(|o| scoring::stale_probes_warning(&o[..sample_count]))
        {
            tracing::warn!(window_samples = sample_count, "{warning}");
        }
        let mut outcome = if self.config.shadow.second_pass {
            // Second pass: a fresh shadow trained without the first pass's suspects, so that
            // the poisons left in the window are fewer and their backdoor is learned less. It
            // judges only what it trained on; the suspects are judged on their first-pass scores.
            let kept: Vec<usize> = everything
                .into_iter()
                .filter(|&i| i >= sample_count || !first_judged.decisions[i].flagged)
                .collect();
            let losses = self.shadow_losses(&joined, &kept, seed ^ 0x2ba5_5eed, &mut on_epoch)?;
            let views =
                OtherViews { representation: self.representation_scores(&joined, sample_count)?, ..inputs };
            let second = scoring::score(&self.config, losses, &joined.labels, sample_count, views);
            let held_out = first_judged.decisions.iter().map(|d| d.flagged).collect();
            scoring::two_pass_outcome(&self.config, first, held_out, second, joined.labels, rate)
        } else {
            scoring::outcome(first, first_judged, joined.labels, rate)
        };
        outcome.pace = pace;
        outcome.rate_recheck = recheck;
        Ok(outcome)
    }

    /// Whether a window out of the pace band gets its rate chosen again: only a rate the
    /// engine chose (`auto`), and only on a window large enough to choose one on.
    fn rechecks_rate(&self) -> bool {
        matches!(self.config.shadow.learning_rate, LearningRate::Auto)
            && self.config.shadow.recheck_rate
            && self.learning_rate.is_some()
    }

    /// [`averaged_losses`] of this engine's shadow, as configured.
    fn shadow_losses(
        &mut self,
        joined: &LabelledSamples,
        train_rows: &[usize],
        seed: u64,
        on_epoch: &mut impl FnMut(usize),
    ) -> Result<Array2<f32>> {
        averaged_losses(&mut self.model, &self.config.shadow, joined, train_rows, seed, on_epoch)
    }

    /// The spectral score of every row of `joined` in the hidden layer of the shadow just
    /// trained, when `scorer.representation` is on.
    fn representation_scores(
        &self,
        joined: &LabelledSamples,
        sample_count: usize,
    ) -> Result<Option<Vec<f32>>> {
        if !(self.config.scorer.representation && self.config.scorer.per_label) {
            return Ok(None);
        }
        let parameters = self.model.parameters()?;
        let hidden = representation::last_hidden_layer(
            joined.features.view(),
            &parameters,
            &self.config.shadow.hidden,
        );
        Ok(Some(representation::spectral_scores(hidden.view(), &joined.labels, sample_count)))
    }
}

/// The views of every row of `joined` that need only its inputs (`scorer.input_range`,
/// `scorer.neighbour_labels`, `scorer.label_vote`, `scorer.input_signature`,
/// `scorer.input_distance`, `scorer.repeated_values`) and the samples' neighbourhoods.
fn input_views(
    scorer: &ScorerConfig,
    keeps_hard_clean: bool,
    fitted: &FittedOnProbes,
    (joined, sample_count): (&LabelledSamples, usize),
    earlier: Option<&LabelledSamples>,
) -> OtherViews {
    let features = joined.features.view();
    // One vote per row, for the view (every row) and the hard-clean rule (the samples).
    let votes = (scorer.label_vote || keeps_hard_clean)
        .then(|| neighbours::label_votes(features, &joined.labels, sample_count, hard_clean::NEIGHBOURS));
    // The values alone for the view, together for the hard-clean rule, coded once.
    let (repeated_values, joint_recurrence, value_groups) = match fitted.repeated_values {
        true => {
            let measured = repeated_values::recurrences(features, sample_count, keeps_hard_clean);
            (Some(measured.alone), measured.together, measured.groups)
        }
        false => (None, None, None),
    };
    OtherViews {
        representation: None,
        range_exceedance: scorer
            .input_range
            .then(|| input_range::exceedances(features, &joined.labels, sample_count)),
        label_disagreement: scorer
            .neighbour_labels
            .then(|| neighbours::label_disagreement(features, &joined.labels, sample_count)),
        label_vote: votes
            .as_ref()
            .filter(|_| scorer.label_vote)
            .map(|votes| votes.iter().map(|agreement| 1.0 - agreement).collect()),
        input_signature: (fitted.subspaces.as_ref()).map(|subspaces| {
            let earlier = earlier
                .map(|e| input_signature::EarlierRows { features: e.features.view(), labels: &e.labels });
            input_signature::scores(subspaces, features, &joined.labels, sample_count, earlier)
        }),
        input_distance: (fitted.spread.as_ref())
            .map(|spread| input_distance::distances(spread, features, sample_count)),
        repeated_values,
        joint_recurrence,
        value_groups,
        sample_neighbours: keeps_hard_clean.then(|| {
            let samples = features.slice(s![..sample_count, ..]);
            let along = fitted.subspaces.as_ref().map(|subspaces| subspaces.coordinates(samples));
            let nearest = neighbours::same_label_neighbours(
                features,
                along.as_ref().map(|a| a.view()),
                &joined.labels,
                sample_count,
                hard_clean::NEIGHBOURS,
            );
            SampleNeighbours {
                same_label: nearest.in_input,
                same_label_off_probes: nearest.off_along,
                label_agreement: votes.unwrap_or_default(),
            }
        }),
    }
}

/// The loss matrix of `shadow.runs` independently seeded shadows trained on `train_rows`,
/// averaged (one run: the matrix itself).
fn averaged_losses(
    model: &mut ShadowModel,
    shadow: &ShadowConfig,
    joined: &LabelledSamples,
    train_rows: &[usize],
    seed: u64,
    on_epoch: &mut impl FnMut(usize),
) -> Result<Array2<f32>> {
    let runs = shadow.runs;
    let mut total: Option<Array2<f32>> = None;
    for run in 0..runs {
        let plan = TrainingPlan {
            epochs: shadow.epochs,
            batch_size: shadow.batch_size,
            seed: seed.wrapping_add((run as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            recording: shadow.losses,
        };
        // On a GPU the window stays on the device; on the CPU both paths give the same
        // matrix (tests/shadow_model.rs) and the host one is cheaper (it evaluates in
        // cache-sized chunks).
        let record = if model.computes_on_gpu() {
            record_loss_matrix_resident
        } else {
            record_loss_matrix_training_on
        };
        let losses = record(model, joined.features.view(), &joined.labels, train_rows, plan, &mut *on_epoch)?;
        total = Some(match total {
            Some(sum) => sum + losses,
            None => losses,
        });
    }
    Ok(total.expect("shadow.runs >= 1") / runs as f32)
}

/// One line per calibration: what was tried and what was chosen.
pub(crate) fn log_calibration(calibration: &Calibration) {
    let tried: Vec<String> = calibration
        .trials
        .iter()
        .map(|t: &Trial| format!("{}: {:.3}", t.learning_rate, t.first_epoch_loss))
        .collect();
    tracing::info!(
        learning_rate = format!("{:.5}", calibration.learning_rate),
        trials = %tried.join(", "),
        "shadow learning rate chosen on the first window (per rate tried: the probes' mean loss \
         after one epoch, as a share of chance)"
    );
}

pub use scoring::{rescore, score_and_decide};
