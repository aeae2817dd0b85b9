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
/// holds with few probes a class. Inputs wider than [`VOTE_WIDTH`] are first projected onto the
/// probes' principal directions ([`probe_principal_directions`]). A sample alone in its window
/// gets 0: no neighbour vouches for its label.
pub(crate) fn label_votes(
    features: ArrayView2<f32>,
    labels: &[i64],
    sample_count: usize,
    k: usize,
) -> Vec<f32> {
    let rows = features.nrows();
    let directions = match features.ncols() > VOTE_WIDTH {
        true => probe_principal_directions(features, sample_count, VOTE_WIDTH),
        false => None,
    };
    let projected = match directions {
        Some(directions) => features.dot(&directions),
        None => features.to_owned(),
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

/// Orthogonal-iteration steps for [`probe_principal_directions`]: the vote needs the span of
/// the leading directions roughly, not each direction exactly.
const PRINCIPAL_STEPS: usize = 30;

/// The (at most) `width` directions along which the probes (rows `sample_count..`) vary most,
/// as the unit columns of a `[features, width]` matrix; none with fewer than two probes.
///
/// Why not a random projection (used until session 15): it keeps every distance within a
/// modest factor, the trigger's too, so poisons that share a trigger on features clean data
/// leaves alone stay each other's nearest and vouch for each other's label; and on MNIST it
/// blurred the clean classes (a clean sample's 10 nearest mostly of its label: 80 % in a
/// Gaussian projection to 64, 88 % in the probes' leading 64 directions, 86 % in all 784).
/// Computed from the probes' Gram matrix (probes x probes), so the cost grows with the number
/// of probes, not with the width squared.
fn probe_principal_directions(
    features: ArrayView2<f32>,
    sample_count: usize,
    width: usize,
) -> Option<Array2<f32>> {
    let probes = features.slice(ndarray::s![sample_count.., ..]).mapv(f64::from);
    let width = width.min(probes.nrows().saturating_sub(1));
    let centre = probes.mean_axis(Axis(0)).filter(|_| width > 0)?;
    let centred = probes - centre;
    let gram = centred.dot(&centred.t());
    // The basis as rows (one vector a row), so that orthonormalising reads contiguous memory;
    // drawn probes x width and turned, the draw the README's measured runs used.
    let mut basis =
        fixed_gaussian_start(gram.nrows(), width).reversed_axes().as_standard_layout().into_owned();
    orthonormalise_rows(&mut basis);
    for _ in 0..PRINCIPAL_STEPS {
        basis = basis.dot(&gram);
        orthonormalise_rows(&mut basis);
    }
    // A unit eigenvector q of the Gram matrix gives the direction centred^T q (norm sqrt(eigenvalue)).
    let mut directions = centred.t().dot(&basis.t());
    for mut column in directions.columns_mut() {
        let norm = column.dot(&column).sqrt();
        column.mapv_inplace(|v| if norm > 1e-9 { v / norm } else { 0.0 });
    }
    Some(directions.mapv(|v| v as f32))
}

/// A `[rows, columns]` matrix of standard normal draws from a fixed seed: the same start, so
/// the same directions, for the same probes.
fn fixed_gaussian_start(rows: usize, columns: usize) -> Array2<f64> {
    use rand::SeedableRng;
    use rand_distr::{Distribution, StandardNormal};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x6e65_6967_6862_6f72);
    Array2::from_shape_simple_fn((rows, columns), || StandardNormal.sample(&mut rng))
}

/// Modified Gram-Schmidt on the rows; a row that is (numerically) in the span of those before
/// it becomes zero and stays so.
fn orthonormalise_rows(matrix: &mut Array2<f64>) {
    for j in 0..matrix.nrows() {
        let (done, mut rest) = matrix.view_mut().split_at(Axis(0), j);
        let mut row = rest.row_mut(0);
        for earlier in done.rows() {
            let overlap = earlier.dot(&row);
            row.scaled_add(-overlap, &earlier);
        }
        let norm = row.dot(&row).sqrt();
        let scale = if norm > 1e-12 { 1.0 / norm } else { 0.0 };
        row.mapv_inplace(|v| v * scale);
    }
}

/// Each window sample's nearest window samples of its label, nearest first, in two spaces.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SameLabelNeighbours {
    /// In the (already scaled) input space.
    pub(crate) in_input: Vec<Vec<u32>>,
    /// In what is left of the input once the directions of `along` are taken out; `None`
    /// without them.
    pub(crate) off_along: Option<Vec<Vec<u32>>>,
}

/// For every window sample (rows `..sample_count`), its `k` nearest other window samples of
/// the same label, nearest first; fewer when its label has fewer. Poisons of one attack share
/// their trigger, so they are each other's neighbours. `along`: every window sample's
/// coordinates on a set of orthonormal directions (the probes' principal subspace), one row
/// each in the samples' order; the second list measures
/// distance without them, |x - y|^2 less the part along them, from the same products: a
/// trigger small beside what separates two clean inputs (a 5x5 patch on 28x28 images) is most
/// of what is left there.
pub(crate) fn same_label_neighbours(
    features: ArrayView2<f32>,
    along: Option<ArrayView2<f32>>,
    labels: &[i64],
    sample_count: usize,
    k: usize,
) -> SameLabelNeighbours {
    let mut in_input = vec![Vec::new(); sample_count];
    let mut off_along = along.map(|_| vec![Vec::new(); sample_count]);
    let mut distinct: Vec<i64> = labels[..sample_count].to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    for label in distinct {
        let members: Vec<usize> = (0..sample_count).filter(|&i| labels[i] == label).collect();
        let rows = features.select(Axis(0), &members);
        let norms = squared_norms(rows.view());
        let coordinates = along.map(|a| a.select(Axis(0), &members));
        let coordinate_norms = coordinates.as_ref().map(|c| squared_norms(c.view()));
        // A chunk of rows against all of the label's at a time: memory grows with the label's
        // size, not with its square (a window of one label would otherwise need n^2 floats).
        const CHUNK: usize = 512;
        for start in (0..members.len()).step_by(CHUNK) {
            let end = (start + CHUNK).min(members.len());
            let products = rows.slice(ndarray::s![start..end, ..]).dot(&rows.t());
            let along_products =
                coordinates.as_ref().map(|c| c.slice(ndarray::s![start..end, ..]).dot(&c.t()));
            for (offset, a) in (start..end).enumerate() {
                let input_distance = |b: usize| norms[a] + norms[b] - 2.0 * products[[offset, b]];
                in_input[members[a]] = nearest(k, &members, a, input_distance);
                if let (Some(lists), Some(along_products), Some(coordinate_norms)) =
                    (off_along.as_mut(), along_products.as_ref(), coordinate_norms.as_ref())
                {
                    let off_distance = |b: usize| {
                        let part_along =
                            coordinate_norms[a] + coordinate_norms[b] - 2.0 * along_products[[offset, b]];
                        input_distance(b) - part_along
                    };
                    lists[members[a]] = nearest(k, &members, a, off_distance);
                }
            }
        }
    }
    SameLabelNeighbours { in_input, off_along }
}

fn squared_norms(rows: ArrayView2<f32>) -> Vec<f32> {
    rows.rows().into_iter().map(|r| r.dot(&r)).collect()
}

/// The `k` members (as rows) nearest to member `a` by `distance` (to member `b`), `a` itself
/// left out, nearest first.
fn nearest(k: usize, members: &[usize], a: usize, distance: impl Fn(usize) -> f32) -> Vec<u32> {
    let mut by_distance: Vec<(f32, u32)> =
        (0..members.len()).filter(|&b| b != a).map(|b| (distance(b), members[b] as u32)).collect();
    let nearest = k.min(by_distance.len());
    if nearest == 0 {
        return Vec::new();
    }
    by_distance.select_nth_unstable_by(nearest - 1, |x, y| x.0.total_cmp(&y.0));
    let kept = &mut by_distance[..nearest];
    kept.sort_by(|x, y| x.0.total_cmp(&y.0));
    // From the slice: collected in place, the list would keep the whole buffer.
    kept.iter().map(|&(_, j)| j).collect()
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
    fn off_a_subspace_the_nearest_sample_is_the_one_that_differs_only_along_it() {
        // Three samples of one label in 2-D; the subspace is the first axis. In the input space
        // sample 0's nearest is sample 1 (5 apart, along the second axis); off the first axis
        // it is sample 2 (10 apart along the first, 0.1 along the second).
        let features = Array2::from_shape_vec((3, 2), vec![0.0f32, 0.0, 0.1, 5.0, 10.0, 0.1]).unwrap();
        let along = features.column(0).to_owned().insert_axis(Axis(1));
        let nearest = same_label_neighbours(features.view(), Some(along.view()), &[0, 0, 0], 3, 1);
        assert_eq!(nearest.in_input[0], vec![1]);
        assert_eq!(nearest.off_along.as_ref().map(|lists| lists[0].clone()), Some(vec![2]));
        assert_eq!(same_label_neighbours(features.view(), None, &[0, 0, 0], 3, 1).off_along, None);
    }

    #[test]
    fn each_sample_gets_its_nearest_same_label_window_samples_nearest_first() {
        // Samples (x): 0.0, 0.1, 5.0 labelled 0; 0.05 labelled 1; then one probe at 0.0.
        let features = Array2::from_shape_vec((5, 1), vec![0.0f32, 0.1, 5.0, 0.05, 0.0]).unwrap();
        let labels = vec![0i64, 0, 0, 1, 0];
        let neighbours = same_label_neighbours(features.view(), None, &labels, 4, 2).in_input;
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
        // one sample of the +1 cluster labelled 1; then 10 probes of each label.
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let n = 41;
        let plus = |i: usize| i < 20 || i == 40 || (n..n + 10).contains(&i);
        let features = Array2::from_shape_fn((n + 20, 300), |(i, _)| {
            let centre = if plus(i) { 1.0 } else { -1.0 };
            centre + rng.random_range(-0.5f32..0.5)
        });
        let labels: Vec<i64> = (0..n + 20).map(|i| if plus(i) && i != 40 { 0 } else { 1 }).collect();
        let agreement = label_votes(features.view(), &labels, n, 10);
        assert_eq!(agreement[40], 0.0, "{:?}", &agreement[38..]);
        assert!(agreement[..40].iter().all(|&a| a >= 0.9), "{agreement:?}");
    }

    #[test]
    fn poisons_sharing_a_trigger_the_probes_never_vary_along_do_not_vouch_for_each_other() {
        // 300 features. Clean: label 0 at +1 on feature 0, label 1 at -1, noise on features
        // 1..100, nothing on 100..300. Twelve poisons look like label 0 but carry label 1 and
        // a trigger of 5 on features 100..300. Samples: 120 of label 0, 40 of label 1, then the
        // poisons; probes: 20 clean a label. Across all 300 features the trigger makes the
        // poisons each other's nearest (each would get 1.0); along the probes' directions it is
        // gone and they sit among the 0s.
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let kinds: Vec<(i64, f32, bool)> = [(0, 1.0, false); 120]
            .into_iter()
            .chain([(1, -1.0, false); 40])
            .chain([(1, 1.0, true); 12])
            .chain([(0, 1.0, false); 20])
            .chain([(1, -1.0, false); 20])
            .collect();
        let features = Array2::from_shape_fn((kinds.len(), 300), |(i, j)| {
            let (_, side, triggered) = kinds[i];
            match j {
                0 => side + rng.random_range(-0.2f32..0.2),
                1..100 => rng.random_range(-0.5f32..0.5),
                _ if triggered => 5.0,
                _ => 0.0,
            }
        });
        let labels: Vec<i64> = kinds.iter().map(|k| k.0).collect();
        let agreement = label_votes(features.view(), &labels, 172, 10);
        assert!(agreement[160..172].iter().all(|&a| a <= 0.4), "poisons: {:?}", &agreement[160..172]);
        assert!(agreement[..160].iter().all(|&a| a >= 0.6), "clean: {:?}", &agreement[..160]);
    }

    #[test]
    fn the_probes_principal_directions_are_orthonormal_and_span_their_variation() {
        // Probes spread along features 0 and 3 only (of 80): two directions carry everything.
        let probes = Array2::from_shape_fn((30, 80), |(i, j)| match j {
            0 => i as f32,
            3 => ((i * 7) % 11) as f32,
            _ => 0.0,
        });
        let directions = probe_principal_directions(probes.view(), 0, 5).unwrap();
        assert_eq!(directions.dim(), (80, 5));
        let gram = directions.t().dot(&directions);
        let spanned = (0..5).filter(|&j| gram[[j, j]] > 0.5).count();
        assert_eq!(spanned, 2, "two non-zero directions: {gram:?}");
        for j in 0..5 {
            let off_support: f32 =
                (0..80).filter(|&f| f != 0 && f != 3).map(|f| directions[[f, j]].abs()).sum();
            assert!(off_support < 1e-4, "direction {j} leaves features 0 and 3: {off_support}");
        }
        assert!(probe_principal_directions(probes.slice(ndarray::s![..1, ..]), 0, 5).is_none(), "one probe");
    }

    #[test]
    fn neighbours_are_the_same_across_chunk_boundaries() {
        // 1 200 samples of one label on a line: each one's nearest are its neighbours on the
        // line, whichever chunk of rows it falls in.
        let n = 1200;
        let features = Array2::from_shape_fn((n, 1), |(i, _)| i as f32);
        let labels = vec![0i64; n];
        let neighbours = same_label_neighbours(features.view(), None, &labels, n, 2).in_input;
        for (i, nearest) in neighbours.iter().enumerate().take(n - 1).skip(1) {
            let mut got = nearest.clone();
            got.sort_unstable();
            assert_eq!(got, vec![i as u32 - 1, i as u32 + 1], "sample {i}");
        }
    }
}
