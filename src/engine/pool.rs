//! Several engines, each on its own thread with its own shadow model, deciding windows at
//! once. A window's seed comes from its sequence number, not from the worker that takes it,
//! so the decisions are the same whatever the number of workers.
//!
//! Under `shadow.learning_rate = "auto"` the first window large enough to calibrate on is
//! calibrated by the worker that takes it; every window submitted after it waits for that
//! choice, so the rate, like the seeds, does not depend on which worker runs a window.
//!
//! The pool orders nothing: whoever submits keeps the windows in input order (the daemon
//! commits them in order; the bench only counts them).

use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};

use anyhow::{anyhow, Result};
use serde::Deserialize;
use tokio::sync::oneshot;

use super::calibration::Calibration;
use super::{log_calibration, Engine, WindowOutcome};
use crate::data::LabelledSamples;
use crate::decision::DecisionConfig;
use crate::engine::EngineConfig;
use crate::shadow::Runtime;
use crate::validation::{ensure, ConfigError};

/// `[engine]`: how many windows are trained at once.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// Engine workers, one window and one core each (ONNX Runtime runs each with
    /// `shadow.intra_threads`). Default: the cores this process may use. 1 is one window at
    /// a time.
    pub workers: usize,
}

/// The most workers a config may ask for: each holds a shadow model and a window.
const MAX_WORKERS: usize = 256;

impl Default for PoolConfig {
    fn default() -> Self {
        Self { workers: available_cores() }
    }
}

impl PoolConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        ensure(
            (1..=MAX_WORKERS).contains(&self.workers),
            "engine.workers",
            format!(
                "must be 1 to {MAX_WORKERS} (one window trained per worker at once), not {}",
                self.workers
            ),
        )
    }
}

/// The cores this process may use (its CPU affinity or quota), at least 1.
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

struct Job {
    samples: Arc<LabelledSamples>,
    /// The stream's window before this one, for the input signature's fit.
    earlier: Option<Arc<LabelledSamples>>,
    sequence: u64,
    decision: DecisionConfig,
    learning_rate: RateSource,
    reply: oneshot::Sender<Result<WindowOutcome>>,
}

/// Where a job's worker gets the learning rate from, decided at submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RateSource {
    /// As the engine has it (a fixed rate, or `auto` before any window could calibrate).
    Engine,
    /// This window is the one to calibrate on.
    Calibrate,
    /// A window submitted before this one is calibrating: wait for its choice.
    Await,
}

/// The pool's one calibration, shared by its workers.
#[derive(Default)]
struct SharedRate {
    state: Mutex<RateState>,
    chosen: Condvar,
}

#[derive(Default)]
enum RateState {
    /// No window has been picked for calibration yet.
    #[default]
    Unclaimed,
    Pending,
    Chosen(Calibration),
    /// The calibrating window failed: each waiting worker calibrates on its own window.
    Failed,
}

impl SharedRate {
    /// The source for the next submitted window.
    fn source_for(&self, engine_calibrates: bool, samples: &LabelledSamples) -> RateSource {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match *state {
            RateState::Unclaimed if engine_calibrates && Engine::can_calibrate_on(samples) => {
                *state = RateState::Pending;
                RateSource::Calibrate
            }
            RateState::Pending | RateState::Chosen(_) => RateSource::Await,
            RateState::Unclaimed | RateState::Failed => RateSource::Engine,
        }
    }

    fn publish(&self, calibration: Option<Calibration>) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        *state = calibration.map_or(RateState::Failed, RateState::Chosen);
        self.chosen.notify_all();
    }

    /// Blocks until the calibrating window has chosen; `None` if it failed.
    fn wait(&self) -> Option<Calibration> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match &*state {
                RateState::Chosen(calibration) => return Some(calibration.clone()),
                RateState::Failed | RateState::Unclaimed => return None,
                RateState::Pending => state = self.chosen.wait(state).unwrap_or_else(|e| e.into_inner()),
            }
        }
    }
}

/// A window submitted to the pool; await it (async) or [`Pending::wait`] for it (blocking).
pub type Pending = oneshot::Receiver<Result<WindowOutcome>>;

/// A handle to the worker threads; they stop when every handle is dropped.
#[derive(Clone)]
pub struct EnginePool {
    jobs: mpsc::Sender<Job>,
    workers: usize,
    /// Whether the engines start without a learning rate (`auto`).
    calibrates: bool,
    rate: Arc<SharedRate>,
}

impl EnginePool {
    /// Opens `workers` engines (each its own ONNX Runtime sessions and weights) and starts a
    /// thread for each.
    pub fn start(
        runtime: &Runtime,
        config: EngineConfig,
        probes: LabelledSamples,
        workers: usize,
    ) -> Result<Self> {
        let engines = (0..workers.max(1))
            .map(|_| Engine::new(runtime, config.clone(), probes.clone()))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self::from_engines(engines))
    }

    /// Starts a thread per engine; all of them take jobs from one queue.
    pub fn from_engines(engines: Vec<Engine>) -> Self {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        let workers = engines.len();
        let calibrates = engines.iter().any(Engine::needs_calibration);
        let rate = Arc::new(SharedRate::default());
        for (i, engine) in engines.into_iter().enumerate() {
            let queue = queue.clone();
            let rate = rate.clone();
            std::thread::Builder::new()
                .name(format!("lossgate-engine-{i}"))
                .spawn(move || serve(engine, &queue, &rate))
                .expect("spawning an engine thread");
        }
        Self { jobs, workers, calibrates, rate }
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Queues window number `sequence`, which followed `earlier` in the stream, under
    /// `decision`; the first free worker takes it. The submitter hands over the window before
    /// (not the pool, which may take windows out of order), so a window's decisions do not depend
    /// on which worker ran the one before it.
    pub fn submit(
        &self,
        samples: Arc<LabelledSamples>,
        earlier: Option<Arc<LabelledSamples>>,
        sequence: u64,
        decision: DecisionConfig,
    ) -> Pending {
        let (reply, answer) = oneshot::channel();
        let learning_rate = self.rate.source_for(self.calibrates, &samples);
        // A send fails only once every worker thread has ended; the dropped reply then tells
        // the submitter.
        let _ = self.jobs.send(Job { samples, earlier, sequence, decision, learning_rate, reply });
        answer
    }
}

/// What a dropped reply means to whoever waits on a window.
pub fn stopped_mid_window() -> anyhow::Error {
    anyhow!("the engine worker stopped before finishing the window (see the log for why)")
}

/// Blocks until a submitted window is decided.
pub fn wait(pending: Pending) -> Result<WindowOutcome> {
    pending.blocking_recv().map_err(|_| stopped_mid_window())?
}

fn serve(mut engine: Engine, queue: &Mutex<mpsc::Receiver<Job>>, rate: &SharedRate) {
    loop {
        // The lock is held only while waiting for the next job, never while training.
        let job = match queue.lock().unwrap_or_else(|e| e.into_inner()).recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        let result = take_learning_rate(&mut engine, job.learning_rate, &job.samples, rate)
            .and_then(|_| engine.set_decision(job.decision))
            .and_then(|_| engine.process_numbered(&job.samples, job.earlier.as_deref(), job.sequence));
        let _ = job.reply.send(result);
    }
}

/// Calibrates on this job's window, or waits for the window that does, as the job says.
fn take_learning_rate(
    engine: &mut Engine,
    source: RateSource,
    samples: &LabelledSamples,
    rate: &SharedRate,
) -> Result<()> {
    match source {
        RateSource::Engine => Ok(()),
        RateSource::Calibrate => {
            let calibration = engine.calibrate(samples);
            rate.publish(calibration.as_ref().ok().cloned());
            log_calibration(&calibration?);
            Ok(())
        }
        RateSource::Await if engine.needs_calibration() => match rate.wait() {
            Some(calibration) => engine.adopt(&calibration),
            None => Ok(()),
        },
        RateSource::Await => Ok(()),
    }
}
