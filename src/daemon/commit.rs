//! One window from decided to committed: the engine's decisions, every output acknowledged,
//! then the input offsets committed as the delivery mode says (with the checkpoint as
//! metadata, or inside a transaction), then the window's metrics.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use rdkafka::consumer::Consumer;
use rdkafka::Offset;
use tokio::sync::oneshot;

use super::sink::{self, Routed};
use super::window::InputRecord;
use super::Pipeline;
use crate::data::LabelledSamples;
use crate::decision::{Action, DecisionConfig};
use crate::engine::pool::stopped_mid_window;
use crate::engine::WindowOutcome;
use crate::kafka::checkpoint::Checkpoint;
use crate::kafka::delivery::{Clients, WindowEnd};
use crate::kafka::position::TopicPosition;
use crate::kafka::Destination;
use crate::metrics::Ended;

/// A window as dispatched: its records, the decision in force, and where the outputs stood.
pub(super) struct WindowJob {
    /// Dispatch order: names the window in logs and headers and seeds its shadow.
    pub window_id: u64,
    pub records: Vec<InputRecord>,
    /// What of the records the engine decides; `None` when nothing is (all undecodable,
    /// already produced, or passthrough).
    pub to_decide: Option<ToDecide>,
    /// The samples of the window dispatched before this one, which the engine fits beside this
    /// window's (`engine::input_signature`); `None` for the first window of a run or of a re-read.
    pub earlier: Option<Arc<LabelledSamples>>,
    pub decision: DecisionConfig,
    pub outputs_before: OutputsBefore,
    /// Hands this window's checkpoint to the next one once this one is committed; dropped
    /// unsent if this one fails, which aborts the next one too.
    pub handoff: oneshot::Sender<Checkpoint>,
    /// Output records of an earlier run that recovery found and that stay uncommitted after
    /// this window: the committed checkpoint must not pass them (or a second crash would
    /// write their sources again).
    pub floor: Vec<TopicPosition>,
}

/// The outputs' end offsets before a window: known at dispatch when no window is ahead of it,
/// else handed over by the window ahead once that one is committed. Windows are decided in
/// parallel but written and committed one after the other, in input order.
pub(super) enum OutputsBefore {
    Known(Checkpoint),
    AfterWindow(oneshot::Receiver<Checkpoint>),
}

/// What a committed window leaves behind.
pub(super) struct Committed {
    pub checkpoint: Checkpoint,
    /// Input partition -> the offset committed.
    pub offsets: BTreeMap<i32, i64>,
}

/// Decides one window, writes every record to exactly one topic, waits for all acks, then
/// commits the input offsets (with the output checkpoint, or inside a transaction).
pub(super) async fn process_window(pipeline: Arc<Pipeline>, job: WindowJob) -> Result<Committed> {
    let WindowJob { window_id, records, to_decide, earlier, decision, outputs_before, handoff, floor } = job;
    let started = Instant::now();
    let config = &pipeline.config;
    let metrics = &pipeline.metrics;
    let (to_decide, outcome) = match to_decide {
        None => (Vec::new(), None),
        Some(ToDecide { rows, samples }) => {
            let training = Instant::now();
            let outcome = pipeline
                .engines
                .submit(samples, earlier, window_id, decision)
                .await
                .map_err(|_| stopped_mid_window())??;
            metrics.training_seconds.observe(training.elapsed().as_secs_f64());
            (rows, Some(outcome))
        }
    };
    let mut checkpoint = match outputs_before {
        OutputsBefore::Known(checkpoint) => checkpoint,
        OutputsBefore::AfterWindow(ahead) => ahead.await.map_err(|_| {
            anyhow!("the window before this one was aborted, so this one is not written either")
        })?,
    };
    let mut routed = sink::route(&config.kafka, &records, &to_decide, outcome.as_ref(), window_id);

    let delivery = &pipeline.delivery;
    delivery.begin(&pipeline.producer)?;
    let delivered = match sink::produce_all(&pipeline.producer, &config.kafka, &mut routed).await {
        Ok(d) => d,
        Err(e) => {
            delivery.abort(&pipeline.producer, metrics);
            return Err(e);
        }
    };
    for written in &delivered {
        checkpoint.advance(&written.topic, written.partition, written.offset + 1);
    }
    let committed_checkpoint = checkpoint.floored(floor);
    let next = next_offsets(&records);
    let clients =
        Clients { consumer: &pipeline.consumer, producer: &pipeline.producer, kafka: &config.kafka, metrics };
    delivery.commit(clients, WindowEnd { next_offsets: &next, checkpoint: &committed_checkpoint }).await?;
    // The next window may be written now; nobody waits when this one is the last in flight.
    let _ = handoff.send(checkpoint.clone());
    record_window_metrics(&pipeline, &routed, &records, outcome.as_ref(), started);
    spawn_lag_update(&pipeline);
    tracing::info!(
        window = window_id,
        records = records.len(),
        decided = to_decide.len(),
        threshold = outcome.as_ref().map(|o| o.threshold.value),
        seconds = format!("{:.2}", started.elapsed().as_secs_f64()),
        "window committed"
    );
    Ok(Committed { checkpoint, offsets: next })
}

/// The records of a window the engine decides, and their samples.
pub(super) struct ToDecide {
    /// Indices into the window's records.
    pub rows: Vec<usize>,
    pub samples: Arc<LabelledSamples>,
}

impl ToDecide {
    /// The decodable records not produced by an earlier run; `None` when there are none or the
    /// daemon passes everything through undecided.
    pub(super) fn of(records: &[InputRecord], passthrough: bool, features: usize) -> Result<Option<Self>> {
        let rows: Vec<usize> = (0..records.len())
            .filter(|&i| !passthrough && records[i].sample.is_ok() && !records[i].already_produced)
            .collect();
        if rows.is_empty() {
            return Ok(None);
        }
        let samples = Arc::new(samples_of(records, &rows, features)?);
        Ok(Some(Self { rows, samples }))
    }
}

fn samples_of(records: &[InputRecord], indices: &[usize], features: usize) -> Result<LabelledSamples> {
    let mut flat = Vec::with_capacity(indices.len() * features);
    let mut labels = Vec::with_capacity(indices.len());
    for &i in indices {
        let sample = records[i].sample.as_ref().expect("only decodable records are decided");
        flat.extend_from_slice(&sample.features);
        labels.push(sample.label);
    }
    LabelledSamples::new(ndarray::Array2::from_shape_vec((indices.len(), features), flat)?, labels)
}

/// Per input partition, one past the last record of the window: the offset to commit.
pub(super) fn next_offsets(records: &[InputRecord]) -> BTreeMap<i32, i64> {
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    for r in records {
        let e = next.entry(r.partition).or_insert(r.offset + 1);
        *e = (*e).max(r.offset + 1);
    }
    next
}

fn record_window_metrics(
    pipeline: &Pipeline,
    routed: &[Routed<'_>],
    records: &[InputRecord],
    outcome: Option<&WindowOutcome>,
    started: Instant,
) {
    let m = &pipeline.metrics;
    for r in routed {
        match r.destination {
            Destination::Forward => m.forwarded.inc(),
            Destination::Quarantine => {
                m.quarantined.inc();
                if let Ok(s) = &r.record.sample {
                    m.quarantined_by_label.with_label_values(&[&s.label.to_string()]).inc();
                }
            }
            Destination::DeadLetter => {
                m.dead_lettered.with_label_values(&[r.rejection.unwrap_or("too_large")]).inc()
            }
        }
    }
    m.skipped_already_produced.inc_by(records.iter().filter(|r| r.already_produced).count() as u64);
    if let Some(o) = outcome {
        for d in &o.decisions {
            m.score.observe(d.score as f64);
        }
        m.flagged_observed
            .inc_by(o.decisions.iter().filter(|d| d.flagged && d.action == Action::Forward).count() as u64);
        m.kept_hard_clean.inc_by(o.decisions.iter().filter(|d| d.kept_hard_clean).count() as u64);
        m.threshold.set(o.threshold.value as f64);
        for (label, share) in o.probes_above_threshold_by_label() {
            m.probes_above_threshold.with_label_values(&[&label.to_string()]).set(share);
        }
        m.shadow_learning_rate.set(o.learning_rate as f64);
        if let Some(pace) = o.pace {
            m.shadow_first_epoch_pace.set(pace);
        }
        if o.rate_recheck.is_some() {
            m.windows_rate_rechosen.inc();
        }
        if let Some(outside) = &o.out_of_range {
            let count = outside.iter().filter(|&&o| o).count();
            m.out_of_range.inc_by(count as u64);
            m.window_out_of_range_share.set(count as f64 / outside.len().max(1) as f64);
        }
    }
    m.window_size.set(records.len() as i64);
    m.window_seconds.observe(started.elapsed().as_secs_f64());
    m.windows.inc(Ended::Committed);
}

/// Reads the consumer lag on a blocking thread (one broker round trip per partition), at most
/// one read at a time: the window's commit does not wait for it.
fn spawn_lag_update(pipeline: &Arc<Pipeline>) {
    if pipeline.lag_reading.swap(true, std::sync::atomic::Ordering::AcqRel) {
        return;
    }
    let pipeline = pipeline.clone();
    tokio::task::spawn_blocking(move || {
        update_lag(&pipeline);
        pipeline.lag_reading.store(false, std::sync::atomic::Ordering::Release);
    });
}

/// Consumer lag over the assigned partitions: high watermark minus position.
fn update_lag(pipeline: &Pipeline) {
    let consumer = &pipeline.consumer;
    let Ok(positions) = consumer.position() else { return };
    let mut lag = 0i64;
    for e in positions.elements() {
        let Ok((_, high)) = consumer.fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(5))
        else {
            return;
        };
        if let Offset::Offset(pos) = e.offset() {
            lag += (high - pos).max(0);
        }
    }
    pipeline.metrics.consumer_lag.set(lag);
}
