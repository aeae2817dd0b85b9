//! The event loop: records in, rebalances, read positions and gaps, back-pressure, and up to
//! `engine.workers` windows in flight, committed in input order.
//!
//! Back-pressure is not polling: while every worker is busy and the next window is full, the
//! loop stops taking records and librdkafka stops fetching once `queued.max.messages.kbytes`
//! is prefetched. Nothing is paused and resumed, so the consumer never seeks (a seek into a
//! record batch is where tansu 0.6.0 skips records).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{oneshot, watch};

use super::commit::{self, Committed, OutputsBefore, ToDecide, WindowJob};
use super::gaps::{Arrival, ReadPositions};
use super::http::Readiness;
use super::recovery::{self, rewind, Recovery};
use super::window::{InputRecord, OpenWindow};
use super::{Pipeline, RebalanceEvent, KAFKA_TIMEOUT};
use crate::data::LabelledSamples;
use crate::decision::DecisionConfig;
use crate::kafka::checkpoint::Checkpoint;
use crate::kafka::position::{Position, TopicPosition};
use crate::kafka::GapPolicy;
use crate::metrics::{Ended, Gap};

type WindowTask = tokio::task::JoinHandle<Result<Committed>>;

/// The event loop's state besides the pipeline.
pub(super) struct LoopState {
    pub open: OpenWindow,
    pub assigned: HashSet<i32>,
    /// Input records recovery found already produced, and where; kept until they are
    /// committed, so that no committed checkpoint passes them.
    pub already_produced: HashMap<Position, TopicPosition>,
    pub checkpoint: Checkpoint,
    pub positions: ReadPositions,
    /// Exactly-once recovery: partitions to scan before the next window is dispatched
    /// (dispatching first could produce records twice), and the scan running.
    pub recovery: Recovery,
    /// Rebalance events taken off the channel by `select!`, in order.
    pending_events: Vec<RebalanceEvent>,
    /// The number of the next window dispatched.
    next_window: u64,
    /// The last window dispatched hands its checkpoint over here once it is committed.
    handoff: Option<oneshot::Receiver<Checkpoint>>,
    /// The samples of the last window dispatched with any: the next window's earlier rows.
    /// Cleared when windows are re-read, whose predecessor is then gone.
    pub last_samples: Option<Arc<LabelledSamples>>,
}

pub(super) async fn run(
    pipeline: Arc<Pipeline>,
    mut events: tokio::sync::mpsc::UnboundedReceiver<RebalanceEvent>,
    decision_rx: watch::Receiver<DecisionConfig>,
    readiness: Arc<Readiness>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let config = &pipeline.config;
    let rules = config.kafka.decode_rules(&config.input);
    let mut state = LoopState {
        open: OpenWindow::new(config.window.size, config.window.max_wait),
        assigned: HashSet::new(),
        already_produced: HashMap::new(),
        checkpoint: Checkpoint::default(),
        positions: ReadPositions::default(),
        recovery: Recovery::default(),
        pending_events: Vec::new(),
        next_window: 0,
        handoff: None,
        last_samples: None,
    };
    let workers = pipeline.engines.workers();
    // Oldest first; at most `workers`, plus the open window: `workers + 1` windows held.
    let mut in_flight: VecDeque<WindowTask> = VecDeque::new();
    tokio::pin!(shutdown);
    loop {
        handle_rebalances(&pipeline, &mut events, &mut state, &readiness);
        if in_flight.is_empty() {
            state.recovery.start_if_due(&pipeline, &state.assigned);
        }
        let worker_free = in_flight.len() < workers;
        // Nothing is dispatched while a recovery scan is pending or running.
        let can_dispatch = worker_free && state.recovery.is_idle();
        if can_dispatch && state.open.is_due(Instant::now()) {
            let task = dispatch(&pipeline, &mut state, !in_flight.is_empty(), decision_rx.borrow().clone());
            in_flight.push_back(task);
            continue;
        }
        // While recovery is pending no record is taken either: one taken before the scan ends
        // would be counted into the window as new when it may be one already produced.
        let taking = state.recovery.is_idle() && (worker_free || !state.open.is_full());
        let deadline = state.open.deadline();
        let (scanning, retry_at) = (state.recovery.is_running(), state.recovery.retry_at());
        tokio::select! {
            biased;
            _ = &mut shutdown => {
                tracing::info!("shutting down: finishing the window in flight");
                return finish_in_flight(in_flight, config.delivery.shutdown_grace, &state).await;
            }
            done = async { in_flight.front_mut().expect("guarded").await }, if !in_flight.is_empty() => {
                in_flight.pop_front();
                match done.map_err(|e| anyhow!("window task panicked: {e}"))? {
                    Ok(committed) => settle(&mut state, committed),
                    Err(e) => {
                        tracing::error!(error = %format!("{e:#}"), "window aborted: nothing of it committed; re-reading it");
                        // The windows behind it wait for it to be written: none of them has
                        // written anything, and all are re-read with it.
                        let behind = in_flight.len();
                        for task in in_flight.drain(..) {
                            task.abort();
                        }
                        state.handoff = None;
                        if behind > 0 {
                            tracing::info!(windows = behind, "windows behind the aborted one dropped unwritten; re-reading them too");
                        }
                        pipeline.metrics.windows.inc_by(Ended::Aborted, 1 + behind as u64);
                        // Partitions revoked meanwhile are not sought back.
                        handle_rebalances(&pipeline, &mut events, &mut state, &readiness);
                        rewind(&pipeline, &mut state);
                    }
                }
            }
            message = pipeline.consumer.recv(), if taking => {
                readiness.broker_reachable.store(true, Ordering::Relaxed);
                handle_rebalances(&pipeline, &mut events, &mut state, &readiness);
                match message {
                    Ok(m) => {
                        let (partition, offset) = (m.partition(), m.offset());
                        if !take(&pipeline, &mut state, partition, offset) {
                            continue;
                        }
                        pipeline.metrics.records_in.inc();
                        let mut record = InputRecord::from_message(&m, &rules);
                        record.already_produced = state.already_produced.contains_key(&Position { partition, offset });
                        state.open.push(record);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "Kafka consumer error; retrying");
                        readiness.broker_reachable.store(false, Ordering::Relaxed);
                    }
                }
            }
            scanned = state.recovery.finished(), if scanning => recovery::settle(&mut state, scanned),
            _ = sleep_until(deadline), if deadline.is_some() && can_dispatch => {}
            _ = sleep_until(retry_at), if retry_at.is_some() => {}
            // Wakes the loop for rebalances while no record arrives; handled at the top.
            Some(event) = events.recv() => state.pending_events.push(event),
        }
    }
}

/// Closes the open window and starts deciding it; `behind_another`: a window dispatched
/// earlier is still in flight, and this one is written after it.
fn dispatch(
    pipeline: &Arc<Pipeline>,
    state: &mut LoopState,
    behind_another: bool,
    decision: DecisionConfig,
) -> WindowTask {
    let records = state.open.take();
    let floor = uncommitted_after(&state.already_produced, &commit::next_offsets(&records));
    let outputs_before = match state.handoff.take() {
        Some(ahead) if behind_another => OutputsBefore::AfterWindow(ahead),
        _ => OutputsBefore::Known(state.checkpoint.clone()),
    };
    let (handoff, next) = oneshot::channel();
    state.handoff = Some(next);
    let window_id = state.next_window;
    state.next_window += 1;
    let to_decide = match ToDecide::of(&records, pipeline.passthrough, pipeline.config.input.features) {
        Ok(to_decide) => to_decide,
        // Fails the window like any failure in it: nothing written, the handoff dropped (so the
        // next window is not written either), all re-read.
        Err(e) => return tokio::spawn(async move { Err(e) }),
    };
    let earlier = match &to_decide {
        Some(this) => state.last_samples.replace(this.samples.clone()),
        None => state.last_samples.clone(),
    };
    let job = WindowJob { window_id, records, to_decide, earlier, decision, outputs_before, handoff, floor };
    let in_flight = pipeline.gate.enter();
    let p = pipeline.clone();
    tokio::spawn(async move {
        let _in_flight = in_flight;
        commit::process_window(p, job).await
    })
}

/// Where the found records that stay uncommitted once `next` is committed were written: the
/// committed checkpoint must not pass them, or a crash before they are committed would make
/// the next recovery miss them and write their sources again.
fn uncommitted_after(
    already_produced: &HashMap<Position, TopicPosition>,
    next: &std::collections::BTreeMap<i32, i64>,
) -> Vec<TopicPosition> {
    already_produced
        .iter()
        .filter(|(input, _)| next.get(&input.partition).is_none_or(|&committed| input.offset >= committed))
        .map(|(_, position)| position.clone())
        .collect()
}

/// A committed window: its checkpoint continues, and what recovery found below the committed
/// offsets no longer floors the checkpoint.
fn settle(state: &mut LoopState, committed: Committed) {
    state.checkpoint = committed.checkpoint;
    state
        .already_produced
        .retain(|input, _| committed.offsets.get(&input.partition).is_none_or(|&c| input.offset >= c));
}

/// Whether to take the record at `offset`: not a re-delivery, not past a gap that stopped its
/// partition. Moves the read position when it does.
fn take(pipeline: &Pipeline, state: &mut LoopState, partition: i32, offset: i64) -> bool {
    match state.positions.classify(partition, offset) {
        Arrival::InOrder => {}
        Arrival::Repeated { expected } => {
            tracing::debug!(partition, offset, expected, "record delivered again by the broker; ignored");
            pipeline.metrics.redelivered.inc();
            return false;
        }
        // Taken again once the partition restarts from its committed offset.
        Arrival::Stopped => return false,
        Arrival::Gap { expected } => {
            if !take_past_gap(pipeline, state, partition, expected, offset) {
                return false;
            }
        }
    }
    state.positions.take(partition, offset);
    true
}

/// Offsets `expected..got` of `partition` were not delivered. Explained (retention, or a second
/// read shows no record there): carry on. Unexplained: under `gap_policy = "stop"` the
/// partition stops at `expected` and nothing past it is committed; under `"skip"`, carry on.
fn take_past_gap(
    pipeline: &Pipeline,
    state: &mut LoopState,
    partition: i32,
    expected: i64,
    got: i64,
) -> bool {
    let kafka = &pipeline.config.kafka;
    let gaps = &pipeline.metrics.input_gaps;
    let cause = tokio::task::block_in_place(|| explain_gap(pipeline, partition, expected, got));
    match (cause, kafka.gap_policy) {
        (Ok(why), _) => {
            tracing::info!(
                partition,
                expected,
                got,
                why,
                "offsets without records in the input; carrying on"
            );
            gaps.inc(Gap::Explained);
            true
        }
        (Err(why), GapPolicy::Skip) => {
            tracing::warn!(
                partition,
                expected,
                got,
                why,
                "records never delivered by the broker; skipped (kafka.gap_policy = \"skip\")"
            );
            gaps.inc(Gap::Skipped);
            true
        }
        (Err(why), GapPolicy::Stop) => {
            tracing::error!(
                partition,
                expected,
                got,
                why,
                "the broker skipped records: partition stopped, nothing past offset {expected} is committed. \
                 tansu 0.6.0 does this with batching producers: use a broker that returns whole batches \
                 (tansu after 0.6.0, Apache Kafka, Redpanda) and restart; set kafka.gap_policy = \"skip\" \
                 only if losing these records is acceptable"
            );
            gaps.inc(Gap::Stopped);
            state.positions.stop(partition, expected);
            pipeline.metrics.partitions_stopped.set(state.positions.stopped_count() as i64);
            let mut list = TopicPartitionList::new();
            list.add_partition(&kafka.input_topic, partition);
            if let Err(e) = pipeline.consumer.pause(&list) {
                tracing::warn!(partition, error = %e, "pausing a stopped partition failed; its records are dropped unread");
            }
            false
        }
    }
}

/// Why `expected..got` holds no readable record (`Ok`), or why that could not be shown (`Err`).
fn explain_gap(pipeline: &Pipeline, partition: i32, expected: i64, got: i64) -> Result<&'static str, String> {
    let kafka = &pipeline.config.kafka;
    let (low, _) = pipeline
        .consumer
        .fetch_watermarks(&kafka.input_topic, partition, KAFKA_TIMEOUT)
        .map_err(|e| format!("reading the partition's offsets failed: {e}"))?;
    if got <= low {
        return Ok("deleted by retention");
    }
    // Read again from the last record taken (known to exist): a faithful broker returns it and
    // then `got`; one that skips returns something later.
    let from = if expected > low { expected - 1 } else { expected };
    let client = kafka.client_config().map_err(|e| e.to_string())?;
    let read_committed = pipeline.delivery.reads_committed();
    let seen = crate::kafka::offsets_from(&client, &kafka.input_topic, partition, from, 2, read_committed)
        .map_err(|e| format!("reading the gap again failed: {e:#}"))?;
    let faithful = if from < expected { seen == [from, got] } else { seen.first() == Some(&got) };
    if faithful {
        Ok("no record there (compaction or transaction markers)")
    } else {
        Err(format!("a second read from offset {from} returned offsets {seen:?}"))
    }
}

fn handle_rebalances(
    pipeline: &Pipeline,
    events: &mut tokio::sync::mpsc::UnboundedReceiver<RebalanceEvent>,
    state: &mut LoopState,
    readiness: &Readiness,
) {
    let mut queued: Vec<RebalanceEvent> = std::mem::take(&mut state.pending_events);
    while let Ok(event) = events.try_recv() {
        queued.push(event);
    }
    for event in queued {
        match event {
            RebalanceEvent::Revoked(partitions) => {
                tracing::info!(
                    ?partitions,
                    "partitions revoked: their open records are dropped and re-read by the next owner"
                );
                state.open.drop_partitions(&partitions);
                for p in &partitions {
                    state.assigned.remove(p);
                }
                state.already_produced.retain(|input, _| !partitions.contains(&input.partition));
                state.positions.forget(&partitions);
                pipeline.metrics.partitions_stopped.set(state.positions.stopped_count() as i64);
            }
            RebalanceEvent::Assigned(partitions) => {
                tracing::info!(?partitions, "partitions assigned");
                state.assigned.extend(&partitions);
                start_positions(pipeline, state, &partitions);
                if pipeline.delivery.recovers() && !partitions.is_empty() {
                    state.recovery.require(partitions.iter().copied());
                }
            }
        }
        readiness.partitions_assigned.store(!state.assigned.is_empty(), Ordering::Relaxed);
    }
}

/// Where reading of newly assigned partitions starts: the committed offset, or the first one
/// the partition holds; a record arriving past it is a gap. A partition stopped at a gap by an
/// earlier owner of this process is resumed here.
fn start_positions(pipeline: &Pipeline, state: &mut LoopState, partitions: &[i32]) {
    if partitions.is_empty() {
        return;
    }
    let topic = &pipeline.config.kafka.input_topic;
    let mut list = TopicPartitionList::new();
    for &p in partitions {
        list.add_partition(topic, p);
    }
    let _ = pipeline.consumer.resume(&list);
    let committed = match tokio::task::block_in_place(|| {
        pipeline.consumer.committed_offsets(list, KAFKA_TIMEOUT)
    }) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "reading committed offsets failed: gaps at the start of these partitions go unnoticed");
            return;
        }
    };
    for element in committed.elements() {
        let start = match element.offset() {
            Offset::Offset(o) => Some(o),
            _ => tokio::task::block_in_place(|| {
                pipeline
                    .consumer
                    .fetch_watermarks(topic, element.partition(), KAFKA_TIMEOUT)
                    .ok()
                    .map(|(low, _)| low)
            }),
        };
        if let Some(offset) = start {
            state.positions.start(element.partition(), offset);
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// Lets the windows in flight finish, in order, within `grace` in all.
async fn finish_in_flight(in_flight: VecDeque<WindowTask>, grace: Duration, state: &LoopState) -> Result<()> {
    if !state.open.is_empty() {
        tracing::info!(
            records = state.open.records.len(),
            "open window not committed: it is re-read on the next start"
        );
    }
    let deadline = tokio::time::Instant::now() + grace;
    for handle in in_flight {
        match tokio::time::timeout_at(deadline, handle).await {
            Ok(Ok(Ok(_))) => {}
            Ok(Ok(Err(e))) => {
                tracing::error!(error = %format!("{e:#}"), "last window aborted; it is re-read on the next start");
                return Ok(());
            }
            Ok(Err(e)) => return Err(anyhow!("window task panicked: {e}")),
            Err(_) => {
                tracing::warn!(
                    ?grace,
                    "window still training after the shutdown grace period: aborted, re-read on the next start"
                );
                return Ok(());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Recovery found input 0/5..0/9 written at clean/2 positions 50..54 and 1/3 at 60. A window
    /// that commits partition 0 up to 8 leaves 0/8 and 0/9 (and all of partition 1) uncommitted:
    /// the checkpoint it commits stays at or below their positions.
    #[test]
    fn a_partial_commit_keeps_the_uncommitted_found_records_in_the_next_scan() {
        let mut found = HashMap::new();
        for o in 5..10 {
            found.insert(Position { partition: 0, offset: o }, TopicPosition::new("clean", 2, 45 + o));
        }
        found.insert(Position { partition: 1, offset: 3 }, TopicPosition::new("clean", 2, 60));
        let next = std::collections::BTreeMap::from([(0, 8)]);
        let mut floor = uncommitted_after(&found, &next);
        floor.sort();
        let at = |offset| TopicPosition::new("clean", 2, offset);
        assert_eq!(floor, vec![at(53), at(54), at(60)]);
        let mut scanned_to = Checkpoint::default();
        scanned_to.advance("clean", 2, 100);
        assert_eq!(scanned_to.floored(floor).get("clean", 2), Some(53));

        let mut state_found = found.clone();
        state_found.retain(|input, _| next.get(&input.partition).is_none_or(|&c| input.offset >= c));
        assert_eq!(state_found.len(), 3, "committed ones are forgotten once the window commits");
    }
}
