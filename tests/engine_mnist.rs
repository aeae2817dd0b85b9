//! The engine on real MNIST windows: policies, shapes, probes (detection quality: eval_harness.rs).

mod common;

use lossgate::decision::{Action, Policy};
use lossgate::Engine;
use lossgate::EngineConfig;

fn small_config() -> EngineConfig {
    let mut config = EngineConfig::default();
    config.window.size = 2048;
    config.shadow.epochs = 10;
    config
}

fn window_and_probes() -> (lossgate::data::LabelledSamples, lossgate::data::LabelledSamples) {
    let all = common::mnist_train(1300);
    (all.slice(0, 1000), all.slice(1000, 1300))
}

#[test]
fn reject_fraction_and_observe_policies_on_a_real_window() {
    let runtime = common::runtime();
    let (window, probes) = window_and_probes();
    let mut config = small_config();
    config.shadow.epochs = 4;
    config.decision.policy = Policy::RejectFraction;
    let mut engine = Engine::new(&runtime, config, probes).unwrap();
    let outcome = engine.process(&window).unwrap();
    // The paper's rule quarantines the highest-scoring 40 % of the window; the fused scores
    // are tail shares among 300 probes, so a few samples can tie at the cut, and a tie is
    // kept whole on the forwarded side (a score must be above the threshold).
    let forty_per_cent = |outcome: &lossgate::engine::WindowOutcome, count: usize| {
        let above = outcome.sample_scores.iter().filter(|&&s| s > outcome.threshold.value).count();
        assert_eq!(count, above, "quarantined exactly the samples above the threshold");
        assert!((390..=400).contains(&count), "{count} of 1000 quarantined, not 40 %");
    };
    let quarantined = outcome.decisions.iter().filter(|d| d.action == Action::Quarantine).count();
    forty_per_cent(&outcome, quarantined);
    assert_eq!(outcome.losses.dim(), (1300, 4));
    assert!(outcome.decisions.iter().all(|d| d.reason.contains("reject-fraction 0.4")));

    let mut observe = engine.config().decision.clone();
    observe.observe = true;
    engine.set_decision(observe).unwrap();
    let outcome = engine.process(&window).unwrap();
    assert!(outcome.decisions.iter().all(|d| d.action == Action::Forward));
    forty_per_cent(&outcome, outcome.decisions.iter().filter(|d| d.flagged).count());
}

#[test]
fn windows_of_the_wrong_shape_are_refused_with_a_reason() {
    let runtime = common::runtime();
    let (window, probes) = window_and_probes();
    let mut engine = Engine::new(&runtime, small_config(), probes).unwrap();
    let mut bad = window.slice(0, 10);
    bad.labels[3] = 12;
    let err = format!("{:#}", engine.process(&bad).unwrap_err());
    assert!(err.contains("label 12"), "{err}");
}

/// The window before is fitted beside this one's in the input signature and changes nothing
/// else it is given: same seed, same first shadow, same other input views; a window before of
/// the wrong shape is refused.
#[test]
fn the_window_before_changes_only_the_input_signature() {
    let runtime = common::runtime();
    let all = common::mnist_train(1300);
    let (earlier, window, probes) = (all.slice(0, 500), all.slice(500, 1000), all.slice(1000, 1300));
    let mut config = small_config();
    config.shadow.epochs = 3;
    // Fixed, so that the first window does not choose a rate the second then runs at.
    config.shadow.learning_rate = lossgate::shadow::LearningRate::Fixed(0.05);
    let mut engine = Engine::new(&runtime, config, probes).unwrap();
    let alone = engine.process_seeded(&window, None, 7, |_| {}).unwrap();
    let after = engine.process_seeded(&window, Some(&earlier), 7, |_| {}).unwrap();
    // The first shadow's (a second one trains without what the fused scores flagged).
    let first_losses =
        |o: &lossgate::engine::WindowOutcome| o.first_pass.as_ref().map_or(&o.losses, |f| &f.losses).clone();
    assert_eq!(first_losses(&alone), first_losses(&after));
    let (a, b) = (&alone.views, &after.views);
    assert_eq!((&a.range_exceedance, &a.label_vote), (&b.range_exceedance, &b.label_vote));
    let (a_signature, b_signature) =
        (a.input_signature.as_ref().unwrap(), b.input_signature.as_ref().unwrap());
    assert_eq!(
        a_signature.len(),
        b_signature.len(),
        "a score for every row of this window, none for the window before"
    );
    assert_ne!(a_signature, b_signature, "the window before was fitted");
    let mut wrong = earlier.slice(0, 30);
    wrong.labels[0] = 11;
    let err = format!("{:#}", engine.process_seeded(&window, Some(&wrong), 7, |_| {}).unwrap_err());
    assert!(err.contains("window before") && err.contains("label 11"), "{err}");
}

#[test]
fn too_few_probes_for_k_are_refused_at_start() {
    let runtime = common::runtime();
    let (_, probes) = window_and_probes();
    let err =
        Engine::new(&runtime, small_config(), probes.slice(0, 40)).err().expect("k = 50 needs > 50 probes");
    assert!(format!("{err:#}").contains("scorer.k"), "{err:#}");
}

/// Four real windows, poisoned with a corner patch, through pools of 1 and 2 workers, each
/// submitted after the one before it: the same seeds and the same earlier window give the same
/// decisions whichever worker takes a window and in whatever order they end.
#[test]
fn the_number_of_workers_does_not_change_a_decision() {
    use lossgate::engine::pool::{wait, EnginePool};
    let runtime = common::runtime();
    let all = common::mnist_train(2300);
    let probes = all.slice(2000, 2300);
    let mut windows: Vec<_> = (0..4).map(|i| all.slice(i * 500, (i + 1) * 500)).collect();
    for window in &mut windows {
        for row in 0..10 {
            for pixel in [0, 1, 28, 29] {
                window.features[[row, pixel]] = 1.0;
            }
            window.labels[row] = 7;
        }
    }
    let windows: Vec<_> = windows.into_iter().map(std::sync::Arc::new).collect();
    let mut config = small_config();
    config.shadow.epochs = 4;
    let decide = |workers: usize| {
        let pool = EnginePool::start(&runtime, config.clone(), probes.clone(), workers).unwrap();
        let pending: Vec<_> = windows
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let earlier = i.checked_sub(1).map(|before| windows[before].clone());
                pool.submit(w.clone(), earlier, i as u64, config.decision.clone())
            })
            .collect();
        pending
            .into_iter()
            .map(|p| {
                let outcome = wait(p).unwrap();
                let actions: Vec<_> = outcome.decisions.iter().map(|d| d.action).collect();
                (actions, outcome.sample_scores, outcome.learning_rate)
            })
            .collect::<Vec<_>>()
    };
    let one = decide(1);
    let two = decide(2);
    assert_eq!(one.len(), 4);
    for (window, (a, b)) in one.iter().zip(&two).enumerate() {
        assert_eq!(a.0, b.0, "window {window}: decisions differ between 1 and 2 workers");
        assert_eq!(a.1, b.1, "window {window}: scores differ between 1 and 2 workers");
        // The learning rate is chosen once, on the first window, whoever takes it.
        assert_eq!((a.2, b.2), (one[0].2, one[0].2), "window {window}: another learning rate");
    }
    let quarantined: usize =
        one.iter().map(|(actions, _, _)| actions.iter().filter(|&&a| a == Action::Quarantine).count()).sum();
    assert!(quarantined > 0, "the windows quarantine something, so the comparison means something");
}

/// `learning_rate = "auto"`: the rate chosen on a real window is the one at which the probes'
/// loss after one epoch sits where the calibration aims (two thirds of chance), between the
/// candidates tried around it; a fixed rate is used as written.
#[test]
fn the_learning_rate_is_chosen_from_the_first_window_or_taken_as_configured() {
    let runtime = common::runtime();
    let (window, probes) = window_and_probes();
    let mut engine = Engine::new(&runtime, small_config(), probes.clone()).unwrap();
    assert!(engine.needs_calibration());
    let calibration = engine.calibrate(&window).unwrap();
    assert!(!engine.needs_calibration());
    let trials = &calibration.trials;
    let (last, before) = (trials[trials.len() - 1], trials[trials.len() - 2]);
    assert!(last.first_epoch_loss <= 2.0 / 3.0 && before.first_epoch_loss > 2.0 / 3.0, "{calibration:?}");
    assert!(
        (before.learning_rate..=last.learning_rate).contains(&calibration.learning_rate),
        "{calibration:?}"
    );
    assert_eq!(engine.process(&window).unwrap().learning_rate, calibration.learning_rate);

    let mut config = small_config();
    config.shadow.learning_rate = lossgate::shadow::LearningRate::Fixed(0.05);
    let mut fixed = Engine::new(&runtime, config, probes).unwrap();
    assert!(!fixed.needs_calibration());
    assert_eq!(fixed.process(&window).unwrap().learning_rate, 0.05);
}

/// A window closed early (`window.max_wait` under light traffic) takes fewer steps per epoch
/// than the full window the rate was chosen on, so at that rate its shadow hardly learns in
/// its first epoch: the pace check sees it and chooses a faster rate for that window. A full
/// window of the same stream stays within the band and keeps the pool's rate.
#[test]
fn a_window_closed_early_gets_a_rate_for_its_own_pace() {
    let runtime = common::runtime();
    let all = common::mnist_train(8300);
    let probes = all.slice(8000, 8300);
    let mut config = small_config();
    config.window.size = 8000;
    config.shadow.epochs = 3;
    let mut engine = Engine::new(&runtime, config, probes).unwrap();
    let base = engine.calibrate(&all.slice(0, 8000)).unwrap().learning_rate;
    let full = engine.process(&all.slice(0, 8000)).unwrap();
    let pace = full.pace.expect("three epochs of at-step losses give a pace");
    assert!((1.0 / 3.0..=5.0 / 6.0).contains(&pace), "full window: pace {pace}");
    assert!(full.rate_recheck.is_none() && full.learning_rate == base, "{:?}", full.rate_recheck);

    let short = engine.process(&all.slice(0, 500)).unwrap();
    let recheck = short.rate_recheck.as_ref().unwrap_or_else(|| panic!("500 samples: pace {:?}", short.pace));
    assert!(recheck.pace > 5.0 / 6.0, "{recheck:?}");
    assert!(short.learning_rate > base, "a faster rate for fewer steps: {recheck:?}");
}

/// `learning_rate = "auto"`: a window that learns far faster or slower than the rate was chosen
/// for (here: a rate chosen on other data) gets its rate chosen again, for itself alone; the
/// next window starts from the pool's rate again. A fixed rate, or `recheck_rate = false`,
/// is used as it is.
#[test]
fn a_window_out_of_the_pace_band_gets_its_rate_chosen_again() {
    use lossgate::engine::calibration::Calibration;
    let runtime = common::runtime();
    let (window, probes) = window_and_probes();
    let mut config = small_config();
    config.shadow.epochs = 3;
    let chosen_elsewhere = |rate: f32| Calibration { learning_rate: rate, trials: Vec::new() };
    // On this window the chosen rate would be about 0.007: the pace at 0.0001 is 0.99, at
    // 0.05 about 0.22 of chance.
    for base in [0.0001f32, 0.05] {
        let mut engine = Engine::new(&runtime, config.clone(), probes.clone()).unwrap();
        engine.adopt(&chosen_elsewhere(base)).unwrap();
        let outcome = engine.process(&window).unwrap();
        let recheck =
            outcome.rate_recheck.as_ref().unwrap_or_else(|| panic!("base {base}: pace {:?}", outcome.pace));
        assert_eq!(recheck.base_rate, base);
        assert!(!(1.0 / 3.0..=5.0 / 6.0).contains(&recheck.pace), "{recheck:?}");
        assert_eq!(outcome.learning_rate, recheck.calibration.learning_rate);
        assert_ne!(outcome.learning_rate, base);
        // The next window is checked against the pool's rate again, not the re-chosen one.
        let next = engine.process(&window).unwrap();
        assert_eq!(next.rate_recheck.as_ref().map(|r| r.base_rate), Some(base));
        assert_eq!(next.learning_rate, outcome.learning_rate, "the same window re-chooses the same rate");
    }
    let mut off = config.clone();
    off.shadow.recheck_rate = false;
    let mut engine = Engine::new(&runtime, off, probes.clone()).unwrap();
    engine.adopt(&chosen_elsewhere(0.05)).unwrap();
    let outcome = engine.process(&window).unwrap();
    assert!(outcome.rate_recheck.is_none() && outcome.learning_rate == 0.05);
    let mut fixed = config;
    fixed.shadow.learning_rate = lossgate::shadow::LearningRate::Fixed(0.05);
    let outcome = Engine::new(&runtime, fixed, probes).unwrap().process(&window).unwrap();
    assert!(outcome.rate_recheck.is_none() && outcome.learning_rate == 0.05);
}

/// `decision.keep_hard_clean`: on a real window, the rule only ever forwards samples above the
/// threshold, says so in their reason, and forwards some, not all. The threshold itself may
/// move: a probe the first pass's rule would forward is no first-pass suspect either.
#[test]
fn keeping_the_hard_clean_data_only_forwards_samples_from_the_grey_zone() {
    use lossgate::engine::{rescore, WindowOutcome};
    let runtime = common::runtime();
    let (window, probes) = window_and_probes();
    let mut config = small_config();
    config.shadow.epochs = 4;
    config.decision.keep_hard_clean = false;
    let mut engine = Engine::new(&runtime, config.clone(), probes).unwrap();
    let outcome = engine.process(&window).unwrap();
    assert!(outcome.decisions.iter().all(|d| !d.reason.contains("keep_hard_clean")), "switched off");
    // Scored again as recorded (both shadows' losses, the first one's suspects), the same
    // decisions: what the evaluation's re-scoring sweeps rely on.
    assert!(outcome.first_pass.is_some(), "two shadows by default");
    let again = rescore(&config, &outcome);
    assert_eq!(again.decisions, outcome.decisions);
    assert_eq!(again.threshold, outcome.threshold);
    assert!(outcome.views.sample_neighbours.is_none(), "computed only when asked for");
    config.decision.keep_hard_clean = true;
    let mut views = outcome.views.clone();
    views.sample_neighbours = Engine::new(&runtime, config.clone(), window_and_probes().1)
        .unwrap()
        .process(&window)
        .unwrap()
        .views
        .sample_neighbours;
    assert!(views.sample_neighbours.is_some());
    let kept = rescore(&config, &WindowOutcome { views, ..outcome.clone() });
    let mut forwarded = 0;
    for (off, on) in outcome.decisions.iter().zip(&kept.decisions) {
        assert_eq!(off.score, on.score);
        let above = on.score > on.threshold;
        if on.kept_hard_clean {
            assert!(above && on.action == Action::Forward && !on.flagged, "{off:?} -> {on:?}");
            assert!(on.reason.contains("forwarded as hard clean data"), "{}", on.reason);
            forwarded += 1;
        } else {
            assert_eq!(on.action == Action::Quarantine, above, "{on:?}");
        }
    }
    let above = kept.decisions.iter().filter(|d| d.score > d.threshold).count();
    assert!(forwarded > 0 && forwarded < above, "{forwarded} of {above} above the threshold forwarded");
}
