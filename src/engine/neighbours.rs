//! A view from the inputs alone: does a sample's label agree with the clean probes nearest to
//! it? A dirty-label poison is a sample of one class relabelled as another, with a trigger on
//! a few features; the rest of its features still place it among the probes of its true class.
//! The score is ln(mean distance to the nearest probes of its own label / mean distance to the
//! nearest probes of any other label): below 0 when its own class is nearer, above 0 when
//! another class is (a mislabelled look). A probe is scored without itself.

use ndarray::{Array2, ArrayView2, Axis};

/// Nearest probes averaged on each side (fewer when a side has fewer).
const NEAREST: usize = 3;

/// Every row's label-disagreement score against the probes (rows `sample_count..`), in the
/// (already scaled) input space.
pub(crate) fn label_disagreement(features: ArrayView2<f32>, labels: &[i64], sample_count: usize) -> Vec<f32> {
    let probes = features.slice(ndarray::s![sample_count.., ..]);
    let probe_labels = &labels[sample_count..];
    let probe_norms: Vec<f32> = probes.rows().into_iter().map(|r| r.dot(&r)).collect();
    let mut scores = Vec::with_capacity(features.nrows());
    // Squared distances by ||x||^2 + ||p||^2 - 2 x.p, a chunk of rows at a time.
    const CHUNK: usize = 512;
    for start in (0..features.nrows()).step_by(CHUNK) {
        let end = (start + CHUNK).min(features.nrows());
        let rows = features.slice(ndarray::s![start..end, ..]);
        let products = rows.dot(&probes.t());
        for (offset, (row, dots)) in rows.rows().into_iter().zip(products.axis_iter(Axis(0))).enumerate() {
            let i = start + offset;
            let norm = row.dot(&row);
            let mut own = Vec::new();
            let mut other = Vec::new();
            for (j, (&dot, &probe_norm)) in dots.iter().zip(&probe_norms).enumerate() {
                if i >= sample_count && j == i - sample_count {
                    continue;
                }
                let distance = (norm + probe_norm - 2.0 * dot).max(0.0).sqrt();
                if probe_labels[j] == labels[i] {
                    own.push(distance);
                } else {
                    other.push(distance);
                }
            }
            scores.push(match (nearest_mean(&mut own), nearest_mean(&mut other)) {
                (Some(own), Some(other)) => ((own + 1e-6) / (other + 1e-6)).ln(),
                _ => 0.0,
            });
        }
    }
    scores
}

/// Inputs wider than this are projected to it before the label vote ([`label_votes`]): a
/// vote of ten neighbours needs their order roughly, not every distance exactly, and the vote
/// compares every window sample with every other, so its cost grows with the width.
const VOTE_WIDTH: usize = 64;

/// For every row of `features` (the window samples, rows `..sample_count`, then the probes),
/// the share of its `k` nearest window samples, of any label and itself
/// excluded, that carry its label, in the (already scaled) input space. A relabelled sample
/// sits among samples of its true class; a hard clean one, however unusual, mostly among its
/// own. A probe is voted on as a clean sample would be, so the probes can calibrate the vote as
/// a view (`scorer.label_vote`): it asks no probe of the sample's label to be near, and so
/// holds with few probes a class. Inputs wider than [`VOTE_WIDTH`] are first projected to it by
/// a fixed Gaussian matrix (Johnson-Lindenstrauss: distances kept within a modest factor). A
/// sample alone in its window gets 0: no neighbour vouches for its label.
pub(crate) fn label_votes(
    features: ArrayView2<f32>,
    labels: &[i64],
    sample_count: usize,
    k: usize,
) -> Vec<f32> {
    let rows = features.nrows();
    let projected = match features.ncols() > VOTE_WIDTH {
        true => features.dot(&gaussian_projection(features.ncols(), VOTE_WIDTH)),
        false => features.to_owned(),
    };
    let samples = projected.slice(ndarray::s![..sample_count, ..]);
    let norms: Vec<f32> = projected.rows().into_iter().map(|r| r.dot(&r)).collect();
    let mut agreement = Vec::with_capacity(rows);
    const CHUNK: usize = 512;
    for start in (0..rows).step_by(CHUNK) {
        let end = (start + CHUNK).min(rows);
        let products = projected.slice(ndarray::s![start..end, ..]).dot(&samples.t());
        for (a, dots) in (start..end).zip(products.axis_iter(Axis(0))) {
            let mut by_distance: Vec<(f32, bool)> = (0..sample_count)
                .filter(|&b| b != a)
                .map(|b| (norms[a] + norms[b] - 2.0 * dots[b], labels[b] == labels[a]))
                .collect();
            let nearest = k.min(by_distance.len());
            if nearest == 0 {
                // Alone in the window: no neighbour vouches for its label.
                agreement.push(0.0);
                continue;
            }
            by_distance.select_nth_unstable_by(nearest - 1, |x, y| x.0.total_cmp(&y.0));
            let same = by_distance[..nearest].iter().filter(|(_, same)| *same).count();
            agreement.push(same as f32 / nearest as f32);
        }
    }
    agreement
}

/// A fixed `[from, to]` Gaussian projection scaled by 1/sqrt(to), the same for every window.
fn gaussian_projection(from: usize, to: usize) -> Array2<f32> {
    use rand::SeedableRng;
    use rand_distr::{Distribution, StandardNormal};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x6e65_6967_6862_6f72);
    let scale = 1.0 / (to as f32).sqrt();
    Array2::from_shape_simple_fn((from, to), || {
        let value: f32 = StandardNormal.sample(&mut rng);
        value * scale
    })
}

/// For every window sample (rows `..sample_count`), its `k` nearest other window samples of
/// the same label in the (already scaled) input space, nearest first; fewer when its label has
/// fewer. Poisons of one attack share their trigger, so they are each other's neighbours.
pub(crate) fn same_label_neighbours(
    features: ArrayView2<f32>,
    labels: &[i64],
    sample_count: usize,
    k: usize,
) -> Vec<Vec<u32>> {
    let mut neighbours = vec![Vec::new(); sample_count];
    let mut distinct: Vec<i64> = labels[..sample_count].to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    for label in distinct {
        let members: Vec<usize> = (0..sample_count).filter(|&i| labels[i] == label).collect();
        let rows = features.select(Axis(0), &members);
        let norms: Vec<f32> = rows.rows().into_iter().map(|r| r.dot(&r)).collect();
        // A chunk of rows against all of the label's at a time: memory grows with the label's
        // size, not with its square (a window of one label would otherwise need n^2 floats).
        const CHUNK: usize = 512;
        for start in (0..members.len()).step_by(CHUNK) {
            let end = (start + CHUNK).min(members.len());
            let products = rows.slice(ndarray::s![start..end, ..]).dot(&rows.t());
            for (a, dots) in (start..end).zip(products.axis_iter(Axis(0))) {
                let mut by_distance: Vec<(f32, u32)> = (0..members.len())
                    .filter(|&b| b != a)
                    .map(|b| (norms[a] + norms[b] - 2.0 * dots[b], members[b] as u32))
                    .collect();
                let nearest = k.min(by_distance.len());
                if nearest == 0 {
                    continue;
                }
                by_distance.select_nth_unstable_by(nearest - 1, |x, y| x.0.total_cmp(&y.0));
                let kept = &mut by_distance[..nearest];
                kept.sort_by(|x, y| x.0.total_cmp(&y.0));
                // From the slice: collected in place, the list would keep the whole buffer.
                neighbours[members[a]] = kept.iter().map(|&(_, j)| j).collect();
            }
        }
    }
    neighbours
}

/// The mean of the [`NEAREST`] smallest distances, or none when there are none.
fn nearest_mean(distances: &mut [f32]) -> Option<f32> {
    if distances.is_empty() {
        return None;
    }
    let k = NEAREST.min(distances.len());
    distances.select_nth_unstable_by(k - 1, f32::total_cmp);
    Some(distances[..k].iter().sum::<f32>() / k as f32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    #[test]
    fn a_sample_labelled_as_the_other_cluster_scores_above_zero() {
        // Probes: label 0 near x = 0, label 1 near x = 10. Samples: at 0 labelled 0, at 0
        // labelled 1 (mislabelled).
        let mut rows = vec![[0.0f32, 0.0], [0.0, 0.0]];
        let mut labels = vec![0i64, 1];
        for i in 0..10 {
            rows.push([i as f32 * 0.1, 0.0]);
            labels.push(0);
            rows.push([10.0 + i as f32 * 0.1, 0.0]);
            labels.push(1);
        }
        let features = Array2::from_shape_vec((rows.len(), 2), rows.concat()).unwrap();
        let scores = label_disagreement(features.view(), &labels, 2);
        assert!(scores[0] < -2.0 && scores[1] > 2.0, "{scores:?}");
        assert!(scores[2..].iter().all(|&s| s < 0.0), "every probe nearer its own: {scores:?}");
    }

    #[test]
    fn each_sample_gets_its_nearest_same_label_window_samples_nearest_first() {
        // Samples (x): 0.0, 0.1, 5.0 labelled 0; 0.05 labelled 1; then one probe at 0.0.
        let features = Array2::from_shape_vec((5, 1), vec![0.0f32, 0.1, 5.0, 0.05, 0.0]).unwrap();
        let labels = vec![0i64, 0, 0, 1, 0];
        let neighbours = same_label_neighbours(features.view(), &labels, 4, 2);
        assert_eq!(neighbours, vec![vec![1, 2], vec![0, 2], vec![1, 0], vec![]]);
    }

    #[test]
    fn a_relabelled_sample_disagrees_with_its_neighbours_and_a_lone_clean_one_agrees() {
        // Label 0 on x = 0..0.9, label 1 on x = 10..10.9; one sample at 0.45 labelled 1, one at
        // 5.0 labelled 0 (far from both, nearer its own).
        let mut xs: Vec<f32> =
            (0..10).map(|i| i as f32 * 0.1).chain((0..10).map(|i| 10.0 + i as f32 * 0.1)).collect();
        let mut labels: Vec<i64> = [0; 10].into_iter().chain([1; 10]).collect();
        xs.extend([0.45, 4.0]);
        labels.extend([1, 0]);
        let features = Array2::from_shape_vec((xs.len(), 1), xs).unwrap();
        let agreement = label_votes(features.view(), &labels, 22, 5);
        assert_eq!(agreement[20], 0.0, "relabelled: {agreement:?}");
        assert_eq!(agreement[21], 1.0, "unusual but among its own: {agreement:?}");
        assert!(agreement[..20].iter().all(|&a| a >= 0.8), "{agreement:?}");
        let alone = Array2::from_shape_vec((1, 1), vec![0.0f32]).unwrap();
        assert_eq!(label_votes(alone.view(), &[0], 1, 5), vec![0.0], "no neighbour, no vote");
    }

    #[test]
    fn a_probe_is_voted_on_by_the_window_samples_as_a_sample_would_be() {
        // Samples: label 0 on x = 0..0.4, label 1 on x = 10..10.4; probes: one at 0.2 labelled
        // 0, one at 10.2 labelled 0 (among the other label), one at 0.2 labelled 1.
        let xs: Vec<f32> = (0..5)
            .map(|i| i as f32 * 0.1)
            .chain((0..5).map(|i| 10.0 + i as f32 * 0.1))
            .chain([0.2, 10.2, 0.2])
            .collect();
        let labels: Vec<i64> = [0; 5].into_iter().chain([1; 5]).chain([0, 0, 1]).collect();
        let features = Array2::from_shape_vec((xs.len(), 1), xs).unwrap();
        let votes = label_votes(features.view(), &labels, 10, 4);
        assert_eq!(votes[10..], [1.0, 0.0, 0.0], "{votes:?}");
        let without_probes = label_votes(features.slice(ndarray::s![..10, ..]), &labels[..10], 10, 4);
        assert_eq!(votes[..10], without_probes[..], "the probes do not vote on the samples");
    }

    #[test]
    fn wide_inputs_are_voted_on_in_a_projection_that_keeps_the_clusters() {
        // 300 features: label 0 around +1, label 1 around -1 in every feature (noise 0.5), and
        // one sample of the +1 cluster labelled 1.
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let n = 41;
        let features = Array2::from_shape_fn((n, 300), |(i, _)| {
            let centre = if i < 20 || i == 40 { 1.0 } else { -1.0 };
            centre + rng.random_range(-0.5f32..0.5)
        });
        let labels: Vec<i64> = (0..n).map(|i| if i < 20 { 0 } else { 1 }).collect();
        let agreement = label_votes(features.view(), &labels, n, 10);
        assert_eq!(agreement[40], 0.0, "{:?}", &agreement[38..]);
        assert!(agreement[..40].iter().all(|&a| a >= 0.9), "{agreement:?}");
    }

    #[test]
    fn neighbours_are_the_same_across_chunk_boundaries() {
        // 1 200 samples of one label on a line: each one's nearest are its neighbours on the
        // line, whichever chunk of rows it falls in.
        let n = 1200;
        let features = Array2::from_shape_fn((n, 1), |(i, _)| i as f32);
        let labels = vec![0i64; n];
        let neighbours = same_label_neighbours(features.view(), &labels, n, 2);
        for (i, nearest) in neighbours.iter().enumerate().take(n - 1).skip(1) {
            let mut got = nearest.clone();
            got.sort_unstable();
            assert_eq!(got, vec![i as u32 - 1, i as u32 + 1], "sample {i}");
        }
    }
}
