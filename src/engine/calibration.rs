//! Choosing the shadow's learning rate from the data (`shadow.learning_rate = "auto"`).
//!
//! How fast the shadow learns decides whether poisons stand out: too fast and a backdoor is
//! learned within the first epoch, so its poisons look like easy clean samples; too slow and
//! nothing is learned inside the window, so every trajectory looks alike. Which rate is fast
//! enough depends on the data (features, classes, difficulty, window size). The engine
//! measures it on the first window: one epoch on window + probes per candidate rate, slowest
//! first, until the probes' mean loss falls to two thirds of chance (ln C), and the rate where
//! it crosses, interpolated on a log scale between the two candidates around it. Swept by
//! hand (`docs/RESULTS.md`): on satimage that lands on the best rate (0.0012; at the old fixed
//! 0.01 its centre-pixel backdoor scored AUC 0.62, at 0.03 0.37); on optdigits, penbased and
//! texture it lands inside the wide plateau of equally good rates (0.003-0.004); on MNIST at
//! 0.0017, where 0.01 was slightly better (dirty-label success 1.4 % against 2.0 %).
//! It is measured once, not again as the stream drifts.

/// The rates tried, a factor of about 3 apart, slowest first.
pub(crate) const CANDIDATES: [f32; 7] = [0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3];

/// The probes' mean loss after the first epoch, as a share of chance (ln C), that the chosen
/// rate reaches.
pub(crate) const FIRST_EPOCH_LOSS_TARGET: f64 = 2.0 / 3.0;

/// The rate used until a window large enough to calibrate on has been seen.
pub(crate) const FALLBACK_LEARNING_RATE: f32 = 0.01;

/// Fewer window samples than this make a first epoch of a handful of steps, too few to say
/// how fast the shadow learns.
pub(crate) const MIN_CALIBRATION_SAMPLES: usize = 500;

/// What one candidate rate did in one epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Trial {
    pub learning_rate: f32,
    /// The probes' mean loss after one epoch over ln(classes).
    pub first_epoch_loss: f64,
}

/// The rate chosen and every trial behind it (logged, and shown by `lossgate eval`).
#[derive(Debug, Clone, PartialEq)]
pub struct Calibration {
    pub learning_rate: f32,
    pub trials: Vec<Trial>,
}

impl Calibration {
    /// Whether the trials so far bracket the target (no faster candidate is needed).
    pub(crate) fn reached(trials: &[Trial]) -> bool {
        trials.last().is_some_and(|t| t.first_epoch_loss <= FIRST_EPOCH_LOSS_TARGET)
    }

    /// The rate where the loss crosses the target, from trials in increasing rate; the slowest
    /// candidate if even it learns faster, the fastest if none reaches it.
    pub(crate) fn from_trials(trials: Vec<Trial>) -> Self {
        let crossing = trials.iter().position(|t| t.first_epoch_loss <= FIRST_EPOCH_LOSS_TARGET);
        let learning_rate = match crossing {
            None => trials.last().map_or(FALLBACK_LEARNING_RATE, |t| t.learning_rate),
            Some(0) => trials[0].learning_rate,
            Some(i) => interpolate(trials[i - 1], trials[i]),
        };
        Self { learning_rate, trials }
    }
}

/// Linear in log(rate) between a rate above the target and one below it.
fn interpolate(slow: Trial, fast: Trial) -> f32 {
    let drop = slow.first_epoch_loss - fast.first_epoch_loss;
    let share = if drop > 0.0 { (slow.first_epoch_loss - FIRST_EPOCH_LOSS_TARGET) / drop } else { 1.0 };
    let (lo, hi) = ((slow.learning_rate as f64).ln(), (fast.learning_rate as f64).ln());
    (lo + share.clamp(0.0, 1.0) * (hi - lo)).exp() as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(learning_rate: f32, first_epoch_loss: f64) -> Trial {
        Trial { learning_rate, first_epoch_loss }
    }

    #[test]
    fn the_rate_is_interpolated_where_the_loss_crosses_the_target() {
        // 0.8 at 0.001, 0.5 at 0.01: the target 2/3 lies 0.44 of the way, in log scale.
        let chosen = Calibration::from_trials(vec![t(0.001, 0.8), t(0.01, 0.5)]).learning_rate;
        let expected = 10f64.powf(-3.0 + (0.8 - 2.0 / 3.0) / 0.3) as f32;
        assert!((chosen - expected).abs() < 1e-6, "{chosen} vs {expected}");
        assert!(Calibration::reached(&[t(0.001, 0.8), t(0.01, 0.5)]));
        assert!(!Calibration::reached(&[t(0.001, 0.8)]));
    }

    #[test]
    fn outside_the_candidates_the_nearest_end_is_kept() {
        assert_eq!(Calibration::from_trials(vec![t(0.0003, 0.4)]).learning_rate, 0.0003);
        assert_eq!(Calibration::from_trials(vec![t(0.1, 0.9), t(0.3, 0.8)]).learning_rate, 0.3);
        assert_eq!(Calibration::from_trials(vec![]).learning_rate, FALLBACK_LEARNING_RATE);
    }
}
