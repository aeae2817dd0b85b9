//! The decision stage: a threshold per window, then forward or quarantine for each sample.

use serde::Deserialize;

use crate::validation::{ensure, ConfigError};

/// How the window's threshold is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Conformal: the probes' leave-one-out scores are this window's clean score distribution;
    /// `alpha` bounds the expected clean false-reject rate.
    #[default]
    Calibrated,
    /// The paper's rule: quarantine the highest-scoring `reject_fraction` of the window.
    RejectFraction,
    /// A fixed absolute score.
    Threshold,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecisionConfig {
    pub policy: Policy,
    /// Target clean false-reject rate for `calibrated`, in (0, 1).
    pub alpha: f64,
    /// Share of each window quarantined under `reject-fraction`, in (0, 1).
    pub reject_fraction: f64,
    /// Absolute score above which a sample is quarantined, for `threshold`.
    pub threshold: Option<f32>,
    /// Decide and label, but forward everything.
    pub observe: bool,
    /// Under `calibrated`: forward a sample just above the threshold (not above the one at
    /// alpha / 5) that looks like hard clean data (learned as well as its label's probes, among
    /// its own label, or still being learned with plain inputs) and whose nearest same-label
    /// samples are mostly below the threshold, or whose input distance is plain
    /// (`engine::hard_clean`).
    pub keep_hard_clean: bool,
}

impl Default for DecisionConfig {
    fn default() -> Self {
        Self {
            policy: Policy::Calibrated,
            alpha: 0.1,
            reject_fraction: 0.4,
            threshold: None,
            observe: false,
            keep_hard_clean: true,
        }
    }
}

impl DecisionConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        ensure(
            self.alpha > 0.0 && self.alpha < 1.0,
            "decision.alpha",
            format!(
                "{} must be strictly between 0 and 1 (it is the target clean false-reject rate)",
                self.alpha
            ),
        )?;
        ensure(
            self.reject_fraction > 0.0 && self.reject_fraction < 1.0,
            "decision.reject_fraction",
            format!("{} must be strictly between 0 and 1", self.reject_fraction),
        )?;
        match (self.policy, self.threshold) {
            (Policy::Threshold, None) => Err(ConfigError::new(
                "decision.threshold",
                "policy \"threshold\" needs an absolute score here, e.g. threshold = 2.5",
            )),
            (_, Some(t)) if !t.is_finite() => {
                Err(ConfigError::new("decision.threshold", format!("{t} is not a finite number")))
            }
            _ => Ok(()),
        }
    }
}

/// One window's threshold and the rule that produced it (for reasons and metrics).
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    pub value: f32,
    pub rule: String,
}

/// The finite-sample conformal quantile: the ceil((n+1)(1-alpha))-th smallest clean score.
/// With too few clean scores for that rank, nothing can be rejected at this alpha: +inf.
pub fn conformal_quantile(clean_scores: &[f32], alpha: f64) -> f32 {
    let n = clean_scores.len();
    let rank = ((n as f64 + 1.0) * (1.0 - alpha)).ceil() as usize;
    if rank == 0 {
        return f32::NEG_INFINITY;
    }
    if rank > n {
        return f32::INFINITY;
    }
    let mut sorted = clean_scores.to_vec();
    sorted.sort_by(f32::total_cmp);
    sorted[rank - 1]
}

/// The score above which exactly the top `fraction` of `scores` lies (ties aside).
pub fn reject_fraction_threshold(scores: &[f32], fraction: f64) -> f32 {
    let n = scores.len();
    let rejected = (fraction * n as f64).round() as usize;
    if n == 0 || rejected == 0 {
        return f32::INFINITY;
    }
    if rejected >= n {
        return f32::NEG_INFINITY;
    }
    let mut sorted = scores.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    sorted[rejected]
}

impl DecisionConfig {
    /// This window's threshold from the probes' leave-one-out scores and the samples' scores.
    pub fn threshold(&self, probe_scores: &[f32], sample_scores: &[f32]) -> Threshold {
        match self.policy {
            Policy::Calibrated => Threshold {
                value: conformal_quantile(probe_scores, self.alpha),
                rule: format!("calibrated alpha {} over {} probes", self.alpha, probe_scores.len()),
            },
            Policy::RejectFraction => Threshold {
                value: reject_fraction_threshold(sample_scores, self.reject_fraction),
                rule: format!("reject-fraction {}", self.reject_fraction),
            },
            Policy::Threshold => Threshold {
                value: self.threshold.unwrap_or(f32::INFINITY),
                rule: "absolute threshold".to_string(),
            },
        }
    }

    /// The decision for one sample's score under this window's threshold.
    pub fn decide(&self, score: f32, threshold: &Threshold) -> Decision {
        let flagged = score > threshold.value;
        let action = if flagged && !self.observe { Action::Quarantine } else { Action::Forward };
        let comparison = if flagged { ">" } else { "<=" };
        let mut reason =
            format!("score {score:.4} {comparison} threshold {:.4} ({})", threshold.value, threshold.rule);
        if flagged && self.observe {
            reason.push_str("; observe mode: would quarantine, forwarded");
        }
        Decision { action, flagged, score, threshold: threshold.value, reason, kept_hard_clean: false }
    }
}

impl DecisionConfig {
    /// A sample above the threshold forwarded as hard clean data: no longer flagged, and the
    /// reason says why (`why`: what the rule saw).
    pub fn keep_as_hard_clean(&self, mut decided: Decision, why: &str) -> Decision {
        decided.flagged = false;
        decided.kept_hard_clean = true;
        decided.action = Action::Forward;
        decided.reason = format!(
            "{}; forwarded as hard clean data: {why} (decision.keep_hard_clean)",
            decided.reason.split("; observe mode").next().unwrap_or_default()
        );
        decided
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Forward,
    Quarantine,
}

/// What happens to one sample, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub action: Action,
    /// Above the threshold (also in observe mode, where the sample is forwarded anyway).
    pub flagged: bool,
    pub score: f32,
    pub threshold: f32,
    pub reason: String,
    /// Above the threshold, but forwarded as hard clean data (`keep_hard_clean`).
    pub kept_hard_clean: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conformal_rank_is_ceil_n_plus_one_times_one_minus_alpha() {
        let scores: Vec<f32> = (1..=9).map(|i| i as f32).collect();
        // n = 9, alpha = 0.2: ceil(10 * 0.8) = 8th smallest.
        assert_eq!(conformal_quantile(&scores, 0.2), 8.0);
        // alpha too small for 9 scores: rank 10 > n, so nothing is rejected.
        assert_eq!(conformal_quantile(&scores, 0.05), f32::INFINITY);
    }

    #[test]
    fn conformal_threshold_bounds_false_rejects_of_exchangeable_scores() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let alpha = 0.1;
        let mut rejected = 0usize;
        let trials = 2000;
        for _ in 0..trials {
            let probes: Vec<f32> = (0..50).map(|_| rng.random()).collect();
            let fresh: f32 = rng.random();
            rejected += (fresh > conformal_quantile(&probes, alpha)) as usize;
        }
        let rate = rejected as f64 / trials as f64;
        assert!(rate <= alpha + 0.02, "false-reject rate {rate} exceeds alpha {alpha}");
        assert!(rate >= alpha - 0.04, "false-reject rate {rate} far below alpha: threshold too loose");
    }

    #[test]
    fn reject_fraction_rejects_that_share() {
        let scores: Vec<f32> = (0..100).map(|i| i as f32).collect();
        let t = reject_fraction_threshold(&scores, 0.4);
        assert_eq!(scores.iter().filter(|&&s| s > t).count(), 40);
    }

    #[test]
    fn observe_mode_flags_but_forwards() {
        let config = DecisionConfig { observe: true, ..Default::default() };
        let threshold = Threshold { value: 1.0, rule: "test".into() };
        let d = config.decide(2.0, &threshold);
        assert!(d.flagged);
        assert_eq!(d.action, Action::Forward);
        assert!(d.reason.contains("observe mode"), "{}", d.reason);
        let enforce = DecisionConfig::default().decide(2.0, &threshold);
        assert_eq!(enforce.action, Action::Quarantine);
        assert_eq!((enforce.score, enforce.threshold), (2.0, 1.0));
        assert_eq!(DecisionConfig::default().decide(0.5, &threshold).action, Action::Forward);
    }
}
