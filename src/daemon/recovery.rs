//! Exactly-once recovery: before newly assigned partitions (or those of an aborted window) are
//! written to, read the outputs from the committed checkpoint to their end and remember which
//! input records an earlier run already produced, and where.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rdkafka::consumer::Consumer;
use rdkafka::producer::Producer;
use rdkafka::{Offset, TopicPartitionList};

use super::intake::LoopState;
use super::{Pipeline, KAFKA_TIMEOUT};
use crate::kafka::checkpoint::{read_checkpoint_topic, scan_outputs, Checkpoint};

/// Reads the outputs for `partitions` and marks what was already produced.
fn recover(pipeline: &Pipeline, state: &mut LoopState, partitions: &[i32]) -> Result<()> {
    let kafka = &pipeline.config.kafka;
    // Sends still queued (an aborted window's) must land before the scan, or it misses them.
    tokio::task::block_in_place(|| pipeline.producer.flush(KAFKA_TIMEOUT))
        .context("flushing queued records before the recovery scan")?;
    let mut list = TopicPartitionList::new();
    for &p in partitions {
        list.add_partition(&kafka.input_topic, p);
    }
    let committed = tokio::task::block_in_place(|| pipeline.consumer.committed_offsets(list, KAFKA_TIMEOUT))
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
        let from_topic = tokio::task::block_in_place(|| {
            read_checkpoint_topic(
                &client,
                &kafka.checkpoint_topic,
                &kafka.group_id,
                &kafka.input_topic,
                &set,
                KAFKA_TIMEOUT,
            )
        })?;
        let source =
            if from_topic.is_some() { "checkpoint topic" } else { "none: reading the outputs whole" };
        (from_topic, source)
    };
    let outputs =
        [kafka.output_topic.as_str(), kafka.quarantine_topic.as_str(), kafka.dead_letter_topic.as_str()];
    let began = Instant::now();
    let mut found = tokio::task::block_in_place(|| {
        scan_outputs(&client, &outputs, start.as_ref(), &kafka.input_topic, &set, KAFKA_TIMEOUT)
    })?;
    // Sources below their partition's committed offset are never read again: forget them, so
    // that only uncommitted ones floor the next checkpoints.
    let committed_at: std::collections::HashMap<i32, i64> = committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect();
    found.already_produced.retain(|(p, o), _| committed_at.get(p).is_none_or(|&c| *o >= c));
    tracing::info!(
        ?partitions,
        checkpoint = source,
        scanned = found.records_scanned,
        already_produced = found.already_produced.len(),
        seconds = began.elapsed().as_secs_f64(),
        "exactly-once recovery scan done"
    );
    // Records still in hand from these partitions were read before: re-check them.
    for r in state.open.records.iter_mut() {
        if found.already_produced.contains_key(&(r.partition, r.offset)) {
            r.already_produced = true;
        }
    }
    state.already_produced.extend(found.already_produced);
    for (topic, parts) in found.ends.ends {
        for (p, o) in parts {
            state.checkpoint.advance(&topic, p, o);
        }
    }
    Ok(())
}

/// After an aborted window: drop what is buffered and read again from the committed offsets.
pub fn rewind(pipeline: &Pipeline, state: &mut LoopState) {
    state.open.take();
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
        state.recovery_pending.extend(state.assigned.iter().copied());
        try_recovery(pipeline, state);
    }
}

/// Runs the pending recovery; on failure it stays pending and no window is dispatched.
pub fn try_recovery(pipeline: &Pipeline, state: &mut LoopState) {
    let partitions: Vec<i32> =
        state.recovery_pending.iter().copied().filter(|p| state.assigned.contains(p)).collect();
    if partitions.is_empty() {
        state.recovery_pending.clear();
        return;
    }
    match recover(pipeline, state, &partitions) {
        Ok(()) => state.recovery_pending.clear(),
        Err(e) => tracing::error!(
            error = %format!("{e:#}"),
            ?partitions,
            "exactly-once recovery failed; no window is written until it succeeds (retrying)"
        ),
    }
}

pub async fn retry_recovery(pipeline: &Pipeline, state: &mut LoopState) {
    tokio::time::sleep(Duration::from_secs(1)).await;
    try_recovery(pipeline, state);
}
