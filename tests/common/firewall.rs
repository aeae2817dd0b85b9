//! Running the real `lossgate` binary against a broker, feeding it MNIST records and reading
//! its three outputs back.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lossgate::codec::encode_json;
use lossgate::kafka::headers;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::broker::{free_port, Tansu};

pub const PARTITIONS: u32 = 3;

/// Topics, config file and metrics port of one test's firewall.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub metrics_port: u16,
    pub brokers: String,
    pub prefix: String,
}

impl Setup {
    pub fn topic(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    pub fn outputs(&self) -> [String; 3] {
        [self.topic("clean"), self.topic("quarantine"), self.topic("dead-letter")]
    }
}

/// Creates the topics, a probe file (JSON lines from MNIST's test split) and a config with
/// a small, fast engine.
pub fn setup(broker: &Tansu, prefix: &str, delivery: &str, decision: &str) -> Setup {
    setup_with_input_partitions(broker, prefix, delivery, decision, PARTITIONS)
}

/// [`setup`] with `input_partitions` partitions in the input topic (the outputs keep
/// [`PARTITIONS`]).
pub fn setup_with_input_partitions(
    broker: &Tansu,
    prefix: &str,
    delivery: &str,
    decision: &str,
    input_partitions: u32,
) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    create_topics(broker, prefix, input_partitions);
    let test = super::mnist_test(120);
    let mut probes = String::new();
    for i in 0..test.len() {
        probes.push_str(
            std::str::from_utf8(&encode_json(test.features.row(i).as_slice().unwrap(), test.labels[i]))
                .unwrap(),
        );
        probes.push('\n');
    }
    std::fs::write(dir.path().join("probes.jsonl"), probes).unwrap();
    let metrics_port = free_port();
    let config_path = dir.path().join("lossgate.toml");
    let config = config_text(&broker.brokers(), prefix, metrics_port, delivery, decision);
    std::fs::write(&config_path, config).unwrap();
    Setup { dir, config_path, metrics_port, brokers: broker.brokers(), prefix: prefix.to_string() }
}

/// The `[kafka]` section of a test firewall: the topics [`create_topics`] made for `prefix`.
pub fn kafka_section(brokers: &str, prefix: &str) -> String {
    format!(
        r#"[kafka]
brokers = "{brokers}"
group_id = "{prefix}-group"
input_topic = "{prefix}-samples"
output_topic = "{prefix}-clean"
quarantine_topic = "{prefix}-quarantine"
dead_letter_topic = "{prefix}-dead-letter"
checkpoint_topic = "{prefix}-checkpoints"

[kafka.consumer_properties]
# A SIGKILLed member stays in the group until its session times out: keep that short here.
# tansu waits for a member that left mid-rebalance until the rebalance timeout (librdkafka's
# max.poll.interval.ms, 300 s by default): short here too.
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "1000"
"max.poll.interval.ms" = "15000"
"#
    )
}

/// The input topic with `input_partitions` partitions, and the three outputs and the
/// checkpoint topic with [`PARTITIONS`].
pub fn create_topics(broker: &Tansu, prefix: &str, input_partitions: u32) {
    broker.create_topic(&format!("{prefix}-samples"), input_partitions);
    for t in ["clean", "quarantine", "dead-letter", "checkpoints"] {
        broker.create_topic(&format!("{prefix}-{t}"), PARTITIONS);
    }
}

pub fn config_text(brokers: &str, prefix: &str, metrics_port: u16, delivery: &str, decision: &str) -> String {
    let kafka = kafka_section(brokers, prefix);
    format!(
        r#"
[window]
size = 200
max_wait = "1s"

[engine]
# Two windows decided at once, so that every delivery, rebalance and crash test meets
# windows finishing out of order, whatever the host's core count.
workers = 2

[shadow]
hidden = [32]
epochs = 4

[probes]
count = 100
file = "probes.jsonl"
format = "jsonl"

[scorer]
k = 20

{kafka}
[delivery]
mode = "{delivery}"
shutdown_grace = "20s"

[metrics]
listen = "127.0.0.1:{metrics_port}"

[decision]
{decision}
"#
    )
}

/// The firewall as a child process.
pub struct Firewall {
    pub child: Child,
}

impl Firewall {
    pub fn start(config: &Path) -> Self {
        Self::start_logging(config, "info,librdkafka=warn")
    }

    /// Starts with this `RUST_LOG` filter.
    pub fn start_logging(config: &Path, filter: &str) -> Self {
        // Every run of this firewall appends to one log beside its config, for failed tests.
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(config.with_extension("log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_lossgate"))
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", filter)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting lossgate");
        Self { child }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        unsafe { libc_kill(self.child.id() as i32, 15) };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "lossgate did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, signal: i32) -> i32;
}

impl Drop for Firewall {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Produces MNIST training images `[from, to)` as JSON, keyed `sample-i`, plus `malformed`
/// broken records keyed `bad-j`, as an ordinary client does: batched (`linger.ms` 5, the
/// default batch size), keys spread over the partitions. Returns how many were produced.
pub async fn produce(brokers: &str, topic: &str, from: usize, to: usize, malformed: usize) -> usize {
    produce_with(brokers, topic, from, to, malformed, &[]).await
}

/// [`produce`] with producer settings on top of the ordinary ones (compression, batching).
pub async fn produce_with(
    brokers: &str,
    topic: &str,
    from: usize,
    to: usize,
    malformed: usize,
    settings: &[(&str, &str)],
) -> usize {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers).set("linger.ms", "5");
    for (k, v) in settings {
        config.set(*k, *v);
    }
    let producer: FutureProducer = config.create().unwrap();
    let data = super::mnist_train(to);
    let mut pending = Vec::new();
    for i in from..to {
        let value = encode_json(data.features.row(i).as_slice().unwrap(), data.labels[i]);
        let key = format!("sample-{i}");
        pending.push(
            producer
                .send_result(FutureRecord::to(topic).key(&key).payload(&value))
                .map_err(|(e, _)| e)
                .unwrap(),
        );
    }
    let bad: [&[u8]; 4] =
        [b"{not json", br#"{"features": [1.0], "label": 3}"#, br#"{"features": [], "label": -1}"#, b""];
    for j in 0..malformed {
        let key = format!("bad-{from}-{j}");
        pending.push(
            producer
                .send_result(FutureRecord::to(topic).key(&key).payload(bad[j % bad.len()]))
                .map_err(|(e, _)| e)
                .unwrap(),
        );
    }
    for p in pending {
        p.await.unwrap().unwrap();
    }
    to - from + malformed
}

/// Produces MNIST training images `[from, to)` for the binary codec (little-endian f32 value,
/// the label in the `label` header), keyed `sample-i`, batched. Returns how many.
pub async fn produce_f32le(brokers: &str, topic: &str, from: usize, to: usize) -> usize {
    let producer: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", brokers).set("linger.ms", "5").create().unwrap();
    let data = super::mnist_train(to);
    let mut pending = Vec::new();
    for i in from..to {
        let value = lossgate::codec::encode_f32le(data.features.row(i).as_slice().unwrap());
        let key = format!("sample-{i}");
        let label = data.labels[i].to_string();
        let h = rdkafka::message::OwnedHeaders::new()
            .insert(rdkafka::message::Header { key: "label", value: Some(label.as_str()) });
        pending.push(
            producer
                .send_result(FutureRecord::to(topic).key(&key).payload(&value).headers(h))
                .map_err(|(e, _)| e)
                .unwrap(),
        );
    }
    for p in pending {
        p.await.unwrap().unwrap();
    }
    to - from
}

/// One output record as read back.
#[derive(Debug, Clone)]
pub struct OutputRecord {
    pub raw_headers: Vec<headers::RawHeader>,
    pub value_len: usize,
    pub topic: String,
    pub key: String,
    pub source: String,
    pub headers: HashMap<String, String>,
}

/// Reads the three output topics from the beginning until `expected` records arrived (or the
/// timeout passed), then a little longer to catch duplicates.
pub fn read_outputs(setup: &Setup, expected: usize, timeout: Duration) -> Vec<OutputRecord> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &setup.brokers)
        .set("group.id", format!("{}-reader-{}", setup.prefix, free_port()))
        .set("fetch.wait.max.ms", "10")
        .create()
        .unwrap();
    let mut list = TopicPartitionList::new();
    for topic in setup.outputs() {
        for p in 0..PARTITIONS as i32 {
            list.add_partition_offset(&topic, p, Offset::Beginning).unwrap();
        }
    }
    consumer.assign(&list).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + timeout;
    let mut settle: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if now > deadline || settle.is_some_and(|s| now > s) {
            break;
        }
        if out.len() >= expected && settle.is_none() {
            settle = Some(now + Duration::from_secs(2));
        }
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else { continue };
        // Raw: forwarded header keys need not be UTF-8 (rdkafka's iterator would panic).
        let raw = headers::read_raw(&m);
        let headers: HashMap<String, String> = raw
            .iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(k).to_string(),
                    String::from_utf8_lossy(v.as_deref().unwrap_or_default()).to_string(),
                )
            })
            .collect();
        out.push(OutputRecord {
            raw_headers: raw,
            value_len: m.payload().map_or(0, <[u8]>::len),
            topic: m.topic().to_string(),
            key: m.key().map(|k| String::from_utf8_lossy(k).to_string()).unwrap_or_default(),
            source: headers.get(headers::SOURCE).cloned().unwrap_or_default(),
            headers,
        });
    }
    out
}

/// Counts per distinct source and the number of duplicates.
pub fn duplicates(records: &[OutputRecord]) -> usize {
    let mut seen = std::collections::HashSet::new();
    records.iter().filter(|r| !seen.insert(r.source.clone())).count()
}

/// GET `path` from 127.0.0.1:`port`: the status code and the body (chunked bodies decoded).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes())
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, rest) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    if !head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return Some((status, rest.to_string()));
    }
    let mut body = String::new();
    let mut rest = rest;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).ok()?;
        if n == 0 {
            break;
        }
        body.push_str(tail.get(..n)?);
        rest = tail.get(n + 2..)?;
    }
    Some((status, body))
}

/// Scrapes `/metrics` and returns `name{labels} -> value`.
pub fn scrape(port: u16) -> Option<HashMap<String, f64>> {
    let (_, text) = http_get(port, "/metrics")?;
    Some(
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| l.rsplit_once(' ').and_then(|(k, v)| v.parse().ok().map(|v| (k.to_string(), v))))
            .collect(),
    )
}

pub fn http_status(port: u16, path: &str) -> Option<u16> {
    http_get(port, path).map(|(status, _)| status)
}

/// Waits until `metric` reaches `at_least`.
pub fn wait_for_metric(port: u16, metric: &str, at_least: f64, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if scrape(port).and_then(|m| m.get(metric).copied()).is_some_and(|v| v >= at_least) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}
