//! The production model an attacker aims at: a larger MLP than the shadow, trained on whatever a
//! defence lets through, then tested for clean accuracy and for each backdoor's success rate.

use anyhow::{Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::attack::Attack;
use super::scenario::Dataset;
use crate::data::{FeatureScaling, LabelledSamples};
use crate::shadow::{MlpShape, Runtime, Sgd, ShadowModel};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VictimConfig {
    pub hidden: Vec<usize>,
    /// The last third of the epochs run at a tenth of `learning_rate`.
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    /// Centre and scale the features by the training split's statistics, as anyone training
    /// an MLP on raw tabular values would (the test data gets the same transform).
    pub standardize: bool,
}

impl Default for VictimConfig {
    fn default() -> Self {
        Self {
            hidden: vec![512, 256],
            epochs: 12,
            batch_size: 128,
            learning_rate: 0.02,
            momentum: 0.9,
            weight_decay: 5e-4,
            standardize: true,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VictimResult {
    pub trained_on: usize,
    pub clean_accuracy: f64,
    /// Per attack (in attacks-file order): share of triggered test images not of the target
    /// class that the model assigns to the target; `None` for attacks that are not backdoors.
    pub attack_success: Vec<Option<f64>>,
}

impl VictimResult {
    /// Mean attack success over the backdoors.
    pub fn mean_attack_success(&self) -> f64 {
        let rates: Vec<f64> = self.attack_success.iter().flatten().copied().collect();
        rates.iter().sum::<f64>() / rates.len().max(1) as f64
    }
}

/// Trains a fresh victim on `train` and tests it on the dataset's test split (clean) and on
/// triggered copies of it.
pub fn train_and_test(
    runtime: &Runtime,
    config: &VictimConfig,
    train: &LabelledSamples,
    dataset: &Dataset,
    attacks: &[Attack],
    seed: u64,
    on_epoch: &(dyn Fn() + Sync),
) -> Result<VictimResult> {
    let (test, classes) = (&dataset.test, dataset.classes);
    let shape = MlpShape { features: train.feature_count(), hidden: config.hidden.clone(), classes };
    let sgd = Sgd {
        learning_rate: config.learning_rate,
        momentum: config.momentum,
        weight_decay: config.weight_decay,
    };
    let mut model = ShadowModel::new(runtime, shape, sgd, seed).context("building the victim model")?;
    let scaling = if config.standardize {
        FeatureScaling::fit(train.features.view())
    } else {
        FeatureScaling::identity(train.feature_count())
    };
    train_epochs(&mut model, &scaling.applied(train), config, seed, on_epoch)?;
    let clean_accuracy = accuracy(&mut model, &scaling.applied(test), None)?;
    let attack_success = attacks
        .iter()
        .map(|attack| match (attack.is_backdoor(), attack.target) {
            (true, Some(target)) => {
                // The trigger is stamped on the raw values, then transformed as any input.
                let triggered = scaling.applied(&triggered_non_target(test, attack, target));
                accuracy(&mut model, &triggered, Some(target)).map(Some)
            }
            _ => Ok(None),
        })
        .collect::<Result<_>>()?;
    Ok(VictimResult { trained_on: train.len(), clean_accuracy, attack_success })
}

fn train_epochs(
    model: &mut ShadowModel,
    train: &LabelledSamples,
    config: &VictimConfig,
    seed: u64,
    on_epoch: &(dyn Fn() + Sync),
) -> Result<()> {
    let d = train.feature_count();
    let features = train.features.as_standard_layout();
    let flat = features.as_slice().expect("standard layout");
    let mut order: Vec<usize> = (0..train.len()).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xface);
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for epoch in 0..config.epochs {
        // Step decay: the last third of the epochs at a tenth of the rate, so that the final
        // weights (and the accuracy compared across defences) do not ride on SGD noise.
        if epoch == config.epochs - config.epochs / 3 {
            model.set_learning_rate(config.learning_rate / 10.0)?;
        }
        order.shuffle(&mut rng);
        for batch in order.chunks(config.batch_size) {
            x.clear();
            y.clear();
            for &i in batch {
                x.extend_from_slice(&flat[i * d..(i + 1) * d]);
                y.push(train.labels[i]);
            }
            model.train_step(&x, &y)?;
        }
        on_epoch();
    }
    Ok(())
}

/// Share of `data` predicted as its label, or as `as_class` when given.
fn accuracy(model: &mut ShadowModel, data: &LabelledSamples, as_class: Option<i64>) -> Result<f64> {
    let d = data.feature_count();
    let features = data.features.as_standard_layout();
    let flat = features.as_slice().expect("standard layout");
    let mut hits = 0usize;
    for start in (0..data.len()).step_by(1024) {
        let end = (start + 1024).min(data.len());
        let eval = model.evaluate(&flat[start * d..end * d], &data.labels[start..end])?;
        hits += eval
            .predicted
            .iter()
            .zip(&data.labels[start..end])
            .filter(|(&p, &label)| p == as_class.unwrap_or(label))
            .count();
    }
    Ok(hits as f64 / data.len().max(1) as f64)
}

/// Test images not of `target`, each with the trigger stamped on.
fn triggered_non_target(test: &LabelledSamples, attack: &Attack, target: i64) -> LabelledSamples {
    let keep: Vec<usize> = (0..test.len()).filter(|&i| test.labels[i] != target).collect();
    let mut triggered = test.select(&keep);
    for mut row in triggered.features.rows_mut() {
        attack.stamp_test(row.as_slice_mut().expect("rows are contiguous"));
    }
    triggered
}
