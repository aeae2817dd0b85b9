//! The `lossgate` command line: every subcommand, parsed and dispatched to its stage.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::Config;
use crate::daemon::{self, DaemonOptions};
use crate::metrics::Metrics;
use crate::shadow::runtime::cache_dir;
use crate::shadow::Runtime;
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

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
    /// The evaluation harness: seven simultaneous attacks, five defences side by side, a victim
    /// model per defence, sweeps of the paper's open questions; writes JSON, PNGs and
    /// RESULTS.md. Without --sweep or --all it runs the comparison only.
    Eval(Box<EvalArgs>),
    /// Measure the shadow model, the GEMM ceiling, a whole window and the scorer; print a table.
    Bench {
        /// Short runs and a small window (a smoke test, not a measurement).
        #[arg(long)]
        quick: bool,
        /// Instead of the table: how a window's time grows with window size, epochs,
        /// features, hidden width and classes (a Markdown table, and a PNG).
        #[arg(long)]
        scaling: bool,
        /// Where `--scaling` writes its plot.
        #[arg(long, default_value = "docs/results/bench-scaling.png")]
        png: PathBuf,
        /// Take the ONNX Runtime library and execution provider from this file's `[shadow]`
        /// (`execution_provider = "cuda"`: the windows run on the GPU, `scripts/gpu-check.sh`).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Validate a config file and print it as understood.
    CheckConfig {
        #[arg(long)]
        config: PathBuf,
    },
    /// Review the quarantine: list it, release records from it.
    #[command(subcommand)]
    Quarantine(QuarantineCommand),
    /// Make a probe file from trusted clean data (CSV with a label column, IDX images and
    /// labels, or JSON lines): `--count` samples drawn with `--seed`, every class given the
    /// probes its calibrated threshold needs where the data holds them (`--random-draw`: plain),
    /// checked against the config's `[input]`, written as JSON lines for `[probes] file`. Refuses
    /// a draw that misses a class; warns when a class has too few probes for its calibrated
    /// threshold.
    MakeProbes {
        /// The config whose `[input]` (features, classes) and `[decision] alpha` apply.
        #[arg(long)]
        config: PathBuf,
        /// The trusted data.
        #[arg(long)]
        from: PathBuf,
        #[arg(long, value_enum, default_value = "csv")]
        format: ProbeSourceFormat,
        /// IDX: the label file beside the image file.
        #[arg(long)]
        labels_file: Option<PathBuf>,
        /// CSV: the label column.
        #[arg(long, default_value = "label")]
        label_column: String,
        #[arg(long, default_value_t = 250)]
        count: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Draw at random, without giving every class the probes its calibrated threshold
        /// needs (the config's `probes.every_class`, on by default: README, "Rare classes").
        #[arg(long)]
        random_draw: bool,
        /// Where to write the probe file (JSON lines).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum QuarantineCommand {
    /// The quarantined records with their score, threshold, reason, window, label and time.
    List {
        #[command(flatten)]
        select: QuarantineSelect,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One quarantined record: its headers and decision, and a PNG of its loss trajectory
    /// against its window's clean probes (the sample drawn beside when `input.image` is set).
    Show {
        #[arg(long)]
        config: PathBuf,
        /// `topic/partition/offset`, as `quarantine list` prints it.
        #[arg(long)]
        record: String,
        /// Where to write the PNG (none: headers only).
        #[arg(long)]
        png: Option<PathBuf>,
    },
    /// Forward chosen quarantined records to the output topic, once each, byte for byte with
    /// their key and headers plus lossgate-released-from, -released-at and -release-reason.
    /// Releasing a record again is a no-op (kafka.release_topic records every release).
    Release {
        #[command(flatten)]
        select: QuarantineSelect,
        /// Why: kept in the release's headers and its record.
        #[arg(long)]
        reason: String,
    },
}

#[derive(clap::Args)]
struct QuarantineSelect {
    #[arg(long)]
    config: PathBuf,
    /// Only these records (`topic/partition/offset` as `list` shows them); repeatable.
    #[arg(long = "record")]
    records: Vec<String>,
    #[arg(long)]
    label: Option<i64>,
    #[arg(long)]
    window: Option<u64>,
    #[arg(long)]
    min_score: Option<f64>,
    #[arg(long)]
    max_score: Option<f64>,
    /// Only records newer than this (`30m`, `2h`, `1day`).
    #[arg(long, value_parser = humantime::parse_duration)]
    since: Option<Duration>,
}

impl QuarantineSelect {
    fn filter(&self) -> crate::quarantine::Filter {
        crate::quarantine::Filter {
            label: self.label,
            window: self.window,
            min_score: self.min_score,
            max_score: self.max_score,
            since: self.since,
            records: self.records.clone(),
        }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ProbeSourceFormat {
    Csv,
    Idx,
    Jsonl,
}

#[derive(clap::Args)]
struct EvalArgs {
    /// Config (TOML) of the engine under test; without it the built-in defaults (the daemon's).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Seeds, comma-separated: each one a full run (poison choice, stream order, probes, models).
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    seeds: Vec<u64>,
    /// Attacks file (TOML); default: the seven attacks of config/attacks.toml, built in.
    #[arg(long)]
    attacks: Option<PathBuf>,
    /// Every attack whose poisons carry a wrong label (dirty-label backdoors, label flips)
    /// poisons this share of the training data instead of its own `ratio`: how detection holds
    /// as poisons grow many. Clean-label attacks keep theirs (a share of their class).
    #[arg(long, value_parser = share_strictly_between_0_and_1)]
    dirty_ratio: Option<f64>,
    /// Folder with MNIST's IDX files (default: $LOSSGATE_MNIST or the setup cache).
    #[arg(long)]
    mnist: Option<PathBuf>,
    /// Your own data as CSV with a label column: training split (needs --test-csv).
    #[arg(long, requires = "test_csv")]
    train_csv: Option<PathBuf>,
    #[arg(long, requires = "train_csv")]
    test_csv: Option<PathBuf>,
    #[arg(long, default_value = "label")]
    label_column: String,
    /// Your own data as IDX: IMAGES,LABELS of the training split (needs --test-idx).
    #[arg(long, value_delimiter = ',', num_args = 2, requires = "test_idx")]
    train_idx: Option<Vec<PathBuf>>,
    #[arg(long, value_delimiter = ',', num_args = 2, requires = "train_idx")]
    test_idx: Option<Vec<PathBuf>>,
    /// Stream only this many training samples per seed in the comparison (default: all).
    #[arg(long)]
    max_samples: Option<usize>,
    /// The defences compared (comma-separated); `none` alone checks how well each attack works.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = crate::eval::defence::Defence::ALL)]
    defences: Vec<crate::eval::defence::Defence>,
    /// Run these sweeps (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',')]
    sweep: Vec<crate::eval::sweep::SweepParam>,
    /// Values for a single --sweep (default: the sweep's own list).
    #[arg(long, value_delimiter = ',')]
    values: Option<Vec<f64>>,
    /// Training samples streamed per seed in the sweeps that train at every point (probes,
    /// epochs, window, probe-contamination, learning-rate); the others use the whole stream.
    #[arg(long, default_value_t = 16_384)]
    sweep_samples: usize,
    /// Sweeps measure detection only, without training a victim at each point.
    #[arg(long)]
    no_victims: bool,
    /// The comparison and every sweep, then RESULTS.md.
    #[arg(long)]
    all: bool,
    /// Only re-render the Markdown from the JSON already in --out.
    #[arg(long)]
    render_only: bool,
    /// Write every lossgate window of the comparison to this folder as CSV, one file per seed
    /// and window: each sample and probe with its attack (or clean), label, decision, score,
    /// threshold, views, loss per epoch and features (MNIST: about 20 MB a window).
    #[arg(long)]
    dump_windows: Option<PathBuf>,
    /// A few-minute run on a subset (8 192 samples, windows of 2 048, 10 shadow epochs).
    #[arg(long)]
    quick: bool,
    /// Victim training epochs (default 12).
    #[arg(long)]
    victim_epochs: Option<usize>,
    /// Runs at once (default: the number of cores).
    #[arg(long)]
    jobs: Option<usize>,
    /// Folder for the JSON files and PNGs.
    #[arg(long, default_value = DEFAULT_RESULTS)]
    out: PathBuf,
    /// The Markdown report; its figure links point into --out [default: docs/RESULTS.md with
    /// the default --out, else OUT/RESULTS.md, so a run of your own leaves the project's alone]
    #[arg(long)]
    markdown: Option<PathBuf>,
}

impl EvalArgs {
    /// Where the Markdown report goes (`--markdown`, or beside the results of an own `--out`).
    fn markdown_path(&self) -> PathBuf {
        match &self.markdown {
            Some(path) => path.clone(),
            None if self.out == std::path::Path::new(DEFAULT_RESULTS) => PathBuf::from("docs/RESULTS.md"),
            None => self.out.join("RESULTS.md"),
        }
    }
}

/// `lossgate eval --out`'s default: the project's published results.
const DEFAULT_RESULTS: &str = "docs/results";

fn eval_command(args: EvalArgs) -> Result<()> {
    use crate::eval::{self, report, sweep::SweepParam, DataSource, Dataset, Harness};
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let render = |args: &EvalArgs| -> Result<()> {
        let markdown_path = args.markdown_path();
        let figures = pathdiff(&args.out, markdown_path.parent().unwrap_or(std::path::Path::new(".")));
        let preface = "Regenerate everything with `make results` (= `lossgate eval --all`). Numbers are \
                       mean ± sample standard deviation over the seeds named in each section.\n";
        let markdown = report::render_markdown(&args.out, &figures, preface)?;
        std::fs::write(&markdown_path, markdown)
            .with_context(|| format!("writing {}", markdown_path.display()))?;
        tracing::info!(markdown = %markdown_path.display(), "report written");
        Ok(())
    };
    if args.render_only {
        return render(&args);
    }
    let mut config = load_config(args.config.as_ref())?.engine();
    let mut victim = eval::victim::VictimConfig::default();
    let mut max_samples = args.max_samples;
    if args.quick {
        let quick_samples = eval::quick_settings(&mut config, &mut victim);
        max_samples = Some(max_samples.unwrap_or(quick_samples).min(quick_samples));
    }
    if let Some(epochs) = args.victim_epochs {
        victim.epochs = epochs;
    }
    let source = match (&args.train_csv, &args.test_csv, &args.train_idx, &args.test_idx) {
        (Some(train), Some(test), _, _) => DataSource::Csv {
            train: train.clone(),
            test: test.clone(),
            label_column: args.label_column.clone(),
        },
        (_, _, Some(train), Some(test)) => {
            DataSource::Idx([train[0].clone(), train[1].clone(), test[0].clone(), test[1].clone()])
        }
        _ => DataSource::Mnist(mnist_dir(args.mnist.clone())),
    };
    let dataset = Dataset::load(&source)?;
    dataset
        .train
        .check_shape(config.input.features, config.input.classes)
        .context("the training split against [input]")?;
    let mut attacks = match &args.attacks {
        Some(path) => eval::attack::load_attacks(path, dataset.train.feature_count(), dataset.classes)?,
        None => eval::attack::default_attacks(),
    };
    if let Some(ratio) = args.dirty_ratio {
        attacks.iter_mut().filter(|a| !a.is_clean_label()).for_each(|a| a.ratio = ratio);
    }
    let runtime = Runtime::load(&config.shadow.runtime_options())?;
    let mut harness = Harness {
        runtime: &runtime,
        config,
        dataset,
        attacks,
        victim,
        jobs: args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)),
        max_samples,
        loss_value_epochs: 3,
        defences: args.defences.clone(),
        dump_windows: args.dump_windows.clone(),
    };
    let dataset_name = match &source {
        DataSource::Mnist(_) => "MNIST".to_string(),
        other => format!("{other:?}"),
    };
    let sweeps: Vec<SweepParam> = if args.all { SweepParam::ALL.to_vec() } else { args.sweep.clone() };
    if args.values.is_some() && sweeps.len() != 1 {
        anyhow::bail!("--values goes with exactly one --sweep");
    }
    if args.all || sweeps.is_empty() {
        tracing::info!(seeds = ?args.seeds, attacks = harness.attacks.len(), "comparison: every defence, a victim each");
        let (comparison, plots) = harness.compare(&args.seeds, &dataset_name)?;
        report::write_json(&args.out.join(report::COMPARISON_FILE), &comparison)?;
        if let Some(plots) = plots {
            let names: Vec<String> = comparison.attacks.iter().map(|a| a.name.clone()).collect();
            eval::plots::comparison(&args.out, &plots, &names)?;
        }
    }
    for param in sweeps {
        // Scoring and decision sweeps run on the whole stream; the others, which change
        // training, on a subset.
        harness.max_samples = match param.scoring_only() {
            true => max_samples,
            false => Some(args.sweep_samples.min(max_samples.unwrap_or(usize::MAX))),
        };
        let values = args.values.clone().unwrap_or_else(|| param.default_values());
        tracing::info!(sweep = param.name(), ?values, "sweep");
        let sweep = harness.sweep(param, &values, &args.seeds, param.needs_victims() && !args.no_victims)?;
        report::write_json(&args.out.join(report::sweep_file(param)), &sweep)?;
        eval::plots::sweep(&args.out.join(format!("sweep-{}.png", param.name())), &sweep)?;
    }
    render(&args)?;
    println!("{}", std::fs::read_to_string(args.markdown_path())?);
    Ok(())
}

/// `target` as a path relative to `base` (both relative to the working directory).
fn pathdiff(target: &std::path::Path, base: &std::path::Path) -> String {
    let abs = |p: &std::path::Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let (target, base) = (abs(target), abs(base));
    let common = target.components().zip(base.components()).take_while(|(a, b)| a == b).count();
    let ups = base.components().count() - common;
    let mut parts: Vec<String> = vec!["..".into(); ups];
    parts.extend(target.components().skip(common).map(|c| c.as_os_str().to_string_lossy().into_owned()));
    if parts.is_empty() {
        ".".into()
    } else {
        parts.join("/")
    }
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

/// The `lossgate` binary: logs to stderr, runs the subcommand, exits 1 with the error.
pub fn main() {
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
            let runtime = tokio_runtime()?;
            let result = runtime.block_on(daemon::run(options, termination()));
            // A recovery scan or lag read still on its thread is not waited for: a scan is
            // done again at the next start.
            runtime.shutdown_timeout(Duration::from_secs(1));
            result
        }
        Command::Demo { config, records, window, malformed, seed, mnist } => {
            let config = load_config(config.as_ref())?;
            let options = crate::demo::DemoOptions { records, seed, window, malformed };
            tokio_runtime()?.block_on(crate::demo::run(config, &mnist_dir(mnist), options))
        }
        Command::Eval(args) => eval_command(*args),
        Command::Bench { quick, scaling, png, config } => {
            let runtime = Runtime::load(&load_config(config.as_ref())?.shadow.runtime_options())?;
            tracing::info!(provider = ?runtime.provider(), "benchmarking");
            if scaling {
                bench_scaling(&runtime, quick, &png)
            } else {
                print!("{}", crate::bench::report(&runtime, quick)?);
                Ok(())
            }
        }
        Command::CheckConfig { config } => {
            let config = Config::from_file(&config)?;
            println!("{config:#?}");
            Ok(())
        }
        Command::Quarantine(command) => quarantine_command(command),
        Command::MakeProbes {
            config,
            from,
            format,
            labels_file,
            label_column,
            count,
            seed,
            random_draw,
            out,
        } => {
            let source = ProbeSource { from, format, labels_file, label_column, count, seed, random_draw };
            make_probes(&config, source, &out)
        }
    }
}

/// `bench --scaling`: a window timed with one dimension changed at a time; table and plot.
fn bench_scaling(runtime: &Runtime, quick: bool, png: &std::path::Path) -> Result<()> {
    let points = crate::bench::scaling(runtime, quick, |p| {
        tracing::info!(
            dimension = p.dimension,
            value = p.value,
            seconds = format!("{:.2}", p.seconds),
            "window timed"
        );
    })?;
    print!("{}", crate::bench::scaling_table(&points));
    crate::bench::scaling_plot(png, &points)?;
    tracing::info!(png = %png.display(), "plot written");
    Ok(())
}

/// `quarantine list | show | release`.
fn quarantine_command(command: QuarantineCommand) -> Result<()> {
    match command {
        QuarantineCommand::List { select, json } => quarantine_list(&select, json),
        QuarantineCommand::Show { config, record, png } => quarantine_show(&config, &record, png.as_deref()),
        QuarantineCommand::Release { select, reason } => {
            let config = Config::from_file(&select.config)?;
            let done = crate::quarantine::release(&config, &select.filter(), &reason)?;
            println!(
                "released {} records to {}; {} were released before",
                done.released, config.kafka.output_topic, done.already
            );
            Ok(())
        }
    }
}

fn quarantine_list(select: &QuarantineSelect, json: bool) -> Result<()> {
    let config = Config::from_file(&select.config)?;
    let found = crate::quarantine::list(&config, &select.filter())?;
    if json {
        for q in &found {
            println!("{}", serde_json::to_string(q)?);
        }
    } else {
        println!(
            "{:<28} {:>6} {:>6} {:>9} {:>9}  {:<24} reason",
            "record", "label", "window", "score", "threshold", "time"
        );
        for q in &found {
            let time = q
                .timestamp
                .map(|t| {
                    humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + Duration::from_millis(t.max(0) as u64),
                    )
                    .to_string()
                })
                .unwrap_or_default();
            let num = |v: Option<f64>| v.map(|v| format!("{v:.4}")).unwrap_or_default();
            let int = |v: Option<String>| v.unwrap_or_default();
            println!(
                "{:<28} {:>6} {:>6} {:>9} {:>9}  {:<24} {}",
                q.record,
                int(q.label.map(|l| l.to_string())),
                int(q.window.map(|w| w.to_string())),
                num(q.score),
                num(q.threshold),
                time,
                q.reason
            );
        }
        println!("{} quarantined records", found.len());
    }
    Ok(())
}

fn quarantine_show(config: &std::path::Path, record: &str, png: Option<&std::path::Path>) -> Result<()> {
    let config = Config::from_file(config)?;
    let q = crate::quarantine::show(&config, record, png)?;
    let num = |v: Option<f64>| v.map_or("?".into(), |v| format!("{v:.4}"));
    println!("record     {}", q.record);
    println!("source     {}", q.source);
    println!("label      {}", q.label.map_or("? (value does not decode)".into(), |l| l.to_string()));
    println!("window     {}", q.window.map_or("?".into(), |w| w.to_string()));
    println!("score      {} (threshold {})", num(q.score), num(q.threshold));
    println!("reason     {}", q.reason);
    if let Some(t) = &q.trajectory {
        let text: Vec<String> = t.iter().map(|l| format!("{l:.3}")).collect();
        println!("trajectory {}", text.join(" "));
    }
    println!("headers:");
    for line in q.header_lines() {
        println!("  {line}");
    }
    if let Some(png) = png {
        println!("plot       {}", png.display());
    }
    Ok(())
}

/// `make-probes`: where the trusted samples come from.
struct ProbeSource {
    from: PathBuf,
    format: ProbeSourceFormat,
    labels_file: Option<PathBuf>,
    label_column: String,
    count: usize,
    seed: u64,
    random_draw: bool,
}

/// `make-probes`: draws the probe file and says how well each class is covered.
fn make_probes(config: &std::path::Path, source: ProbeSource, out: &std::path::Path) -> Result<()> {
    let ProbeSource { from, format, labels_file, label_column, count, seed, random_draw } = source;
    use crate::probes::{make_probe_file, ProbeFormat, ProbesConfig};
    let config = Config::from_file(config)?;
    let format = match format {
        ProbeSourceFormat::Csv => ProbeFormat::Csv,
        ProbeSourceFormat::Idx => ProbeFormat::Idx,
        ProbeSourceFormat::Jsonl => ProbeFormat::Jsonl,
    };
    let source = ProbesConfig {
        count,
        file: Some(from),
        format,
        labels_file,
        label_column,
        seed,
        topic: None,
        every_class: config.probes.every_class && !random_draw,
    };
    let drawn =
        make_probe_file(&source, config.input.features, config.input.classes, config.decision.alpha, out)?;
    let coverage = drawn.coverage;
    println!("wrote {count} probes to {}; per class:", out.display());
    for (class, n) in coverage.per_class.iter().enumerate() {
        println!("  class {class}: {n}");
    }
    print_uncovered_values(&drawn.uncovered);
    let thin = coverage.thin();
    if !thin.is_empty() {
        tracing::warn!(
            classes = ?thin,
            needed = coverage.needed_per_class,
            alpha = config.decision.alpha,
            "these classes have fewer probes than their calibrated threshold needs to reject anything \
             (per-label scoring): add trusted samples of them or raise --count"
        );
    }
    Ok(())
}

/// The values many trusted samples hold and no probe does, the most held first (ten at most
/// named): what a stream sample holding one will be judged against.
fn print_uncovered_values(uncovered: &[crate::probes::UncoveredValue]) {
    const NAMED: usize = 10;
    if uncovered.is_empty() {
        return;
    }
    println!(
        "{} feature value(s) held by {:.0} % or more of the trusted samples are held by no probe; a \
         stream sample holding one is compared with probes that never saw the value, which can \
         quarantine it (one-hot categories: nearly always); raise --count, or add trusted samples \
         holding them to the probes:",
        uncovered.len(),
        100.0 * crate::probes::NOTABLE_SHARE
    );
    for u in uncovered.iter().take(NAMED) {
        println!("  feature {} = {}: {} samples ({:.1} %)", u.feature, u.value, u.samples, 100.0 * u.share);
    }
    if uncovered.len() > NAMED {
        println!("  and {} more", uncovered.len() - NAMED);
    }
}

/// `--dirty-ratio`: a share of the training data, strictly between 0 and 1.
fn share_strictly_between_0_and_1(text: &str) -> std::result::Result<f64, String> {
    let share: f64 = text.parse().map_err(|e| format!("`{text}` is not a number: {e}"))?;
    match share > 0.0 && share < 1.0 {
        true => Ok(share),
        false => Err(format!("{share} is not a share strictly between 0 and 1 (0.04 is 4 %)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dirty_ratio_is_a_share_strictly_between_0_and_1() {
        assert_eq!(share_strictly_between_0_and_1("0.04"), Ok(0.04));
        for refused in ["0", "1", "4", "-0.1", "four"] {
            assert!(share_strictly_between_0_and_1(refused).is_err(), "{refused}");
        }
    }
}
