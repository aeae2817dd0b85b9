//! The evaluation harness: many simultaneous attacks on a real dataset, the defences side by
//! side (none, lossgate, the paper's offline BaDLoss, a loss-value baseline, random drop), a
//! victim model trained on what each lets through, sweeps over the paper's open questions, and
//! the report (JSON, Markdown, PNG). It drives the same engine as the daemon.

pub mod attack;
pub mod defence;
mod dump;
pub(crate) mod metrics;
pub mod plots;
pub mod provenance;
pub mod report;
pub(crate) mod scenario;
pub mod sweep;
pub mod victim;

use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use ndarray::Array2;
use serde::{Deserialize, Serialize};

use crate::decision::Policy;
use crate::engine::EngineConfig;
use crate::shadow::Runtime;
use attack::Attack;
use defence::{loss_value_flags, random_flags, run_engine, run_offline, Defence};
use metrics::{mean_and_spread, Detection};
pub use scenario::{load_mnist, DataSource, Dataset, Scenario};
use victim::{train_and_test, VictimConfig, VictimResult};

/// What every harness run shares: the engine under test, the data, the attacks, the victim.
pub struct Harness<'a> {
    pub runtime: &'a Runtime,
    pub config: EngineConfig,
    pub dataset: Dataset,
    pub attacks: Vec<Attack>,
    pub victim: VictimConfig,
    /// Runs at once (each a single-threaded shadow model on its own core).
    pub jobs: usize,
    /// Stream only the first samples of each shuffled training split (`None`: all of it).
    pub max_samples: Option<usize>,
    /// Epochs of shadow training before the loss-value baseline picks its suspects.
    pub loss_value_epochs: usize,
    /// The defences the comparison runs (`[None]` alone checks the attacks' strength).
    pub defences: Vec<Defence>,
    /// Where the comparison writes each lossgate window as CSV (`--dump-windows`; `None`: not).
    pub dump_windows: Option<std::path::PathBuf>,
}

/// The quick mode (a few minutes on 2 cores; the test suite runs it): 8 192 samples, windows
/// of 2 048, 10 shadow epochs, 5 victim epochs. Returns the stream size.
pub fn quick_settings(config: &mut EngineConfig, victim: &mut VictimConfig) -> usize {
    config.window.size = 2048;
    config.shadow.epochs = 10;
    victim.epochs = 5;
    8192
}

/// Mean, sample standard deviation and range over seeds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Summary {
    pub mean: f64,
    pub spread: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    pub fn of(values: &[f64]) -> Self {
        let (mean, spread) = mean_and_spread(values);
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Self { mean, spread, min, max }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DefenceResult {
    pub defence: Defence,
    pub detection: Detection,
    pub victim: VictimResult,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SeedComparison {
    pub seed: u64,
    pub stream_samples: usize,
    pub poisons_per_attack: Vec<usize>,
    /// The victim trained on the stream without any poison: the accuracy to stay close to.
    pub clean_only: VictimResult,
    pub defences: Vec<DefenceResult>,
    pub seconds: f64,
    /// The learning rate lossgate's shadow used on this seed (chosen when `auto`).
    #[serde(default)]
    pub shadow_learning_rate: Option<f32>,
    /// Each lossgate window's pace (the probes' loss after one epoch as a share of chance, at
    /// the chosen rate; `engine::calibration`).
    #[serde(default)]
    pub window_paces: Vec<f64>,
    /// How many of those windows learned outside the pace band and had their rate chosen again.
    #[serde(default)]
    pub windows_rate_rechosen: usize,
    /// Where lossgate's accuracy gap lies (`decision.keep_hard_clean` on); absent in results
    /// written before it was measured.
    #[serde(default)]
    pub grey_zone: Option<GreyZoneOracle>,
}

/// lossgate's decision with the clean samples it quarantined from the grey zone forwarded
/// after all: an oracle (it reads the truth, which no deployment has) that says how much of
/// the victim's accuracy gap those samples hold, beside the poisons quarantined from the same
/// zone, which a rule forwarding the whole zone would let in.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GreyZoneOracle {
    /// Clean samples quarantined from the grey zone, as a share of the stream's clean samples.
    pub clean_rejected: f64,
    /// Per attack, the share of its poisons quarantined from the grey zone.
    pub poisons_rejected_per_attack: Vec<f64>,
    /// The victim trained on what lossgate forwarded plus those clean samples.
    pub victim: VictimResult,
}

/// The comparison of every defence over seeds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Comparison {
    pub settings: Settings,
    pub attacks: Vec<Attack>,
    pub seeds: Vec<SeedComparison>,
}

/// The settings a report states next to its numbers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    pub dataset: String,
    /// The shadow's input and output widths (`[input]`); 0 in results written before they
    /// were recorded.
    #[serde(default)]
    pub features: usize,
    #[serde(default)]
    pub classes: usize,
    #[serde(default)]
    pub standardize: bool,
    pub stream_samples: usize,
    pub window: usize,
    pub probes: usize,
    /// `probes.every_class`: every class given the probes its threshold needs; absent in
    /// results written before session 29 (off).
    #[serde(default)]
    pub probes_every_class: bool,
    pub hidden: Vec<usize>,
    pub epochs: usize,
    /// When each epoch's loss was taken; absent in results written before it was a setting
    /// (those evaluated after every epoch).
    #[serde(default)]
    pub losses: Option<crate::shadow::LossRecording>,
    /// As configured; results written before `auto` hold a number here.
    pub learning_rate: crate::shadow::LearningRate,
    pub k: usize,
    pub decision: String,
    pub victim: VictimConfig,
    pub loss_value_epochs: usize,
    /// When and at which commit; absent in results written before session 23.
    #[serde(default)]
    pub measured: Option<provenance::Provenance>,
}

/// Raw arrays of the first seed, for the plots (not written to JSON).
pub struct PlotData {
    /// `[samples + probes, epochs]` of lossgate's first window, under its first shadow.
    pub first_window_losses: Array2<f32>,
    pub first_window_origin: Vec<Option<usize>>,
    /// The label of every row of `first_window_losses`.
    pub first_window_labels: Vec<i64>,
    /// Lossgate's score / window threshold of every stream sample.
    pub lossgate_scores: Vec<f32>,
    /// The offline defence's, when it ran.
    pub offline_scores: Option<Vec<f32>>,
    pub origin: Vec<Option<usize>>,
}

impl Harness<'_> {
    /// The settings of a run that began when `measured` was taken.
    pub fn settings(&self, dataset: &str, measured: provenance::Provenance) -> Settings {
        let c = &self.config;
        let decision = match c.decision.policy {
            Policy::Calibrated => format!("calibrated, alpha {}", c.decision.alpha),
            Policy::RejectFraction => {
                format!("reject-fraction {}", c.decision.reject_fraction)
            }
            Policy::Threshold => format!("threshold {:?}", c.decision.threshold),
        };
        Settings {
            dataset: dataset.to_string(),
            features: c.input.features,
            classes: c.input.classes,
            standardize: c.shadow.standardize,
            stream_samples: self.stream_len(),
            window: c.window.size,
            probes: c.probes.count,
            probes_every_class: c.probes.every_class,
            hidden: c.shadow.hidden.clone(),
            epochs: c.shadow.epochs,
            losses: Some(c.shadow.losses),
            learning_rate: c.shadow.learning_rate,
            k: c.scorer.k,
            decision,
            victim: self.victim.clone(),
            loss_value_epochs: self.loss_value_epochs,
            measured: Some(measured),
        }
    }

    fn stream_len(&self) -> usize {
        let available = self.dataset.train.len().saturating_sub(self.config.probes.count);
        self.max_samples.unwrap_or(available).min(available)
    }

    pub fn scenario(&self, seed: u64, probe_contamination: f64) -> Scenario {
        Scenario::build(
            &self.dataset,
            &self.attacks,
            (&self.config.probes, self.config.decision.alpha),
            self.max_samples,
            probe_contamination,
            seed,
        )
    }

    /// Trains the victim on the stream less the flagged samples.
    pub fn victim_on(
        &self,
        scenario: &Scenario,
        flagged: &[bool],
        seed: u64,
        tick: &(dyn Fn() + Sync),
    ) -> Result<VictimResult> {
        let kept: Vec<usize> = (0..flagged.len()).filter(|&i| !flagged[i]).collect();
        train_and_test(
            self.runtime,
            &self.victim,
            &scenario.stream.select(&kept),
            &self.dataset,
            &self.attacks,
            seed,
            tick,
        )
    }

    pub fn detection(&self, scenario: &Scenario, flagged: &[bool], scores: Option<&[f32]>) -> Detection {
        Detection::measure(
            flagged,
            scores,
            &scenario.origin,
            &scenario.stream.labels,
            self.attacks.len(),
            self.dataset.classes,
        )
    }

    /// Every defence on one seed, each followed by a victim trained on what it kept.
    fn compare_seed(&self, seed: u64, progress: &ProgressBar) -> Result<(SeedComparison, Option<PlotData>)> {
        let started = Instant::now();
        let tick = || progress.inc(1);
        let scenario = self.scenario(seed, 0.0);
        let n = scenario.stream.len();
        let wants = |d: Defence| self.defences.contains(&d);
        // Loss value and random drop remove as many samples as lossgate: it runs for them too.
        let lossgate = match wants(Defence::Lossgate) || wants(Defence::LossValue) || wants(Defence::Random) {
            true => Some(run_engine(self.runtime, &self.config, &scenario, seed, &tick)?),
            false => None,
        };
        if let (Some(dir), Some(run)) = (&self.dump_windows, &lossgate) {
            let files = dump::write_windows(dir, seed, &scenario, run)?;
            tracing::info!(seed, windows = files.len(), dir = %dir.display(), "lossgate windows written as CSV");
        }
        let lossgate_scores = lossgate.as_ref().map(|l| l.normalised_scores());
        let lossgate_flags = lossgate.as_ref().map(|l| l.flagged()).unwrap_or_else(|| vec![false; n]);
        let rate = lossgate_flags.iter().filter(|&&f| f).count() as f64 / n.max(1) as f64;
        let shadow_learning_rate =
            lossgate.as_ref().and_then(|l| l.windows.last()).map(|w| w.outcome.learning_rate);
        let lossgate_windows = lossgate.as_ref().map_or(&[][..], |l| &l.windows[..]);
        let window_paces: Vec<f64> = lossgate_windows.iter().filter_map(|w| w.outcome.pace).collect();
        let windows_rate_rechosen =
            lossgate_windows.iter().filter(|w| w.outcome.rate_recheck.is_some()).count();
        tracing::info!(
            seed,
            paces = %window_paces.iter().map(|p| format!("{p:.3}")).collect::<Vec<_>>().join(" "),
            windows_rate_rechosen,
            "lossgate windows: the probes' loss after one epoch as a share of chance"
        );
        let offline = match wants(Defence::OfflineBadloss) {
            true => {
                Some(run_offline(self.runtime, &self.config, &scenario, seed, shadow_learning_rate, &tick)?)
            }
            false => None,
        };
        let offline_scores = offline.as_ref().map(|o| o.normalised_scores());
        let mut flagged_by: Vec<(Defence, Vec<bool>, Option<Vec<f32>>)> = Vec::new();
        for defence in Defence::ALL.into_iter().filter(|&d| wants(d)) {
            flagged_by.push(match defence {
                Defence::None => (defence, vec![false; n], None),
                Defence::Lossgate => (defence, lossgate_flags.clone(), lossgate_scores.clone()),
                Defence::OfflineBadloss => {
                    (defence, offline.as_ref().expect("run above").flagged(), offline_scores.clone())
                }
                Defence::LossValue => {
                    let (flags, scores) = loss_value_flags(
                        self.runtime,
                        &self.config,
                        &scenario,
                        self.loss_value_epochs,
                        rate,
                        seed,
                    )?;
                    (defence, flags, Some(scores))
                }
                Defence::Random => (defence, random_flags(n, rate, seed), None),
            });
        }
        let victim_seed = seed.wrapping_add(0x51c7);
        let clean_only = self.victim_on(&scenario, &scenario.poison_mask(), victim_seed, &tick)?;
        let grey_zone = match &lossgate {
            Some(run) if self.measures_grey_zone() => {
                Some(self.grey_zone_oracle(&scenario, run, &lossgate_flags, victim_seed, &tick)?)
            }
            _ => None,
        };
        let mut defences = Vec::new();
        for (defence, flagged, scores) in &flagged_by {
            let victim = self.victim_on(&scenario, flagged, victim_seed, &tick)?;
            let mut detection = self.detection(&scenario, flagged, scores.as_deref());
            if let (Defence::Lossgate, Some(run)) = (defence, &lossgate) {
                detection.probes_above_threshold_per_class =
                    run.probes_above_threshold_per_class(self.dataset.classes);
            }
            tracing::info!(
                seed,
                defence = defence.name(),
                dropped = format!("{:.3}", detection.dropped),
                clean_false_reject = format!("{:.3}", detection.clean_false_reject),
                caught = format!("{:.3}", detection.caught),
                mean_asr = format!("{:.3}", victim.mean_attack_success()),
                accuracy = format!("{:.4}", victim.clean_accuracy),
                "defence done"
            );
            defences.push(DefenceResult { defence: *defence, detection, victim });
        }
        let plots = lossgate.as_ref().map(|lossgate| {
            let first = &lossgate.windows[0].outcome;
            PlotData {
                // The first shadow saw every row: the picture BaDLoss draws.
                first_window_losses: first.first_pass.as_ref().map_or(&first.losses, |f| &f.losses).clone(),
                first_window_origin: scenario.origin[..first.sample_count()].to_vec(),
                first_window_labels: first.labels.clone(),
                lossgate_scores: lossgate_scores.clone().unwrap_or_default(),
                offline_scores,
                origin: scenario.origin.clone(),
            }
        });
        let result = SeedComparison {
            seed,
            stream_samples: n,
            poisons_per_attack: scenario.poisons_per_attack(self.attacks.len()),
            clean_only,
            defences,
            seconds: started.elapsed().as_secs_f64(),
            shadow_learning_rate,
            window_paces,
            windows_rate_rechosen,
            grey_zone,
        };
        Ok((result, plots))
    }

    /// Whether a comparison measures lossgate's grey zone: lossgate runs and keeps hard clean
    /// data (only the calibrated policy has a grey zone).
    fn measures_grey_zone(&self) -> bool {
        let decision = &self.config.decision;
        self.defences.contains(&Defence::Lossgate)
            && decision.keep_hard_clean
            && decision.policy == Policy::Calibrated
    }

    /// The victim on lossgate's forwards plus the clean samples it quarantined from the grey
    /// zone, and what that zone held ([`GreyZoneOracle`]).
    fn grey_zone_oracle(
        &self,
        scenario: &Scenario,
        run: &defence::StreamRun,
        flagged: &[bool],
        victim_seed: u64,
        tick: &(dyn Fn() + Sync),
    ) -> Result<GreyZoneOracle> {
        let in_grey_zone = run.rejected_in_grey_zone();
        let is_clean = |i: usize| scenario.origin[i].is_none();
        let forwarded_too: Vec<bool> = (0..flagged.len()).map(|i| in_grey_zone[i] && is_clean(i)).collect();
        let oracle_flags: Vec<bool> =
            flagged.iter().zip(&forwarded_too).map(|(&f, &back)| f && !back).collect();
        let clean = (0..flagged.len()).filter(|&i| is_clean(i)).count();
        let poisons = scenario.poisons_per_attack(self.attacks.len());
        let mut rejected = vec![0usize; self.attacks.len()];
        for attack in (0..flagged.len()).filter(|&i| in_grey_zone[i]).filter_map(|i| scenario.origin[i]) {
            rejected[attack] += 1;
        }
        Ok(GreyZoneOracle {
            clean_rejected: forwarded_too.iter().filter(|&&b| b).count() as f64 / clean.max(1) as f64,
            poisons_rejected_per_attack: rejected
                .iter()
                .zip(&poisons)
                .map(|(&r, &p)| r as f64 / p.max(1) as f64)
                .collect(),
            victim: self.victim_on(scenario, &oracle_flags, victim_seed, tick)?,
        })
    }

    /// Shadow and victim epochs one seed of the comparison runs (the progress bar's unit).
    fn comparison_epochs(&self) -> u64 {
        let windows = self.stream_len().div_ceil(self.config.window.size);
        let offline = self.defences.contains(&Defence::OfflineBadloss) as usize;
        let passes = self.config.shadow.runs * (1 + self.config.shadow.second_pass as usize);
        let shadow = (windows * passes + offline) * self.config.shadow.epochs;
        // The clean-only victim, one per defence, and the grey-zone oracle's.
        let oracle = self.measures_grey_zone() as usize;
        let victims = (self.defences.len() + 1 + oracle) * self.victim.epochs;
        (shadow + victims) as u64
    }

    /// Runs the comparison over `seeds`; returns it with the first seed's plot data.
    pub fn compare(&self, seeds: &[u64], dataset: &str) -> Result<(Comparison, Option<PlotData>)> {
        // The day the run began (a long run may end on the next).
        let measured = provenance::Provenance::now();
        let progress =
            progress_bar(seeds.len() as u64 * self.comparison_epochs(), "epochs (shadow + victims)");
        let results = parallel(seeds, self.jobs, |&seed| {
            self.compare_seed(seed, &progress).with_context(|| format!("comparison, seed {seed}"))
        });
        progress.finish_and_clear();
        let mut seeds_out = Vec::new();
        let mut plots = None;
        for result in results {
            let (seed, plot) = result?;
            if plots.is_none() {
                plots = plot;
            }
            seeds_out.push(seed);
        }
        let comparison = Comparison {
            settings: self.settings(dataset, measured),
            attacks: self.attacks.clone(),
            seeds: seeds_out,
        };
        Ok((comparison, plots))
    }
}

pub fn progress_bar(len: u64, unit: &str) -> ProgressBar {
    let progress = ProgressBar::new(len);
    let template = format!("{{elapsed_precise}} [{{bar:40}}] {{pos}}/{{len}} {unit}, eta {{eta}}");
    progress.set_style(ProgressStyle::with_template(&template).expect("static template"));
    progress
}

/// `f` over `items` on up to `jobs` threads; results in input order.
pub fn parallel<T: Sync, R: Send>(items: &[T], jobs: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let next = Mutex::new(0usize);
    let results: Mutex<Vec<Option<R>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1).min(items.len()) {
            scope.spawn(|| loop {
                let index = {
                    let mut next = next.lock().unwrap();
                    *next += 1;
                    *next - 1
                };
                let Some(item) = items.get(index) else {
                    break;
                };
                let result = f(item);
                results.lock().unwrap()[index] = Some(result);
            });
        }
    });
    results.into_inner().unwrap().into_iter().map(|r| r.expect("every item ran")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_keeps_the_input_order() {
        let items: Vec<u64> = (0..50).collect();
        assert_eq!(parallel(&items, 3, |&i| i * 2), items.iter().map(|i| i * 2).collect::<Vec<_>>());
    }
}
