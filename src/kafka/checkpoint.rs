//! Exactly-once without broker transactions.
//!
//! Every output record names its source in the `lossgate-source` header, and every offset
//! commit carries, as its metadata, the output partitions' end offsets at that moment (a
//! [`Checkpoint`]). After a crash or a reassignment, the outputs are read from the checkpoint to
//! their end: the sources found there were already produced, and are skipped when the
//! uncommitted input is read again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use super::headers;
use super::position::{Position, TopicPosition};

const PREFIX: &str = "lossgate1:";
/// How long the recovery scan waits for more records once it has reached the end offsets.
pub(crate) const QUIET: Duration = Duration::from_millis(500);

/// End offsets of output partitions: topic -> partition -> next offset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub ends: BTreeMap<String, BTreeMap<i32, i64>>,
}

impl Checkpoint {
    /// The commit-metadata form.
    pub fn encode(&self) -> String {
        format!("{PREFIX}{}", serde_json::to_string(&self.ends).expect("maps of numbers serialise"))
    }

    /// The commit-metadata form if it fits [`METADATA_LIMIT`]; else empty, and recovery reads
    /// the checkpoint topic instead (at about 100 output partitions).
    pub fn encode_for_metadata(&self) -> String {
        let encoded = self.encode();
        if encoded.len() <= METADATA_LIMIT {
            encoded
        } else {
            String::new()
        }
    }

    /// A checkpoint no later than the output position of any of `records`: committing it keeps
    /// them inside the next recovery scan.
    pub fn floored(&self, records: impl IntoIterator<Item = TopicPosition>) -> Checkpoint {
        let mut floor = Checkpoint::default();
        for TopicPosition { topic, partition, offset } in records {
            let e = floor.ends.entry(topic).or_default().entry(partition).or_insert(offset);
            *e = (*e).min(offset);
        }
        self.earliest(&floor)
    }

    /// Parses commit metadata; `None` for metadata that is empty or not ours.
    pub fn decode(metadata: &str) -> Option<Self> {
        let json = metadata.strip_prefix(PREFIX)?;
        serde_json::from_str(json).ok().map(|ends| Self { ends })
    }

    /// Records that `partition` of `topic` now ends at `next_offset` or later.
    pub fn advance(&mut self, topic: &str, partition: i32, next_offset: i64) {
        let end = self.ends.entry(topic.to_string()).or_default().entry(partition).or_insert(next_offset);
        *end = (*end).max(next_offset);
    }

    /// Per partition, the earlier of the two (where to start reading to cover both).
    pub fn earliest(&self, other: &Checkpoint) -> Checkpoint {
        let mut out = self.clone();
        for (topic, partitions) in &other.ends {
            for (&p, &o) in partitions {
                let e = out.ends.entry(topic.clone()).or_default().entry(p).or_insert(o);
                *e = (*e).min(o);
            }
        }
        out
    }

    pub fn get(&self, topic: &str, partition: i32) -> Option<i64> {
        self.ends.get(topic)?.get(&partition).copied()
    }
}

/// One record of the checkpoint topic: the checkpoint in force after `committed` was committed
/// for `partition` of the input topic. Used where the broker drops commit metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointRecord {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    pub committed: i64,
    pub ends: BTreeMap<String, BTreeMap<i32, i64>>,
}

impl CheckpointRecord {
    pub fn key(group: &str, topic: &str, partition: i32) -> String {
        format!("{group}/{topic}/{partition}")
    }
}

/// The latest checkpoint record per key in `checkpoint_topic` for these input partitions;
/// `None` unless every one of them has one.
pub fn read_checkpoint_topic(
    client: &ClientConfig,
    checkpoint_topic: &str,
    group: &str,
    input_topic: &str,
    partitions: &HashSet<i32>,
    timeout: Duration,
) -> Result<Option<Checkpoint>> {
    let found = super::read_topic(client, checkpoint_topic, timeout)?;
    let mut latest: BTreeMap<i32, CheckpointRecord> = BTreeMap::new();
    for message in found {
        let Ok(record) =
            serde_json::from_slice::<CheckpointRecord>(message.payload.as_deref().unwrap_or_default())
        else {
            continue;
        };
        if record.group == group && record.topic == input_topic && partitions.contains(&record.partition) {
            latest.insert(record.partition, record);
        }
    }
    if latest.len() < partitions.len() {
        return Ok(None);
    }
    let mut start: Option<Checkpoint> = None;
    for record in latest.into_values() {
        let c = Checkpoint { ends: record.ends };
        start = Some(start.map_or(c.clone(), |s| s.earliest(&c)));
    }
    Ok(start)
}

/// Offsets of commit metadata a broker keeps at most (Kafka's `offset.metadata.max.bytes`
/// defaults to 4096); a larger checkpoint goes to the checkpoint topic only.
pub const METADATA_LIMIT: usize = 4000;

/// Records per second a recovery scan is expected to read at least; its time limit grows with
/// the records it has to read at this rate (a slow broker still finishes, a stuck one is reported).
const SCAN_RATE_FLOOR: u64 = 2_000;

/// What a recovery scan found.
pub struct Recovered {
    /// Input records already written to an output topic, and where.
    pub already_produced: HashMap<Position, TopicPosition>,
    /// The outputs' end offsets when the scan finished: the checkpoint to continue from.
    pub ends: Checkpoint,
    pub records_scanned: u64,
}

/// The recovery reader's context: reaching the end of a partition is how the scan knows it is
/// done, not an error to log (librdkafka reports it through the error callback too).
struct ScanContext;

impl rdkafka::ClientContext for ScanContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if error.rdkafka_error_code() != Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF) {
            tracing::error!("librdkafka: {error}: {reason}");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for ScanContext {}

/// Reads `outputs` from `start` (or from their beginning where `start` has no entry) to their
/// current end, and collects the sources of `input_topic`'s `partitions` found there. `timeout`
/// bounds each broker request; the whole scan may take that plus the time to read its records
/// at [`SCAN_RATE_FLOOR`], and says how far it got when it runs out.
pub fn scan_outputs(
    client: &ClientConfig,
    outputs: &[&str],
    start: Option<&Checkpoint>,
    input_topic: &str,
    partitions: &HashSet<i32>,
    timeout: Duration,
) -> Result<Recovered> {
    let mut config = client.clone();
    config
        .set("group.id", "lossgate-recovery-scan")
        .set("enable.auto.commit", "false")
        // End-of-partition events end the scan of a partition whose last offsets are control
        // records (transactional outputs): they are never delivered as messages.
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", "10");
    let consumer: BaseConsumer<ScanContext> =
        super::create_client_with_context(&config, ScanContext, "the recovery reader")?;
    let mut assignment = TopicPartitionList::new();
    let mut remaining: BTreeMap<(String, i32), i64> = BTreeMap::new();
    let mut ends = Checkpoint::default();
    for topic in outputs {
        let metadata = consumer
            .fetch_metadata(Some(topic), timeout)
            .with_context(|| format!("reading the partitions of output topic {topic}"))?;
        for t in metadata.topics() {
            if let Some(err) = t.error() {
                bail!("output topic {topic} is not usable ({err:?}): create it before starting lossgate");
            }
            for p in t.partitions() {
                let (low, high) = consumer
                    .fetch_watermarks(topic, p.id(), timeout)
                    .with_context(|| format!("reading the end offsets of {topic}/{}", p.id()))?;
                ends.advance(topic, p.id(), high);
                let from = start.and_then(|c| c.get(topic, p.id())).unwrap_or(low).max(low);
                if from < high {
                    assignment.add_partition_offset(topic, p.id(), Offset::Offset(from))?;
                    remaining.insert((topic.to_string(), p.id()), high);
                }
            }
        }
    }
    let mut found = HashMap::new();
    let mut records_scanned = 0;
    if remaining.is_empty() {
        return Ok(Recovered { already_produced: found, ends, records_scanned });
    }
    let to_read: u64 = assignment
        .elements()
        .iter()
        .filter_map(|e| {
            let high = remaining.get(&(e.topic().to_string(), e.partition()))?;
            let Offset::Offset(from) = e.offset() else { return None };
            Some((high - from).max(0) as u64)
        })
        .sum();
    let budget = timeout + Duration::from_secs(to_read / SCAN_RATE_FLOOR);
    consumer.assign(&assignment)?;
    let deadline = Instant::now() + budget;
    // Read to the reported end offsets, then on until nothing more arrives for a moment: some
    // brokers (tansu 0.6) report end offsets below what they hold.
    let mut quiet_since = Instant::now();
    // Partition numbers that reported end-of-partition since their last record.
    let mut at_end: HashSet<i32> = HashSet::new();
    let mut last_report = Instant::now();
    loop {
        let quiet = quiet_since.elapsed() > QUIET;
        if quiet && remaining.keys().all(|(_, p)| at_end.contains(p)) {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "recovery scan of the output topics read {records_scanned} of about {to_read} records in {budget:?} \
                 and did not reach the end of {} partitions: is the broker overloaded? Retrying",
                remaining.len()
            );
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            tracing::info!(records_scanned, to_read, "recovery scan in progress");
            last_report = Instant::now();
        }
        let Some(message) = consumer.poll(Duration::from_millis(50)) else { continue };
        let message = match message {
            Err(rdkafka::error::KafkaError::PartitionEOF(p)) => {
                at_end.insert(p);
                continue;
            }
            other => other.context("reading an output topic during recovery")?,
        };
        quiet_since = Instant::now();
        at_end.remove(&message.partition());
        records_scanned += 1;
        // Raw headers: outputs carry forwarded headers whose keys need not be UTF-8. The last
        // source header is lossgate's own (incoming ones were renamed on the way in).
        let raw = headers::read_raw(&message);
        if let Some(source) = headers::last_value(&raw, headers::SOURCE).and_then(TopicPosition::parse) {
            if source.topic == input_topic && partitions.contains(&source.partition) {
                found.insert(
                    source.position(),
                    TopicPosition::new(message.topic(), message.partition(), message.offset()),
                );
            }
        }
        let key = (message.topic().to_string(), message.partition());
        if remaining.get(&key).is_some_and(|&high| message.offset() + 1 >= high) {
            remaining.remove(&key);
        }
        ends.advance(message.topic(), message.partition(), message.offset() + 1);
    }
    Ok(Recovered { already_produced: found, ends, records_scanned })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_round_trips_through_commit_metadata() {
        let mut c = Checkpoint::default();
        c.advance("out", 0, 10);
        c.advance("out", 0, 7);
        c.advance("dlq", 2, 3);
        let decoded = Checkpoint::decode(&c.encode()).unwrap();
        assert_eq!(decoded, c);
        assert_eq!(decoded.get("out", 0), Some(10));
        assert_eq!(Checkpoint::decode(""), None);
        assert_eq!(Checkpoint::decode("something else"), None);
    }

    #[test]
    fn a_floored_checkpoint_keeps_uncommitted_outputs_inside_the_next_scan() {
        let mut c = Checkpoint::default();
        c.advance("out", 0, 100);
        c.advance("out", 1, 50);
        let floored = c.floored([
            TopicPosition::new("out", 0, 40),
            TopicPosition::new("out", 0, 60),
            TopicPosition::new("dlq", 0, 3),
        ]);
        assert_eq!(floored.get("out", 0), Some(40), "the earliest uncommitted output wins");
        assert_eq!(floored.get("out", 1), Some(50), "partitions without one keep their end");
        assert_eq!(floored.get("dlq", 0), Some(3));
        assert_eq!(c.floored([]), c);
    }

    #[test]
    fn metadata_too_large_for_the_broker_is_left_to_the_checkpoint_topic() {
        let mut c = Checkpoint::default();
        for p in 0..300 {
            c.advance("samples-clean", p, 1_000_000_000 + p as i64);
        }
        assert!(c.encode().len() > METADATA_LIMIT);
        assert_eq!(c.encode_for_metadata(), "");
        let mut small = Checkpoint::default();
        small.advance("out", 0, 1);
        assert_eq!(Checkpoint::decode(&small.encode_for_metadata()), Some(small));
    }

    #[test]
    fn earliest_takes_the_smaller_end_per_partition() {
        let mut a = Checkpoint::default();
        a.advance("out", 0, 10);
        let mut b = Checkpoint::default();
        b.advance("out", 0, 4);
        b.advance("out", 1, 9);
        let e = a.earliest(&b);
        assert_eq!((e.get("out", 0), e.get("out", 1)), (Some(4), Some(9)));
    }
}
