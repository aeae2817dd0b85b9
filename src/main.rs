//! The `lossgate` command line.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use lossgate::eval::{attack::PatchAttack, EvalOptions};
use lossgate::shadow::runtime::cache_dir;
use lossgate::shadow::Runtime;
use lossgate::EngineConfig;

#[derive(Parser)]
#[command(version, about = "Streaming data-poisoning firewall for online training")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Stream MNIST with a patch attack through the engine and report detection quality.
    Eval {
        /// Engine config (TOML); without it the built-in defaults are used.
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
    },
    /// Measure the shadow model, the GEMM ceiling, a whole window and the scorer; print a table.
    Bench {
        /// Short runs and a small window (a smoke test, not a measurement).
        #[arg(long)]
        quick: bool,
    },
    /// Validate a config file and print it as understood.
    CheckConfig {
        #[arg(long)]
        config: PathBuf,
    },
}

fn load_config(path: Option<&PathBuf>) -> Result<EngineConfig> {
    match path {
        Some(p) => EngineConfig::from_file(p),
        None => Ok(EngineConfig::default()),
    }
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,ort=warn,hnsw_rs=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
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
        } => {
            let config = load_config(config.as_ref())?;
            let runtime = Runtime::load(&config.shadow.runtime_options())?;
            let mnist_dir = mnist
                .or_else(|| std::env::var_os("LOSSGATE_MNIST").map(PathBuf::from))
                .unwrap_or_else(|| cache_dir().join("mnist"));
            let options = EvalOptions {
                mnist_dir,
                seeds,
                max_samples,
                attack: PatchAttack { target, ratio: poison_ratio, ..Default::default() },
                trajectories_dir: trajectories,
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
        Command::CheckConfig { config } => {
            let config = EngineConfig::from_file(&config)?;
            println!("{config:#?}");
            Ok(())
        }
    }
}
