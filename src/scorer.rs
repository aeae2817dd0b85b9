//! The scoring stage: how far a loss trajectory lies from the clean probes' trajectories.
//!
//! Score = mean L2 distance to the k nearest probe trajectories. The probes are indexed with
//! HNSW (hnsw_rs); an exact scan is kept as the reference the index is tested against.

use hnsw_rs::anndists::dist::DistL2;
use hnsw_rs::hnsw::Hnsw;
use ndarray::ArrayView2;
use serde::Deserialize;

use crate::validation::{ensure, ConfigError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum IndexKind {
    /// Exact up to [`AUTO_EXACT_UP_TO`] probes, HNSW above: on trajectories of 30 epochs the
    /// exact scan is faster than HNSW at 250 and 2 500 probes (see `lossgate bench`).
    #[default]
    Auto,
    /// Approximate nearest neighbours (hnsw_rs).
    Hnsw,
    /// Compare with every probe: exact, linear in the probe count.
    Exact,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScorerConfig {
    /// Neighbours averaged into a score (the paper's k = 50).
    pub k: usize,
    pub index: IndexKind,
    /// HNSW links per node.
    pub hnsw_max_connections: usize,
    /// HNSW candidate list while building.
    pub hnsw_ef_construction: usize,
    /// HNSW candidate list while searching (raised to k + 1 if smaller).
    pub hnsw_ef_search: usize,
    /// Compare each sample only with the probes of its own label (k capped at that label's
    /// probe count less one), and calibrate on each probe's score within its label.
    pub per_label: bool,
    /// Add a second score from the shadow's hidden layer (`engine::representation`) for
    /// poisons whose loss trajectory is ordinary (clean-label attacks), fused with the
    /// trajectory score under the same calibration. On MNIST (3 seeds) it cuts the
    /// clean-label SIG attack from 81 % success to 22 % and the mean over six backdoors from
    /// 15 % to 9 %, and lets the frequency backdoor through more (6 % -> 23 %); README, "The
    /// same defaults on other data". Needs `per_label`.
    pub representation: bool,
    /// Quarantine a sample whose features lie further outside the probes' range than any probe
    /// lies outside the others' (`engine::input_range`): a trigger value no clean sample has.
    /// A clean sample is that far out with probability at most 1 / (probes + 1), so it costs
    /// almost none of the false-reject budget.
    pub input_range: bool,
    /// A third score from the inputs alone (`engine::neighbours`): how much nearer the probes
    /// of other labels are than those of the sample's own, for mislabelled-looking samples.
    pub neighbour_labels: bool,
    /// A fourth, from the window (`engine::neighbours::label_votes`): the share of a sample's
    /// nearest window samples that carry another label, calibrated on the same share for each
    /// probe. It needs no probe of the sample's label nearby, so it holds with few probes a
    /// class.
    pub label_vote: bool,
    /// A fifth, from the inputs alone (`engine::input_signature`): within each label, how far
    /// a sample lies along the direction the class's samples share off the probes' principal
    /// subspace, for clean-label triggers added to a class (SIG, blends) that no view of the
    /// shadow sees.
    pub input_signature: bool,
    /// The input signature also fits each class's direction on the samples of the window before
    /// this one in the stream, never scoring them: a faint clean-label trigger on part of a
    /// class needs more rows than one window has (session 34). Costs the signature's work twice
    /// over (a default window 1.6 -> 2.2 s on the 2-core machine); off, each window alone.
    pub window_before: bool,
    /// A sixth, from the inputs alone (`engine::input_distance`): the squared Mahalanobis
    /// distance from the probes' mean under their (shrunk) covariance, for trigger values that
    /// are each possible but break how the features vary together. Off by itself when each
    /// half of the probes does not outnumber the features (images, with a few hundred probes).
    pub input_distance: bool,
    /// A seventh, from the inputs alone (`engine::repeated_values`): how much more often a
    /// row's feature values recur among the window's samples than among the probes, for
    /// triggers that set features to chosen values (every poison carries the same ones), clean
    /// label included. Off by itself, like the input distance, for inputs as wide as half the
    /// probes (images).
    pub repeated_values: bool,
}

impl Default for ScorerConfig {
    fn default() -> Self {
        Self {
            k: 50,
            index: IndexKind::Auto,
            hnsw_max_connections: 24,
            hnsw_ef_construction: 200,
            hnsw_ef_search: 100,
            per_label: true,
            representation: true,
            input_range: true,
            neighbour_labels: true,
            label_vote: true,
            input_signature: true,
            window_before: true,
            input_distance: true,
            repeated_values: true,
        }
    }
}

impl ScorerConfig {
    pub fn validate(&self, probe_count: usize) -> Result<(), ConfigError> {
        ensure(self.k > 0, "scorer.k", "must be at least 1")?;
        ensure(
            self.k < probe_count,
            "scorer.k",
            format!(
                "{} is not smaller than probes.count ({probe_count}): each probe's leave-one-out score needs k other probes",
                self.k
            ),
        )?;
        ensure(
            (2..=255).contains(&self.hnsw_max_connections),
            "scorer.hnsw_max_connections",
            format!("{} must be in 2..=255", self.hnsw_max_connections),
        )?;
        ensure(self.hnsw_ef_construction > 0, "scorer.hnsw_ef_construction", "must be at least 1")?;
        ensure(self.hnsw_ef_search > 0, "scorer.hnsw_ef_search", "must be at least 1")?;
        ensure(
            !self.representation || self.per_label,
            "scorer.representation",
            "needs per_label = true (both scores are standardised per label)",
        )
    }
}

/// Largest probe count that `auto` scans exactly. `lossgate bench` on 10-epoch trajectories
/// (the default), k = 50, 2-core VM: the exact scan is faster at 2 500 probes (HNSW 0.4x of
/// it), HNSW at 25 000 (1.6x); the crossover lies between.
pub const AUTO_EXACT_UP_TO: usize = 10_000;

/// A neighbour: probe index and L2 distance.
pub type Neighbour = (usize, f32);

enum Index {
    Exact(Vec<Vec<f32>>),
    Hnsw { graph: Box<Hnsw<'static, f32, DistL2>>, ef_search: usize },
}

/// The probe trajectories of one window, ready to score samples against.
pub struct ProbeScorer {
    index: Index,
    probe_count: usize,
    k: usize,
}

fn l2(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f32>().sqrt()
}

impl ProbeScorer {
    /// Indexes the probes' trajectories (one row per probe).
    pub fn build(config: &ScorerConfig, probes: ArrayView2<f32>) -> Self {
        let rows: Vec<Vec<f32>> = probes.rows().into_iter().map(|r| r.to_vec()).collect();
        let probe_count = rows.len();
        let use_hnsw = match config.index {
            IndexKind::Auto => probe_count > AUTO_EXACT_UP_TO,
            IndexKind::Hnsw => true,
            IndexKind::Exact => false,
        };
        let index = match use_hnsw {
            false => Index::Exact(rows),
            true => {
                let graph = Hnsw::new(
                    config.hnsw_max_connections,
                    probe_count.max(1),
                    16,
                    config.hnsw_ef_construction,
                    DistL2 {},
                );
                for (id, row) in rows.iter().enumerate() {
                    graph.insert_slice((row, id));
                }
                Index::Hnsw { graph: Box::new(graph), ef_search: config.hnsw_ef_search }
            }
        };
        Self { index, probe_count, k: config.k }
    }

    pub fn probe_count(&self) -> usize {
        self.probe_count
    }

    /// The `count` nearest probes, nearest first.
    pub fn nearest(&self, query: &[f32], count: usize) -> Vec<Neighbour> {
        let count = count.min(self.probe_count);
        match &self.index {
            Index::Exact(rows) => {
                let mut all: Vec<Neighbour> =
                    rows.iter().enumerate().map(|(i, r)| (i, l2(query, r))).collect();
                if count < all.len() {
                    all.select_nth_unstable_by(count, |a, b| a.1.total_cmp(&b.1));
                    all.truncate(count);
                }
                all.sort_by(|a, b| a.1.total_cmp(&b.1));
                all
            }
            Index::Hnsw { graph, ef_search } => graph
                .search(query, count, (*ef_search).max(count + 1))
                .into_iter()
                .map(|n| (n.d_id, n.distance))
                .collect(),
        }
    }

    /// A sample's score: mean distance to its k nearest probes.
    pub fn score(&self, trajectory: &[f32]) -> f32 {
        mean_distance(&self.nearest(trajectory, self.k))
    }

    /// Scores every row.
    pub fn score_rows(&self, trajectories: ArrayView2<f32>) -> Vec<f32> {
        trajectories
            .rows()
            .into_iter()
            .map(|r| self.score(r.as_slice().expect("rows are contiguous")))
            .collect()
    }

    /// Each probe's score against the other probes (itself left out): the clean score
    /// distribution of this window, which the calibrated threshold is drawn from.
    pub fn leave_one_out_scores(&self, probes: ArrayView2<f32>) -> Vec<f32> {
        probes
            .rows()
            .into_iter()
            .enumerate()
            .map(|(id, row)| {
                let others: Vec<Neighbour> = self
                    .nearest(row.as_slice().expect("rows are contiguous"), self.k + 1)
                    .into_iter()
                    .filter(|&(n, _)| n != id)
                    .take(self.k)
                    .collect();
                mean_distance(&others)
            })
            .collect()
    }
}

fn mean_distance(neighbours: &[Neighbour]) -> f32 {
    if neighbours.is_empty() {
        return f32::INFINITY;
    }
    neighbours.iter().map(|n| n.1).sum::<f32>() / neighbours.len() as f32
}

/// Share of the exact k nearest that the approximate search also found, over all queries.
pub fn recall_at_k(
    exact: &ProbeScorer,
    approximate: &ProbeScorer,
    queries: ArrayView2<f32>,
    k: usize,
) -> f64 {
    let mut found = 0usize;
    let mut total = 0usize;
    for q in queries.rows() {
        let q = q.as_slice().expect("rows are contiguous");
        let truth: std::collections::HashSet<usize> = exact.nearest(q, k).into_iter().map(|n| n.0).collect();
        found += approximate.nearest(q, k).iter().filter(|n| truth.contains(&n.0)).count();
        total += truth.len();
    }
    found as f64 / total.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    fn grid() -> Array2<f32> {
        // Probes on a line: 0, 1, 2, ..., 9 (one dimension, so distances are easy to check).
        Array2::from_shape_fn((10, 1), |(i, _)| i as f32)
    }

    #[test]
    fn exact_score_is_mean_distance_to_k_nearest() {
        let config = ScorerConfig { k: 3, index: IndexKind::Exact, ..Default::default() };
        let scorer = ProbeScorer::build(&config, grid().view());
        // Nearest to 0.2: probes 0, 1, 2 at 0.2, 0.8, 1.8.
        assert!((scorer.score(&[0.2]) - (0.2 + 0.8 + 1.8) / 3.0).abs() < 1e-6);
    }

    #[test]
    fn leave_one_out_skips_the_probe_itself() {
        let config = ScorerConfig { k: 2, index: IndexKind::Exact, ..Default::default() };
        let probes = grid();
        let scorer = ProbeScorer::build(&config, probes.view());
        let loo = scorer.leave_one_out_scores(probes.view());
        assert_eq!(loo[0], 1.5); // neighbours 1 and 2
        assert_eq!(loo[5], 1.0); // neighbours 4 and 6
    }

    #[test]
    fn hnsw_agrees_with_exact_on_a_small_set() {
        let probes = grid();
        let exact = ProbeScorer::build(
            &ScorerConfig { k: 3, index: IndexKind::Exact, ..Default::default() },
            probes.view(),
        );
        let hnsw = ProbeScorer::build(
            &ScorerConfig { k: 3, index: IndexKind::Hnsw, ..Default::default() },
            probes.view(),
        );
        for q in [0.0f32, 3.3, 9.9] {
            assert!((exact.score(&[q]) - hnsw.score(&[q])).abs() < 1e-6);
        }
    }
}
