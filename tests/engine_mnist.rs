//! The engine on real MNIST windows: policies, shapes, probes (detection quality: eval_harness.rs).

mod common;

use lossgate::config::EngineConfig;
use lossgate::decision::{Action, Policy};
use lossgate::Engine;

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
    let quarantined = outcome.decisions.iter().filter(|d| d.action == Action::Quarantine).count();
    assert_eq!(quarantined, 400, "the paper's rule quarantines 40 % of the window");
    assert_eq!(outcome.losses.dim(), (1300, 4));
    assert!(outcome.decisions.iter().all(|d| d.reason.contains("reject-fraction 0.4")));

    let mut observe = engine.config().decision.clone();
    observe.observe = true;
    engine.set_decision(observe).unwrap();
    let outcome = engine.process(&window).unwrap();
    assert!(outcome.decisions.iter().all(|d| d.action == Action::Forward));
    assert_eq!(outcome.decisions.iter().filter(|d| d.flagged).count(), 400);
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

#[test]
fn too_few_probes_for_k_are_refused_at_start() {
    let runtime = common::runtime();
    let (_, probes) = window_and_probes();
    let err =
        Engine::new(&runtime, small_config(), probes.slice(0, 40)).err().expect("k = 50 needs > 50 probes");
    assert!(format!("{err:#}").contains("scorer.k"), "{err:#}");
}
