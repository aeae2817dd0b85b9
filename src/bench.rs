//! Benchmark workloads, shared by `benches/engine.rs` (criterion) and `lossgate bench` (a
//! table with GFLOP/s and the train step's share of the machine's GEMM rate).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use ndarray::Array2;
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::data::LabelledSamples;
use crate::engine::pool::{self, EnginePool};
use crate::engine::Engine;
use crate::engine::EngineConfig;
use crate::scorer::{IndexKind, ProbeScorer, ScorerConfig};
use crate::shadow::graphs::gemm_only_graph;
use crate::shadow::{LearningRate, LossRecording, MlpShape, Runtime, Sgd, ShadowModel};

/// The default MNIST shadow: 784-256-10.
pub fn mnist_shape() -> MlpShape {
    MlpShape { features: 784, hidden: vec![256], classes: 10 }
}

fn random_samples(n: usize, shape: &MlpShape, seed: u64) -> LabelledSamples {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let features = Array2::from_shape_fn((n, shape.features), |_| rng.random::<f32>());
    let labels = (0..n).map(|_| rng.random_range(0..shape.classes as i64)).collect();
    LabelledSamples { features, labels }
}

/// One SGD step on a fixed batch, repeatedly.
pub struct TrainStep {
    model: ShadowModel,
    x: Vec<f32>,
    y: Vec<i64>,
}

impl TrainStep {
    pub fn new(runtime: &Runtime, shape: MlpShape, batch: usize) -> Result<Self> {
        let data = random_samples(batch, &shape, 1);
        let sgd = Sgd { learning_rate: 0.001, momentum: 0.9, weight_decay: 0.0 };
        let model = ShadowModel::new(runtime, shape, sgd, 1)?;
        Ok(Self { model, x: data.features.into_raw_vec_and_offset().0, y: data.labels })
    }

    pub fn run(&mut self) -> Result<()> {
        self.model.train_step(&self.x, &self.y).map(|_| ())
    }

    pub fn evaluate(&mut self) -> Result<()> {
        self.model.evaluate(&self.x, &self.y).map(|_| ())
    }
}

/// The train step's matrix products alone (same shapes), the ceiling the step is compared to.
pub struct GemmCeiling {
    session: Session,
    inputs: Vec<(String, DynValue)>,
}

impl GemmCeiling {
    pub fn new(runtime: &Runtime, shape: &MlpShape, batch: usize) -> Result<Self> {
        let session = runtime.session(&gemm_only_graph(shape))?;
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let mut random = |dims: [usize; 2]| -> Result<DynValue> {
            let data: Vec<f32> = (0..dims[0] * dims[1]).map(|_| rng.random::<f32>() - 0.5).collect();
            Ok(Tensor::from_array((vec![dims[0] as i64, dims[1] as i64], data))?.into_dyn())
        };
        let mut inputs = Vec::new();
        for (i, &(fan_in, fan_out)) in shape.layers().iter().enumerate() {
            inputs.push((format!("a{i}"), random([batch, fan_in])?));
            inputs.push((format!("W{i}"), random([fan_in, fan_out])?));
            inputs.push((format!("g{i}"), random([batch, fan_out])?));
        }
        Ok(Self { session, inputs })
    }

    pub fn run(&mut self) -> Result<()> {
        let inputs: Vec<(Cow<str>, SessionInputValue)> =
            self.inputs.iter().map(|(n, v)| (Cow::Borrowed(n.as_str()), v.into())).collect();
        crate::shadow::flushing_subnormals(|| self.session.run(inputs))?;
        Ok(())
    }
}

/// A whole window at the default size, after another (the daemon's steady state): train a
/// fresh shadow, score, decide.
pub struct WholeWindow {
    engine: Engine,
    window: LabelledSamples,
    earlier: LabelledSamples,
}

/// The config with its learning rate fixed: a step costs the same at any rate, and the
/// one-time calibration of `auto` (a few epochs on the first window) is not a window's cost.
fn steady_state(mut config: EngineConfig) -> EngineConfig {
    if config.shadow.learning_rate == LearningRate::Auto {
        config.shadow.learning_rate = LearningRate::Fixed(0.01);
    }
    config
}

/// The shadow a config trains: `[input]` and `shadow.hidden`.
fn shape_of(config: &EngineConfig) -> MlpShape {
    MlpShape {
        features: config.input.features,
        hidden: config.shadow.hidden.clone(),
        classes: config.input.classes,
    }
}

impl WholeWindow {
    pub fn new(runtime: &Runtime, config: EngineConfig) -> Result<Self> {
        let shape = shape_of(&config);
        let window = random_samples(config.window.size, &shape, 3);
        let probes = random_samples(config.probes.count, &shape, 4);
        let earlier = random_samples(config.window.size, &shape, 5);
        Ok(Self { engine: Engine::new(runtime, steady_state(config), probes)?, window, earlier })
    }

    pub fn run(&mut self) -> Result<()> {
        self.engine.process_after(&self.window, &self.earlier).map(|_| ())
    }
}

/// Whole windows through a pool of engine workers: throughput in samples (window + probes
/// rows trained) per second.
pub struct PooledWindows {
    pool: EnginePool,
    /// Every window submitted, each after the one before (the daemon's steady state).
    window: Arc<LabelledSamples>,
    rows_per_window: usize,
    decision: crate::decision::DecisionConfig,
}

impl PooledWindows {
    pub fn new(runtime: &Runtime, config: EngineConfig, workers: usize) -> Result<Self> {
        let shape = shape_of(&config);
        let window = Arc::new(random_samples(config.window.size, &shape, 3));
        let probes = random_samples(config.probes.count, &shape, 4);
        let rows_per_window = config.window.size + config.probes.count;
        let decision = config.decision.clone();
        let pool = EnginePool::start(runtime, steady_state(config), probes, workers)?;
        Ok(Self { pool, window, rows_per_window, decision })
    }

    /// Runs `windows` windows (numbered from `first`) through the pool at once and waits for
    /// all of them; returns rows trained per second.
    pub fn run(&self, first: u64, windows: usize) -> Result<f64> {
        let started = Instant::now();
        let pending: Vec<_> = (0..windows as u64)
            .map(|i| {
                let earlier = Some(self.window.clone());
                self.pool.submit(self.window.clone(), earlier, first + i, self.decision.clone())
            })
            .collect();
        for p in pending {
            pool::wait(p)?;
        }
        Ok((windows * self.rows_per_window) as f64 / started.elapsed().as_secs_f64())
    }
}

/// Loss-trajectory-like rows `[rows, epochs]` for the scorer: a log-normal start loss, an
/// exponential decay at a random rate, noise, and a loss spike now and then.
pub fn synthetic_trajectories(rows: usize, epochs: usize, seed: u64) -> Array2<f32> {
    use rand_distr::{Distribution, LogNormal, Normal};
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let start = LogNormal::new(-0.5, 1.0).expect("valid parameters");
    let noise = Normal::new(0.0, 0.05).expect("valid parameters");
    let mut out = Array2::zeros((rows, epochs));
    for mut row in out.rows_mut() {
        let l0: f64 = start.sample(&mut rng);
        let rate: f64 = rng.random_range(0.02..0.6);
        for (e, v) in row.iter_mut().enumerate() {
            let spike = if rng.random_bool(0.02) { rng.random_range(0.5..3.0) } else { 0.0 };
            *v = ((l0 * (-rate * e as f64).exp()) + noise.sample(&mut rng) + spike).max(0.0) as f32;
        }
    }
    out
}

pub fn scorer(probes: &Array2<f32>, index: IndexKind) -> ProbeScorer {
    let mut config = ScorerConfig { index, ..Default::default() };
    if let Ok(ef) = std::env::var("LOSSGATE_BENCH_EF") {
        config.hnsw_ef_search = ef.parse().expect("LOSSGATE_BENCH_EF is a number");
    }
    ProbeScorer::build(&config, probes.view())
}

/// Seconds per call: repeats `f` for at least `budget`, returns the median of 5 rounds.
pub fn seconds_per_call(budget: Duration, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?; // warm-up
    let started = Instant::now();
    f()?;
    let once = started.elapsed().max(Duration::from_micros(1));
    let per_round = ((budget.as_secs_f64() / 5.0) / once.as_secs_f64()).ceil().max(1.0) as usize;
    let mut rounds = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        for _ in 0..per_round {
            f()?;
        }
        rounds.push(started.elapsed().as_secs_f64() / per_round as f64);
    }
    rounds.sort_by(f64::total_cmp);
    Ok(rounds[2])
}

/// Two workloads timed in alternating rounds, so that a change of the machine's speed (this VM
/// moves by +-20 % within minutes) hits both alike: seconds per call of each (medians over the
/// rounds) and the median over rounds of `b`'s time as a share of `a`'s.
pub fn paired_seconds_per_call(
    budget: Duration,
    mut a: impl FnMut() -> Result<()>,
    mut b: impl FnMut() -> Result<()>,
) -> Result<(f64, f64, f64)> {
    const ROUNDS: usize = 11;
    let calls = |f: &mut dyn FnMut() -> Result<()>| -> Result<usize> {
        f()?; // warm-up
        let started = Instant::now();
        f()?;
        let once = started.elapsed().max(Duration::from_micros(1)).as_secs_f64();
        Ok(((budget.as_secs_f64() / (2 * ROUNDS) as f64) / once).ceil().max(1.0) as usize)
    };
    let (calls_a, calls_b) = (calls(&mut a)?, calls(&mut b)?);
    let timed = |f: &mut dyn FnMut() -> Result<()>, calls: usize| -> Result<f64> {
        let started = Instant::now();
        for _ in 0..calls {
            f()?;
        }
        Ok(started.elapsed().as_secs_f64() / calls as f64)
    };
    let (mut times_a, mut times_b, mut shares) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let (t_a, t_b) = (timed(&mut a, calls_a)?, timed(&mut b, calls_b)?);
        times_a.push(t_a);
        times_b.push(t_b);
        shares.push(t_b / t_a);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ok((median(times_a), median(times_b), median(shares)))
}

/// Measures everything and returns the table `lossgate bench` prints.
pub fn report(runtime: &Runtime, quick: bool) -> Result<String> {
    let budget = Duration::from_secs_f64(if quick { 0.3 } else { 3.0 });
    let shape = mnist_shape();
    let batch = 128;
    let mut out = String::new();
    let mut row = |name: &str, value: String| out.push_str(&format!("{name:<52} {value}\n"));

    let mut step = TrainStep::new(runtime, shape.clone(), batch)?;
    let mut gemm = GemmCeiling::new(runtime, &shape, batch)?;
    let (t_step, t_gemm, gemm_share) = paired_seconds_per_call(budget * 2, || step.run(), || gemm.run())?;
    let step_flops = shape.train_flops_per_sample() * batch as f64;
    row(
        "train step 784-256-10, batch 128",
        format!("{:>10.0} samples/s  {:>6.1} GFLOP/s", batch as f64 / t_step, step_flops / t_step / 1e9),
    );
    row(
        "same GEMMs alone (ORT graph of the MatMuls)",
        format!("{:>10.0} samples/s  {:>6.1} GFLOP/s", batch as f64 / t_gemm, step_flops / t_gemm / 1e9),
    );
    row(
        "train step as a share of the GEMM rate",
        format!("{:>10.1} %  (median of 11 alternating rounds)", 100.0 * gemm_share),
    );

    let eval_batch = 1024;
    let mut eval = TrainStep::new(runtime, shape.clone(), eval_batch)?;
    let t_eval = seconds_per_call(budget, || eval.evaluate())?;
    row(
        "evaluation, batch 1024",
        format!(
            "{:>10.0} samples/s  {:>6.1} GFLOP/s",
            eval_batch as f64 / t_eval,
            shape.forward_flops_per_sample() * eval_batch as f64 / t_eval / 1e9
        ),
    );

    let mut config = EngineConfig::default();
    if quick {
        config.window.size = 1024;
        config.shadow.epochs = 3;
    }
    let (w, p, e) = (config.window.size, config.probes.count, config.shadow.epochs);
    let mut window = WholeWindow::new(runtime, config.clone())?;
    let t_window = seconds_per_call(Duration::ZERO, || window.run())?;
    row(&format!("whole window: {w} samples + {p} probes, {e} epochs"), format!("{t_window:>10.2} s"));
    let mut paper_losses = config.clone();
    paper_losses.shadow.losses = LossRecording::AfterEpoch;
    let mut window = WholeWindow::new(runtime, paper_losses)?;
    let t_after_epoch = seconds_per_call(Duration::ZERO, || window.run())?;
    row(
        "the same, every loss evaluated after its epoch (paper)",
        format!("{t_after_epoch:>10.2} s  (at-step {:.2}x faster)", t_after_epoch / t_window),
    );

    let mut quarantine_all = config.clone();
    quarantine_all.decision.keep_hard_clean = false;
    let mut window = WholeWindow::new(runtime, quarantine_all)?;
    let t_no_keep = seconds_per_call(Duration::ZERO, || window.run())?;
    row(
        "the same, hard clean data not kept (no neighbour search)",
        format!("{t_no_keep:>10.2} s  (keeping costs {:+.1} %)", 100.0 * (t_window / t_no_keep - 1.0)),
    );

    // The same windows through pools of 1 and 2 workers, the same number of windows for each
    // (2 per worker of the larger pool), after one warm-up round per pool.
    let windows = if quick { 2 } else { 4 };
    let mut rates = Vec::new();
    for workers in [1, 2] {
        let pooled = PooledWindows::new(runtime, config.clone(), workers)?;
        pooled.run(0, workers)?;
        let rate = pooled.run(100, windows)?;
        rates.push(rate);
        row(
            &format!("whole windows, {workers} engine worker(s), {windows} windows"),
            format!(
                "{rate:>10.0} samples/s  {:>6.1} GFLOP/s",
                rate * window_flops_per_row(&shape, &config) / 1e9
            ),
        );
    }
    row("2 workers against 1 (same windows, same run)", format!("{:>10.2} x", rates[1] / rates[0]));

    // The hard-clean rule's joint recurrence: every pair of features, so its cost grows with
    // the square of the width (16: penbased's discrete coordinates; 57: spambase; 124: the
    // widest the view takes with 250 probes).
    for (features, levels) in [(16, Some(101)), (57, None), (124, None)] {
        let rows = tabular_window(config.window.size + config.probes.count, features, levels);
        let t = seconds_per_call(budget, || {
            let codes = crate::engine::value_codes(rows.view(), config.window.size);
            std::hint::black_box(crate::engine::joint_excess(&codes, config.window.size));
            Ok(())
        })?;
        let kind = levels.map_or("continuous".to_string(), |l| format!("{l} levels"));
        row(&format!("joint recurrence, {features} features ({kind}), a window"), format!("{t:>10.3} s"));
        // Its value crowds: one pass over every feature's flagged samples (a tenth flagged).
        let samples = config.window.size;
        let groups =
            crate::engine::ValueGroups::of(crate::engine::value_codes(rows.view(), samples), samples);
        let labels: Vec<i64> = (0..samples as i64).map(|i| i % 10).collect();
        let flagged: Vec<bool> = (0..samples).map(|i| i % 10 == 3).collect();
        let t = seconds_per_call(budget, || {
            std::hint::black_box(groups.flagged_crowds(&labels, &flagged));
            Ok(())
        })?;
        row(&format!("value crowds, {features} features ({kind}), a window"), format!("{t:>10.4} s"));
    }

    for probes in [250, 2_500, 25_000] {
        let probe_rows = synthetic_trajectories(probes, 30, 5);
        let queries = synthetic_trajectories(if quick { 200 } else { 2000 }, 30, 6);
        let mut rates = Vec::new();
        for index in [IndexKind::Hnsw, IndexKind::Exact] {
            let s = scorer(&probe_rows, index);
            let t = seconds_per_call(budget, || {
                std::hint::black_box(s.score_rows(queries.view()));
                Ok(())
            })?;
            rates.push(queries.nrows() as f64 / t);
        }
        row(
            &format!("scorer k=50, {probes} probes: HNSW / exact"),
            format!("{:>10.0} / {:.0} queries/s (HNSW {:.1}x)", rates[0], rates[1], rates[0] / rates[1]),
        );
    }
    Ok(out)
}

/// `rows` random tabular rows of `features` features, each drawn from `levels` integer levels
/// or continuous.
fn tabular_window(rows: usize, features: usize, levels: Option<u32>) -> Array2<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    Array2::from_shape_fn((rows, features), |_| match levels {
        Some(l) => rng.random_range(0..l) as f32,
        None => rng.random::<f32>(),
    })
}

/// Training FLOPs per window row: a train step per epoch and per pass (the second pass trains
/// again on nearly every row), and with `shadow.losses = "after-epoch"` an evaluation too (at
/// step, only the second pass's suspects are evaluated: a few per cent, not counted).
fn window_flops_per_row(shape: &MlpShape, config: &EngineConfig) -> f64 {
    let passes = if config.shadow.second_pass { 2.0 } else { 1.0 };
    let evaluation = match config.shadow.losses {
        LossRecording::AtStep => 0.0,
        LossRecording::AfterEpoch => shape.forward_flops_per_sample(),
    };
    passes * config.shadow.epochs as f64 * (shape.train_flops_per_sample() + evaluation)
}

/// One whole-window measurement of [`scaling`]: one dimension set to `value`, the rest at
/// their defaults.
pub struct ScalingPoint {
    pub dimension: &'static str,
    pub value: usize,
    pub seconds: f64,
    pub samples_per_second: f64,
    pub gflops: f64,
}

/// The dimensions [`scaling`] varies, each with the values it tries (the default among them).
fn scaling_grid(quick: bool) -> Vec<(&'static str, Vec<usize>)> {
    if quick {
        return vec![("window.size", vec![256, 512]), ("shadow.epochs", vec![2, 4])];
    }
    vec![
        ("window.size", vec![1024, 2048, 4096, 8192]),
        ("shadow.epochs", vec![5, 10, 20]),
        ("input.features", vec![64, 256, 784, 3072]),
        ("shadow.hidden", vec![64, 256, 1024]),
        ("input.classes", vec![2, 10, 100]),
    ]
}

fn with_dimension(mut config: EngineConfig, dimension: &str, value: usize) -> EngineConfig {
    match dimension {
        "window.size" => config.window.size = value,
        "shadow.epochs" => config.shadow.epochs = value,
        "input.features" => config.input.features = value,
        "shadow.hidden" => config.shadow.hidden = vec![value],
        "input.classes" => config.input.classes = value,
        other => unreachable!("no scaling dimension {other}"),
    }
    config
}

/// How one window's time grows with each dimension of the workload, one at a time from the
/// default config (one worker; a window timed once after a warm-up window).
pub fn scaling(
    runtime: &Runtime,
    quick: bool,
    mut progress: impl FnMut(&ScalingPoint),
) -> Result<Vec<ScalingPoint>> {
    let mut base = EngineConfig::default();
    if quick {
        base.window.size = 512;
        base.shadow.epochs = 2;
    }
    let mut points = Vec::new();
    for (dimension, values) in scaling_grid(quick) {
        for value in values {
            let config = with_dimension(base.clone(), dimension, value);
            let rows = config.window.size + config.probes.count;
            let flops = window_flops_per_row(&shape_of(&config), &config) * rows as f64;
            let mut window = WholeWindow::new(runtime, config)?;
            let seconds = seconds_per_call(Duration::ZERO, || window.run())?;
            let point = ScalingPoint {
                dimension,
                value,
                seconds,
                samples_per_second: rows as f64 / seconds,
                gflops: flops / seconds / 1e9,
            };
            progress(&point);
            points.push(point);
        }
    }
    Ok(points)
}

/// The scaling table as Markdown.
pub fn scaling_table(points: &[ScalingPoint]) -> String {
    let mut out = String::from(
        "| dimension | value | window time | samples/s | GFLOP/s |\n|---|---:|---:|---:|---:|\n",
    );
    for p in points {
        out.push_str(&format!(
            "| {} | {} | {:.2} s | {:.0} | {:.1} |\n",
            p.dimension, p.value, p.seconds, p.samples_per_second, p.gflops
        ));
    }
    out
}

/// A PNG of window time against each dimension, as multiples of the smallest value tried.
pub fn scaling_plot(path: &std::path::Path, points: &[ScalingPoint]) -> Result<()> {
    use crate::eval::plots::{colour, line_chart, Chart, Series};
    let mut series: Vec<Series> = Vec::new();
    for (i, (dimension, _)) in scaling_grid(false).iter().enumerate() {
        let mine: Vec<&ScalingPoint> = points.iter().filter(|p| p.dimension == *dimension).collect();
        let Some(first) = mine.first() else { continue };
        let points = mine
            .iter()
            .map(|p| ((p.value as f64 / first.value as f64).log2(), p.seconds / first.seconds))
            .collect();
        series.push(Series {
            name: dimension.to_string(),
            colour: colour(i + 1),
            points,
            spread: None,
            dashed: false,
        });
    }
    let x_max = series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).fold(1.0, f64::max);
    let y_max = series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).fold(1.0, f64::max);
    let chart = Chart {
        title: "Window time as one dimension grows (others at their defaults)",
        x_label: "log2(value / smallest value tried)",
        y_label: "window time / time at the smallest value",
        x_range: (0.0, x_max * 1.05),
        y_range: (0.0, y_max * 1.1),
        x_ticks: None,
        vertical_line: None,
    };
    line_chart(path, &chart, &series)
}
