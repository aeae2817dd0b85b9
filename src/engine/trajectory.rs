//! Loss trajectories: every sample's loss in every shadow epoch (at its own step, or after the
//! epoch as the paper takes it), and the paper's epoch filter.

use std::borrow::Cow;

use anyhow::Result;
use ndarray::{Array2, ArrayView2, Axis};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::shadow::{LossRecording, ResidentLosses, ShadowModel};

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
    pub recording: LossRecording,
}

impl TrainingPlan {
    /// The rows of `0..rows` whose losses an evaluation at the epoch's end must give: every
    /// row after the epoch, or at-step only those the steps do not visit.
    fn evaluated_rows(&self, rows: usize, train_rows: &[usize]) -> Vec<usize> {
        match self.recording {
            LossRecording::AfterEpoch => (0..rows).collect(),
            LossRecording::AtStep => {
                let mut trained = vec![false; rows];
                train_rows.iter().for_each(|&r| trained[r] = true);
                (0..rows).filter(|&r| !trained[r]).collect()
            }
        }
    }
}

/// Trains `model` from scratch on `(features, labels)` and returns the `[N, epochs]` matrix of
/// each sample's loss in each epoch. `on_epoch` is told when an epoch ends (for progress).
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

/// Like [`record_loss_matrix`], but trains only on `train_rows`; every row still gets a loss
/// in every epoch (the second pass scores the first pass's suspects this way).
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
        gather_rows(flat, labels, d, batch, &mut x_batch, &mut y_batch);
        model.train_step(&x_batch, &y_batch)
    };
    let evaluated = plan.evaluated_rows(n, train_rows);
    // The whole window is evaluated where it lies; a subset is gathered once per window.
    let (eval_x, eval_y) = if evaluated.len() == n {
        (Cow::Borrowed(flat), Cow::Borrowed(labels))
    } else {
        let (mut x, mut y) = (Vec::new(), Vec::new());
        gather_rows(flat, labels, d, &evaluated, &mut x, &mut y);
        (Cow::Owned(x), Cow::Owned(y))
    };
    let evaluate = |model: &mut ShadowModel| {
        let mut losses = Vec::with_capacity(eval_y.len());
        for start in (0..eval_y.len()).step_by(EVAL_CHUNK) {
            let end = (start + EVAL_CHUNK).min(eval_y.len());
            losses.extend(model.evaluate(&eval_x[start * d..end * d], &eval_y[start..end])?.loss);
        }
        Ok(losses)
    };
    let passes = EpochPasses { step, fetch: Ok, evaluate, evaluated: &evaluated };
    train_epochs(model, n, train_rows, plan, passes, on_epoch)
}

/// Copies rows `rows` of the row-major `flat` (`d` values a row) and their labels into `x`, `y`.
fn gather_rows(flat: &[f32], labels: &[i64], d: usize, rows: &[usize], x: &mut Vec<f32>, y: &mut Vec<i64>) {
    x.clear();
    y.clear();
    for &i in rows {
        x.extend_from_slice(&flat[i * d..(i + 1) * d]);
        y.push(labels[i]);
    }
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
    let flat = features.as_slice().expect("standard layout is contiguous");
    let d = features.ncols();
    let window = model.upload_window(flat, labels)?;
    let evaluated = plan.evaluated_rows(labels.len(), train_rows);
    let evaluated_window = if evaluated.len() == labels.len() {
        None
    } else {
        let (mut x, mut y) = (Vec::new(), Vec::new());
        gather_rows(flat, labels, d, &evaluated, &mut x, &mut y);
        Some(model.upload_window(&x, &y)?)
    };
    let mut rows = Vec::with_capacity(plan.batch_size);
    let step = |model: &mut ShadowModel, batch: &[usize]| {
        rows.clear();
        rows.extend(batch.iter().map(|&i| i as i64));
        model.train_step_resident(&window, &rows)
    };
    let fetch = |losses: ResidentLosses| losses.to_host();
    let evaluate =
        |model: &mut ShadowModel| model.evaluate_resident(evaluated_window.as_ref().unwrap_or(&window));
    let passes = EpochPasses { step, fetch, evaluate, evaluated: &evaluated };
    train_epochs(model, labels.len(), train_rows, plan, passes, on_epoch)
}

/// How the two paths above reach the model: `step` trains on a batch and gives its losses
/// where they were computed (`L`), `fetch` brings them to the host, `evaluate` gives the
/// losses of the rows `evaluated`, in that order.
struct EpochPasses<'a, S, F, E> {
    step: S,
    fetch: F,
    evaluate: E,
    evaluated: &'a [usize],
}

/// The epochs of one window: a fresh model from the plan's seed, `train_rows` shuffled each
/// epoch and stepped through in batches; the step losses of each epoch are fetched at its
/// end (at-step recording), then the rows to evaluate are evaluated.
fn train_epochs<L, S, F, E>(
    model: &mut ShadowModel,
    rows: usize,
    train_rows: &[usize],
    plan: TrainingPlan,
    mut passes: EpochPasses<'_, S, F, E>,
    mut on_epoch: impl FnMut(usize),
) -> Result<Array2<f32>>
where
    S: FnMut(&mut ShadowModel, &[usize]) -> Result<L>,
    F: FnMut(L) -> Result<Vec<f32>>,
    E: FnMut(&mut ShadowModel) -> Result<Vec<f32>>,
{
    model.reset(plan.seed)?;
    let mut rng = ChaCha8Rng::seed_from_u64(plan.seed ^ 0x5eed_5eed);
    let mut order: Vec<usize> = train_rows.to_vec();
    let mut losses = Array2::<f32>::zeros((rows, plan.epochs));
    let at_step = plan.recording == LossRecording::AtStep;
    let mut step_losses = Vec::new();
    for epoch in 0..plan.epochs {
        order.shuffle(&mut rng);
        for batch in order.chunks(plan.batch_size) {
            let batch_losses = (passes.step)(model, batch)?;
            if at_step {
                step_losses.push(batch_losses);
            }
        }
        for (batch, batch_losses) in order.chunks(plan.batch_size).zip(step_losses.drain(..)) {
            let batch_losses = (passes.fetch)(batch_losses)?;
            anyhow::ensure!(
                batch_losses.len() == batch.len(),
                "{} losses for a batch of {}",
                batch_losses.len(),
                batch.len()
            );
            for (&row, loss) in batch.iter().zip(batch_losses) {
                losses[[row, epoch]] = loss;
            }
        }
        if !passes.evaluated.is_empty() {
            let evaluated = (passes.evaluate)(model)?;
            anyhow::ensure!(
                evaluated.len() == passes.evaluated.len(),
                "{} losses for {} rows",
                evaluated.len(),
                passes.evaluated.len()
            );
            for (&row, loss) in passes.evaluated.iter().zip(evaluated) {
                losses[[row, epoch]] = loss;
            }
        }
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
