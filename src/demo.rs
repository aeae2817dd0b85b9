//! The embedded demo: librdkafka's in-process mock cluster, a producer streaming MNIST with two
//! simultaneous poisoning attacks plus a few malformed records, the daemon firewalling it, and
//! a closing table read back from the output topics.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use crate::codec::encode_json;
use crate::config::Config;
use crate::daemon::{self, DaemonOptions};
use crate::eval::attack::Attack;
use crate::eval::load_mnist;
use crate::kafka::headers;
use crate::kafka::Destination;
use crate::metrics::Metrics;
use crate::probes;

pub(crate) struct DemoOptions {
    pub records: usize,
    pub seed: u64,
    pub window: usize,
    pub malformed: usize,
}

/// What each input record really is, by key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Truth {
    Clean,
    Patch,
    Blend,
    Malformed,
}

const TOPIC_PARTITIONS: i32 = 6;

fn malformed_value(i: usize) -> Vec<u8> {
    let kinds: [&[u8]; 5] = [
        b"not json at all",
        br#"{"features": [1, 2, 3], "label": 1}"#,
        br#"{"features": "oops", "label": 1}"#,
        b"",
        br#"{"label": 4}"#,
    ];
    kinds[i % kinds.len()].to_vec()
}

/// A patch (class 0) and a noise blend (class 1, alpha 0.2), 1 % each.
fn demo_attacks() -> (Attack, Attack) {
    let text = r#"
        [[attack]]
        name = "patch"
        kind = "patch"
        target = 0
        ratio = 0.01
        size = 3
        margin = 1

        [[attack]]
        name = "blend"
        kind = "blend"
        target = 1
        ratio = 0.01
        pattern = "noise"
        alpha = 0.2
    "#;
    let mut attacks =
        crate::eval::attack::parse_attacks(text, 784, 10).expect("the demo's attacks are valid");
    let blend = attacks.pop().expect("two attacks");
    (attacks.pop().expect("two attacks"), blend)
}

pub(crate) async fn run(mut config: Config, mnist_dir: &Path, options: DemoOptions) -> Result<()> {
    let cluster = MockCluster::new(1).context("starting librdkafka's mock cluster")?;
    let kafka = &mut config.kafka;
    for topic in [
        &kafka.input_topic,
        &kafka.output_topic,
        &kafka.quarantine_topic,
        &kafka.dead_letter_topic,
        &kafka.checkpoint_topic,
    ] {
        cluster.create_topic(topic, TOPIC_PARTITIONS, 1)?;
    }
    kafka.brokers = cluster.bootstrap_servers();
    config.window.size = options.window;
    config.window.max_wait = Duration::from_secs(5);

    // The stream: MNIST training images, two attacks on disjoint samples, some malformed records.
    let (train, test) = load_mnist(mnist_dir)?;
    let mut order: Vec<usize> = (0..train.len()).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(options.seed));
    order.truncate(options.records);
    let mut stream = train.select(&order);
    let (patch, blend) = demo_attacks();
    let mut taken = vec![false; stream.len()];
    let mut truth = vec![Truth::Clean; stream.len()];
    for i in patch.poison(&mut stream, &mut taken, 10, options.seed + 1) {
        truth[i] = Truth::Patch;
    }
    for i in blend.poison(&mut stream, &mut taken, 10, options.seed + 2) {
        truth[i] = Truth::Blend;
    }
    let draw = probes::ProbesConfig { seed: options.seed, ..config.probes.clone() };
    let probes = draw.draw_from(&test, config.decision.alpha)?;

    let metrics = Metrics::new();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let daemon_options = DaemonOptions {
        config: config.clone(),
        config_path: None,
        probes: Some(probes),
        metrics: metrics.clone(),
        passthrough: false,
    };
    let daemon = tokio::spawn(daemon::run(daemon_options, async {
        let _ = stop_rx.await;
    }));

    // Read the three outputs back from the start, while the stream runs (the mock cluster
    // drops old data), and join them with the truth by key.
    let tally = Arc::new(std::sync::Mutex::new(Tally::default()));
    let truth_by_key: Arc<HashMap<String, Truth>> = Arc::new(
        (0..stream.len())
            .map(|i| (format!("sample-{i}"), truth[i]))
            .chain((0..options.malformed).map(|i| (format!("malformed-{i}"), Truth::Malformed)))
            .collect(),
    );
    let stop_reading = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = spawn_tally_reader(&config, tally.clone(), truth_by_key, stop_reading.clone())?;

    // Producer, kept at most ~1.5 windows ahead of the daemon: the mock cluster keeps only
    // 5 MiB per partition and silently drops older records.
    let producer: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", &config.kafka.brokers).set("linger.ms", "5").create()?;
    let total = stream.len() + options.malformed;
    let started = Instant::now();
    let progress = ProgressBar::new(total as u64);
    progress.set_style(ProgressStyle::with_template(
        "{elapsed_precise} [{bar:40}] {pos}/{len} records firewalled {msg}",
    )?);
    let input_topic = config.kafka.input_topic.clone();
    let ahead = options.window * 3 / 2;
    let mut sent = 0usize;
    let malformed_every = (stream.len() / options.malformed.max(1)).max(1);
    let mut malformed_sent = 0;
    let mut pending = Vec::new();
    for i in 0..stream.len() {
        if pending.len() >= 512 {
            drain(&mut pending).await?;
        }
        while sent as u64 > metrics.records_in.get() + ahead as u64 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            progress.set_position(metrics.records_in.get());
        }
        let key = format!("sample-{i}");
        let value = encode_json(stream.features.row(i).as_slice().expect("contiguous"), stream.labels[i]);
        send(&producer, &mut pending, &input_topic, &key, &value)?;
        sent += 1;
        if malformed_sent < options.malformed && i % malformed_every == malformed_every - 1 {
            let key = format!("malformed-{malformed_sent}");
            send(&producer, &mut pending, &input_topic, &key, &malformed_value(malformed_sent))?;
            malformed_sent += 1;
            sent += 1;
        }
    }
    drain(&mut pending).await?;
    let total = sent;
    progress.set_length(total as u64);

    // Wait until the tally has seen every record in exactly one output.
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let done = tally.lock().unwrap().seen();
        progress.set_position(done as u64);
        if done >= total || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    progress.finish_and_clear();
    stop_reading.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = reader.join();
    let _ = stop_tx.send(());
    daemon.await.context("daemon task")??;
    let tally = tally.lock().unwrap();
    println!("{}", tally.table(total, started.elapsed()));
    println!("metrics served on http://{}/metrics during the run; a sample of them:", config.metrics.listen);
    // Each class's quarantined records beside the share of its clean probes the last threshold took.
    let shown = ["lossgate_records", "lossgate_probes_above_threshold_share"];
    for line in metrics.render().lines().filter(|l| shown.iter().any(|prefix| l.starts_with(prefix))) {
        println!("  {line}");
    }
    Ok(())
}

fn spawn_tally_reader(
    config: &Config,
    tally: Arc<std::sync::Mutex<Tally>>,
    truth_by_key: Arc<HashMap<String, Truth>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Result<std::thread::JoinHandle<()>> {
    let k = config.kafka.clone();
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &k.brokers)
        .set("group.id", "lossgate-demo-tally")
        .set("fetch.wait.max.ms", "10")
        .create()?;
    let mut assignment = rdkafka::TopicPartitionList::new();
    for topic in [&k.output_topic, &k.quarantine_topic, &k.dead_letter_topic] {
        for p in 0..TOPIC_PARTITIONS {
            assignment.add_partition_offset(topic, p, rdkafka::Offset::Beginning)?;
        }
    }
    reader.assign(&assignment)?;
    Ok(std::thread::spawn(move || {
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let Some(Ok(m)) = reader.poll(Duration::from_millis(100)) else { continue };
            let key = m.key().map(|k| String::from_utf8_lossy(k).to_string()).unwrap_or_default();
            let has_source = headers::last_value(&headers::read_raw(&m), headers::SOURCE).is_some();
            tally.lock().unwrap().add(m.topic(), truth_by_key.get(&key).copied(), has_source, &k);
        }
    }))
}

/// Queues one record; acknowledgements are awaited in batches by [`drain`].
fn send(
    producer: &FutureProducer,
    pending: &mut Vec<DeliveryFuture>,
    topic: &str,
    key: &str,
    value: &[u8],
) -> Result<()> {
    let future = producer
        .send_result(FutureRecord::to(topic).key(key).payload(value))
        .map_err(|(e, _)| anyhow::anyhow!("demo producer: {e}"))?;
    pending.push(future);
    Ok(())
}

async fn drain(pending: &mut Vec<DeliveryFuture>) -> Result<()> {
    for future in pending.drain(..) {
        match future.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => anyhow::bail!("demo producer: {e}"),
            Err(_) => anyhow::bail!("demo producer: delivery cancelled"),
        }
    }
    Ok(())
}

#[derive(Default)]
struct Tally {
    /// (truth, destination) -> count
    counts: HashMap<(Truth, Destination), usize>,
    unknown: usize,
    missing_source: usize,
}

impl Tally {
    fn add(&mut self, topic: &str, truth: Option<Truth>, has_source: bool, k: &crate::kafka::KafkaConfig) {
        let destination = Destination::of_topic(topic, k).unwrap_or(Destination::DeadLetter);
        match truth {
            Some(t) => *self.counts.entry((t, destination)).or_default() += 1,
            None => self.unknown += 1,
        }
        self.missing_source += (!has_source) as usize;
    }

    fn seen(&self) -> usize {
        self.counts.values().sum::<usize>() + self.unknown
    }

    fn count(&self, truth: Truth, destination: Destination) -> usize {
        self.counts.iter().filter(|((t, d), _)| *t == truth && *d == destination).map(|(_, c)| c).sum()
    }

    fn table(&self, total: usize, elapsed: Duration) -> String {
        let mut out = format!(
            "\nlossgate demo: {total} records through the firewall in {:.0} s\n\n",
            elapsed.as_secs_f64()
        );
        out.push_str("kind           records  forwarded  quarantined  dead-lettered  caught\n");
        for (name, truth) in [
            ("clean", Truth::Clean),
            ("patch attack", Truth::Patch),
            ("blend attack", Truth::Blend),
            ("malformed", Truth::Malformed),
        ] {
            let f = self.count(truth, Destination::Forward);
            let q = self.count(truth, Destination::Quarantine);
            let d = self.count(truth, Destination::DeadLetter);
            let n = f + q + d;
            let caught = match truth {
                Truth::Clean => format!("false-reject {:.1} %", 100.0 * q as f64 / n.max(1) as f64),
                Truth::Malformed => format!("{:.1} % to dead-letter", 100.0 * d as f64 / n.max(1) as f64),
                _ => format!("{:.1} %", 100.0 * q as f64 / n.max(1) as f64),
            };
            out.push_str(&format!("{name:<14} {n:<8} {f:<10} {q:<12} {d:<14} {caught}\n"));
        }
        let seen = self.seen();
        out.push_str(&format!(
            "\nevery record in exactly one output: {} ({seen} output records for {total} inputs, {} with unknown keys, {} without a source header)\n",
            if seen == total && self.unknown == 0 { "yes" } else { "NO" },
            self.unknown,
            self.missing_source
        ));
        out
    }
}
