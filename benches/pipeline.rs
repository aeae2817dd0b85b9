//! End-to-end throughput through a real broker (tansu): the daemon with the default MNIST
//! engine, beside the same consumer and producer path with the engine replaced by
//! forward-all, so the cost of Kafka is a measured fraction of the whole. `make bench-pipeline`;
//! `cargo bench --bench pipeline -- [--records N] [--config FILE] [--mnist DIR]`.

#[allow(dead_code, unreachable_pub)] // the tests' broker helper; this bench uses part of it
#[path = "../tests/common/tansu.rs"]
mod tansu;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use lossgate::codec::encode_json;
use lossgate::config::Config;
use lossgate::daemon::{self, DaemonOptions};
use lossgate::eval::load_mnist;
use lossgate::metrics::{Ended, Metrics};
use lossgate::probes;
use lossgate::shadow::runtime::cache_dir;
use tansu::{free_port, Tansu};

struct PipelineRun {
    name: &'static str,
    records: usize,
    seconds: f64,
    /// Records out and seconds from the end of the first round of windows (one per engine
    /// worker) to the last record: the steady state, without the first round's wait (its first
    /// window also chooses the learning rate, once per daemon lifetime).
    after_first_round: (u64, f64),
}

impl PipelineRun {
    fn records_per_second(&self) -> f64 {
        self.records as f64 / self.seconds
    }

    fn steady_records_per_second(&self) -> f64 {
        self.after_first_round.0 as f64 / self.after_first_round.1
    }
}

/// Produces `count` MNIST records as an ordinary client does (batched, `linger.ms` 5).
async fn fill(brokers: &str, topic: &str, config: &Config, mnist: &Path, count: usize) -> Result<()> {
    let (train, _) = load_mnist(mnist)?;
    let producer: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", brokers).set("linger.ms", "5").create()?;
    let mut pending = Vec::new();
    for i in 0..count {
        let row = i % train.len();
        let value = encode_json(train.features.row(row).as_slice().expect("contiguous"), train.labels[row]);
        let key = format!("r{i}");
        pending.push(
            producer.send_result(FutureRecord::to(topic).key(&key).payload(&value)).map_err(|(e, _)| e)?,
        );
        if pending.len() >= 2000 {
            for f in pending.drain(..) {
                f.await?.map_err(|(e, _)| e)?;
            }
        }
    }
    for f in pending {
        f.await?.map_err(|(e, _)| e)?;
    }
    let _ = config;
    Ok(())
}

async fn run_once(
    broker: &Tansu,
    base: &Config,
    mnist: &Path,
    count: usize,
    name: &'static str,
    passthrough: bool,
) -> Result<PipelineRun> {
    let mut config = base.clone();
    let prefix = format!("bench-{name}");
    let k = &mut config.kafka;
    k.brokers = broker.brokers();
    k.group_id = format!("{prefix}-group");
    k.input_topic = format!("{prefix}-in");
    k.output_topic = format!("{prefix}-clean");
    k.quarantine_topic = format!("{prefix}-quarantine");
    k.dead_letter_topic = format!("{prefix}-dead-letter");
    k.checkpoint_topic = format!("{prefix}-checkpoints");
    for t in [&k.input_topic, &k.output_topic, &k.quarantine_topic, &k.dead_letter_topic, &k.checkpoint_topic]
    {
        broker.create_topic(t, 3);
    }
    config.metrics.listen = format!("127.0.0.1:{}", free_port()).parse()?;
    fill(&config.kafka.brokers, &config.kafka.input_topic, &config, mnist, count).await?;

    let (_, test) = load_mnist(mnist)?;
    let draw = probes::ProbesConfig { seed: 1, ..config.probes.clone() };
    let probes = draw.draw_from(&test, config.decision.alpha)?;
    let metrics = Metrics::new();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // In pass-through every window is "committed" at once; with the engine, one per worker
    // runs at a time.
    let workers = if passthrough { 1 } else { config.engine_pool.workers as u64 };
    let options = DaemonOptions {
        config,
        config_path: None,
        probes: Some(probes),
        metrics: metrics.clone(),
        passthrough,
    };
    let daemon = tokio::spawn(daemon::run(options, async {
        let _ = stopped.await;
    }));
    let out = || metrics.forwarded.get() + metrics.quarantined.get();
    let deadline = Instant::now() + Duration::from_secs(1800);
    while metrics.records_in.get() == 0 {
        if Instant::now() > deadline || daemon.is_finished() {
            bail!("{name}: the daemon read nothing");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Timed from the first record read to the last record acknowledged in an output.
    let started = Instant::now();
    let mut first_round: Option<(u64, Instant)> = None;
    while (out() as usize) < count {
        if Instant::now() > deadline || daemon.is_finished() {
            bail!("{name}: only {} of {count} records came out", out());
        }
        if first_round.is_none() && metrics.windows.get(Ended::Committed) >= workers {
            first_round = Some((out(), Instant::now()));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let (out_at_round, round_at) = first_round.unwrap_or((0, started));
    let after_first_round = (count as u64 - out_at_round, round_at.elapsed().as_secs_f64());
    let _ = stop.send(());
    daemon.await.context("daemon task")??;
    Ok(PipelineRun { name, records: count, seconds, after_first_round })
}

/// Runs pass-through and the engine on `count` records each and returns the table.
async fn report(config: &Config, mnist: &Path, count: usize) -> Result<String> {
    let broker = Tansu::start();
    let passthrough = run_once(&broker, config, mnist, count, "passthrough", true).await?;
    let engine = run_once(&broker, config, mnist, count, "engine", false).await?;
    let mut out = format!(
        "end-to-end through tansu, {count} MNIST records (JSON), window {}, {} epochs, hidden {:?}, delivery {:?}\n",
        config.window.size, config.shadow.epochs, config.shadow.hidden, config.delivery.mode
    );
    for run in [&passthrough, &engine] {
        out.push_str(&format!(
            "{:<12} {:>8.2} s  {:>10.0} records/s   after the first round of windows: {:>8.0} records/s\n",
            run.name,
            run.seconds,
            run.records_per_second(),
            run.steady_records_per_second()
        ));
    }
    out.push_str(&format!(
        "Kafka path alone (pass-through) takes {:.1} % of the firewall's time per record; the engine is {:.1}x slower than pass-through\n",
        100.0 * passthrough.seconds / engine.seconds,
        engine.seconds / passthrough.seconds
    ));
    Ok(out)
}

/// `--records N` (default: six windows of the default size), `--config FILE`, `--mnist DIR`;
/// what `cargo bench` adds (`--bench`) is ignored.
struct Args {
    records: usize,
    config: Option<std::path::PathBuf>,
    mnist: std::path::PathBuf,
}

impl Args {
    fn from_env() -> Result<Self> {
        let mut args = Self {
            records: 24_576,
            config: None,
            mnist: std::env::var_os("LOSSGATE_MNIST")
                .map(Into::into)
                .unwrap_or_else(|| cache_dir().join("mnist")),
        };
        let mut given = std::env::args().skip(1);
        while let Some(flag) = given.next() {
            let mut value = || given.next().with_context(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--records" => args.records = value()?.parse().context("--records")?,
                "--config" => args.config = Some(value()?.into()),
                "--mnist" => args.mnist = value()?.into(),
                _ => {}
            }
        }
        Ok(args)
    }
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,ort=error,hnsw_rs=error,librdkafka=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // `cargo test --all-targets` runs bench targets too, without `--bench`: building this one
    // is the check there; the measurement takes minutes and is `cargo bench`'s.
    if !std::env::args().any(|a| a == "--bench") {
        println!("pipeline bench: built; run it with `make bench-pipeline`");
        return Ok(());
    }
    let args = Args::from_env()?;
    let config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let table = runtime.block_on(report(&config, &args.mnist, args.records))?;
    print!("{table}");
    Ok(())
}
