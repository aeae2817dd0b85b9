//! The Kafka edges: where records come from and go to, and how delivery is guaranteed.

pub mod checkpoint;
pub mod delivery;
pub mod headers;
pub mod position;

use std::collections::BTreeMap;
use std::time::Duration;

use std::time::Instant;

use anyhow::{bail, Context};
use rdkafka::client::ClientContext;
use rdkafka::config::{FromClientConfig, FromClientConfigAndContext};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::Deserialize;

use crate::codec::{Codec, DecodeRules};
use crate::data::InputConfig;
use crate::validation::{ensure, ConfigError};

#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// bootstrap.servers
    pub brokers: String,
    /// Consumer group of the input topic.
    pub group_id: String,
    pub input_topic: String,
    /// Forwarded (clean) records: what the production trainer reads.
    pub output_topic: String,
    pub quarantine_topic: String,
    /// Records that could not be decoded or do not fit the configured shape.
    pub dead_letter_topic: String,
    /// `exactly-once` mode: where checkpoints are also kept, for brokers that drop offset-commit
    /// metadata (tansu 0.6 does). Best configured compacted; one small record per partition and window.
    pub checkpoint_topic: String,
    /// `lossgate quarantine release`: the record of every release (compacted, keyed by the
    /// quarantined record), so that releasing a record twice writes it once.
    pub release_topic: String,
    pub codec: Codec,
    /// `f32le` codec: the header holding the label as decimal text.
    pub label_header: String,
    /// Larger values go to the dead-letter topic.
    pub max_record_bytes: usize,
    /// Passed to librdkafka as they are (security.protocol, sasl.*, ssl.*, ...), for the
    /// consumer and the producers alike. A value of the form `env:NAME` or `file:PATH` is
    /// read from that environment variable or file, so secrets need not sit in this file.
    pub properties: BTreeMap<String, String>,
    /// Passed to the producers only, after `properties` (compression.type, batch.size, ...):
    /// a producer property given to a consumer makes librdkafka warn.
    pub producer_properties: BTreeMap<String, String>,
    /// Passed to the input topic's consumer only, after `properties` (session.timeout.ms,
    /// max.poll.interval.ms, ...).
    pub consumer_properties: BTreeMap<String, String>,
    /// What to do when the input offsets jump past records never delivered.
    pub gap_policy: GapPolicy,
}

/// The one output a record goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Destination {
    Forward,
    Quarantine,
    DeadLetter,
}

impl Destination {
    pub fn topic(self, kafka: &KafkaConfig) -> &str {
        match self {
            Destination::Forward => &kafka.output_topic,
            Destination::Quarantine => &kafka.quarantine_topic,
            Destination::DeadLetter => &kafka.dead_letter_topic,
        }
    }

    /// The destination whose topic `topic` is, for a reader of the outputs.
    pub fn of_topic(topic: &str, kafka: &KafkaConfig) -> Option<Self> {
        [Self::Forward, Self::Quarantine, Self::DeadLetter].into_iter().find(|d| d.topic(kafka) == topic)
    }
}

/// What the daemon does when the offsets it receives jump past one it never read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum GapPolicy {
    /// Stop reading the partition (nothing past the gap is committed) unless a second read
    /// shows that the broker holds no record there.
    #[default]
    Stop,
    /// Count the gap and carry on: for topics whose gaps are expected (compacted topics,
    /// transactional producers' control records) on a broker that does not skip.
    Skip,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            group_id: "lossgate".into(),
            input_topic: "samples".into(),
            output_topic: "samples-clean".into(),
            quarantine_topic: "samples-quarantine".into(),
            dead_letter_topic: "samples-dead-letter".into(),
            checkpoint_topic: "lossgate-checkpoints".into(),
            release_topic: "lossgate-releases".into(),
            codec: Codec::Json,
            label_header: "label".into(),
            max_record_bytes: 1 << 20,
            properties: BTreeMap::new(),
            producer_properties: BTreeMap::new(),
            consumer_properties: BTreeMap::new(),
            gap_policy: GapPolicy::Stop,
        }
    }
}

impl std::fmt::Debug for KafkaConfig {
    /// Like the derived form, with secret property values redacted: configs are logged and
    /// printed (`lossgate check-config`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redact = |map: &BTreeMap<String, String>| -> BTreeMap<String, String> {
            map.iter()
                .map(|(k, v)| (k.clone(), if is_secret(k) { "<redacted>".to_string() } else { v.clone() }))
                .collect()
        };
        // Destructured, so that a new field cannot be left out of the printed form unnoticed.
        let Self {
            brokers,
            group_id,
            input_topic,
            output_topic,
            quarantine_topic,
            dead_letter_topic,
            checkpoint_topic,
            release_topic,
            codec,
            label_header,
            max_record_bytes,
            properties,
            producer_properties,
            consumer_properties,
            gap_policy,
        } = self;
        f.debug_struct("KafkaConfig")
            .field("brokers", brokers)
            .field("group_id", group_id)
            .field("input_topic", input_topic)
            .field("output_topic", output_topic)
            .field("quarantine_topic", quarantine_topic)
            .field("dead_letter_topic", dead_letter_topic)
            .field("checkpoint_topic", checkpoint_topic)
            .field("release_topic", release_topic)
            .field("codec", codec)
            .field("label_header", label_header)
            .field("max_record_bytes", max_record_bytes)
            .field("properties", &redact(properties))
            .field("producer_properties", &redact(producer_properties))
            .field("consumer_properties", &redact(consumer_properties))
            .field("gap_policy", gap_policy)
            .finish()
    }
}

/// Property names whose values are never logged.
pub fn is_secret(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name.contains("password")
        || name.contains("secret")
        || name.ends_with(".key.pem")
        || name.contains("token")
        // sasl.oauthbearer.config and .extensions carry credentials in free text.
        || name.starts_with("sasl.oauthbearer.")
}

/// `error` as text with every secret value of `client` replaced: librdkafka's configuration
/// errors quote the offending property's value, which may be a password.
pub fn redacted_error(client: &ClientConfig, error: &rdkafka::error::KafkaError) -> String {
    let mut text = error.to_string();
    // config_map() masks the values; get() gives the real ones to look for.
    for name in client.config_map().keys().filter(|name| is_secret(name)) {
        if let Some(value) = client.get(name).filter(|v| !v.is_empty()) {
            text = text.replace(value, "<redacted>");
        }
    }
    text
}

/// Creates a client, with secrets kept out of the error (see [`redacted_error`]).
pub fn create_client<C: FromClientConfig>(client: &ClientConfig, what: &str) -> anyhow::Result<C> {
    client.create().map_err(|e| anyhow::anyhow!("creating {what}: {}", redacted_error(client, &e)))
}

/// Like [`create_client`], with a client context.
pub fn create_client_with_context<X: ClientContext, C: FromClientConfigAndContext<X>>(
    client: &ClientConfig,
    context: X,
    what: &str,
) -> anyhow::Result<C> {
    client
        .create_with_context(context)
        .map_err(|e| anyhow::anyhow!("creating {what}: {}", redacted_error(client, &e)))
}

impl KafkaConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        ensure(!self.brokers.trim().is_empty(), "kafka.brokers", "is empty: name at least one host:port")?;
        ensure(!self.group_id.trim().is_empty(), "kafka.group_id", "is empty")?;
        let topics = [
            ("kafka.input_topic", &self.input_topic),
            ("kafka.output_topic", &self.output_topic),
            ("kafka.quarantine_topic", &self.quarantine_topic),
            ("kafka.dead_letter_topic", &self.dead_letter_topic),
            ("kafka.checkpoint_topic", &self.checkpoint_topic),
            ("kafka.release_topic", &self.release_topic),
        ];
        for (i, (field, topic)) in topics.iter().enumerate() {
            ensure(!topic.trim().is_empty(), field, "is empty")?;
            if let Some((other, _)) = topics[..i].iter().find(|(_, t)| t == topic) {
                return Err(ConfigError::new(
                    *field,
                    format!("{topic:?} is also {other}: every topic must differ"),
                ));
            }
        }
        ensure(self.max_record_bytes > 0, "kafka.max_record_bytes", "must be at least 1")?;
        for (section, map) in
            [("properties", &self.properties), ("producer_properties", &self.producer_properties)]
        {
            for (name, value) in map {
                resolve_property(name, value)
                    .map_err(|problem| ConfigError::new(format!("kafka.{section}.{name}"), problem))?;
            }
        }
        Ok(())
    }

    pub fn decode_rules(&self, input: &InputConfig) -> DecodeRules {
        DecodeRules {
            codec: self.codec,
            features: input.features,
            classes: input.classes,
            max_record_bytes: self.max_record_bytes,
            label_header: self.label_header.clone(),
        }
    }

    /// The librdkafka settings every client shares: brokers and the user's properties.
    pub fn client_config(&self) -> anyhow::Result<ClientConfig> {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        config.set("message.max.bytes", (self.max_record_bytes + 64 * 1024).to_string());
        apply_properties(&mut config, "properties", &self.properties)?;
        Ok(config)
    }

    /// [`Self::client_config`] plus the producer-only properties.
    pub fn producer_config(&self) -> anyhow::Result<ClientConfig> {
        let mut config = self.client_config()?;
        apply_properties(&mut config, "producer_properties", &self.producer_properties)?;
        Ok(config)
    }

    /// [`Self::client_config`] plus the input consumer's own properties.
    pub fn consumer_config(&self) -> anyhow::Result<ClientConfig> {
        let mut config = self.client_config()?;
        apply_properties(&mut config, "consumer_properties", &self.consumer_properties)?;
        Ok(config)
    }

    /// Whether the user set this librdkafka property for the input consumer.
    pub fn consumer_sets(&self, name: &str) -> bool {
        self.properties.contains_key(name) || self.consumer_properties.contains_key(name)
    }
}

fn apply_properties(
    config: &mut ClientConfig,
    section: &str,
    map: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    for (name, value) in map {
        config.set(
            name,
            resolve_property(name, value).map_err(|e| anyhow::anyhow!("kafka.{section}.{name}: {e}"))?,
        );
    }
    Ok(())
}

/// Reads `env:NAME` and `file:PATH` values; anything else is taken as it is.
fn resolve_property(name: &str, value: &str) -> Result<String, String> {
    if let Some(var) = value.strip_prefix("env:") {
        return std::env::var(var)
            .map_err(|_| format!("environment variable {var} (named for {name}) is not set"));
    }
    if let Some(path) = value.strip_prefix("file:") {
        return std::fs::read_to_string(path)
            .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
            .map_err(|e| format!("cannot read {path} (named for {name}): {e}"));
    }
    Ok(value.to_string())
}

/// One record as [`read_topic`] returns it, headers as bytes.
#[derive(Debug, Clone)]
pub struct TopicRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<headers::RawHeader>,
    /// Milliseconds since the epoch, where the record has a timestamp.
    pub timestamp: Option<i64>,
}

/// Every record of `topic` from its beginning until nothing more arrives for a moment (the
/// checkpoint topic, a trusted probe topic). Read without a consumer group's commits.
pub fn read_topic(client: &ClientConfig, topic: &str, timeout: Duration) -> anyhow::Result<Vec<TopicRecord>> {
    let mut config = client.clone();
    config
        .set("group.id", "lossgate-topic-reader")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10");
    let consumer: BaseConsumer = create_client(&config, "a topic reader")?;
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .with_context(|| format!("reading the partitions of {topic}"))?;
    let mut assignment = TopicPartitionList::new();
    // Read at least to the end offsets seen now: a first fetch slower than the quiet time
    // must not pass for an empty topic.
    let mut unread: BTreeMap<i32, i64> = BTreeMap::new();
    for t in metadata.topics() {
        if let Some(err) = t.error() {
            bail!("topic {topic} is not usable ({err:?}): does it exist?");
        }
        for p in t.partitions() {
            assignment.add_partition_offset(topic, p.id(), Offset::Beginning)?;
            let (low, high) = consumer
                .fetch_watermarks(topic, p.id(), timeout)
                .with_context(|| format!("reading the end offsets of {topic}/{}", p.id()))?;
            if high > low {
                unread.insert(p.id(), high);
            }
        }
    }
    consumer.assign(&assignment)?;
    let mut messages = Vec::new();
    let deadline = Instant::now() + timeout;
    let mut quiet_since = Instant::now();
    while !unread.is_empty() || quiet_since.elapsed() < checkpoint::QUIET {
        if Instant::now() > deadline {
            bail!(
                "reading {topic} did not reach its end within {timeout:?} ({} partitions short)",
                unread.len()
            );
        }
        if let Some(message) = consumer.poll(Duration::from_millis(50)) {
            let message = message?;
            if unread.get(&message.partition()).is_some_and(|&high| message.offset() + 1 >= high) {
                unread.remove(&message.partition());
            }
            messages.push(TopicRecord {
                partition: message.partition(),
                offset: message.offset(),
                key: message.key().map(<[u8]>::to_vec),
                payload: message.payload().map(<[u8]>::to_vec),
                headers: headers::read_raw(&message),
                timestamp: message.timestamp().to_millis(),
            });
            quiet_since = Instant::now();
        }
    }
    Ok(messages)
}

/// The offsets a fresh read of `partition` from `from` returns first (at most `count` of
/// them, waiting a few seconds at most): a second look at offsets the group consumer never got.
pub fn offsets_from(
    client: &ClientConfig,
    topic: &str,
    partition: i32,
    from: i64,
    count: usize,
    read_committed: bool,
) -> anyhow::Result<Vec<i64>> {
    let mut config = client.clone();
    config
        .set("group.id", "lossgate-gap-check")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .set("isolation.level", if read_committed { "read_committed" } else { "read_uncommitted" });
    let consumer: BaseConsumer = create_client(&config, "the gap checker")?;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, partition, Offset::Offset(from))?;
    consumer.assign(&assignment)?;
    let mut seen = Vec::with_capacity(count);
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen.len() < count && Instant::now() < deadline {
        if let Some(message) = consumer.poll(Duration::from_millis(50)) {
            seen.push(message?.offset());
        }
    }
    Ok(seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_when_a_config_is_printed() {
        let mut config = KafkaConfig::default();
        config.properties.insert("sasl.password".into(), "hunter2-secret".into());
        config.properties.insert("ssl.key.password".into(), "another-secret".into());
        config.properties.insert("security.protocol".into(), "SASL_SSL".into());
        config.properties.insert("sasl.oauthbearer.config".into(), "principal=me secret-token".into());
        config.properties.insert("sasl.oauthbearer.extensions".into(), "key=oauth-extension".into());
        let printed = format!("{config:?} {config:#?}");
        assert!(!printed.contains("hunter2-secret") && !printed.contains("another-secret"), "{printed}");
        assert!(!printed.contains("principal=me") && !printed.contains("oauth-extension"), "{printed}");
        assert!(printed.contains("SASL_SSL"));
    }

    #[test]
    fn secrets_come_from_environment_variables_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        std::fs::write(&file, "from-a-file\n").unwrap();
        assert_eq!(
            resolve_property("sasl.password", &format!("file:{}", file.display())).unwrap(),
            "from-a-file"
        );
        std::env::set_var("LOSSGATE_TEST_SECRET", "from-the-env");
        assert_eq!(resolve_property("sasl.password", "env:LOSSGATE_TEST_SECRET").unwrap(), "from-the-env");
        let missing = resolve_property("sasl.password", "env:LOSSGATE_TEST_UNSET").unwrap_err();
        assert!(missing.contains("LOSSGATE_TEST_UNSET"), "{missing}");
    }
}
