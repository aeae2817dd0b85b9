//! Reviewing the quarantine: list what was quarantined and why, and release chosen records to
//! the output topic exactly once.
//!
//! A release is recorded in `kafka.release_topic`, keyed by the quarantined record: first an
//! *intent* carrying the output topic's end offsets, then the released copy, then *done*. A
//! release interrupted between the two finds, on the next run, whether its copy reached the
//! output by reading the output from the intent's offsets: a record is released once however
//! often it is asked for.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::kafka::headers::{self, RawHeader};
use crate::kafka::position::{Position, TopicPosition};
use crate::kafka::{read_topic, TopicRecord};

const TIMEOUT: Duration = Duration::from_secs(30);
/// On a released copy: the quarantined record it was released from (`topic/partition/offset`).
pub const RELEASED_FROM: &str = "lossgate-released-from";
pub const RELEASED_AT: &str = "lossgate-released-at";
pub const RELEASE_REASON: &str = "lossgate-release-reason";

/// One quarantined record as reviewed.
#[derive(Debug, Clone, Serialize)]
pub struct Quarantined {
    /// `topic/partition/offset` in the quarantine topic: what `release --record` takes.
    pub record: String,
    /// The input record it came from (`lossgate-source`).
    pub source: String,
    pub key: Option<String>,
    pub label: Option<i64>,
    pub window: Option<u64>,
    pub score: Option<f64>,
    pub threshold: Option<f64>,
    pub reason: String,
    /// Milliseconds since the epoch.
    pub timestamp: Option<i64>,
    /// Its loss after each shadow epoch, and its window's same-label probe band (p10, p50,
    /// p90 per epoch), from the headers the daemon wrote.
    #[serde(skip)]
    pub trajectory: Option<Vec<f32>>,
    #[serde(skip)]
    pub probe_band: Option<Vec<[f32; 3]>>,
    /// The decoded sample, when its value decodes.
    #[serde(skip)]
    pub features: Option<Vec<f32>>,
    #[serde(skip)]
    raw: TopicRecord,
}

impl Quarantined {
    /// Every header as `key: value` text (bytes that are not UTF-8 shown lossily).
    pub fn header_lines(&self) -> Vec<String> {
        self.raw
            .headers
            .iter()
            .map(|(k, v)| {
                let value =
                    v.as_ref().map_or("(no value)".into(), |v| String::from_utf8_lossy(v).into_owned());
                format!("{}: {value}", String::from_utf8_lossy(k))
            })
            .collect()
    }
}

/// One quarantined record (`topic/partition/offset`, as `list` shows it) and, when the daemon
/// recorded its trajectory, a PNG of it against its window's clean probe band (with the
/// sample drawn beside when `input.image` says it is an image).
pub fn show(config: &Config, record: &str, png: Option<&std::path::Path>) -> Result<Quarantined> {
    let filter = Filter { records: vec![record.to_string()], ..Default::default() };
    let found = list(config, &filter)?.into_iter().next().ok_or_else(|| {
        anyhow!(
            "no record {record} in {}: give it as `quarantine list` prints it (topic/partition/offset)",
            config.kafka.quarantine_topic
        )
    })?;
    if let Some(path) = png {
        let (Some(trajectory), Some(band)) = (&found.trajectory, &found.probe_band) else {
            bail!(
                "{record} carries no {} / {} headers (written by an older lossgate, or not by lossgate): no plot to draw",
                headers::TRAJECTORY,
                headers::PROBE_BAND
            );
        };
        let image = match (config.input.image, &found.features) {
            (Some(shape), Some(features)) => Some((shape, features.as_slice())),
            _ => None,
        };
        let title = format!(
            "{record}: label {}, score {:.3} over threshold {:.3}",
            found.label.map_or("?".into(), |l| l.to_string()),
            found.score.unwrap_or(f64::NAN),
            found.threshold.unwrap_or(f64::NAN)
        );
        crate::eval::plots::trajectory_against_band(path, &title, trajectory, band, image)?;
    }
    Ok(found)
}

/// Which quarantined records to list or release.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub label: Option<i64>,
    pub window: Option<u64>,
    pub min_score: Option<f64>,
    pub max_score: Option<f64>,
    /// Only records newer than this many milliseconds ago.
    pub since: Option<Duration>,
    /// Only these records (`topic/partition/offset`), if any are named.
    pub records: Vec<String>,
}

impl Filter {
    fn keeps(&self, q: &Quarantined, now_ms: i64) -> bool {
        self.label.is_none_or(|l| q.label == Some(l))
            && self.window.is_none_or(|w| q.window == Some(w))
            && self.min_score.is_none_or(|s| q.score.is_some_and(|v| v >= s))
            && self.max_score.is_none_or(|s| q.score.is_some_and(|v| v <= s))
            && self.since.is_none_or(|d| q.timestamp.is_some_and(|t| t >= now_ms - d.as_millis() as i64))
            && (self.records.is_empty() || self.records.contains(&q.record))
    }
}

fn text(headers: &[RawHeader], name: &str) -> Option<String> {
    headers::last_value(headers, name).map(|v| String::from_utf8_lossy(v).into_owned())
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Every quarantined record that `filter` keeps, oldest first per partition.
pub fn list(config: &Config, filter: &Filter) -> Result<Vec<Quarantined>> {
    let kafka = &config.kafka;
    let rules = kafka.decode_rules(&config.input);
    let records = read_topic(&kafka.client_config()?, &kafka.quarantine_topic, TIMEOUT)?;
    let now = now_ms();
    let mut out = Vec::new();
    for raw in records {
        let sample = rules
            .decode(raw.payload.as_deref(), |name| {
                raw.headers.iter().find(|(k, _)| k == name.as_bytes()).and_then(|(_, v)| v.as_deref())
            })
            .ok();
        let label = sample.as_ref().map(|s| s.label);
        let q = Quarantined {
            record: TopicPosition::new(&kafka.quarantine_topic, raw.partition, raw.offset).to_string(),
            source: text(&raw.headers, headers::SOURCE).unwrap_or_default(),
            key: raw.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()),
            label,
            window: text(&raw.headers, headers::WINDOW).and_then(|w| w.parse().ok()),
            score: text(&raw.headers, headers::SCORE).and_then(|s| s.parse().ok()),
            threshold: text(&raw.headers, headers::THRESHOLD).and_then(|s| s.parse().ok()),
            reason: text(&raw.headers, headers::REASON).unwrap_or_default(),
            timestamp: raw.timestamp,
            trajectory: text(&raw.headers, headers::TRAJECTORY).and_then(|t| headers::parse_trajectory(&t)),
            probe_band: text(&raw.headers, headers::PROBE_BAND).and_then(|b| headers::parse_band(&b)),
            features: sample.map(|s| s.features),
            raw,
        };
        if filter.keeps(&q, now) {
            out.push(q);
        }
    }
    Ok(out)
}

/// The release log's record for one quarantined record.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
enum ReleaseEntry {
    /// About to write the copy; the output topic's end offset per partition before it (a list:
    /// an internally tagged enum cannot read integer map keys back).
    Intent {
        record: String,
        output_ends: Vec<Position>,
        reason: String,
    },
    Done {
        record: String,
        released_at: i64,
        reason: String,
    },
}

/// What a release did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Released {
    pub released: usize,
    /// Asked for, but released before (or by an interrupted earlier run whose copy landed).
    pub already: usize,
}

/// Releases the records `filter` keeps to the output topic, once each.
pub fn release(config: &Config, filter: &Filter, reason: &str) -> Result<Released> {
    let kafka = &config.kafka;
    if filter.records.is_empty()
        && filter.label.is_none()
        && filter.window.is_none()
        && filter.min_score.is_none()
        && filter.max_score.is_none()
        && filter.since.is_none()
    {
        bail!("say which records to release (--record, or a filter); releasing the whole quarantine takes --label/--window/--min-score/--max-score/--since");
    }
    let client = kafka.client_config()?;
    let mut log: HashMap<String, ReleaseEntry> = HashMap::new();
    for r in read_topic(&client, &kafka.release_topic, TIMEOUT)? {
        match serde_json::from_slice::<ReleaseEntry>(r.payload.as_deref().unwrap_or_default()) {
            Ok(entry) => {
                log.insert(entry.record().to_string(), entry);
            }
            Err(e) => tracing::warn!(
                record = %TopicPosition::new(&kafka.release_topic, r.partition, r.offset),
                error = %e,
                "not a release record; ignored (is kafka.release_topic shared with something else?)"
            ),
        }
    }
    let producer: FutureProducer = crate::kafka::create_client(
        kafka.producer_config()?.set("enable.idempotence", "true").set("acks", "all"),
        "the release producer",
    )?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    // Intents left by an interrupted run: did their copy land?
    type Pending = (String, Vec<Position>, String);
    let pending: Vec<Pending> = log
        .values()
        .filter_map(|e| match e {
            ReleaseEntry::Intent { record, output_ends, reason } => {
                Some((record.clone(), output_ends.clone(), reason.clone()))
            }
            ReleaseEntry::Done { .. } => None,
        })
        .collect();
    if !pending.is_empty() {
        let mut from: BTreeMap<i32, i64> = BTreeMap::new();
        for (_, ends, _) in &pending {
            for end in ends {
                let e = from.entry(end.partition).or_insert(end.offset);
                *e = (*e).min(end.offset);
            }
        }
        let landed = released_copies(&client, &kafka.output_topic, &from)?;
        for (record, _, reason) in pending {
            if landed.contains_key(&record) {
                let done =
                    ReleaseEntry::Done { record: record.clone(), released_at: landed[&record], reason };
                runtime.block_on(write_entry(&producer, &kafka.release_topic, &done))?;
                log.insert(record, done);
            } else {
                log.remove(&record);
            }
        }
    }

    let chosen = list(config, filter)?;
    let mut outcome = Released::default();
    let to_release: Vec<&Quarantined> = chosen
        .iter()
        .filter(|q| {
            let done = matches!(log.get(&q.record), Some(ReleaseEntry::Done { .. }));
            if done {
                outcome.already += 1;
            }
            !done
        })
        .collect();
    if to_release.is_empty() {
        return Ok(outcome);
    }
    let output_ends: Vec<Position> =
        end_offsets(&client, &kafka.output_topic)?.into_iter().map(Position::from).collect();
    runtime.block_on(async {
        for q in &to_release {
            let intent = ReleaseEntry::Intent {
                record: q.record.clone(),
                output_ends: output_ends.clone(),
                reason: reason.to_string(),
            };
            write_entry(&producer, &kafka.release_topic, &intent).await?;
        }
        crash_point("intents");
        let released_at = now_ms();
        for q in &to_release {
            let mut h = OwnedHeaders::new_with_capacity(q.raw.headers.len() + 3);
            for (k, v) in &q.raw.headers {
                h = headers::add_raw(h, k, v.as_deref());
            }
            let h = h
                .insert(Header { key: RELEASED_FROM, value: Some(&q.record) })
                .insert(Header { key: RELEASED_AT, value: Some(&released_at.to_string()) })
                .insert(Header { key: RELEASE_REASON, value: Some(reason) });
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&kafka.output_topic).headers(h);
            if let Some(k) = &q.raw.key {
                record = record.key(k.as_slice());
            }
            if let Some(v) = &q.raw.payload {
                record = record.payload(v.as_slice());
            }
            if let Some(ts) = q.raw.timestamp {
                record = record.timestamp(ts);
            }
            producer
                .send(record, TIMEOUT)
                .await
                .map_err(|(e, _)| anyhow!("releasing {} to {}: {e}", q.record, kafka.output_topic))?;
        }
        crash_point("copies");
        for q in &to_release {
            let done =
                ReleaseEntry::Done { record: q.record.clone(), released_at, reason: reason.to_string() };
            write_entry(&producer, &kafka.release_topic, &done).await?;
        }
        anyhow::Ok(())
    })?;
    outcome.released = to_release.len();
    Ok(outcome)
}

/// For the crash test: `LOSSGATE_RELEASE_CRASH_AT=intents|copies` aborts the process there.
fn crash_point(at: &str) {
    if std::env::var("LOSSGATE_RELEASE_CRASH_AT").is_ok_and(|v| v == at) {
        std::process::abort();
    }
}

impl ReleaseEntry {
    fn record(&self) -> &str {
        match self {
            ReleaseEntry::Intent { record, .. } | ReleaseEntry::Done { record, .. } => record,
        }
    }
}

async fn write_entry(producer: &FutureProducer, topic: &str, entry: &ReleaseEntry) -> Result<()> {
    let record = entry.record();
    let value = serde_json::to_vec(entry)?;
    producer
        .send(FutureRecord::to(topic).key(record).payload(&value), TIMEOUT)
        .await
        .map_err(|(e, _)| anyhow!("recording a release in {topic} (does the topic exist?): {e}"))?;
    Ok(())
}

fn end_offsets(client: &rdkafka::ClientConfig, topic: &str) -> Result<BTreeMap<i32, i64>> {
    let consumer: BaseConsumer = crate::kafka::create_client(client, "the release reader")?;
    let metadata =
        consumer.fetch_metadata(Some(topic), TIMEOUT).with_context(|| format!("reading {topic}"))?;
    let mut ends = BTreeMap::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            let (_, high) = consumer.fetch_watermarks(topic, p.id(), TIMEOUT)?;
            ends.insert(p.id(), high);
        }
    }
    Ok(ends)
}

/// Released copies in `topic` from `from` on: quarantined record -> released_at.
fn released_copies(
    client: &rdkafka::ClientConfig,
    topic: &str,
    from: &BTreeMap<i32, i64>,
) -> Result<HashMap<String, i64>> {
    let mut config = client.clone();
    config
        .set("group.id", "lossgate-release-check")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10");
    let consumer: BaseConsumer = crate::kafka::create_client(&config, "the release checker")?;
    let ends = end_offsets(client, topic)?;
    let mut list = TopicPartitionList::new();
    let mut remaining = 0;
    for (&p, &high) in &ends {
        let start = from.get(&p).copied().unwrap_or(0);
        if start < high {
            list.add_partition_offset(topic, p, Offset::Offset(start))?;
            remaining += 1;
        }
    }
    let mut found = HashMap::new();
    if remaining == 0 {
        return Ok(found);
    }
    consumer.assign(&list)?;
    let deadline = std::time::Instant::now() + TIMEOUT;
    let mut done: std::collections::HashSet<i32> = Default::default();
    while done.len() < remaining {
        if std::time::Instant::now() > deadline {
            bail!("reading {topic} for interrupted releases did not reach its end in {TIMEOUT:?}");
        }
        let Some(message) = consumer.poll(Duration::from_millis(50)) else { continue };
        let message = message?;
        let raw = headers::read_raw(&message);
        if let Some(record) = text(&raw, RELEASED_FROM) {
            let at = text(&raw, RELEASED_AT).and_then(|t| t.parse().ok()).unwrap_or(0);
            found.insert(record, at);
        }
        if ends.get(&message.partition()).is_some_and(|&high| message.offset() + 1 >= high) {
            done.insert(message.partition());
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_records_read_back_as_written() {
        let intent = ReleaseEntry::Intent {
            record: "q/0/7".into(),
            output_ends: vec![(0, 12).into(), (3, 4).into()],
            reason: "ok".into(),
        };
        let written = serde_json::to_vec(&intent).unwrap();
        let text = String::from_utf8(written.clone()).unwrap();
        assert!(text.contains(r#""output_ends":[[0,12],[3,4]]"#), "the stored form is unchanged: {text}");
        let back: ReleaseEntry = serde_json::from_slice(&written).unwrap();
        let expected: Vec<Position> = vec![(0, 12).into(), (3, 4).into()];
        assert!(matches!(&back, ReleaseEntry::Intent { output_ends, .. } if output_ends == &expected));
        let done = ReleaseEntry::Done { record: "q/0/7".into(), released_at: 5, reason: "ok".into() };
        let back: ReleaseEntry = serde_json::from_slice(&serde_json::to_vec(&done).unwrap()).unwrap();
        assert_eq!(back.record(), "q/0/7");
    }
}
