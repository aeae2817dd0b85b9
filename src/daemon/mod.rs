//! The firewall daemon: Kafka in, the engine in the middle, forwarded / quarantined /
//! dead-lettered records out, with the delivery guarantee the config asks for.
//!
//! The data path, one file per stage: [`intake`] (the event loop: records in, rebalances,
//! read positions and gaps, back-pressure) -> [`window`] (records held until decided) ->
//! the engine pool (`engine.workers` windows decided at once, each on its own thread) ->
//! [`sink`] (each record routed to its one destination and produced) -> [`commit`] (in input
//! order: acknowledged outputs, then the input offsets with the checkpoint) ; [`recovery`]
//! (exactly-once: what an earlier run already wrote).

mod commit;
mod gaps;
mod gate;
mod http;
mod intake;
mod recovery;
mod reload;
mod sink;
mod window;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{ClientContext, TopicPartitionList};
use tokio::sync::watch;

use crate::config::Config;
use crate::data::LabelledSamples;
use crate::engine::pool::EnginePool;
use crate::kafka::delivery::Delivery;
use crate::kafka::headers;
use crate::metrics::Metrics;
use crate::probes::{Coverage, STEADY_PER_CLASS};
use crate::shadow::Runtime;
use gate::WindowGate;
use http::Readiness;

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

/// Forwards rebalances to the event loop. Before partitions are given up it waits for the
/// window in flight to be committed or abandoned and flushes what is queued, so that the next
/// owner's recovery scan sees every record this instance wrote for them.
struct RebalanceContext {
    input_topic: String,
    events: tokio::sync::mpsc::UnboundedSender<RebalanceEvent>,
    producer: FutureProducer,
    gate: Arc<WindowGate>,
    /// How long a revoke waits for the window in flight.
    revoke_wait: Duration,
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
            if !self.gate.wait_idle(self.revoke_wait) {
                tracing::warn!(
                    waited = ?self.revoke_wait,
                    "partitions revoked while a window was still in flight; its commit may fail and the next owner may write some of its records again"
                );
            }
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

/// Everything the window task needs, shared with the event loop.
struct Pipeline {
    config: Config,
    consumer: Arc<InputConsumer>,
    producer: FutureProducer,
    delivery: Delivery,
    engines: EnginePool,
    metrics: Metrics,
    gate: Arc<WindowGate>,
    passthrough: bool,
    /// A consumer-lag read is running (see `commit::spawn_lag_update`).
    lag_reading: std::sync::atomic::AtomicBool,
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
        (None, None) => config
            .probes
            .load(config.input.features, config.input.classes, config.decision.alpha)
            .context("loading probes")?,
    };
    readiness.probes_loaded.store(true, Ordering::Relaxed);
    log_probe_coverage(&probes, config.input.classes, config.decision.alpha);
    let workers = config.engine_pool.workers;
    let engines = EnginePool::start(&runtime, config.engine(), probes, workers)?;
    tracing::info!(workers, "engine workers started");

    let (decision_tx, decision_rx) = watch::channel(config.decision.clone());
    if let Some(path) = config_path {
        reload::spawn_watcher(path, config.clone(), decision_tx, metrics.clone());
    }

    let delivery = Delivery::new(&config.delivery)?;
    let producer = create_producer(&config, &delivery)?;
    let gate = Arc::new(WindowGate::default());
    let (events_tx, events) = tokio::sync::mpsc::unbounded_channel();
    let consumer = create_consumer(
        &config,
        &delivery,
        RebalanceContext {
            input_topic: config.kafka.input_topic.clone(),
            events: events_tx,
            producer: producer.clone(),
            gate: gate.clone(),
            revoke_wait: config.delivery.shutdown_grace.max(KAFKA_TIMEOUT),
        },
    )?;
    consumer.subscribe(&[&config.kafka.input_topic]).context("subscribing to the input topic")?;
    let pipeline = Arc::new(Pipeline {
        config: config.clone(),
        consumer: Arc::new(consumer),
        producer,
        delivery,
        engines,
        metrics: metrics.clone(),
        gate,
        passthrough,
        lag_reading: Default::default(),
    });
    let (probe_stop, probe_stopped) = watch::channel(false);
    let probe = spawn_broker_probe(pipeline.clone(), readiness.clone(), probe_stopped);
    let result = intake::run(pipeline.clone(), events, decision_rx, readiness.clone(), shutdown).await;
    readiness.partitions_assigned.store(false, Ordering::Relaxed);
    pipeline.consumer.unsubscribe();
    // Every client is dropped before returning: one left polling would log errors once the
    // brokers are gone (the demo's in-process cluster stops right after).
    let _ = probe_stop.send(true);
    let _ = probe.await;
    release_clients(pipeline).await;
    result
}

/// Waits (at most 10 s) until no task on a blocking thread holds the pipeline (a consumer-lag
/// read, a recovery scan), so that its clients are gone when the daemon returns.
async fn release_clients(pipeline: Arc<Pipeline>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while Arc::strong_count(&pipeline) > 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if Arc::strong_count(&pipeline) > 1 {
        tracing::info!("a recovery scan is still reading; its clients close when it ends");
    }
}

/// Says at start-up how the probes cover the classes, and what to do when a class has fewer
/// than the per-class scoring needs to hold steady.
fn log_probe_coverage(probes: &LabelledSamples, classes: usize, alpha: f64) {
    let coverage = Coverage::of(probes, classes, alpha);
    let Some((class, fewest)) = coverage.fewest() else { return };
    let missing = coverage.missing();
    if !missing.is_empty() {
        tracing::warn!(
            probes = probes.len(),
            classes = ?missing,
            "no probe carries these classes: each of their samples is compared with no clean sample \
             of its class and will mostly be quarantined (the reason says so); add trusted samples \
             of them to the probe file (lossgate make-probes draws from a file and names what it lacks)"
        );
    } else if fewest < STEADY_PER_CLASS {
        tracing::info!(
            probes = probes.len(),
            classes,
            fewest,
            class,
            steady = STEADY_PER_CLASS,
            "probes loaded; some class has fewer than the probes per class at which detection \
             was measured steady (README, \"Probes\"): catching weakens below it; for more, \
             remake the probe file with lossgate make-probes --count and raise probes.count"
        );
    } else {
        tracing::info!(probes = probes.len(), classes, fewest, "probes loaded");
    }
}

/// Reads a trusted probe topic whole; every record must decode and fit `[input]`.
fn probes_from_topic(config: &Config, topic: &str) -> Result<LabelledSamples> {
    let rules = config.kafka.decode_rules(&config.input);
    let messages = crate::kafka::read_topic(&config.kafka.client_config()?, topic, KAFKA_TIMEOUT)?;
    let mut features = Vec::new();
    let mut labels = Vec::new();
    for m in &messages {
        let sample = rules
            .decode(m.payload.as_deref(), |name| headers::last_value(&m.headers, name))
            .map_err(|e| anyhow!("probe topic {topic}, record {}/{}: {e}", m.partition, m.offset))?;
        features.extend(sample.features);
        labels.push(sample.label);
    }
    let all = LabelledSamples::new(
        ndarray::Array2::from_shape_vec((labels.len(), config.input.features), features)?,
        labels,
    )?;
    config.probes.draw_from(&all, config.decision.alpha).with_context(|| format!("probe topic {topic}"))
}

/// Every 2 s, asks the brokers for metadata: `/readyz` reports a broker that stopped answering
/// even while no records flow. Ends when `stop` turns true.
fn spawn_broker_probe(
    pipeline: Arc<Pipeline>,
    readiness: Arc<Readiness>,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
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
    })
}

fn create_producer(config: &Config, delivery: &Delivery) -> Result<FutureProducer> {
    let mut client = config.kafka.producer_config()?;
    client.set("enable.idempotence", "true").set("acks", "all").set("linger.ms", "5");
    delivery.configure_producer(&mut client);
    let producer: FutureProducer = crate::kafka::create_client(&client, "the Kafka producer")?;
    delivery.init(&producer)?;
    Ok(producer)
}

fn create_consumer(config: &Config, delivery: &Delivery, context: RebalanceContext) -> Result<InputConsumer> {
    let mut client = config.kafka.consumer_config()?;
    client
        .set("group.id", &config.kafka.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false");
    if !config.kafka.consumer_sets("fetch.wait.max.ms") {
        client.set("fetch.wait.max.ms", "10");
    }
    delivery.configure_consumer(&mut client);
    // Back-pressure is the event loop not polling while the engine is busy and the next window
    // full; librdkafka then stops fetching once this much is prefetched (no pause, no seek).
    if !config.kafka.consumer_sets("queued.max.messages.kbytes") {
        client.set("queued.max.messages.kbytes", "32768");
    }
    crate::kafka::create_client_with_context(&client, context, "the Kafka consumer")
}
