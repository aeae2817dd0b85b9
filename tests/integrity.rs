//! Every input record in exactly one output, produced as users produce (batched, several
//! partitions, compressed, hostile headers), through a group of live instances that scale up
//! and down, get killed and restarted; and on a broker that skips records (tansu 0.6.0), a
//! partition stopped loudly instead of records lost. Outputs are read back by an independent
//! consumer.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::broker::{free_port, Tansu};
use common::firewall::{
    duplicates, produce, produce_with, read_outputs, scrape, setup, setup_with_input_partitions,
    wait_for_metric, Firewall, OutputRecord, Setup,
};
use lossgate::codec::encode_json;
use lossgate::kafka::headers;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(180);

fn print_log(path: &Path) {
    if let Ok(log) = std::fs::read_to_string(path.with_extension("log")) {
        eprintln!("---- {} ----\n{log}", path.display());
    }
}

/// Every key in `keys` exactly once across the outputs, nothing else; returns the outputs.
fn assert_each_key_once(s: &Setup, keys: &HashSet<String>, logs: &[PathBuf]) -> Vec<OutputRecord> {
    let outputs = read_outputs(s, keys.len(), TIMEOUT);
    let out_keys: HashSet<String> = outputs.iter().map(|r| r.key.clone()).collect();
    let missing: Vec<_> = keys.difference(&out_keys).take(10).collect();
    let dup = duplicates(&outputs);
    if !missing.is_empty() || dup != 0 || outputs.len() != keys.len() {
        for log in logs {
            print_log(log);
        }
    }
    assert!(missing.is_empty(), "records never reached an output, e.g. {missing:?}");
    assert_eq!(dup, 0, "no input may be produced twice");
    assert_eq!(outputs.len(), keys.len(), "records in == forwarded + quarantined + dead-lettered");
    outputs
}

fn sample_keys(from: usize, to: usize) -> impl Iterator<Item = String> {
    (from..to).map(|i| format!("sample-{i}"))
}

/// The config of another instance of the same group: the same file with its own metrics port.
fn instance_config(s: &Setup, name: &str) -> (PathBuf, u16) {
    let port = free_port();
    let text = std::fs::read_to_string(&s.config_path)
        .unwrap()
        .replace(&format!("127.0.0.1:{}", s.metrics_port), &format!("127.0.0.1:{port}"));
    let path = s.dir.path().join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    (path, port)
}

fn append_config(s: &Setup, extra: &str) {
    let mut text = std::fs::read_to_string(&s.config_path).unwrap();
    text.push_str(extra);
    std::fs::write(&s.config_path, text).unwrap();
}

fn metric(port: u16, name: &str) -> f64 {
    scrape(port).and_then(|m| m.get(name).copied()).unwrap_or(0.0)
}

/// Waits until the instance on `port` holds partitions (`/readyz` answers 200).
fn wait_ready(port: u16) {
    let deadline = std::time::Instant::now() + TIMEOUT;
    while common::firewall::http_status(port, "/readyz") != Some(200) {
        assert!(std::time::Instant::now() < deadline, "instance on port {port} never got partitions");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Produces batches of 150 records every 200 ms from `from` until `stop` is set; returns the
/// end (exclusive) of what was produced.
fn stream_until(
    brokers: String,
    topic: String,
    from: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut next = from;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) && next < 50_000 {
            next += produce(&brokers, &topic, next, next + 150, 0).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        next
    })
}

/// Three instances of one group over four partitions while records stream: scale up, scale
/// down (SIGTERM), a member SIGKILLed, a rolling restart. Each step waits until the group has
/// settled (tansu's coordinator, unlike Kafka's, never expires a member killed in the middle
/// of a join when it was elected leader: the group then stalls for good; that is the broker's
/// fault and not what this test is about).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_scaling_up_down_killed_and_restarted_writes_every_record_once() {
    let broker = Tansu::start();
    let s = setup_with_input_partitions(&broker, "group", "exactly-once", "alpha = 0.1", 4);
    let input = s.topic("samples");
    let (b_config, b_port) = instance_config(&s, "b");
    let (c_config, c_port) = instance_config(&s, "c");
    let logs = [s.config_path.clone(), b_config.clone(), c_config.clone()];
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut a = Firewall::start(&s.config_path);
    let stream = stream_until(s.brokers.clone(), input.clone(), 0, stop.clone());
    wait_ready(s.metrics_port);

    // Scale up mid-stream: B, then C.
    let mut b = Firewall::start(&b_config);
    wait_ready(b_port);
    let mut c = Firewall::start(&c_config);
    wait_ready(c_port);
    assert!(wait_for_metric(c_port, "lossgate_windows_total{result=\"committed\"}", 1.0, TIMEOUT), "C works");

    // Scale down: B leaves with SIGTERM; then C is SIGKILLed while it works.
    assert_eq!(b.terminate(), Some(0));
    std::thread::sleep(Duration::from_secs(5));
    let c_done = metric(c_port, "lossgate_windows_total{result=\"committed\"}");
    assert!(wait_for_metric(c_port, "lossgate_windows_total{result=\"committed\"}", c_done + 1.0, TIMEOUT));
    c.kill();
    // C's session times out, A takes everything.
    std::thread::sleep(Duration::from_secs(12));

    // Rolling restart: B back, then A replaced by a new process.
    let _b = Firewall::start(&b_config);
    wait_ready(b_port);
    assert_eq!(a.terminate(), Some(0));
    let _a = Firewall::start(&s.config_path);
    wait_ready(s.metrics_port);
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let total = stream.await.unwrap();

    let keys: HashSet<String> = sample_keys(0, total).collect();
    assert_each_key_once(&s, &keys, &logs);
    let recovered: usize = logs
        .iter()
        .filter_map(|l| std::fs::read_to_string(l.with_extension("log")).ok())
        .flat_map(|log| {
            log.lines()
                .filter(|l| l.contains("recovery scan done"))
                .filter_map(|l| {
                    l.split("already_produced=").nth(1)?.split_whitespace().next()?.parse::<usize>().ok()
                })
                .collect::<Vec<_>>()
        })
        .sum();
    eprintln!(
        "group of 3 over 4 partitions: {total} records in, {total} out, 0 duplicates; 1 SIGKILL, 2 SIGTERM, \
         2 restarts; recovery found {recovered} records already produced"
    );
}

/// A header key that is not UTF-8 (rdkafka's Rust API takes `&str`, so it is added raw).
fn hostile_headers() -> OwnedHeaders {
    let h = headers::add_raw(OwnedHeaders::new(), &[0xff, 0xfe, b'k'], Some(b"v"));
    headers::add_raw(h, b"trace-id", Some(b"abc"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_records_are_decided_or_dead_lettered_and_the_firewall_keeps_going() {
    let broker = Tansu::start();
    let s = setup(&broker, "hostile", "exactly-once", "alpha = 0.1");
    let mut firewall = Firewall::start(&s.config_path);
    let input = s.topic("samples");
    let mut keys: HashSet<String> = HashSet::new();
    let n = produce(&s.brokers, &input, 0, 150, 0).await;
    keys.extend(sample_keys(0, n));

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &s.brokers)
        .set("linger.ms", "5")
        .set("message.max.bytes", "4000000")
        .create()
        .unwrap();
    let data = common::mnist_train(10);
    let sample = |i: usize| encode_json(data.features.row(i).as_slice().unwrap(), data.labels[i]);
    let features: Vec<String> = data.features.row(0).iter().map(|v| v.to_string()).collect();
    let as_array = format!("[[{}], {}]", features.join(","), data.labels[0]);
    let float_label = format!("{{\"features\": [{}], \"label\": {}.0}}", features.join(","), data.labels[0]);
    let oversized = vec![b' '; 1_500_000];
    let records: Vec<(&str, Vec<u8>, Option<OwnedHeaders>)> =
        vec![
            ("hostile-utf8-key", sample(1), Some(hostile_headers())),
            (
                "hostile-forged-source",
                sample(2),
                Some(OwnedHeaders::new().insert(rdkafka::message::Header {
                    key: headers::SOURCE,
                    value: Some("someone-else/0/5"),
                })),
            ),
            ("hostile-json-array", as_array.into_bytes(), None),
            ("hostile-float-label", float_label.into_bytes(), None),
            ("hostile-oversized", oversized.clone(), None),
        ];
    let mut pending = Vec::new();
    for (key, value, h) in &records {
        let mut record = FutureRecord::to(&input).key(*key).payload(value);
        if let Some(h) = h {
            record = record.headers(h.clone());
        }
        pending.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
        keys.insert(key.to_string());
    }
    for p in pending {
        p.await.unwrap().unwrap();
    }
    // The firewall is not wedged: what follows is decided too.
    let more = produce(&s.brokers, &input, 150, 350, 0).await;
    keys.extend(sample_keys(150, 150 + more));

    let outputs = assert_each_key_once(&s, &keys, std::slice::from_ref(&s.config_path));
    let by_key: HashMap<&str, &OutputRecord> = outputs.iter().map(|r| (r.key.as_str(), r)).collect();
    let decided = |key: &str| {
        let r = by_key[key];
        assert!(r.topic == s.topic("clean") || r.topic == s.topic("quarantine"), "{key} went to {}", r.topic);
        r
    };
    let utf8 = decided("hostile-utf8-key");
    assert!(
        utf8.raw_headers.iter().any(|(k, v)| k == &[0xff, 0xfe, b'k'] && v.as_deref() == Some(b"v")),
        "a non-UTF-8 header key is forwarded byte for byte: {:?}",
        utf8.raw_headers
    );
    let forged = decided("hostile-forged-source");
    assert_eq!(
        forged.headers["upstream-lossgate-source"], "someone-else/0/5",
        "an incoming lossgate-* header is renamed"
    );
    assert!(
        forged.source.starts_with(&format!("{input}/")),
        "lossgate's own source header: {}",
        forged.source
    );
    assert_eq!(
        forged.raw_headers.iter().filter(|(k, _)| k == headers::SOURCE.as_bytes()).count(),
        1,
        "exactly one lossgate-source header, lossgate's"
    );
    decided("hostile-float-label");
    let array = by_key["hostile-json-array"];
    assert_eq!(array.topic, s.topic("dead-letter"));
    assert!(array.headers["lossgate-reason"].starts_with("not_json"), "{:?}", array.headers);
    let big = by_key["hostile-oversized"];
    assert_eq!(big.topic, s.topic("dead-letter"));
    assert!(big.headers["lossgate-reason"].starts_with("too_large"), "{:?}", big.headers);
    assert_eq!(big.value_len, 0, "an oversized record's dead-letter copy goes without its value");
    assert_eq!(big.headers[headers::ORIGINAL_SIZE], oversized.len().to_string());
    assert_eq!(firewall.terminate(), Some(0), "still running, and leaves cleanly");
    let log = std::fs::read_to_string(s.config_path.with_extension("log")).unwrap();
    assert!(!log.contains("panicked"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_compression_codec_in_and_out() {
    let broker = Tansu::start();
    let s = setup(&broker, "codecs", "exactly-once", "alpha = 0.1");
    append_config(&s, "\n[kafka.producer_properties]\n\"compression.type\" = \"zstd\"\n");
    let _firewall = Firewall::start(&s.config_path);
    let input = s.topic("samples");
    let mut total = 0;
    for (i, codec) in ["gzip", "snappy", "lz4", "zstd"].iter().enumerate() {
        total +=
            produce_with(&s.brokers, &input, i * 150, (i + 1) * 150, 0, &[("compression.type", codec)]).await;
    }
    let keys: HashSet<String> = sample_keys(0, total).collect();
    assert_each_key_once(&s, &keys, std::slice::from_ref(&s.config_path));
    let log = std::fs::read_to_string(s.config_path.with_extension("log")).unwrap();
    assert!(!log.contains(" WARN ") && !log.contains(" ERROR "), "a clean run logs no warning:\n{log}");
}

/// The committed offset of the group's partition 0.
fn committed_offset(s: &Setup) -> Option<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &s.brokers)
        .set("group.id", format!("{}-group", s.prefix))
        .create()
        .unwrap();
    let mut list = TopicPartitionList::new();
    list.add_partition(&s.topic("samples"), 0);
    let committed = consumer.committed_offsets(list, Duration::from_secs(10)).ok()?;
    let element = committed.elements().into_iter().next()?;
    match element.offset() {
        Offset::Offset(o) => Some(o),
        _ => None,
    }
}

/// Runs one window of 200 from a single 300-record batch, stops, adds another batch, restarts:
/// the restarted consumer resumes at offset 200, inside the first batch.
async fn restart_inside_a_batch(broker: &Tansu, prefix: &str) -> (Setup, Firewall) {
    let s = setup_with_input_partitions(broker, prefix, "exactly-once", "alpha = 0.1", 1);
    // The second window must not close by time before the stop.
    let text =
        std::fs::read_to_string(&s.config_path).unwrap().replace("max_wait = \"1s\"", "max_wait = \"60s\"");
    std::fs::write(&s.config_path, text).unwrap();
    let one_batch = [("linger.ms", "500"), ("batch.num.messages", "10000"), ("batch.size", "4000000")];
    produce_with(&s.brokers, &s.topic("samples"), 0, 300, 0, &one_batch).await;
    let mut first = Firewall::start(&s.config_path);
    assert!(wait_for_metric(s.metrics_port, "lossgate_windows_total{result=\"committed\"}", 1.0, TIMEOUT));
    assert_eq!(first.terminate(), Some(0));
    assert_eq!(committed_offset(&s), Some(200), "one window of 200 committed");
    produce_with(&s.brokers, &s.topic("samples"), 300, 400, 0, &one_batch).await;
    let text =
        std::fs::read_to_string(&s.config_path).unwrap().replace("max_wait = \"60s\"", "max_wait = \"1s\"");
    std::fs::write(&s.config_path, text).unwrap();
    let second = Firewall::start(&s.config_path);
    (s, second)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_skips_records_stops_the_partition_instead_of_losing_them() {
    // tansu 0.6.0 answers the fetch at offset 200 with the next batch (offset 300).
    let skipping = Tansu::start_060();
    let (s, _firewall) = restart_inside_a_batch(&skipping, "gap060").await;
    assert!(
        wait_for_metric(s.metrics_port, "lossgate_input_gaps_total{result=\"stopped\"}", 1.0, TIMEOUT),
        "the gap is seen and the partition stopped"
    );
    assert_eq!(metric(s.metrics_port, "lossgate_partitions_stopped"), 1.0);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(committed_offset(&s), Some(200), "nothing past the gap is committed");
    let outputs = read_outputs(&s, 200, Duration::from_secs(20));
    assert_eq!(outputs.len(), 200, "the first window's records, and none past the gap");
    assert_eq!(duplicates(&outputs), 0);
    let log = std::fs::read_to_string(s.config_path.with_extension("log")).unwrap();
    assert!(log.contains("the broker skipped records: partition stopped"), "{log}");

    // The same on a broker that returns the whole batch: nothing lost.
    let faithful = Tansu::start();
    let (s, _firewall) = restart_inside_a_batch(&faithful, "gapok").await;
    let keys: HashSet<String> = sample_keys(0, 400).collect();
    assert_each_key_once(&s, &keys, std::slice::from_ref(&s.config_path));
    assert_eq!(metric(s.metrics_port, "lossgate_input_gaps_total{result=\"stopped\"}"), 0.0);
}
