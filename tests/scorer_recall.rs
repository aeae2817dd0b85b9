//! The HNSW index against the exact scan: recall@k on trajectory-shaped data at the default
//! probe count and at 25 000 probes, and identical decisions on a real MNIST window.

mod common;

use lossgate::bench::synthetic_trajectories;
use lossgate::data::LabelledSamples;
use lossgate::engine::trajectory::{record_loss_matrix, TrainingPlan};
use lossgate::scorer::{recall_at_k, IndexKind, ProbeScorer, ScorerConfig};
use lossgate::shadow::{LossRecording, MlpShape, Sgd, ShadowModel};
use lossgate::EngineConfig;

fn recall_with(probes: usize, queries: usize) -> f64 {
    let k = 50;
    let probe_rows = synthetic_trajectories(probes, 30, 1);
    let query_rows = synthetic_trajectories(queries, 30, 2);
    let exact = ProbeScorer::build(
        &ScorerConfig { k, index: IndexKind::Exact, ..Default::default() },
        probe_rows.view(),
    );
    let hnsw = ProbeScorer::build(
        &ScorerConfig { k, index: IndexKind::Hnsw, ..Default::default() },
        probe_rows.view(),
    );
    recall_at_k(&exact, &hnsw, query_rows.view(), k)
}

#[test]
fn hnsw_recall_at_default_probe_count() {
    let recall = recall_with(250, 2000);
    eprintln!("recall@50 = {recall} at 250 probes");
    assert!(recall >= 0.99, "recall@50 = {recall} at 250 probes");
}

#[test]
fn hnsw_recall_at_25000_probes() {
    let recall = recall_with(25_000, 500);
    eprintln!("recall@50 = {recall} at 25 000 probes");
    assert!(recall >= 0.99, "recall@50 = {recall} at 25 000 probes");
}

#[test]
fn hnsw_and_exact_make_the_same_decisions_on_a_real_window() {
    let runtime = common::runtime();
    let all = common::mnist_train(1500);
    let window = all.slice(0, 1250);
    let probes: LabelledSamples = all.slice(1250, 1500);
    let joined = window.concat(&probes).unwrap();
    let shape = MlpShape { features: 784, hidden: vec![64], classes: 10 };
    let sgd = Sgd { learning_rate: 0.01, momentum: 0.9, weight_decay: 0.0 };
    let mut model = ShadowModel::new(&runtime, shape, sgd, 3).unwrap();
    let plan = TrainingPlan { epochs: 12, batch_size: 128, seed: 3, recording: LossRecording::AtStep };
    let losses =
        record_loss_matrix(&mut model, joined.features.view(), &joined.labels, plan, |_| {}).unwrap();

    let mut config = EngineConfig::default();
    config.scorer.index = IndexKind::Exact;
    let exact = lossgate::engine::score_and_decide(
        &config,
        losses.clone(),
        joined.labels.clone(),
        window.len(),
        0.01,
        Default::default(),
    );
    config.scorer.index = IndexKind::Hnsw;
    let hnsw = lossgate::engine::score_and_decide(
        &config,
        losses,
        joined.labels.clone(),
        window.len(),
        0.01,
        Default::default(),
    );
    assert_eq!(exact.threshold.value, hnsw.threshold.value);
    let flagged = |o: &lossgate::WindowOutcome| o.decisions.iter().map(|d| d.flagged).collect::<Vec<_>>();
    assert_eq!(flagged(&exact), flagged(&hnsw));
    assert!(flagged(&exact).iter().any(|&f| f) && flagged(&exact).iter().any(|&f| !f));
    // Far outliers (well above the threshold) can miss a neighbour in HNSW's greedy search;
    // the scores of all but a few samples must match the exact scan.
    let differing = exact
        .sample_scores
        .iter()
        .zip(&hnsw.sample_scores)
        .filter(|(a, b)| (*a - *b).abs() > 1e-5 * a.abs().max(1.0))
        .count();
    assert!(differing * 100 <= window.len(), "{differing} of {} scores differ", window.len());
}
