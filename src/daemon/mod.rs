//! The firewall daemon: Kafka in, the engine in the middle, forwarded / quarantined /
//! dead-lettered records out, with the delivery guarantee the config asks for.

pub mod http;
pub mod reload;
pub mod window;
pub mod worker;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::watch;

use crate::config::Config;
use crate::data::LabelledSamples;
use crate::decision::{Action, DecisionConfig};
use crate::engine::{Engine, WindowOutcome};
use crate::kafka::checkpoint::{read_checkpoint_topic, scan_outputs, Checkpoint, CheckpointRecord};
use crate::kafka::{headers, DeliveryMode};
use crate::metrics::Metrics;
use crate::shadow::Runtime;
use http::Readiness;
use window::{InputRecord, OpenWindow};
use worker::EngineWorker;

const KAFKA_TIMEOUT: Duration = Duration::from_secs(30);

/// What the daemon needs besides its config.
pub struct DaemonOptions {
    pub config: Config,
    /// Watched for live reloads of `[decision]`; `None` disables reloading.
    pub config_path: Option<PathBuf>,
    /// Probes given in memory (the demo); `None`: load them as `[probes]` says.
    pub probes: Option<LabelledSamples>,
    pub metrics: Metrics,
    /// Benchmark baseline: the same consumer and producer path with the engine replaced by
    /// forward-all.
    pub passthrough: bool,
}

enum RebalanceEvent {
    Assigned(Vec<i32>),
    Revoked(Vec<i32>),
}

/// Forwards rebalances to the main loop, and flushes what is in flight before a partition is
/// given up, so that its next owner's recovery scan sees every record this instance produced.
struct RebalanceContext {
    input_topic: String,
    events: tokio::sync::mpsc::UnboundedSender<RebalanceEvent>,
    producer: FutureProducer,
}

impl ClientContext for RebalanceContext {}

impl RebalanceContext {
    fn partitions(&self, list: &TopicPartitionList) -> Vec<i32> {
        list.elements_for_topic(&self.input_topic).iter().map(|e| e.partition()).collect()
    }
}

impl ConsumerContext for RebalanceContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            if let Err(e) = self.producer.flush(KAFKA_TIMEOUT) {
                tracing::error!(error = %e, "flushing before a revoke failed; the next owner's recovery will catch up");
            }
            let _ = self.events.send(RebalanceEvent::Revoked(self.partitions(list)));
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            let _ = self.events.send(RebalanceEvent::Assigned(self.partitions(list)));
        }
    }
}

type InputConsumer = StreamConsumer<RebalanceContext>;

/// Where each record of a decided window goes.
struct Routed<'a> {
    record: &'a InputRecord,
    topic: &'a str,
    headers: OwnedHeaders,
}

/// Everything the window task needs, shared with the main loop.
struct Pipeline {
    config: Config,
    consumer: Arc<InputConsumer>,
    producer: FutureProducer,
    worker: EngineWorker,
    metrics: Metrics,
    window_counter: std::sync::atomic::AtomicU64,
    passthrough: bool,
}

/// Loads the engine and runs the firewall until `shutdown` resolves.
pub async fn run(options: DaemonOptions, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    let DaemonOptions { config, config_path, probes, metrics, passthrough } = options;
    config.validate()?;
    metrics.preset_labels(config.input.classes);
    let readiness = Arc::new(Readiness::default());
    let bound = http::serve(config.metrics.listen, metrics.clone(), readiness.clone()).await?;
    tracing::info!(%bound, "serving /metrics, /healthz, /readyz");

    let runtime = Runtime::load(&config.shadow.runtime_options())?;
    readiness.onnxruntime_loaded.store(true, Ordering::Relaxed);
    let probes = match (probes, &config.probes.topic) {
        (Some(p), _) => p,
        (None, Some(topic)) => probes_from_topic(&config, topic)?,
        (None, None) => {
            config.probes.load(config.input.features, config.input.classes).context("loading probes")?
        }
    };
    readiness.probes_loaded.store(true, Ordering::Relaxed);
    let engine = Engine::new(&runtime, config.engine(), probes)?;
    let worker = EngineWorker::spawn(engine);

    let (decision_tx, decision_rx) = watch::channel(config.decision.clone());
    if let Some(path) = config_path {
        reload::spawn_watcher(path, config.clone(), decision_tx, metrics.clone());
    }

    let producer = create_producer(&config)?;
    let (events_tx, events) = tokio::sync::mpsc::unbounded_channel();
    let consumer = create_consumer(
        &config,
        RebalanceContext {
            input_topic: config.kafka.input_topic.clone(),
            events: events_tx,
            producer: producer.clone(),
        },
    )?;
    consumer.subscribe(&[&config.kafka.input_topic]).context("subscribing to the input topic")?;
    let pipeline = Arc::new(Pipeline {
        config: config.clone(),
        consumer: Arc::new(consumer),
        producer,
        worker,
        metrics: metrics.clone(),
        window_counter: Default::default(),
        passthrough,
    });
    spawn_broker_probe(pipeline.clone(), readiness.clone());
    let result = main_loop(pipeline.clone(), events, decision_rx, readiness.clone(), shutdown).await;
    readiness.partitions_assigned.store(false, Ordering::Relaxed);
    pipeline.consumer.unsubscribe();
    result
}

/// Reads a trusted probe topic whole; every record must decode and fit `[input]`.
fn probes_from_topic(config: &Config, topic: &str) -> Result<LabelledSamples> {
    let rules = config.kafka.decode_rules(&config.input);
    let messages = crate::kafka::read_topic(&config.kafka.client_config()?, topic, KAFKA_TIMEOUT)?;
    let mut features = Vec::new();
    let mut labels = Vec::new();
    for m in &messages {
        use rdkafka::message::Headers;
        let sample = rules
            .decode(m.payload(), |name| {
                m.headers().and_then(|h| h.iter().find(|h| h.key == name).and_then(|h| h.value))
            })
            .map_err(|e| anyhow!("probe topic {topic}, record {}/{}: {e}", m.partition(), m.offset()))?;
        features.extend(sample.features);
        labels.push(sample.label);
    }
    let all = LabelledSamples::new(
        ndarray::Array2::from_shape_vec((labels.len(), config.input.features), features)?,
        labels,
    )?;
    crate::probes::draw(&all, config.probes.count, config.probes.seed)
        .with_context(|| format!("probe topic {topic}"))
}

/// Every 2 s, asks the brokers for metadata: `/readyz` reports a broker that stopped answering
/// even while no records flow.
fn spawn_broker_probe(pipeline: Arc<Pipeline>, readiness: Arc<Readiness>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            tick.tick().await;
            let p = pipeline.clone();
            let reachable = tokio::task::spawn_blocking(move || {
                p.consumer
                    .client()
                    .fetch_metadata(Some(&p.config.kafka.input_topic), Duration::from_secs(2))
                    .is_ok()
            })
            .await
            .unwrap_or(false);
            if reachable != readiness.broker_reachable.swap(reachable, Ordering::Relaxed) {
                if reachable {
                    tracing::info!("broker reachable again");
                } else {
                    tracing::warn!("broker not answering: not ready; waiting for it");
                }
            }
        }
    });
}

fn create_producer(config: &Config) -> Result<FutureProducer> {
    let mut client = config.kafka.client_config()?;
    client.set("enable.idempotence", "true").set("acks", "all").set("linger.ms", "5");
    if config.delivery.mode == DeliveryMode::Transactional {
        let id = config.delivery.transactional_id.clone().expect("validated");
        client.set("transactional.id", id);
    }
    let producer: FutureProducer = crate::kafka::create_client(&client, "the Kafka producer")?;
    if config.delivery.mode == DeliveryMode::Transactional {
        producer
            .init_transactions(KAFKA_TIMEOUT)
            .context("initialising Kafka transactions (does the broker support them?)")?;
    }
    Ok(producer)
}

fn create_consumer(config: &Config, context: RebalanceContext) -> Result<InputConsumer> {
    let mut client = config.kafka.client_config()?;
    client
        .set("group.id", &config.kafka.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false");
    if !config.kafka.properties.contains_key("fetch.wait.max.ms") {
        client.set("fetch.wait.max.ms", "10");
    }
    if config.delivery.mode == DeliveryMode::Transactional {
        client.set("isolation.level", "read_committed");
    }
    crate::kafka::create_client_with_context(&client, context, "the Kafka consumer")
}

/// The main loop's state besides the pipeline.
struct LoopState {
    open: OpenWindow,
    /// Records read while the open window was full and the engine busy.
    backlog: Vec<InputRecord>,
    assigned: HashSet<i32>,
    /// Input records recovery found already produced.
    already_produced: HashSet<(i32, i64)>,
    checkpoint: Checkpoint,
    paused: bool,
    /// Per partition, the offset after the last record read: a record below it was already
    /// read (a broker or client re-delivery) and is ignored.
    next_offset: HashMap<i32, i64>,
    /// Partitions whose exactly-once recovery failed and must succeed before the next window
    /// is dispatched (dispatching first could produce records twice).
    recovery_pending: HashSet<i32>,
    /// Rebalance events taken off the channel by `select!`, in order.
    pending_events: Vec<RebalanceEvent>,
}

async fn main_loop(
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
        backlog: Vec::new(),
        assigned: HashSet::new(),
        already_produced: HashSet::new(),
        checkpoint: Checkpoint::default(),
        paused: false,
        next_offset: HashMap::new(),
        recovery_pending: HashSet::new(),
        pending_events: Vec::new(),
    };
    let mut in_flight: Option<tokio::task::JoinHandle<Result<Checkpoint>>> = None;
    tokio::pin!(shutdown);
    loop {
        handle_rebalances(&pipeline, &mut events, &mut state, &readiness)?;
        if in_flight.is_none() && !state.recovery_pending.is_empty() {
            retry_recovery(&pipeline, &mut state).await;
        }
        if in_flight.is_none() && state.recovery_pending.is_empty() && state.open.is_due(Instant::now()) {
            let records = state.open.take();
            for r in std::mem::take(&mut state.backlog) {
                state.open.push(r);
            }
            let decision = decision_rx.borrow().clone();
            let p = pipeline.clone();
            let checkpoint = state.checkpoint.clone();
            in_flight =
                Some(tokio::spawn(async move { process_window(p, records, decision, checkpoint).await }));
        }
        let pause = in_flight.is_some() && state.open.is_full();
        set_paused(&pipeline, &mut state, pause);
        let deadline = state.open.deadline();
        tokio::select! {
            biased;
            _ = &mut shutdown => {
                tracing::info!("shutting down: finishing the window in flight");
                return finish_in_flight(in_flight, config.delivery.shutdown_grace, &mut state).await;
            }
            done = async { in_flight.as_mut().expect("guarded").await }, if in_flight.is_some() => {
                in_flight = None;
                match done.map_err(|e| anyhow!("window task panicked: {e}"))? {
                    Ok(checkpoint) => state.checkpoint = checkpoint,
                    Err(e) => {
                        tracing::error!(error = %format!("{e:#}"), "window aborted: nothing of it committed; re-reading it");
                        pipeline.metrics.windows.with_label_values(&["aborted"]).inc();
                        rewind(&pipeline, &mut state)?;
                    }
                }
            }
            message = pipeline.consumer.recv() => {
                readiness.broker_reachable.store(true, Ordering::Relaxed);
                handle_rebalances(&pipeline, &mut events, &mut state, &readiness)?;
                match message {
                    Ok(m) => {
                        let expected = state.next_offset.get(&m.partition()).copied().unwrap_or(i64::MIN);
                        if m.offset() < expected {
                            tracing::warn!(partition = m.partition(), offset = m.offset(), expected, "record delivered again by the broker; ignored");
                            pipeline.metrics.redelivered.inc();
                            continue;
                        }
                        if expected != i64::MIN && m.offset() > expected {
                            tracing::warn!(partition = m.partition(), offset = m.offset(), expected, "gap in the input offsets");
                        }
                        state.next_offset.insert(m.partition(), m.offset() + 1);
                        pipeline.metrics.records_in.inc();
                        let mut record = InputRecord::from_message(&m, &rules);
                        record.already_produced = state.already_produced.remove(&(record.partition, record.offset));
                        if state.open.is_full() { state.backlog.push(record) } else { state.open.push(record) }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "Kafka consumer error; retrying");
                        readiness.broker_reachable.store(false, Ordering::Relaxed);
                    }
                }
            }
            _ = sleep_until(deadline), if deadline.is_some() && in_flight.is_none() => {}
            // Wakes the loop for rebalances while no record arrives; handled at the top.
            Some(event) = events.recv() => {
                push_back(&mut state, event);
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// Back-pressure: stop fetching while the next window is full and the engine still busy.
/// Before resuming, every partition is put back at the offset after the last record read:
/// librdkafka drops its prefetched records on pause and was seen (against tansu) to resume
/// from a later fetch position, skipping records.
fn set_paused(pipeline: &Pipeline, state: &mut LoopState, pause: bool) {
    if pause == state.paused {
        return;
    }
    let Ok(assignment) = pipeline.consumer.assignment() else { return };
    let result = if pause {
        pipeline.consumer.pause(&assignment)
    } else {
        let topic = &pipeline.config.kafka.input_topic;
        for (&partition, &next) in &state.next_offset {
            if let Err(e) = pipeline.consumer.seek(topic, partition, Offset::Offset(next), KAFKA_TIMEOUT) {
                tracing::warn!(partition, next, error = %e, "re-positioning a paused partition failed");
            }
        }
        pipeline.consumer.resume(&assignment)
    };
    match result {
        Ok(()) => state.paused = pause,
        Err(e) => tracing::warn!(error = %e, pause, "pausing/resuming the input failed"),
    }
}

/// A rebalance event received by `select!`, queued for `handle_rebalances`.
fn push_back(state: &mut LoopState, event: RebalanceEvent) {
    state.pending_events.push(event);
}

fn handle_rebalances(
    pipeline: &Pipeline,
    events: &mut tokio::sync::mpsc::UnboundedReceiver<RebalanceEvent>,
    state: &mut LoopState,
    readiness: &Readiness,
) -> Result<()> {
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
                state.backlog.retain(|r| !partitions.contains(&r.partition));
                for p in &partitions {
                    state.assigned.remove(p);
                }
                state.already_produced.retain(|(p, _)| !partitions.contains(p));
                state.next_offset.retain(|p, _| !partitions.contains(p));
                state.paused = false;
            }
            RebalanceEvent::Assigned(partitions) => {
                tracing::info!(?partitions, "partitions assigned");
                state.assigned.extend(&partitions);
                if pipeline.config.delivery.mode == DeliveryMode::ExactlyOnce && !partitions.is_empty() {
                    state.recovery_pending.extend(&partitions);
                    try_recovery(pipeline, state);
                }
            }
        }
        readiness.partitions_assigned.store(!state.assigned.is_empty(), Ordering::Relaxed);
    }
    Ok(())
}

/// Exactly-once recovery for newly assigned partitions: read the outputs from the committed
/// checkpoint to their end and remember which of these partitions' records are already there.
fn recover(pipeline: &Pipeline, state: &mut LoopState, partitions: &[i32]) -> Result<()> {
    let kafka = &pipeline.config.kafka;
    let mut list = TopicPartitionList::new();
    for &p in partitions {
        list.add_partition(&kafka.input_topic, p);
    }
    let committed = tokio::task::block_in_place(|| pipeline.consumer.committed_offsets(list, KAFKA_TIMEOUT))
        .context("reading committed offsets for recovery")?;
    // Start from the earliest checkpoint among these partitions; a partition without one
    // (never committed, or metadata dropped by the broker) means reading the outputs whole.
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
    let found = tokio::task::block_in_place(|| {
        scan_outputs(&client, &outputs, start.as_ref(), &kafka.input_topic, &set, Duration::from_secs(120))
    })?;
    tracing::info!(
        ?partitions,
        checkpoint = source,
        scanned = found.records_scanned,
        already_produced = found.already_produced.len(),
        seconds = began.elapsed().as_secs_f64(),
        "exactly-once recovery scan done"
    );
    // Records still in hand from these partitions were read before: re-check them.
    for r in state.open.records.iter_mut().chain(state.backlog.iter_mut()) {
        if found.already_produced.contains(&(r.partition, r.offset)) {
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
fn rewind(pipeline: &Pipeline, state: &mut LoopState) -> Result<()> {
    state.open.take();
    state.backlog.clear();
    state.next_offset.clear();
    let topic = &pipeline.config.kafka.input_topic;
    let mut list = TopicPartitionList::new();
    for &p in &state.assigned {
        list.add_partition(topic, p);
    }
    let committed = tokio::task::block_in_place(|| pipeline.consumer.committed_offsets(list, KAFKA_TIMEOUT))?;
    for element in committed.elements() {
        let offset = match element.offset() {
            Offset::Offset(o) => Offset::Offset(o),
            _ => Offset::Beginning,
        };
        pipeline.consumer.seek(topic, element.partition(), offset, KAFKA_TIMEOUT)?;
    }
    if pipeline.config.delivery.mode == DeliveryMode::ExactlyOnce {
        state.recovery_pending.extend(state.assigned.iter().copied());
        try_recovery(pipeline, state);
    }
    Ok(())
}

/// Runs the pending recovery; on failure it stays pending and no window is dispatched.
fn try_recovery(pipeline: &Pipeline, state: &mut LoopState) {
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

async fn retry_recovery(pipeline: &Pipeline, state: &mut LoopState) {
    tokio::time::sleep(Duration::from_secs(1)).await;
    try_recovery(pipeline, state);
}

async fn finish_in_flight(
    in_flight: Option<tokio::task::JoinHandle<Result<Checkpoint>>>,
    grace: Duration,
    state: &mut LoopState,
) -> Result<()> {
    if !state.open.is_empty() {
        tracing::info!(
            records = state.open.records.len(),
            "open window not committed: it is re-read on the next start"
        );
    }
    let Some(handle) = in_flight else { return Ok(()) };
    match tokio::time::timeout(grace, handle).await {
        Ok(Ok(Ok(_))) => Ok(()),
        Ok(Ok(Err(e))) => {
            tracing::error!(error = %format!("{e:#}"), "last window aborted; it is re-read on the next start");
            Ok(())
        }
        Ok(Err(e)) => Err(anyhow!("window task panicked: {e}")),
        Err(_) => {
            tracing::warn!(
                ?grace,
                "window still training after the shutdown grace period: aborted, re-read on the next start"
            );
            Ok(())
        }
    }
}

/// Decides one window, writes every record to exactly one topic, waits for all acks, then
/// commits the input offsets (with the output checkpoint, or inside a transaction).
async fn process_window(
    pipeline: Arc<Pipeline>,
    records: Vec<InputRecord>,
    decision: DecisionConfig,
    mut checkpoint: Checkpoint,
) -> Result<Checkpoint> {
    let started = Instant::now();
    let config = &pipeline.config;
    let metrics = &pipeline.metrics;
    let window_id = pipeline.window_counter.fetch_add(1, Ordering::Relaxed);
    let to_decide: Vec<usize> = (0..records.len())
        .filter(|&i| !pipeline.passthrough && records[i].sample.is_ok() && !records[i].already_produced)
        .collect();
    let outcome = if to_decide.is_empty() {
        None
    } else {
        let samples = samples_of(&records, &to_decide, config.input.features)?;
        let training = Instant::now();
        let outcome = pipeline.worker.process(samples, decision).await?;
        metrics.training_seconds.observe(training.elapsed().as_secs_f64());
        Some(outcome)
    };
    let routed = route(&pipeline, &records, &to_decide, outcome.as_ref(), window_id);

    let transactional = config.delivery.mode == DeliveryMode::Transactional;
    if transactional {
        pipeline.producer.begin_transaction().context("beginning the window's transaction")?;
    }
    let produced = produce_all(&pipeline.producer, &routed).await;
    let delivered = match produced {
        Ok(d) => d,
        Err(e) => {
            if transactional {
                let _ = tokio::task::block_in_place(|| pipeline.producer.abort_transaction(KAFKA_TIMEOUT));
                metrics.transactions.with_label_values(&["aborted"]).inc();
            }
            return Err(e);
        }
    };
    for (topic, partition, offset) in &delivered {
        checkpoint.advance(topic, *partition, offset + 1);
    }
    let offsets = next_offsets(
        &config.kafka.input_topic,
        &records,
        (config.delivery.mode == DeliveryMode::ExactlyOnce).then_some(&checkpoint),
    )?;
    if transactional {
        let group =
            pipeline.consumer.group_metadata().ok_or_else(|| anyhow!("no consumer group metadata"))?;
        let committed = tokio::task::block_in_place(|| {
            pipeline.producer.send_offsets_to_transaction(&offsets, &group, KAFKA_TIMEOUT)?;
            pipeline.producer.commit_transaction(KAFKA_TIMEOUT)
        });
        if let Err(e) = committed {
            let _ = tokio::task::block_in_place(|| pipeline.producer.abort_transaction(KAFKA_TIMEOUT));
            metrics.transactions.with_label_values(&["aborted"]).inc();
            return Err(anyhow!("committing the window's transaction: {e}"));
        }
        metrics.transactions.with_label_values(&["committed"]).inc();
    } else if offsets.count() > 0 {
        tokio::task::block_in_place(|| {
            pipeline.consumer.commit(&offsets, rdkafka::consumer::CommitMode::Sync)
        })
        .context("committing input offsets after every output was acknowledged")?;
        if config.delivery.mode == DeliveryMode::ExactlyOnce {
            // After the commit, never before: a checkpoint older than the commit only makes
            // the next recovery read more; a newer one could make it miss records.
            write_checkpoint_records(&pipeline, &offsets, &checkpoint).await?;
        }
    }
    record_window_metrics(&pipeline, &routed, &records, outcome.as_ref(), started);
    tracing::info!(
        window = window_id,
        records = records.len(),
        decided = to_decide.len(),
        threshold = outcome.as_ref().map(|o| o.threshold.value),
        seconds = format!("{:.2}", started.elapsed().as_secs_f64()),
        "window committed"
    );
    Ok(checkpoint)
}

async fn write_checkpoint_records(
    pipeline: &Pipeline,
    committed: &TopicPartitionList,
    checkpoint: &Checkpoint,
) -> Result<()> {
    let kafka = &pipeline.config.kafka;
    let mut pending = Vec::new();
    for element in committed.elements() {
        let Offset::Offset(offset) = element.offset() else { continue };
        let record = CheckpointRecord {
            group: kafka.group_id.clone(),
            topic: kafka.input_topic.clone(),
            partition: element.partition(),
            committed: offset,
            ends: checkpoint.ends.clone(),
        };
        let key = CheckpointRecord::key(&kafka.group_id, &kafka.input_topic, element.partition());
        let value = serde_json::to_vec(&record)?;
        let future = pipeline
            .producer
            .send_result(FutureRecord::to(&kafka.checkpoint_topic).key(&key).payload(&value))
            .map_err(|(e, _)| anyhow!("writing a checkpoint to {}: {e}", kafka.checkpoint_topic))?;
        pending.push(future);
    }
    for future in pending {
        match future.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => {
                tracing::warn!(error = %e, "a checkpoint record was not written; the next recovery reads further back")
            }
            Err(_) => tracing::warn!(
                "a checkpoint record write was cancelled; the next recovery reads further back"
            ),
        }
    }
    Ok(())
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

fn base_headers(record: &InputRecord, topic: &str) -> OwnedHeaders {
    let mut h = OwnedHeaders::new_with_capacity(record.headers.len() + 6);
    for (key, value) in &record.headers {
        h = h.insert(Header { key, value: value.as_deref() });
    }
    h.insert(Header {
        key: headers::SOURCE,
        value: Some(&headers::source_value(topic, record.partition, record.offset)),
    })
}

fn route<'a>(
    pipeline: &'a Pipeline,
    records: &'a [InputRecord],
    decided: &[usize],
    outcome: Option<&WindowOutcome>,
    window_id: u64,
) -> Vec<Routed<'a>> {
    let kafka = &pipeline.config.kafka;
    let decisions: HashMap<usize, usize> = decided.iter().enumerate().map(|(k, &i)| (i, k)).collect();
    let window = window_id.to_string();
    let mut routed = Vec::with_capacity(records.len());
    for (i, record) in records.iter().enumerate() {
        if record.already_produced {
            continue;
        }
        let h = base_headers(record, &kafka.input_topic);
        let (topic, h) = match (&record.sample, decisions.get(&i)) {
            (Err(rejection), _) => (
                kafka.dead_letter_topic.as_str(),
                h.insert(Header { key: headers::DECISION, value: Some("dead-letter") }).insert(Header {
                    key: headers::REASON,
                    value: Some(&format!("{}: {rejection}", rejection.code())),
                }),
            ),
            (Ok(_), Some(&k)) => {
                let d = &outcome.expect("decided records have an outcome").decisions[k];
                let h = h
                    .insert(Header { key: headers::SCORE, value: Some(&d.score.to_string()) })
                    .insert(Header { key: headers::THRESHOLD, value: Some(&d.threshold.to_string()) })
                    .insert(Header { key: headers::WINDOW, value: Some(&window) });
                match d.action {
                    Action::Quarantine => (
                        kafka.quarantine_topic.as_str(),
                        h.insert(Header { key: headers::DECISION, value: Some("quarantine") })
                            .insert(Header { key: headers::REASON, value: Some(&d.reason) }),
                    ),
                    Action::Forward => (
                        kafka.output_topic.as_str(),
                        h.insert(Header {
                            key: headers::DECISION,
                            value: Some(if d.flagged { "flagged" } else { "forward" }),
                        }),
                    ),
                }
            }
            // Only in passthrough mode (the benchmark baseline): forward undecided.
            (Ok(_), None) => (
                kafka.output_topic.as_str(),
                h.insert(Header { key: headers::DECISION, value: Some("forward") }),
            ),
        };
        routed.push(Routed { record, topic, headers: h });
    }
    routed
}

/// Sends every record and waits for every acknowledgement; any failure fails the window.
async fn produce_all(producer: &FutureProducer, routed: &[Routed<'_>]) -> Result<Vec<(String, i32, i64)>> {
    let mut pending = Vec::with_capacity(routed.len());
    for r in routed {
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(r.topic).headers(r.headers.clone());
        if let Some(key) = &r.record.key {
            record = record.key(key.as_slice());
        }
        if let Some(value) = &r.record.value {
            record = record.payload(value.as_slice());
        }
        if let Some(ts) = r.record.timestamp {
            record = record.timestamp(ts);
        }
        let mut record = record;
        let future = loop {
            match producer.send_result(record) {
                Ok(f) => break f,
                Err((e, back)) if is_queue_full(&e) => {
                    // The local queue is full: wait for acks to drain it (back-pressure).
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    record = back;
                }
                Err((e, _)) => return Err(anyhow!("producing to {}: {e}", r.topic)),
            }
        };
        pending.push((r.topic, future));
    }
    let mut delivered = Vec::with_capacity(pending.len());
    for (topic, future) in pending {
        match future.await {
            Ok(Ok(d)) => delivered.push((topic.to_string(), d.partition, d.offset)),
            Ok(Err((e, _))) => return Err(anyhow!("delivery to {topic} failed: {e}")),
            Err(_) => return Err(anyhow!("delivery to {topic} was cancelled")),
        }
    }
    Ok(delivered)
}

fn is_queue_full(e: &rdkafka::error::KafkaError) -> bool {
    matches!(e.rdkafka_error_code(), Some(rdkafka::types::RDKafkaErrorCode::QueueFull))
}

/// The offsets to commit: one past the last record of each partition in the window, with the
/// checkpoint as metadata in exactly-once mode.
fn next_offsets(
    topic: &str,
    records: &[InputRecord],
    checkpoint: Option<&Checkpoint>,
) -> KafkaResult<TopicPartitionList> {
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    for r in records {
        let e = next.entry(r.partition).or_insert(r.offset + 1);
        *e = (*e).max(r.offset + 1);
    }
    let mut list = TopicPartitionList::new();
    let metadata = checkpoint.map(Checkpoint::encode);
    for (p, o) in next {
        list.add_partition_offset(topic, p, Offset::Offset(o))?;
        if let (Some(meta), Some(mut element)) = (&metadata, list.find_partition(topic, p)) {
            element.set_metadata(meta);
        }
    }
    Ok(list)
}

fn record_window_metrics(
    pipeline: &Pipeline,
    routed: &[Routed<'_>],
    records: &[InputRecord],
    outcome: Option<&WindowOutcome>,
    started: Instant,
) {
    let m = &pipeline.metrics;
    let kafka = &pipeline.config.kafka;
    for r in routed {
        if r.topic == kafka.output_topic {
            m.forwarded.inc();
        } else if r.topic == kafka.quarantine_topic {
            m.quarantined.inc();
            if let Ok(s) = &r.record.sample {
                m.quarantined_by_label.with_label_values(&[&s.label.to_string()]).inc();
            }
        } else if let Err(rejection) = &r.record.sample {
            m.dead_lettered.with_label_values(&[rejection.code()]).inc();
        }
    }
    m.skipped_already_produced.inc_by(records.iter().filter(|r| r.already_produced).count() as u64);
    if let Some(o) = outcome {
        for d in &o.decisions {
            m.score.observe(d.score as f64);
        }
        m.flagged_observed
            .inc_by(o.decisions.iter().filter(|d| d.flagged && d.action == Action::Forward).count() as u64);
        m.threshold.set(o.threshold.value as f64);
    }
    m.window_size.set(records.len() as i64);
    m.window_seconds.observe(started.elapsed().as_secs_f64());
    m.windows.with_label_values(&["committed"]).inc();
    tokio::task::block_in_place(|| update_lag(pipeline));
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
