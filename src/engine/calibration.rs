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
//!
//! Re-checked on every window as the stream drifts: the window's own first pass shows how far
//! the probes' loss has fallen after one epoch ([`first_epoch_pace`]); outside [`PACE_BAND`]
//! the stream no longer learns at the pace the rate was chosen for (new data, new units, a
//! harder mix), and the rate is chosen again on that window and its first pass run again.
//! The re-chosen rate serves that window only, so a window's decisions depend on its own
//! content and the pool's one rate, never on which worker ran the windows before it.

use ndarray::{s, ArrayView2};

use crate::shadow::LossRecording;

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

/// The probes' loss after one epoch, as a share of chance, between which a window is taken to
/// learn at the pace its rate was chosen for. The calibration aims at the middle,
/// [`FIRST_EPOCH_LOSS_TARGET`]; the band runs from half of it (the shadow learns twice as
/// fast: a backdoor is learned within the first epoch) to halfway between it and chance (the
/// shadow hardly learns inside the window: every trajectory looks alike). A window closed
/// early at `window.max_wait` takes fewer steps per epoch and lands above it. The fast side
/// sees a rate up to about ten times too fast; far beyond that the shadow turns unstable and
/// its loss rises again (MNIST: pace 0.20 at 15x the chosen rate, 0.38 at 30x).
pub(crate) const PACE_BAND: (f64, f64) =
    (FIRST_EPOCH_LOSS_TARGET / 2.0, (1.0 + FIRST_EPOCH_LOSS_TARGET) / 2.0);

/// The probes' mean loss after the first epoch over ln(classes), from a window's recorded
/// `[samples + probes, epochs]` loss matrix (the probes are the rows from `sample_count`).
/// At-step losses of the second epoch are taken at each probe's own step in it, after the
/// whole first epoch; after-epoch losses of the first epoch are taken right after it. `None`
/// when the matrix cannot say (at-step with one epoch, no probes, fewer than two classes);
/// infinite when the losses are not finite (the shadow diverged).
pub(crate) fn first_epoch_pace(
    losses: ArrayView2<f32>,
    sample_count: usize,
    classes: usize,
    recording: LossRecording,
) -> Option<f64> {
    let column = match recording {
        LossRecording::AtStep => 1,
        LossRecording::AfterEpoch => 0,
    };
    let chance = (classes as f64).ln();
    if column >= losses.ncols() || sample_count >= losses.nrows() || chance <= 0.0 {
        return None;
    }
    let probes = losses.slice(s![sample_count.., column]);
    let mean = probes.iter().map(|&l| l as f64).sum::<f64>() / probes.len() as f64;
    // A shadow that diverged learned nothing: as far out of the band as can be.
    Some(if mean.is_finite() { mean / chance } else { f64::INFINITY })
}

/// Whether a window whose probes reached `pace` learns at the pace its rate was chosen for.
pub(crate) fn within_pace_band(pace: f64) -> bool {
    (PACE_BAND.0..=PACE_BAND.1).contains(&pace)
}

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
    fn the_pace_is_the_probes_loss_after_one_epoch_as_a_share_of_chance() {
        // Two samples then two probes, three epochs, four classes.
        let chance = 4f32.ln();
        let losses = ndarray::array![
            [9.0, 9.0, 9.0],
            [9.0, 9.0, 9.0],
            [chance, 0.4 * chance, 0.1],
            [chance, 0.6 * chance, 0.1],
        ];
        let at_step = first_epoch_pace(losses.view(), 2, 4, LossRecording::AtStep).unwrap();
        assert!((at_step - 0.5).abs() < 1e-6, "{at_step}");
        let after_epoch = first_epoch_pace(losses.view(), 2, 4, LossRecording::AfterEpoch).unwrap();
        assert!((after_epoch - 1.0).abs() < 1e-6, "{after_epoch}");
        assert_eq!(first_epoch_pace(losses.slice(s![.., ..1]), 2, 4, LossRecording::AtStep), None);
        assert_eq!(first_epoch_pace(losses.view(), 4, 4, LossRecording::AtStep), None, "no probes");
        let mut diverged = losses.clone();
        diverged[[3, 1]] = f32::NAN;
        let pace = first_epoch_pace(diverged.view(), 2, 4, LossRecording::AtStep).unwrap();
        assert!(!within_pace_band(pace), "{pace}");
    }

    #[test]
    fn the_band_holds_the_target_and_stops_short_of_chance_and_of_twice_as_fast() {
        assert!(within_pace_band(FIRST_EPOCH_LOSS_TARGET));
        assert!(!within_pace_band(0.95), "hardly learning");
        assert!(!within_pace_band(FIRST_EPOCH_LOSS_TARGET / 2.5), "learned within the first epoch");
        assert!(!within_pace_band(f64::NAN));
    }

    #[test]
    fn outside_the_candidates_the_nearest_end_is_kept() {
        assert_eq!(Calibration::from_trials(vec![t(0.0003, 0.4)]).learning_rate, 0.0003);
        assert_eq!(Calibration::from_trials(vec![t(0.1, 0.9), t(0.3, 0.8)]).learning_rate, 0.3);
        assert_eq!(Calibration::from_trials(vec![]).learning_rate, FALLBACK_LEARNING_RATE);
    }
}
