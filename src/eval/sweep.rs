//! Sweeps over the paper's open questions: one parameter varied, everything else at its
//! default, every point over the same seeds. Parameters that only change scoring or the
//! decision (k, alpha, reject fraction) re-score one training run per seed instead of training
//! again.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::defence::{run_engine, run_engine_cut};
use super::metrics::Detection;
use super::provenance::Provenance;
use super::victim::VictimResult;
use super::{parallel, progress_bar, Harness, Summary};
use crate::decision::Policy;
use crate::engine::EngineConfig;
use crate::shadow::{LearningRate, LossRecording};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum SweepParam {
    /// Number of clean probes (k = min(default k, probes / 2)).
    Probes,
    /// Neighbours the score averages over.
    K,
    /// Shadow epochs per window.
    Epochs,
    /// Samples per window.
    Window,
    /// Calibrated policy's target false-reject rate.
    Alpha,
    /// The paper's rule: quarantine this share of every window.
    RejectFraction,
    /// Share of the probes that are poisons themselves.
    ProbeContamination,
    /// The shadow's SGD learning rate.
    LearningRate,
    /// 0: score against all probes; 1: only against the probes of the sample's own label.
    PerLabel,
    /// Shadows per window whose trajectories are averaged.
    ShadowRuns,
    /// 0: one pass; 1: a second shadow trained without the first pass's suspects.
    SecondPass,
    /// 0: every loss evaluated after its epoch (the paper's); 1: at each sample's own train step.
    Losses,
    /// How full windows are when they close, as a share of `window.size`, after a first full
    /// one: a daemon that starts on a backlog, then closes windows early at
    /// `window.max_wait` as records arrive slowly.
    WindowFill,
    /// 0: quarantine everything above the threshold; 1: forward the hard clean data of the
    /// grey zone (`decision.keep_hard_clean`).
    KeepHardClean,
}

impl SweepParam {
    pub const ALL: [SweepParam; 14] = [
        SweepParam::Probes,
        SweepParam::K,
        SweepParam::Epochs,
        SweepParam::Window,
        SweepParam::Alpha,
        SweepParam::RejectFraction,
        SweepParam::ProbeContamination,
        SweepParam::LearningRate,
        SweepParam::PerLabel,
        SweepParam::ShadowRuns,
        SweepParam::SecondPass,
        SweepParam::Losses,
        SweepParam::WindowFill,
        SweepParam::KeepHardClean,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SweepParam::Probes => "probes",
            SweepParam::K => "k",
            SweepParam::Epochs => "epochs",
            SweepParam::Window => "window",
            SweepParam::Alpha => "alpha",
            SweepParam::RejectFraction => "reject-fraction",
            SweepParam::ProbeContamination => "probe-contamination",
            SweepParam::LearningRate => "learning-rate",
            SweepParam::PerLabel => "per-label",
            SweepParam::ShadowRuns => "shadow-runs",
            SweepParam::SecondPass => "second-pass",
            SweepParam::Losses => "losses",
            SweepParam::WindowFill => "window-fill",
            SweepParam::KeepHardClean => "keep-hard-clean",
        }
    }

    pub fn default_values(self) -> Vec<f64> {
        match self {
            SweepParam::Probes => vec![25.0, 50.0, 100.0, 250.0, 500.0, 1000.0],
            SweepParam::K => vec![5.0, 10.0, 25.0, 50.0, 100.0, 200.0],
            SweepParam::Epochs => vec![5.0, 10.0, 20.0, 30.0],
            SweepParam::Window => vec![1024.0, 2048.0, 4096.0, 8192.0, 16384.0],
            SweepParam::Alpha => vec![0.02, 0.05, 0.08, 0.1, 0.2, 0.3],
            SweepParam::RejectFraction => vec![0.1, 0.2, 0.3, 0.4],
            SweepParam::ProbeContamination => vec![0.0, 0.05, 0.1, 0.2],
            SweepParam::LearningRate => vec![0.003, 0.01, 0.03, 0.1],
            SweepParam::PerLabel => vec![0.0, 1.0],
            SweepParam::ShadowRuns => vec![1.0, 2.0],
            SweepParam::SecondPass => vec![0.0, 1.0],
            SweepParam::Losses => vec![0.0, 1.0],
            SweepParam::WindowFill => vec![0.125, 0.25, 0.5, 1.0],
            SweepParam::KeepHardClean => vec![0.0, 1.0],
        }
    }

    /// Settings of the scorer or the decision only: swept on the whole stream (the others
    /// change training and run on a subset).
    pub fn scoring_only(self) -> bool {
        matches!(
            self,
            SweepParam::K
                | SweepParam::Alpha
                | SweepParam::RejectFraction
                | SweepParam::PerLabel
                | SweepParam::KeepHardClean
        )
    }

    /// Whether one training run per seed can be re-scored at every point: only for scoring
    /// settings, and not with a second pass (whose training set the first decisions pick).
    fn rescores(self, base: &EngineConfig) -> bool {
        self.scoring_only() && !base.shadow.second_pass
    }

    /// Sweeps about detection alone train no victims (k, per-label, shadow runs).
    pub fn needs_victims(self) -> bool {
        !matches!(self, SweepParam::K | SweepParam::PerLabel | SweepParam::ShadowRuns)
    }

    /// The engine config at `value`.
    pub fn apply(self, base: &EngineConfig, value: f64) -> EngineConfig {
        let mut config = base.clone();
        match self {
            SweepParam::Probes => {
                config.probes.count = value as usize;
                config.scorer.k = base.scorer.k.min(value as usize / 2).max(1);
            }
            SweepParam::K => config.scorer.k = value as usize,
            SweepParam::Epochs => config.shadow.epochs = value as usize,
            SweepParam::Window => config.window.size = value as usize,
            SweepParam::Alpha => {
                config.decision.policy = Policy::Calibrated;
                config.decision.alpha = value;
            }
            SweepParam::RejectFraction => {
                config.decision.policy = Policy::RejectFraction;
                config.decision.reject_fraction = value;
            }
            SweepParam::ProbeContamination => {}
            SweepParam::LearningRate => config.shadow.learning_rate = LearningRate::Fixed(value as f32),
            SweepParam::PerLabel => {
                config.scorer.per_label = value != 0.0;
                // The hidden-layer score is standardised per label: it needs per_label.
                config.scorer.representation &= config.scorer.per_label;
            }
            SweepParam::ShadowRuns => config.shadow.runs = value as usize,
            SweepParam::SecondPass => config.shadow.second_pass = value != 0.0,
            SweepParam::Losses => {
                config.shadow.losses =
                    if value != 0.0 { LossRecording::AtStep } else { LossRecording::AfterEpoch }
            }
            // The engine's config is unchanged: only where the stream is cut changes.
            SweepParam::WindowFill => {}
            SweepParam::KeepHardClean => {
                config.decision.policy = Policy::Calibrated;
                config.decision.keep_hard_clean = value != 0.0;
            }
        }
        config
    }

    /// Samples per window after the first as the stream is cut at `value` (`window.size` but
    /// for the fill).
    pub fn window_cut(self, config: &EngineConfig, value: f64) -> usize {
        match self {
            SweepParam::WindowFill => ((config.window.size as f64 * value).round() as usize).max(1),
            _ => config.window.size,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_point_of_every_sweep_is_a_valid_config() {
        let base = EngineConfig::default();
        for param in SweepParam::ALL {
            for value in param.default_values() {
                let config = param.apply(&base, value);
                assert!(config.validate().is_ok(), "{} = {value}: {:?}", param.name(), config.validate());
            }
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepPoint {
    pub value: f64,
    pub seeds: Vec<u64>,
    pub detections: Vec<Detection>,
    /// Victims trained on what lossgate kept at this point (when the sweep trains victims).
    pub victims: Vec<VictimResult>,
    pub clean_false_reject: Summary,
    pub caught: Summary,
    pub auc: Summary,
    pub mean_attack_success: Option<Summary>,
    pub clean_accuracy: Option<Summary>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sweep {
    pub param: SweepParam,
    pub stream_samples: usize,
    pub attacks: Vec<String>,
    pub points: Vec<SweepPoint>,
    /// When and at which commit; absent in sweeps written before session 23.
    #[serde(default)]
    pub measured: Option<Provenance>,
}

struct PointRun {
    detection: Detection,
    victim: Option<VictimResult>,
}

impl Harness<'_> {
    /// Runs one sweep over `seeds`; with `victims`, trains a victim at every point and seed.
    pub fn sweep(&self, param: SweepParam, values: &[f64], seeds: &[u64], victims: bool) -> Result<Sweep> {
        // The day the run began (a long run may end on the next).
        let measured = Provenance::now();
        for &value in values {
            param
                .apply(&self.config, value)
                .validate()
                .with_context(|| format!("sweep {} = {value}", param.name()))?;
        }
        let windows = |c: &EngineConfig, cut: usize| {
            let passes = c.shadow.runs * (1 + c.shadow.second_pass as usize);
            let rest = self.stream_len().saturating_sub(c.window.size);
            (1 + rest.div_ceil(cut)) * c.shadow.epochs * passes
        };
        let shadow_epochs: usize = if param.rescores(&self.config) {
            windows(&self.config, self.config.window.size)
        } else {
            values
                .iter()
                .map(|&v| {
                    let config = param.apply(&self.config, v);
                    windows(&config, param.window_cut(&config, v))
                })
                .sum()
        };
        let victim_epochs = if victims { values.len() * self.victim.epochs } else { 0 };
        let progress = progress_bar(
            (seeds.len() * (shadow_epochs + victim_epochs)) as u64,
            &format!("epochs (sweep {})", param.name()),
        );
        let tick = || progress.inc(1);
        // One job per seed for re-scoring sweeps (one training run each), else per (seed, value).
        let jobs: Vec<(u64, Option<usize>)> = if param.rescores(&self.config) {
            seeds.iter().map(|&s| (s, None)).collect()
        } else {
            seeds.iter().flat_map(|&s| (0..values.len()).map(move |v| (s, Some(v)))).collect()
        };
        let runs = parallel(&jobs, self.jobs, |&(seed, value)| -> Result<Vec<(usize, PointRun)>> {
            let indices: Vec<usize> = value.map(|v| vec![v]).unwrap_or_else(|| (0..values.len()).collect());
            self.sweep_seed(param, values, &indices, seed, victims, &tick)
                .with_context(|| format!("sweep {}, seed {seed}", param.name()))
        });
        progress.finish_and_clear();
        let mut by_point: Vec<Vec<(u64, PointRun)>> = (0..values.len()).map(|_| Vec::new()).collect();
        for (&(seed, _), runs) in jobs.iter().zip(runs) {
            for (index, run) in runs? {
                by_point[index].push((seed, run));
            }
        }
        let points = values.iter().zip(by_point).map(|(&value, runs)| summarise_point(value, runs)).collect();
        Ok(Sweep {
            param,
            stream_samples: self.stream_len(),
            attacks: self.attacks.iter().map(|a| a.name.clone()).collect(),
            points,
            measured: Some(measured),
        })
    }

    fn sweep_seed(
        &self,
        param: SweepParam,
        values: &[f64],
        indices: &[usize],
        seed: u64,
        victims: bool,
        tick: &(dyn Fn() + Sync),
    ) -> Result<Vec<(usize, PointRun)>> {
        let contamination = |v: f64| if param == SweepParam::ProbeContamination { v } else { 0.0 };
        let mut base_run = None;
        let mut out = Vec::new();
        for &index in indices {
            let value = values[index];
            let config = param.apply(&self.config, value);
            let scenario = crate::eval::Scenario::build(
                &self.dataset,
                &self.attacks,
                (&config.probes, config.decision.alpha),
                self.max_samples,
                contamination(value),
                seed,
            );
            let run = if param.rescores(&self.config) {
                if base_run.is_none() {
                    base_run = Some(run_engine(self.runtime, &self.config, &scenario, seed, tick)?);
                }
                base_run.as_ref().expect("just set").rescored(&config)
            } else {
                let cut = param.window_cut(&config, value);
                run_engine_cut(self.runtime, &config, &scenario, seed, cut, tick)?
            };
            let flagged = run.flagged();
            let detection = self.detection(&scenario, &flagged, Some(&run.normalised_scores()));
            let victim = if victims {
                Some(self.victim_on(&scenario, &flagged, seed.wrapping_add(0x51c7), tick)?)
            } else {
                None
            };
            tracing::info!(
                sweep = param.name(),
                value,
                seed,
                clean_false_reject = format!("{:.3}", detection.clean_false_reject),
                caught = format!("{:.3}", detection.caught),
                mean_asr = victim.as_ref().map(|v| format!("{:.3}", v.mean_attack_success())),
                "sweep point done"
            );
            out.push((index, PointRun { detection, victim }));
        }
        Ok(out)
    }
}

fn summarise_point(value: f64, runs: Vec<(u64, PointRun)>) -> SweepPoint {
    let of = |f: &dyn Fn(&Detection) -> f64| {
        Summary::of(&runs.iter().map(|(_, r)| f(&r.detection)).collect::<Vec<_>>())
    };
    let victims: Vec<VictimResult> = runs.iter().filter_map(|(_, r)| r.victim.clone()).collect();
    let victim_summary = |f: &dyn Fn(&VictimResult) -> f64| {
        (!victims.is_empty()).then(|| Summary::of(&victims.iter().map(f).collect::<Vec<_>>()))
    };
    SweepPoint {
        value,
        seeds: runs.iter().map(|(s, _)| *s).collect(),
        clean_false_reject: of(&|d| d.clean_false_reject),
        caught: of(&|d| d.caught),
        auc: of(&|d| d.auc.unwrap_or(f64::NAN)),
        mean_attack_success: victim_summary(&|v| v.mean_attack_success()),
        clean_accuracy: victim_summary(&|v| v.clean_accuracy),
        detections: runs.iter().map(|(_, r)| r.detection.clone()).collect(),
        victims,
    }
}
