//! The delivery guarantee, one type per mode: what a window does before its first output
//! (`begin`), once every output is acknowledged (`commit`: the input offsets made durable, with
//! the output checkpoint where the mode keeps one) and when it fails (`abort`).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::Deserialize;

use super::checkpoint::{Checkpoint, CheckpointRecord};
use super::KafkaConfig;
use crate::metrics::{Ended, Metrics};
use crate::validation::{ensure, ConfigError};

const KAFKA_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum DeliveryMode {
    /// Offsets committed only after every output of the window is acknowledged; a crash can
    /// repeat records downstream.
    AtLeastOnce,
    /// At-least-once plus recovery that skips records already produced (no broker
    /// transactions needed; see the README for what it cannot cover).
    #[default]
    ExactlyOnce,
    /// One Kafka transaction per window; readers must use read_committed.
    Transactional,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    pub mode: DeliveryMode,
    /// `transactional` mode: the producer's transactional.id (fences zombies).
    pub transactional_id: Option<String>,
    /// On SIGTERM/SIGINT: how long the open window may take to finish before it is aborted.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            mode: DeliveryMode::ExactlyOnce,
            transactional_id: None,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

impl DeliveryConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.mode == DeliveryMode::Transactional {
            ensure(
                self.transactional_id.as_deref().is_some_and(|id| !id.trim().is_empty()),
                "delivery.transactional_id",
                "mode \"transactional\" needs a transactional id, unique per lossgate instance",
            )?;
        }
        Ok(())
    }
}

/// The delivery mode with what it needs, built once from a valid `[delivery]`.
pub enum Delivery {
    AtLeastOnce(AtLeastOnce),
    ExactlyOnce(ExactlyOnce),
    Transactional(Transactional),
}

/// Where one window's input stops, per partition (the offsets to commit), and where the
/// outputs stood once all of its records were acknowledged.
pub struct WindowEnd<'a> {
    pub next_offsets: &'a BTreeMap<i32, i64>,
    pub checkpoint: &'a Checkpoint,
}

/// The clients a window is delivered with.
pub struct Clients<'a, C: ConsumerContext + 'static> {
    pub consumer: &'a StreamConsumer<C>,
    pub producer: &'a FutureProducer,
    pub kafka: &'a KafkaConfig,
    pub metrics: &'a Metrics,
}

impl Delivery {
    pub fn new(config: &DeliveryConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(match config.mode {
            DeliveryMode::AtLeastOnce => Self::AtLeastOnce(AtLeastOnce),
            DeliveryMode::ExactlyOnce => Self::ExactlyOnce(ExactlyOnce),
            DeliveryMode::Transactional => {
                Self::Transactional(Transactional { id: config.transactional_id.clone().unwrap_or_default() })
            }
        })
    }

    /// Whether newly assigned partitions must be scanned for what an earlier run wrote.
    pub fn recovers(&self) -> bool {
        matches!(self, Self::ExactlyOnce(_))
    }

    /// Whether the input is read with `isolation.level = read_committed`.
    pub fn reads_committed(&self) -> bool {
        matches!(self, Self::Transactional(_))
    }

    /// Adds what the mode needs to the producer's settings.
    pub fn configure_producer(&self, client: &mut ClientConfig) {
        if let Self::Transactional(t) = self {
            client.set("transactional.id", &t.id);
        }
    }

    /// Adds what the mode needs to the input consumer's settings.
    pub fn configure_consumer(&self, client: &mut ClientConfig) {
        if self.reads_committed() {
            client.set("isolation.level", "read_committed");
        }
    }

    /// Once, after the producer is created.
    pub fn init(&self, producer: &FutureProducer) -> Result<()> {
        match self {
            Self::Transactional(_) => producer
                .init_transactions(KAFKA_TIMEOUT)
                .context("initialising Kafka transactions (does the broker support them?)"),
            _ => Ok(()),
        }
    }

    /// Before the window's first output.
    pub fn begin(&self, producer: &FutureProducer) -> Result<()> {
        match self {
            Self::Transactional(t) => t.begin(producer),
            _ => Ok(()),
        }
    }

    /// After every output of the window was acknowledged.
    pub async fn commit<C: ConsumerContext + 'static>(
        &self,
        clients: Clients<'_, C>,
        end: WindowEnd<'_>,
    ) -> Result<()> {
        match self {
            Self::AtLeastOnce(m) => m.commit(&clients, &end),
            Self::ExactlyOnce(m) => m.commit(&clients, &end).await,
            Self::Transactional(m) => m.commit(&clients, &end),
        }
    }

    /// After a failed output: nothing of the window may stay visible where the mode can help it.
    pub fn abort(&self, producer: &FutureProducer, metrics: &Metrics) {
        if let Self::Transactional(t) = self {
            t.abort(producer, metrics);
        }
    }
}

/// Input offsets committed after every output is acknowledged; a crash between the two repeats
/// the window's records downstream.
pub struct AtLeastOnce;

impl AtLeastOnce {
    fn commit<C: ConsumerContext + 'static>(
        &self,
        clients: &Clients<'_, C>,
        end: &WindowEnd<'_>,
    ) -> Result<()> {
        commit_offsets(clients, &offset_list(&clients.kafka.input_topic, end.next_offsets, None)?)
    }
}

/// At-least-once, with the output checkpoint kept in the commit metadata and on the checkpoint
/// topic, from which recovery learns what an earlier run already wrote.
pub struct ExactlyOnce;

impl ExactlyOnce {
    async fn commit<C: ConsumerContext + 'static>(
        &self,
        clients: &Clients<'_, C>,
        end: &WindowEnd<'_>,
    ) -> Result<()> {
        let offsets = offset_list(&clients.kafka.input_topic, end.next_offsets, Some(end.checkpoint))?;
        commit_offsets(clients, &offsets)?;
        // After the commit, never before: a checkpoint older than the commit only makes the
        // next recovery read more; a newer one could make it miss records.
        write_checkpoint_records(clients, end).await
    }
}

/// One Kafka transaction per window: its outputs and its input offsets become visible together.
pub struct Transactional {
    /// The producer's `transactional.id` (fences an earlier instance with the same id).
    id: String,
}

impl Transactional {
    fn begin(&self, producer: &FutureProducer) -> Result<()> {
        producer.begin_transaction().context("beginning the window's transaction")
    }

    fn commit<C: ConsumerContext + 'static>(
        &self,
        clients: &Clients<'_, C>,
        end: &WindowEnd<'_>,
    ) -> Result<()> {
        let offsets = offset_list(&clients.kafka.input_topic, end.next_offsets, None)?;
        let group = clients.consumer.group_metadata().ok_or_else(|| anyhow!("no consumer group metadata"))?;
        let committed = tokio::task::block_in_place(|| {
            clients.producer.send_offsets_to_transaction(&offsets, &group, KAFKA_TIMEOUT)?;
            clients.producer.commit_transaction(KAFKA_TIMEOUT)
        });
        if let Err(e) = committed {
            self.abort(clients.producer, clients.metrics);
            return Err(anyhow!("committing the window's transaction: {e}"));
        }
        clients.metrics.transactions.inc(Ended::Committed);
        Ok(())
    }

    fn abort(&self, producer: &FutureProducer, metrics: &Metrics) {
        if let Err(e) = tokio::task::block_in_place(|| producer.abort_transaction(KAFKA_TIMEOUT)) {
            tracing::debug!(error = %e, "aborting the window's transaction failed; the broker aborts it on timeout");
        }
        metrics.transactions.inc(Ended::Aborted);
    }
}

fn commit_offsets<C: ConsumerContext + 'static>(
    clients: &Clients<'_, C>,
    offsets: &TopicPartitionList,
) -> Result<()> {
    if offsets.count() == 0 {
        return Ok(());
    }
    tokio::task::block_in_place(|| clients.consumer.commit(offsets, CommitMode::Sync))
        .context("committing input offsets after every output was acknowledged")
}

/// The offsets to commit, with the checkpoint as metadata in exactly-once mode (left out where
/// it would pass the broker's metadata limit: recovery then reads the checkpoint topic).
fn offset_list(
    topic: &str,
    next: &BTreeMap<i32, i64>,
    checkpoint: Option<&Checkpoint>,
) -> KafkaResult<TopicPartitionList> {
    let mut list = TopicPartitionList::new();
    let metadata = checkpoint.map(Checkpoint::encode_for_metadata);
    for (&p, &o) in next {
        list.add_partition_offset(topic, p, Offset::Offset(o))?;
        if let (Some(meta), Some(mut element)) = (&metadata, list.find_partition(topic, p)) {
            element.set_metadata(meta);
        }
    }
    Ok(list)
}

async fn write_checkpoint_records<C: ConsumerContext + 'static>(
    clients: &Clients<'_, C>,
    end: &WindowEnd<'_>,
) -> Result<()> {
    let kafka = clients.kafka;
    let mut pending = Vec::new();
    for (&partition, &offset) in end.next_offsets {
        let record = CheckpointRecord {
            group: kafka.group_id.clone(),
            topic: kafka.input_topic.clone(),
            partition,
            committed: offset,
            ends: end.checkpoint.ends.clone(),
        };
        let key = CheckpointRecord::key(&kafka.group_id, &kafka.input_topic, partition);
        let value = serde_json::to_vec(&record)?;
        let future = clients
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
