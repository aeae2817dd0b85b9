//! Loss trajectories: every sample's loss after every shadow epoch, and the paper's epoch filter.

use anyhow::Result;
use ndarray::{Array2, ArrayView2, Axis};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::shadow::ShadowModel;

/// Rows per evaluation call: large enough to keep the GEMMs efficient, small enough to keep
/// ORT's activations in cache.
const EVAL_CHUNK: usize = 1024;

/// How one window is trained.
#[derive(Debug, Clone, Copy)]
pub struct TrainingPlan {
    pub epochs: usize,
    pub batch_size: usize,
    /// Seeds both the weight init and the per-epoch shuffles.
    pub seed: u64,
}

/// Trains `model` from scratch on `(features, labels)` and returns the `[N, epochs]` matrix of
/// each sample's loss after each epoch. `on_epoch` is told when an epoch ends (for progress).
pub fn record_loss_matrix(
    model: &mut ShadowModel,
    features: ArrayView2<f32>,
    labels: &[i64],
    plan: TrainingPlan,
    on_epoch: impl FnMut(usize),
) -> Result<Array2<f32>> {
    let all: Vec<usize> = (0..labels.len()).collect();
    record_loss_matrix_training_on(model, features, labels, &all, plan, on_epoch)
}

/// Like [`record_loss_matrix`], but trains only on `train_rows`; every row is still evaluated
/// after every epoch (the second pass scores the first pass's suspects this way).
pub fn record_loss_matrix_training_on(
    model: &mut ShadowModel,
    features: ArrayView2<f32>,
    labels: &[i64],
    train_rows: &[usize],
    plan: TrainingPlan,
    on_epoch: impl FnMut(usize),
) -> Result<Array2<f32>> {
    let n = labels.len();
    let d = features.ncols();
    let features = features.as_standard_layout();
    let flat = features.as_slice().expect("standard layout is contiguous");
    let mut x_batch = Vec::with_capacity(plan.batch_size * d);
    let mut y_batch = Vec::with_capacity(plan.batch_size);
    let step = |model: &mut ShadowModel, batch: &[usize]| {
        x_batch.clear();
        y_batch.clear();
        for &i in batch {
            x_batch.extend_from_slice(&flat[i * d..(i + 1) * d]);
            y_batch.push(labels[i]);
        }
        model.train_step(&x_batch, &y_batch).map(drop)
    };
    let evaluate = |model: &mut ShadowModel| {
        let mut losses = Vec::with_capacity(n);
        for start in (0..n).step_by(EVAL_CHUNK) {
            let end = (start + EVAL_CHUNK).min(n);
            losses.extend(model.evaluate(&flat[start * d..end * d], &labels[start..end])?.loss);
        }
        Ok(losses)
    };
    train_epochs(model, n, train_rows, plan, step, evaluate, on_epoch)
}

/// [`record_loss_matrix_training_on`] with the window kept where the execution provider
/// computes: uploaded once, each batch gathered there by index, the weights and step buffers
/// never copied back between steps, and the losses brought back once per epoch. The same
/// batches in the same order, so the same loss matrix; on CUDA it saves the copies that
/// dominate a step.
pub fn record_loss_matrix_resident(
    model: &mut ShadowModel,
    features: ArrayView2<f32>,
    labels: &[i64],
    train_rows: &[usize],
    plan: TrainingPlan,
    on_epoch: impl FnMut(usize),
) -> Result<Array2<f32>> {
    let features = features.as_standard_layout();
    let window = model.upload_window(features.as_slice().expect("standard layout is contiguous"), labels)?;
    let mut rows = Vec::with_capacity(plan.batch_size);
    let step = |model: &mut ShadowModel, batch: &[usize]| {
        rows.clear();
        rows.extend(batch.iter().map(|&i| i as i64));
        model.train_step_resident(&window, &rows)
    };
    let evaluate = |model: &mut ShadowModel| model.evaluate_resident(&window);
    train_epochs(model, labels.len(), train_rows, plan, step, evaluate, on_epoch)
}

/// The epochs of one window: a fresh model from the plan's seed, `train_rows` shuffled each
/// epoch and stepped through in batches, then every row evaluated. The two paths above differ
/// only in how a step and an evaluation reach the model.
fn train_epochs(
    model: &mut ShadowModel,
    rows: usize,
    train_rows: &[usize],
    plan: TrainingPlan,
    mut step: impl FnMut(&mut ShadowModel, &[usize]) -> Result<()>,
    mut evaluate: impl FnMut(&mut ShadowModel) -> Result<Vec<f32>>,
    mut on_epoch: impl FnMut(usize),
) -> Result<Array2<f32>> {
    model.reset(plan.seed)?;
    let mut rng = ChaCha8Rng::seed_from_u64(plan.seed ^ 0x5eed_5eed);
    let mut order: Vec<usize> = train_rows.to_vec();
    let mut losses = Array2::<f32>::zeros((rows, plan.epochs));
    for epoch in 0..plan.epochs {
        order.shuffle(&mut rng);
        for batch in order.chunks(plan.batch_size) {
            step(model, batch)?;
        }
        let epoch_losses = evaluate(model)?;
        anyhow::ensure!(epoch_losses.len() == rows, "{} losses for {rows} rows", epoch_losses.len());
        losses.column_mut(epoch).assign(&ndarray::Array1::from(epoch_losses));
        on_epoch(epoch);
    }
    Ok(losses)
}

/// The paper's epoch filter: keep epochs 0..3; keep a later epoch only if its mean loss is below
/// twice the mean of the previous three kept epochs (drops the loss spikes that many
/// simultaneous attacks cause).
pub fn kept_epochs(losses: ArrayView2<f32>) -> Vec<usize> {
    let means: Vec<f32> = losses.mean_axis(Axis(0)).map(|m| m.to_vec()).unwrap_or_default();
    let mut kept: Vec<usize> = (0..means.len().min(3)).collect();
    for (epoch, &mean) in means.iter().enumerate().skip(3) {
        let recent = &kept[kept.len() - 3..];
        let recent_mean = recent.iter().map(|&e| means[e]).sum::<f32>() / 3.0;
        if mean < 2.0 * recent_mean {
            kept.push(epoch);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn epoch_filter_drops_spikes_and_keeps_the_first_three() {
        // Means per epoch: 2, 1, 0.5, 0.4, 5 (spike), 0.3
        let losses = array![[2.0f32, 1.0, 0.5, 0.4, 5.0, 0.3], [2.0, 1.0, 0.5, 0.4, 5.0, 0.3]];
        assert_eq!(kept_epochs(losses.view()), vec![0, 1, 2, 3, 5]);
        let short = array![[9.0f32, 100.0]];
        assert_eq!(kept_epochs(short.view()), vec![0, 1]);
    }
}
