//! The defences compared side by side. Each turns a poisoned stream into a flag per sample
//! (flagged = dropped before the victim trains); the ones that score also give the scores.

use anyhow::Result;
use ndarray::Array2;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::scenario::Scenario;
use crate::data::FeatureScaling;
use crate::decision::Policy;
use crate::engine::trajectory::{record_loss_matrix, TrainingPlan};
use crate::engine::EngineConfig;
use crate::engine::{rescore, Engine, WindowOutcome};
use crate::shadow::{LearningRate, LossRecording, MlpShape, Runtime, Sgd, ShadowModel};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Defence {
    /// Train on everything.
    None,
    /// The daemon's engine over consecutive windows, default config.
    Lossgate,
    /// The paper's offline BaDLoss: the whole training set as one window, reject 40 %.
    OfflineBadloss,
    /// ABL-style isolation: after a few epochs, drop the lowest-loss samples (at lossgate's rate).
    LossValue,
    /// Drop samples at random at lossgate's rate.
    Random,
}

impl Defence {
    pub const ALL: [Defence; 5] =
        [Defence::None, Defence::Lossgate, Defence::OfflineBadloss, Defence::LossValue, Defence::Random];

    pub fn name(self) -> &'static str {
        match self {
            Defence::None => "none",
            Defence::Lossgate => "lossgate",
            Defence::OfflineBadloss => "offline BaDLoss (40 %)",
            Defence::LossValue => "loss value (ABL-style)",
            Defence::Random => "random drop",
        }
    }
}

/// One window of a scoring run, kept so that other `k`, `alpha` or policies can be applied
/// without training again.
pub struct WindowRecord {
    pub start: usize,
    pub outcome: WindowOutcome,
}

/// The engine's record of a whole stream.
pub struct StreamRun {
    pub windows: Vec<WindowRecord>,
}

impl StreamRun {
    pub fn flagged(&self) -> Vec<bool> {
        self.windows.iter().flat_map(|w| w.outcome.decisions.iter().map(|d| d.flagged)).collect()
    }

    /// Which samples were quarantined from a window's grey zone
    /// ([`WindowOutcome::rejected_in_grey_zone`]).
    pub fn rejected_in_grey_zone(&self) -> Vec<bool> {
        self.windows
            .iter()
            .flat_map(|w| (0..w.outcome.sample_count()).map(|i| w.outcome.rejected_in_grey_zone(i)))
            .collect()
    }

    /// Each score divided by its window's threshold: comparable across windows (1.0 = the
    /// threshold), which is what the pooled ROC curves and histograms use.
    pub fn normalised_scores(&self) -> Vec<f32> {
        self.windows
            .iter()
            .flat_map(|w| {
                let t = w.outcome.threshold.value.max(f32::MIN_POSITIVE);
                w.outcome.sample_scores.iter().map(move |s| s / t)
            })
            .collect()
    }

    /// Per class `0..classes`, the share of its probes above the window's threshold, averaged
    /// over the windows ([`crate::engine::WindowOutcome::probes_above_threshold_by_label`]; every
    /// window scores the same probes); `None` for a class no probe carries.
    pub fn probes_above_threshold_per_class(&self, classes: usize) -> Vec<Option<f64>> {
        let mut sum = vec![0.0; classes];
        let mut windows = vec![0usize; classes];
        for w in &self.windows {
            for (label, share) in w.outcome.probes_above_threshold_by_label() {
                if let Some(class) = usize::try_from(label).ok().filter(|&c| c < classes) {
                    sum[class] += share;
                    windows[class] += 1;
                }
            }
        }
        sum.iter().zip(&windows).map(|(&s, &n)| (n > 0).then(|| s / n as f64)).collect()
    }

    /// The same loss trajectories scored and decided under another scorer/decision config.
    pub fn rescored(&self, config: &EngineConfig) -> StreamRun {
        let windows = self
            .windows
            .iter()
            .map(|w| WindowRecord { start: w.start, outcome: rescore(config, &w.outcome) })
            .collect();
        StreamRun { windows }
    }
}

/// Streams `scenario` through the engine window by window, as the daemon does.
pub fn run_engine(
    runtime: &Runtime,
    config: &EngineConfig,
    scenario: &Scenario,
    seed: u64,
    on_epoch: &(dyn Fn() + Sync),
) -> Result<StreamRun> {
    run_engine_cut(runtime, config, scenario, seed, config.window.size, on_epoch)
}

/// Like [`run_engine`], but only the first window is full: the rest are cut at `cut` samples,
/// as a daemon that starts on a backlog and then keeps up with a slower stream closes them
/// early at `window.max_wait`.
pub fn run_engine_cut(
    runtime: &Runtime,
    config: &EngineConfig,
    scenario: &Scenario,
    seed: u64,
    cut: usize,
    on_epoch: &(dyn Fn() + Sync),
) -> Result<StreamRun> {
    let mut engine = Engine::new(runtime, config.clone(), scenario.probes.clone())?;
    let stream = &scenario.stream;
    let mut windows = Vec::new();
    let (mut start, mut size) = (0, config.window.size.max(1));
    for index in 0.. {
        if start >= stream.len() {
            break;
        }
        let end = (start + size).min(stream.len());
        let window_seed = seed.wrapping_mul(1_000_003).wrapping_add(index as u64);
        let earlier = windows.last().map(|w: &WindowRecord| stream.slice(w.start, start));
        let window = stream.slice(start, end);
        let outcome = engine.process_seeded(&window, earlier.as_ref(), window_seed, |_| on_epoch())?;
        windows.push(WindowRecord { start, outcome });
        (start, size) = (end, cut.max(1));
    }
    Ok(StreamRun { windows })
}

/// The paper's offline setting: one window holding the whole stream, reject a fixed fraction,
/// with lossgate's shadow (shape, epochs, and the learning rate lossgate used on the same
/// stream, `learning_rate`) but none of its additions.
pub fn run_offline(
    runtime: &Runtime,
    config: &EngineConfig,
    scenario: &Scenario,
    seed: u64,
    learning_rate: Option<f32>,
    on_epoch: &(dyn Fn() + Sync),
) -> Result<StreamRun> {
    // The paper's method as published: one shadow, one pass, all probes for every sample.
    let mut offline = config.clone();
    if let Some(rate) = learning_rate {
        offline.shadow.learning_rate = LearningRate::Fixed(rate);
    }
    offline.window.size = scenario.stream.len();
    offline.shadow.runs = 1;
    offline.shadow.second_pass = false;
    offline.shadow.losses = LossRecording::AfterEpoch;
    offline.scorer.per_label = false;
    offline.scorer.representation = false;
    offline.scorer.input_range = false;
    offline.scorer.neighbour_labels = false;
    offline.scorer.label_vote = false;
    offline.scorer.input_signature = false;
    offline.scorer.input_distance = false;
    offline.scorer.repeated_values = false;
    offline.decision.policy = Policy::RejectFraction;
    offline.decision.reject_fraction = 0.4;
    run_engine(runtime, &offline, scenario, seed, on_epoch)
}

/// Learning rate of the loss-value baseline's shadow: the paper's 0.1, at which an MLP learns
/// most backdoors within its first epoch (ABL's premise). At lossgate's 0.01 the poisons are
/// still the hardest samples after a few epochs and the lowest-loss rule catches none.
pub const LOSS_VALUE_LEARNING_RATE: f32 = 0.1;

/// Trains the shadow on the whole stream for `epochs` and flags the `fraction` of samples with
/// the lowest final loss (backdoors are learned fastest). Returns flags and scores (-loss).
pub fn loss_value_flags(
    runtime: &Runtime,
    config: &EngineConfig,
    scenario: &Scenario,
    epochs: usize,
    fraction: f64,
    seed: u64,
) -> Result<(Vec<bool>, Vec<f32>)> {
    let shape = MlpShape {
        features: config.input.features,
        hidden: config.shadow.hidden.clone(),
        classes: config.input.classes,
    };
    let sgd = Sgd {
        learning_rate: LOSS_VALUE_LEARNING_RATE,
        momentum: config.shadow.momentum,
        weight_decay: config.shadow.weight_decay,
    };
    let mut model = ShadowModel::new(runtime, shape, sgd, seed)?;
    // The final loss: every sample evaluated after the last epoch.
    let plan = TrainingPlan {
        epochs,
        batch_size: config.shadow.batch_size,
        seed,
        recording: LossRecording::AfterEpoch,
    };
    // The same input scaling as lossgate's shadow: fitted on the probes.
    let stream = if config.shadow.standardize {
        FeatureScaling::fit(scenario.probes.features.view()).applied(&scenario.stream)
    } else {
        scenario.stream.clone()
    };
    let losses: Array2<f32> =
        record_loss_matrix(&mut model, stream.features.view(), &stream.labels, plan, |_| {})?;
    let scores: Vec<f32> = losses.column(epochs - 1).iter().map(|l| -l).collect();
    Ok((flag_top(&scores, fraction), scores))
}

/// Flags the `fraction` highest scores.
fn flag_top(scores: &[f32], fraction: f64) -> Vec<bool> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut flags = vec![false; scores.len()];
    for &i in order.iter().take((fraction * scores.len() as f64).round() as usize) {
        flags[i] = true;
    }
    flags
}

/// Flags `fraction` of `n` samples at random.
pub fn random_flags(n: usize, fraction: f64, seed: u64) -> Vec<bool> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ 0xd0d0));
    let mut flags = vec![false; n];
    for &i in order.iter().take((fraction * n as f64).round() as usize) {
        flags[i] = true;
    }
    flags
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_top_and_random_flag_the_asked_share() {
        let flags = flag_top(&[0.1, 0.9, 0.5, 0.7], 0.5);
        assert_eq!(flags, vec![false, true, false, true]);
        assert_eq!(random_flags(1000, 0.13, 1).iter().filter(|&&f| f).count(), 130);
    }
}
