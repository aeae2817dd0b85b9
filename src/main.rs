//! The `lossgate` command line.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use lossgate::config::Config;
use lossgate::daemon::{self, DaemonOptions};
use lossgate::eval::{attack::PatchAttack, EvalOptions};
use lossgate::metrics::Metrics;
use lossgate::shadow::runtime::cache_dir;
use lossgate::shadow::Runtime;

#[derive(Parser)]
#[command(version, about = "Streaming data-poisoning firewall for online training")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the firewall: consume the input topic, forward / quarantine / dead-letter each record.
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// A complete demonstration with no broker to install: an in-process Kafka (librdkafka's
    /// mock cluster), MNIST with two simultaneous attacks, the daemon, and a closing table.
    Demo {
        /// Config for the engine (the Kafka section is replaced by the mock cluster's).
        #[arg(long)]
        config: Option<PathBuf>,
        /// MNIST training images streamed.
        #[arg(long, default_value_t = 24_576)]
        records: usize,
        #[arg(long, default_value_t = 4096)]
        window: usize,
        /// Malformed records mixed into the stream (they must reach the dead-letter topic).
        #[arg(long, default_value_t = 25)]
        malformed: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long)]
        mnist: Option<PathBuf>,
    },
    /// Stream MNIST with a patch attack through the engine (no Kafka) and report detection quality.
    Eval {
        /// Config (TOML); without it the built-in defaults are used.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Seeds, comma-separated: one full run each.
        #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
        seeds: Vec<u64>,
        /// Folder with MNIST's IDX files (default: $LOSSGATE_MNIST or the setup cache).
        #[arg(long)]
        mnist: Option<PathBuf>,
        /// Stream only this many training samples (default: all 60 000).
        #[arg(long)]
        max_samples: Option<usize>,
        /// Share of the stream poisoned by the patch attack.
        #[arg(long, default_value_t = 0.01)]
        poison_ratio: f64,
        /// Class the poisoned samples are relabelled to.
        #[arg(long, default_value_t = 0)]
        target: i64,
        /// Seeds run at once (default: the number of cores).
        #[arg(long)]
        jobs: Option<usize>,
        /// Also write the full report as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Write each seed's first-window loss trajectories as CSV into this folder.
        #[arg(long)]
        trajectories: Option<PathBuf>,
        /// Draw probes from training images held out of the stream, not from the test split.
        #[arg(long)]
        probes_from_train: bool,
    },
    /// Measure the shadow model, the GEMM ceiling, a whole window and the scorer; print a table.
    Bench {
        /// Short runs and a small window (a smoke test, not a measurement).
        #[arg(long)]
        quick: bool,
    },
    /// End-to-end records/s through a real broker (tansu from the setup cache): the engine
    /// against a pass-through run over the same Kafka path.
    BenchPipeline {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Records per run (default: three windows of the default size).
        #[arg(long, default_value_t = 24_576)]
        records: usize,
        #[arg(long)]
        mnist: Option<PathBuf>,
    },
    /// Validate a config file and print it as understood.
    CheckConfig {
        #[arg(long)]
        config: PathBuf,
    },
}

fn load_config(path: Option<&PathBuf>) -> Result<Config> {
    match path {
        Some(p) => Config::from_file(p),
        None => Ok(Config::default()),
    }
}

fn mnist_dir(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os("LOSSGATE_MNIST").map(PathBuf::from))
        .unwrap_or_else(|| cache_dir().join("mnist"))
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,ort=warn,hnsw_rs=warn,librdkafka=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn tokio_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting tokio")
}

/// Resolves on SIGTERM or SIGINT.
async fn termination() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run { config: path } => {
            let config = Config::from_file(&path)?;
            let options = DaemonOptions {
                config,
                config_path: Some(path),
                probes: None,
                metrics: Metrics::new(),
                passthrough: false,
            };
            tokio_runtime()?.block_on(daemon::run(options, termination()))
        }
        Command::Demo { config, records, window, malformed, seed, mnist } => {
            let config = load_config(config.as_ref())?;
            let options = lossgate::demo::DemoOptions { records, seed, window, malformed };
            tokio_runtime()?.block_on(lossgate::demo::run(config, &mnist_dir(mnist), options))
        }
        Command::Eval {
            config,
            seeds,
            mnist,
            max_samples,
            poison_ratio,
            target,
            jobs,
            json,
            trajectories,
            probes_from_train,
        } => {
            let config = load_config(config.as_ref())?.engine();
            let runtime = Runtime::load(&config.shadow.runtime_options())?;
            let options = EvalOptions {
                mnist_dir: mnist_dir(mnist),
                seeds,
                max_samples,
                attack: PatchAttack { target, ratio: poison_ratio, ..Default::default() },
                trajectories_dir: trajectories,
                probes_from_train,
                jobs: jobs
                    .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)),
            };
            tracing::info!(
                window = config.window.size,
                probes = config.probes.count,
                epochs = config.shadow.epochs,
                hidden = ?config.shadow.hidden,
                k = config.scorer.k,
                seeds = ?options.seeds,
                "evaluating the patch attack on MNIST"
            );
            let report = lossgate::eval::run(&runtime, &config, &options)?;
            println!("{}", report.to_table());
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_string_pretty(&report)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(())
        }
        Command::Bench { quick } => {
            let runtime = Runtime::load(&Default::default())?;
            print!("{}", lossgate::bench::report(&runtime, quick)?);
            Ok(())
        }
        Command::BenchPipeline { config, records, mnist } => {
            let config = load_config(config.as_ref())?;
            let table = tokio_runtime()?.block_on(lossgate::bench_pipeline::report(
                &config,
                &mnist_dir(mnist),
                records,
            ))?;
            print!("{table}");
            Ok(())
        }
        Command::CheckConfig { config } => {
            let config = Config::from_file(&config)?;
            println!("{config:#?}");
            Ok(())
        }
    }
}
