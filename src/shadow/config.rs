//! `[shadow]`: the shadow model's shape and how it is trained on each window.

use std::path::PathBuf;

use serde::{Deserialize, Serialize, Serializer};

use super::{ExecutionProvider, RuntimeOptions};
use crate::validation::{ensure, ConfigError};

/// The shadow's learning rate: how fast it learns decides whether poisons stand out, and the
/// right speed depends on the data, so by default the engine measures it (`engine::calibration`).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(try_from = "LearningRateField")]
pub enum LearningRate {
    /// Chosen on the stream's first window: the rate at which the probes' loss after one epoch
    /// falls to two thirds of chance (`engine::calibration`), and chosen again for any window
    /// that learns outside the band around it (`recheck_rate`).
    Auto,
    Fixed(f32),
}

/// `learning_rate` as written: a number or the word "auto".
#[derive(Deserialize)]
#[serde(untagged)]
enum LearningRateField {
    Number(f32),
    Word(String),
}

impl TryFrom<LearningRateField> for LearningRate {
    type Error = String;

    fn try_from(field: LearningRateField) -> Result<Self, String> {
        match field {
            LearningRateField::Number(rate) => Ok(Self::Fixed(rate)),
            LearningRateField::Word(word) if word == "auto" => Ok(Self::Auto),
            LearningRateField::Word(word) => Err(format!("\"{word}\": expected a number or \"auto\"")),
        }
    }
}

/// Written back as it is read: a number or "auto" (the evaluation's JSON results).
impl Serialize for LearningRate {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Auto => serializer.serialize_str("auto"),
            Self::Fixed(rate) => serializer.serialize_f32(*rate),
        }
    }
}

impl std::fmt::Display for LearningRate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Fixed(rate) => write!(f, "{rate}"),
        }
    }
}

/// When a row's loss for an epoch is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LossRecording {
    /// At the row's own train step in that epoch, just before its update: the step computes
    /// it anyway, so an epoch costs no evaluation pass (rows not trained on, the second
    /// pass's suspects, are still evaluated at the epoch's end).
    #[default]
    AtStep,
    /// Every row evaluated after the epoch, as the paper does: one forward pass of the whole
    /// window more per epoch.
    AfterEpoch,
}

/// The shadow model and how it is trained on each window.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShadowConfig {
    /// Hidden layer widths; `[]` is multinomial logistic regression.
    pub hidden: Vec<usize>,
    /// Epochs per window: the length of every loss trajectory.
    pub epochs: usize,
    pub batch_size: usize,
    /// SGD learning rate: a number, or chosen by the engine on the first window (`auto`).
    pub learning_rate: LearningRate,
    /// Under `auto`: a window whose probes learn outside the pace band at the chosen rate
    /// (the stream drifted) gets its rate chosen again, for that window alone.
    pub recheck_rate: bool,
    pub momentum: f32,
    pub weight_decay: f32,
    /// Seed of weight init and shuffling; each window derives its own from it.
    pub seed: u64,
    pub execution_provider: ExecutionProvider,
    pub cuda_fallback_to_cpu: bool,
    pub intra_threads: usize,
    /// Path of libonnxruntime.so; default: ORT_DYLIB_PATH, then the setup cache.
    pub onnxruntime_library: Option<PathBuf>,
    /// Independently seeded shadows per window whose loss trajectories are averaged.
    pub runs: usize,
    /// When each epoch's loss of a row is taken (see [`LossRecording`]).
    pub losses: LossRecording,
    /// Train a second shadow without the first pass's suspects; it judges the samples it
    /// trained on, the first pass its suspects.
    pub second_pass: bool,
    /// Centre every feature on the probes' mean and divide all by one scale fitted on them
    /// before training (see `FeatureScaling`), so that one learning rate suits data in any
    /// units.
    pub standardize: bool,
}

impl Default for ShadowConfig {
    fn default() -> Self {
        Self {
            hidden: vec![256],
            epochs: 10,
            batch_size: 128,
            learning_rate: LearningRate::Auto,
            recheck_rate: true,
            momentum: 0.9,
            weight_decay: 0.0,
            seed: 1,
            execution_provider: ExecutionProvider::Cpu,
            cuda_fallback_to_cpu: false,
            intra_threads: 1,
            onnxruntime_library: None,
            runs: 1,
            losses: LossRecording::AtStep,
            second_pass: true,
            standardize: true,
        }
    }
}

impl ShadowConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        ensure(
            self.hidden.len() <= 2,
            "shadow.hidden",
            format!("{} hidden layers: at most 2 are supported", self.hidden.len()),
        )?;
        for (i, &width) in self.hidden.iter().enumerate() {
            ensure(
                width > 0,
                &format!("shadow.hidden[{i}]"),
                "a hidden layer of width 0 cannot learn anything",
            )?;
        }
        ensure(
            self.epochs > 0,
            "shadow.epochs",
            "must be at least 1: a trajectory needs one loss per epoch",
        )?;
        ensure(self.batch_size > 0, "shadow.batch_size", "must be at least 1")?;
        if let LearningRate::Fixed(rate) = self.learning_rate {
            ensure(
                rate.is_finite() && rate > 0.0,
                "shadow.learning_rate",
                format!("{rate} must be a positive number, or \"auto\""),
            )?;
        }
        ensure(
            (0.0..1.0).contains(&self.momentum),
            "shadow.momentum",
            format!("{} must be in [0, 1)", self.momentum),
        )?;
        ensure(
            self.weight_decay.is_finite() && self.weight_decay >= 0.0,
            "shadow.weight_decay",
            format!("{} must be >= 0", self.weight_decay),
        )?;
        ensure(self.intra_threads > 0, "shadow.intra_threads", "must be at least 1")?;
        ensure(
            self.runs > 0,
            "shadow.runs",
            "must be at least 1 (the shadows whose trajectories are averaged)",
        )?;
        if let Some(lib) = &self.onnxruntime_library {
            ensure(
                lib.is_file(),
                "shadow.onnxruntime_library",
                format!("{} does not exist: run scripts/setup.sh or fix the path", lib.display()),
            )?;
        }
        Ok(())
    }

    pub fn runtime_options(&self) -> RuntimeOptions {
        RuntimeOptions {
            library: self.onnxruntime_library.clone(),
            execution_provider: self.execution_provider,
            cuda_fallback_to_cpu: self.cuda_fallback_to_cpu,
            intra_threads: self.intra_threads,
        }
    }
}
