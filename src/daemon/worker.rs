//! The engine on its own thread: shadow training takes seconds, so it never runs on the async
//! runtime, and the consumer keeps polling (and the next window keeps filling) meanwhile.

use anyhow::{anyhow, Result};
use tokio::sync::oneshot;

use crate::data::LabelledSamples;
use crate::decision::DecisionConfig;
use crate::engine::{Engine, WindowOutcome};

struct Job {
    samples: LabelledSamples,
    decision: DecisionConfig,
    reply: oneshot::Sender<Result<WindowOutcome>>,
}

/// A handle to the engine thread.
#[derive(Clone)]
pub struct EngineWorker {
    jobs: std::sync::mpsc::Sender<Job>,
}

impl EngineWorker {
    pub fn spawn(mut engine: Engine) -> Self {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("lossgate-engine".into())
            .spawn(move || {
                for job in queue {
                    let result = engine.set_decision(job.decision).and_then(|_| engine.process(&job.samples));
                    let _ = job.reply.send(result);
                }
            })
            .expect("spawning the engine thread");
        Self { jobs }
    }

    /// Runs one window with the decision section in force now.
    pub async fn process(&self, samples: LabelledSamples, decision: DecisionConfig) -> Result<WindowOutcome> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { samples, decision, reply })
            .map_err(|_| anyhow!("the engine thread has stopped"))?;
        answer.await.map_err(|_| anyhow!("the engine thread stopped mid-window"))?
    }
}
