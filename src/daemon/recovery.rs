//! Exactly-once recovery: before newly assigned partitions (or those of an aborted window) are
//! written to, read the outputs from the committed checkpoint to their end and remember which
//! input records an earlier run already produced, and where.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rdkafka::consumer::Consumer;
use rdkafka::producer::Producer;
use rdkafka::{Offset, TopicPartitionList};

use super::intake::LoopState;
use super::{Pipeline, KAFKA_TIMEOUT};
use crate::kafka::checkpoint::{read_checkpoint_topic, scan_outputs, Checkpoint};
use crate::kafka::position::{Position, TopicPosition};

/// Recovery's state in the event loop: the partitions that must be scanned before the next
/// window is dispatched, and the scan running for them, off the event loop.
#[derive(Default)]
pub(super) struct Recovery {
    pending: HashSet<i32>,
    running: Option<tokio::task::JoinHandle<Result<Scanned>>>,
    /// Partitions were assigned while the scan ran: its result is not complete for them.
    stale: bool,
    /// After a failed scan, the next one waits until then.
    retry_at: Option<Instant>,
}

/// What one scan found, for the partitions it was started for.
pub(super) struct Scanned {
    partitions: Vec<i32>,
    already_produced: HashMap<Position, TopicPosition>,
    ends: Checkpoint,
}

impl Recovery {
    /// Nothing pending and nothing running: windows may be dispatched.
    pub(super) fn is_idle(&self) -> bool {
        self.pending.is_empty() && self.running.is_none()
    }

    pub(super) fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// When a failed scan is tried again; `None` while nothing waits for a retry.
    pub(super) fn retry_at(&self) -> Option<Instant> {
        self.retry_at.filter(|_| self.running.is_none() && !self.pending.is_empty())
    }

    /// These partitions must be scanned before anything is written for them.
    pub(super) fn require(&mut self, partitions: impl IntoIterator<Item = i32>) {
        self.pending.extend(partitions);
        if self.running.is_some() {
            self.stale = true;
        }
    }

    /// Starts the scan of the pending partitions still assigned, unless one runs or a retry
    /// waits. Called with no window in flight, so that every output written is in the scan.
    pub(super) fn start_if_due(&mut self, pipeline: &Arc<Pipeline>, assigned: &HashSet<i32>) {
        self.pending.retain(|p| assigned.contains(p));
        if self.pending.is_empty() || self.running.is_some() {
            return;
        }
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            return;
        }
        let mut partitions: Vec<i32> = self.pending.iter().copied().collect();
        partitions.sort_unstable();
        let pipeline = pipeline.clone();
        self.stale = false;
        self.running = Some(tokio::task::spawn_blocking(move || scan(&pipeline, partitions)));
    }

    /// Waits for the running scan (pending forever when none runs: a `select!` branch).
    pub(super) async fn finished(&mut self) -> Result<Scanned> {
        let Some(handle) = self.running.as_mut() else { return std::future::pending().await };
        let result = handle.await.unwrap_or_else(|e| Err(anyhow::anyhow!("the recovery scan panicked: {e}")));
        self.running = None;
        result
    }
}

/// Applies a finished scan, or schedules a retry after a failed one.
pub(super) fn settle(state: &mut LoopState, result: Result<Scanned>) {
    let recovery = &mut state.recovery;
    match result {
        Ok(_) if recovery.stale => {
            tracing::info!("partitions assigned during the recovery scan: scanning again");
        }
        Ok(scanned) => {
            recovery.retry_at = None;
            for p in &scanned.partitions {
                recovery.pending.remove(p);
            }
            apply(state, scanned);
        }
        Err(e) => {
            tracing::error!(
                error = %format!("{e:#}"),
                partitions = ?recovery.pending,
                "exactly-once recovery failed; no window is written until it succeeds (retrying in {RETRY:?})"
            );
            recovery.retry_at = Some(Instant::now() + RETRY);
        }
    }
}

const RETRY: Duration = Duration::from_secs(1);

/// Reads the outputs for `partitions` and finds what was already produced. Blocking: it runs
/// on its own thread while the event loop goes on taking records and signals.
fn scan(pipeline: &Pipeline, partitions: Vec<i32>) -> Result<Scanned> {
    let kafka = &pipeline.config.kafka;
    // Sends still queued (an aborted window's) must land before the scan, or it misses them.
    pipeline.producer.flush(KAFKA_TIMEOUT).context("flushing queued records before the recovery scan")?;
    let mut list = TopicPartitionList::new();
    for &p in &partitions {
        list.add_partition(&kafka.input_topic, p);
    }
    let committed = pipeline
        .consumer
        .committed_offsets(list, KAFKA_TIMEOUT)
        .context("reading committed offsets for recovery")?;
    // Start from the earliest checkpoint among these partitions; a partition without one
    // (never committed, metadata dropped by the broker or too large for it) means the
    // checkpoint topic, and failing that, reading the outputs whole.
    let mut start: Option<Checkpoint> = None;
    let mut complete = true;
    for element in committed.elements() {
        match Checkpoint::decode(element.metadata()) {
            Some(c) => start = Some(start.map_or(c.clone(), |s| s.earliest(&c))),
            None => complete = false,
        }
    }
    let client = kafka.client_config()?;
    let set: HashSet<i32> = partitions.iter().copied().collect();
    let (start, source) = if complete && start.is_some() {
        (start, "commit metadata")
    } else {
        let from_topic = read_checkpoint_topic(
            &client,
            &kafka.checkpoint_topic,
            &kafka.group_id,
            &kafka.input_topic,
            &set,
            KAFKA_TIMEOUT,
        )?;
        let source =
            if from_topic.is_some() { "checkpoint topic" } else { "none: reading the outputs whole" };
        (from_topic, source)
    };
    let outputs =
        [kafka.output_topic.as_str(), kafka.quarantine_topic.as_str(), kafka.dead_letter_topic.as_str()];
    let began = Instant::now();
    let mut found = scan_outputs(&client, &outputs, start.as_ref(), &kafka.input_topic, &set, KAFKA_TIMEOUT)?;
    // Sources below their partition's committed offset are never read again: forget them, so
    // that only uncommitted ones floor the next checkpoints.
    let committed_at: HashMap<i32, i64> = committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect();
    found
        .already_produced
        .retain(|input, _| committed_at.get(&input.partition).is_none_or(|&c| input.offset >= c));
    tracing::info!(
        ?partitions,
        checkpoint = source,
        scanned = found.records_scanned,
        already_produced = found.already_produced.len(),
        seconds = began.elapsed().as_secs_f64(),
        "exactly-once recovery scan done"
    );
    Ok(Scanned { partitions, already_produced: found.already_produced, ends: found.ends })
}

/// Marks what the scan found, among the partitions still assigned.
fn apply(state: &mut LoopState, scanned: Scanned) {
    let Scanned { partitions: _, mut already_produced, ends } = scanned;
    already_produced.retain(|input, _| state.assigned.contains(&input.partition));
    // Records still in hand from these partitions were read before: re-check them.
    for r in state.open.records.iter_mut() {
        if already_produced.contains_key(&r.position()) {
            r.already_produced = true;
        }
    }
    state.already_produced.extend(already_produced);
    for (topic, parts) in ends.ends {
        for (p, o) in parts {
            state.checkpoint.advance(&topic, p, o);
        }
    }
}

/// After an aborted window: drop what is buffered and read again from the committed offsets.
pub(super) fn rewind(pipeline: &Pipeline, state: &mut LoopState) {
    state.open.take();
    state.last_samples = None;
    state.positions.clear();
    let topic = &pipeline.config.kafka.input_topic;
    let mut list = TopicPartitionList::new();
    for &p in &state.assigned {
        list.add_partition(topic, p);
    }
    match tokio::task::block_in_place(|| pipeline.consumer.committed_offsets(list, KAFKA_TIMEOUT)) {
        Ok(committed) => {
            for element in committed.elements() {
                let offset = match element.offset() {
                    Offset::Offset(o) => {
                        state.positions.start(element.partition(), o);
                        Offset::Offset(o)
                    }
                    _ => Offset::Beginning,
                };
                if let Err(e) = pipeline.consumer.seek(topic, element.partition(), offset, KAFKA_TIMEOUT) {
                    tracing::warn!(partition = element.partition(), error = %e, "seeking back after an aborted window failed; the partition resumes where it was");
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "reading the committed offsets after an aborted window failed"),
    }
    if pipeline.delivery.recovers() {
        let assigned: Vec<i32> = state.assigned.iter().copied().collect();
        state.recovery.require(assigned);
    }
}
