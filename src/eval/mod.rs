//! Offline evaluation: stream MNIST with a patch attack through the engine, window by window,
//! and measure how well the scores separate poisons from clean samples.

pub mod attack;
pub mod metrics;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::config::EngineConfig;
use crate::data::{read_idx_pair, LabelledSamples};
use crate::engine::Engine;
use crate::probes;
use crate::shadow::Runtime;
use attack::PatchAttack;
use metrics::{mean_and_spread, roc_auc, Confusion};

pub struct EvalOptions {
    pub mnist_dir: PathBuf,
    /// One full run per seed: the seed picks the poisoned samples, the stream order, the probes
    /// and the shadow initialisations.
    pub seeds: Vec<u64>,
    /// Use only the first samples of the shuffled training set (quick runs); `None`: all 60 000.
    pub max_samples: Option<usize>,
    pub attack: PatchAttack,
    /// Seeds evaluated at once (one shadow model and one core each).
    pub jobs: usize,
    /// Write the first window's loss matrix of every seed here as CSV (`trajectories-seed-N.csv`).
    pub trajectories_dir: Option<PathBuf>,
    /// Draw the probes from training images held out of the stream (like the stream) instead
    /// of from the MNIST test split.
    pub probes_from_train: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct WindowResult {
    pub window: usize,
    pub samples: usize,
    pub kept_epochs: usize,
    pub threshold: f32,
    pub auc: f64,
    pub confusion: Confusion,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SeedResult {
    pub seed: u64,
    pub windows: Vec<WindowResult>,
    pub total: Confusion,
    /// Mean of the per-window AUCs (each window has its own shadow model and threshold).
    pub mean_window_auc: f64,
    /// AUC of all scores pooled across windows.
    pub pooled_auc: f64,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub mean: f64,
    pub spread: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    fn of(values: &[f64]) -> Self {
        let (mean, spread) = mean_and_spread(values);
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Self { mean, spread, min, max }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub seeds: Vec<SeedResult>,
    pub mean_window_auc: Summary,
    pub pooled_auc: Summary,
    pub true_positive_rate: Summary,
    pub false_reject_rate: Summary,
}

/// MNIST's training and test splits from a folder of IDX files.
pub fn load_mnist(dir: &Path) -> Result<(LabelledSamples, LabelledSamples)> {
    let hint = || format!("MNIST IDX files expected in {} (run scripts/setup.sh)", dir.display());
    let train = read_idx_pair(&dir.join("train-images-idx3-ubyte"), &dir.join("train-labels-idx1-ubyte"))
        .with_context(hint)?;
    let test = read_idx_pair(&dir.join("t10k-images-idx3-ubyte"), &dir.join("t10k-labels-idx1-ubyte"))
        .with_context(hint)?;
    Ok((train, test))
}

/// The poisoned, shuffled stream of one seed and its poison mask.
fn poisoned_stream(
    train: &LabelledSamples,
    options: &EvalOptions,
    seed: u64,
    probe_count: usize,
) -> (LabelledSamples, Vec<bool>, LabelledSamples) {
    let mut order: Vec<usize> = (0..train.len()).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    // Held-out probes are the first `probe_count` of the shuffled order; the stream is the rest.
    let held_out = if options.probes_from_train { probe_count } else { 0 };
    let probes = train.select(&order[..held_out]);
    let mut order = order.split_off(held_out);
    order.truncate(options.max_samples.unwrap_or(usize::MAX).min(order.len()));
    let mut stream = train.select(&order);
    let poisoned = options.attack.poison(&mut stream, seed.wrapping_add(17));
    (stream, poisoned, probes)
}

fn evaluate_seed(
    runtime: &Runtime,
    config: &EngineConfig,
    train: &LabelledSamples,
    test: &LabelledSamples,
    options: &EvalOptions,
    seed: u64,
    progress: &ProgressBar,
) -> Result<SeedResult> {
    let started = Instant::now();
    let (stream, poisoned, held_out) = poisoned_stream(train, options, seed, config.probes.count);
    let probes = if options.probes_from_train {
        held_out
    } else {
        probes::draw(test, config.probes.count, seed).context("drawing probes from the MNIST test split")?
    };
    let mut engine = Engine::new(runtime, config.clone(), probes)?;
    let window_size = config.window.size;
    let mut windows = Vec::new();
    let mut total = Confusion::default();
    let mut all_scores = Vec::new();
    for (index, start) in (0..stream.len()).step_by(window_size).enumerate() {
        let window_started = Instant::now();
        let end = (start + window_size).min(stream.len());
        let window = stream.slice(start, end);
        let window_seed = seed.wrapping_mul(1_000_003).wrapping_add(index as u64);
        let outcome = engine.process_seeded(&window, window_seed, |_| progress.inc(1))?;
        if let (0, Some(dir)) = (index, &options.trajectories_dir) {
            write_trajectories(
                &dir.join(format!("trajectories-seed-{seed}.csv")),
                &outcome.losses,
                &poisoned[start..end],
            )?;
        }
        let flagged: Vec<bool> = outcome.decisions.iter().map(|d| d.flagged).collect();
        let truth = &poisoned[start..end];
        let confusion = Confusion::count(&flagged, truth);
        total.add(confusion);
        let result = WindowResult {
            window: index,
            samples: end - start,
            kept_epochs: outcome.kept_epochs.len(),
            threshold: outcome.threshold.value,
            auc: roc_auc(&outcome.sample_scores, truth),
            confusion,
            seconds: window_started.elapsed().as_secs_f64(),
        };
        tracing::info!(
            seed,
            window = index,
            auc = format!("{:.4}", result.auc),
            tpr = format!("{:.3}", confusion.true_positive_rate()),
            false_reject = format!("{:.3}", confusion.false_reject_rate()),
            seconds = format!("{:.1}", result.seconds),
            "window done"
        );
        all_scores.extend(outcome.sample_scores);
        windows.push(result);
    }
    let aucs: Vec<f64> = windows.iter().map(|w| w.auc).filter(|a| a.is_finite()).collect();
    Ok(SeedResult {
        seed,
        mean_window_auc: mean_and_spread(&aucs).0,
        pooled_auc: roc_auc(&all_scores, &poisoned),
        windows,
        total,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// One row per sample: `kind` (clean, poison or probe), then its loss after each epoch.
fn write_trajectories(path: &Path, losses: &ndarray::Array2<f32>, poisoned: &[bool]) -> Result<()> {
    use std::fmt::Write as _;
    let mut out = String::from("kind");
    for e in 0..losses.ncols() {
        write!(out, ",epoch{e}")?;
    }
    out.push('\n');
    for (i, row) in losses.rows().into_iter().enumerate() {
        let kind = match poisoned.get(i) {
            Some(true) => "poison",
            Some(false) => "clean",
            None => "probe",
        };
        out.push_str(kind);
        for v in row {
            write!(out, ",{v}")?;
        }
        out.push('\n');
    }
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}

/// Runs every seed (in parallel up to `options.jobs`) and summarises across seeds.
pub fn run(runtime: &Runtime, config: &EngineConfig, options: &EvalOptions) -> Result<EvalReport> {
    config.validate()?;
    let (train, test) = load_mnist(&options.mnist_dir)?;
    train.check_shape(config.input.features, config.input.classes).context("MNIST against [input]")?;
    let stream_len = options.max_samples.unwrap_or(train.len()).min(train.len());
    let windows_per_seed = stream_len.div_ceil(config.window.size);
    let progress = ProgressBar::new((options.seeds.len() * windows_per_seed * config.shadow.epochs) as u64);
    progress.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} shadow epochs, eta {eta}")
            .expect("static template"),
    );
    let queue = Mutex::new(options.seeds.iter().copied());
    let results = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..options.jobs.max(1).min(options.seeds.len()) {
            scope.spawn(|| loop {
                let Some(seed) = queue.lock().unwrap().next() else {
                    break;
                };
                let result = evaluate_seed(runtime, config, &train, &test, options, seed, &progress);
                results.lock().unwrap().push((seed, result));
            });
        }
    });
    progress.finish_and_clear();
    let mut seeds = Vec::new();
    for (seed, result) in results.into_inner().unwrap() {
        seeds.push(result.with_context(|| format!("evaluating seed {seed}"))?);
    }
    seeds.sort_by_key(|s| s.seed);
    let summary = |f: &dyn Fn(&SeedResult) -> f64| Summary::of(&seeds.iter().map(f).collect::<Vec<_>>());
    Ok(EvalReport {
        mean_window_auc: summary(&|s| s.mean_window_auc),
        pooled_auc: summary(&|s| s.pooled_auc),
        true_positive_rate: summary(&|s| s.total.true_positive_rate()),
        false_reject_rate: summary(&|s| s.total.false_reject_rate()),
        seeds,
    })
}

impl EvalReport {
    /// The human-readable tables: per window, per seed, and across seeds.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "seed  window  samples  poisons  caught  TPR     clean-FRR  ROC-AUC  threshold  seconds\n",
        );
        for s in &self.seeds {
            for w in &s.windows {
                out.push_str(&format!(
                    "{:<5} {:<7} {:<8} {:<8} {:<7} {:<7.3} {:<10.4} {:<8.4} {:<10.4} {:.1}\n",
                    s.seed,
                    w.window,
                    w.samples,
                    w.confusion.poisons,
                    w.confusion.poisons_caught,
                    w.confusion.true_positive_rate(),
                    w.confusion.false_reject_rate(),
                    w.auc,
                    w.threshold,
                    w.seconds
                ));
            }
            out.push_str(&format!(
                "{:<5} {:<7} {:<8} {:<8} {:<7} {:<7.3} {:<10.4} {:<8.4} {:<10} {:.1}   (pooled AUC {:.4})\n",
                s.seed,
                "all",
                s.total.poisons + s.total.clean,
                s.total.poisons,
                s.total.poisons_caught,
                s.total.true_positive_rate(),
                s.total.false_reject_rate(),
                s.mean_window_auc,
                "",
                s.seconds,
                s.pooled_auc
            ));
        }
        let line = |name: &str, s: &Summary| {
            format!("{name:<26} mean {:.4}  sd {:.4}  min {:.4}  max {:.4}\n", s.mean, s.spread, s.min, s.max)
        };
        out.push_str(&format!("\nacross {} seeds:\n", self.seeds.len()));
        out.push_str(&line("ROC-AUC (mean per window)", &self.mean_window_auc));
        out.push_str(&line("ROC-AUC (pooled)", &self.pooled_auc));
        out.push_str(&line("poisons caught (TPR)", &self.true_positive_rate));
        out.push_str(&line("clean false-reject rate", &self.false_reject_rate));
        out
    }
}
