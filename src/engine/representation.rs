//! The second score: how a sample is represented, not how its loss moves.
//!
//! A clean-label poison keeps its true label and is easy to learn, so its loss trajectory is
//! an ordinary one; but the shadow learns the trigger as a feature of that class, so within the
//! class the poisons share a direction in the hidden layer that clean samples do not (spectral
//! signatures, Tran et al. 2018). The window's hidden activations are whitened by their pooled
//! within-class covariance (as SPECTRE does), then per label: the top principal direction, and
//! each row's distance from the class centre along it, cross-fitted between two halves of the
//! class. The centre is the class's coordinate-wise median, not its mean: poisons that are
//! many in their class pull the mean towards themselves, until clean samples and poisons sit
//! at comparable distances on either side (with 4 % poison per attack, penbased's two- and
//! three-feature backdoors were caught 95 and 73 % centred on the mean, 99 and 85 % on the
//! median; at 1 % no change beyond the seeds' spread). The probes get the same score; they are
//! the clean reference the scores are standardised against. Measured, it finds MNIST's
//! clean-label SIG poisons (AUC 0.85 with an in-sample direction, 0.72 cross-fitted), and half
//! of satimage's, but few of the clean-label feature triggers of optdigits and penbased, whose
//! shadow never needs the trigger to fit a label it can read from the clean features.

use ndarray::{s, Array1, Array2, ArrayView2, Axis};

/// Power-iteration steps: the top direction of a few hundred rows converges well within it.
const POWER_STEPS: usize = 30;

/// Fewer window samples of a label than this give no meaningful direction: score 0.
const MIN_ROWS: usize = 20;

/// The last hidden layer's activations of every row of `features`, from the shadow's weights
/// (`W0, b0, W1, b1, ...` as [`crate::shadow::ShadowModel::parameters`] returns them). With no
/// hidden layer, the features themselves.
pub(crate) fn last_hidden_layer(
    features: ArrayView2<f32>,
    parameters: &[Vec<f32>],
    widths: &[usize],
) -> Array2<f32> {
    let mut activations = features.to_owned();
    for (layer, &width) in widths.iter().enumerate() {
        let fan_in = activations.ncols();
        let weights = ArrayView2::from_shape((fan_in, width), &parameters[2 * layer]).expect("W shape");
        let bias = ndarray::ArrayView1::from(&parameters[2 * layer + 1]);
        let mut next = activations.dot(&weights);
        next += &bias;
        next.mapv_inplace(|v| v.max(0.0));
        activations = next;
    }
    activations
}

/// Each row's |projection| on the top principal direction of its label's window samples
/// (rows `..sample_count`), centred on their coordinate-wise median, after whitening by the
/// window's pooled within-class covariance (as SPECTRE does): a direction every class varies
/// along is not what a poison adds, so whitening leaves the direction in which one class
/// varies more than the others. Labels with fewer than [`MIN_ROWS`] window samples score 0.
pub(crate) fn spectral_scores(hidden: ArrayView2<f32>, labels: &[i64], sample_count: usize) -> Vec<f32> {
    let mut distinct = labels[..sample_count].to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    let members: Vec<(i64, Vec<usize>)> = distinct
        .into_iter()
        .map(|label| (label, (0..sample_count).filter(|&i| labels[i] == label).collect::<Vec<_>>()))
        .filter(|(_, rows)| rows.len() >= MIN_ROWS)
        .collect();
    let mut centred = Array2::<f64>::zeros((labels.len(), hidden.ncols()));
    for (label, rows) in &members {
        let centre = coordinate_median(hidden.select(Axis(0), rows).mapv(f64::from).view());
        for (i, _) in labels.iter().enumerate().filter(|(_, l)| *l == label) {
            centred.row_mut(i).assign(&(&hidden.row(i).mapv(f64::from) - &centre));
        }
    }
    let window_rows: Vec<usize> = members.iter().flat_map(|(_, rows)| rows.iter().copied()).collect();
    if window_rows.is_empty() {
        return vec![0.0; labels.len()];
    }
    let within = centred.select(Axis(0), &window_rows);
    let covariance = within.t().dot(&within) / window_rows.len() as f64;
    let whitened = whiten(&centred, covariance);
    // Cross-fitted: a direction fitted on a row scores that row higher than it would a clean
    // row it never saw (the probes), so each half of a class is scored by the direction of
    // the other half, and the probes alternate between the two.
    let mut scores = vec![0.0; labels.len()];
    for (label, rows) in &members {
        let halves: [Vec<usize>; 2] = [0, 1].map(|half| rows.iter().copied().skip(half).step_by(2).collect());
        let directions = halves.clone().map(|half| top_direction(whitened.select(Axis(0), &half).view()));
        let in_first_half: std::collections::HashSet<usize> = halves[0].iter().copied().collect();
        let mut probe_turn = 0;
        for (i, _) in labels.iter().enumerate().filter(|(_, l)| *l == label) {
            let other = if i < sample_count {
                usize::from(in_first_half.contains(&i))
            } else {
                probe_turn ^= 1;
                probe_turn
            };
            scores[i] = whitened.row(i).dot(&directions[other]).abs() as f32;
        }
    }
    scores
}

/// Each column's median: a class's centre that a cluster of poisons, a minority of its
/// samples, hardly moves (its mean moves by their share of their offset, and then the poisons
/// and the clean samples sit on either side of it at comparable distances).
pub(super) fn coordinate_median(rows: ArrayView2<f64>) -> Array1<f64> {
    rows.axis_iter(Axis(1))
        .map(|column| {
            let mut values = column.to_vec();
            let middle = values.len() / 2;
            let (_, &mut upper, _) = values.select_nth_unstable_by(middle, f64::total_cmp);
            if values.len() % 2 == 1 {
                upper
            } else {
                let lower = values[..middle].iter().copied().fold(f64::NEG_INFINITY, f64::max);
                0.5 * (lower + upper)
            }
        })
        .collect()
}

/// `rows` times the inverse Cholesky factor of `covariance` (ridged by a thousandth of its
/// mean variance, for units that never fire): rows with identity covariance.
fn whiten(rows: &Array2<f64>, covariance: Array2<f64>) -> Array2<f64> {
    let ridge = 1e-3 * covariance.diag().sum() / covariance.nrows().max(1) as f64 + 1e-9;
    // z = L^-1 x for every row, as one matrix product.
    rows.dot(&whitening(covariance, ridge).t())
}

/// The inverse Cholesky factor L^-1 of `covariance + ridge * I`: a row x becomes L^-1 x, and
/// rows of that covariance become rows of identity covariance.
pub(super) fn whitening(mut covariance: Array2<f64>, ridge: f64) -> Array2<f64> {
    covariance.diag_mut().mapv_inplace(|v| v + ridge);
    lower_triangular_inverse(&cholesky(&covariance))
}

/// Columns a block in [`whitened_rows`]: its diagonal blocks are factored and inverted entry by
/// entry, everything else is matrix products (as fast as the GEMM, where entry by entry the
/// 784 x 784 factor and inverse took 65 ms).
const BLOCK: usize = 64;

/// `rows` times the inverse transpose of the Cholesky factor L of `covariance + ridge * I`: rows
/// of that covariance become rows of identity covariance (as [`whitening`]'s transform does),
/// by a blocked factorisation and a blocked triangular solve, so that only the rows asked for
/// are whitened and nothing is inverted but the diagonal blocks.
pub(super) fn whitened_rows(rows: ArrayView2<f32>, covariance: ArrayView2<f32>, ridge: f64) -> Array2<f32> {
    let mut covariance = covariance.mapv(f64::from);
    covariance.diag_mut().mapv_inplace(|v| v + ridge);
    let lower = blocked_cholesky(&covariance);
    solve_lower_transposed(rows, &lower)
}

/// The lower Cholesky factor of a symmetric positive definite matrix, a block of columns at a
/// time (left-looking): each block less the product of the finished columns, its diagonal
/// block factored by [`cholesky`], the rows below it solved against that factor.
fn blocked_cholesky(a: &Array2<f64>) -> Array2<f64> {
    let n = a.nrows();
    let mut lower = Array2::<f64>::zeros((n, n));
    for start in (0..n).step_by(BLOCK) {
        let end = (start + BLOCK).min(n);
        let finished = lower.slice(s![start.., ..start]);
        let panel =
            &a.slice(s![start.., start..end]) - &finished.dot(&finished.slice(s![..end - start, ..]).t());
        let diagonal = cholesky(&panel.slice(s![..end - start, ..]).to_owned());
        let below = panel.slice(s![end - start.., ..]).dot(&lower_triangular_inverse(&diagonal).t());
        lower.slice_mut(s![start..end, start..end]).assign(&diagonal);
        lower.slice_mut(s![end.., start..end]).assign(&below);
    }
    lower
}

/// `rows` times the inverse transpose of `lower`: the Y with Y L^T = rows, a block of columns
/// at a time, each its columns of `rows` less the finished blocks' part, times its diagonal
/// block's inverse transpose. The factor is f64; the products over the rows run in f32, as
/// the rows are.
fn solve_lower_transposed(rows: ArrayView2<f32>, lower: &Array2<f64>) -> Array2<f32> {
    let n = lower.nrows();
    let lower32 = lower.mapv(|v| v as f32);
    let mut solved = Array2::<f32>::zeros(rows.dim());
    for start in (0..n).step_by(BLOCK) {
        let end = (start + BLOCK).min(n);
        let rest = &rows.slice(s![.., start..end])
            - &solved.slice(s![.., ..start]).dot(&lower32.slice(s![start..end, ..start]).t());
        let inverse =
            lower_triangular_inverse(&lower.slice(s![start..end, start..end]).to_owned()).mapv(|v| v as f32);
        solved.slice_mut(s![.., start..end]).assign(&rest.dot(&inverse.t()));
    }
    solved
}

/// The inverse of a lower triangular matrix with a positive diagonal; lower triangular too.
/// Row by row (row i of the inverse is e_i less the earlier rows weighted by row i of the
/// matrix, over its diagonal), so every step runs over contiguous memory: for the 784 x 784
/// covariance of the input signature, column by column took about 60 ms.
fn lower_triangular_inverse(lower: &Array2<f64>) -> Array2<f64> {
    let n = lower.nrows();
    let mut inverse = Array2::<f64>::zeros((n, n));
    for i in 0..n {
        let (done, mut rest) = inverse.view_mut().split_at(Axis(0), i);
        let mut row = rest.row_mut(0);
        row[i] = 1.0;
        for (k, earlier) in done.rows().into_iter().enumerate() {
            let weight = lower[[i, k]];
            if weight != 0.0 {
                row.slice_mut(s![..=k]).scaled_add(-weight, &earlier.slice(s![..=k]));
            }
        }
        row.mapv_inplace(|v| v / lower[[i, i]]);
    }
    inverse
}

/// The lower Cholesky factor of a symmetric positive definite matrix, row by row (each entry
/// a dot product of two contiguous row prefixes).
fn cholesky(a: &Array2<f64>) -> Array2<f64> {
    let n = a.nrows();
    let mut l = Array2::<f64>::zeros((n, n));
    for i in 0..n {
        for j in 0..=i {
            let overlap = l.slice(s![i, ..j]).dot(&l.slice(s![j, ..j]));
            let v = a[[i, j]] - overlap;
            l[[i, j]] = match i == j {
                true => v.max(1e-12).sqrt(),
                false => v / l[[j, j]],
            };
        }
    }
    l
}

/// The top right singular vector of `centred`, by power iteration from a fixed start.
fn top_direction(centred: ArrayView2<f64>) -> Array1<f64> {
    let width = centred.ncols();
    // A fixed, non-degenerate start keeps the result deterministic.
    let mut v = Array1::from_shape_fn(width, |j| 1.0 + (j % 7) as f64 / 7.0);
    for _ in 0..POWER_STEPS {
        let next = centred.t().dot(&centred.dot(&v));
        let norm = next.dot(&next).sqrt();
        if norm <= f64::EPSILON {
            return Array1::zeros(width);
        }
        v = next / norm;
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three labels of 100 window rows, all spread along axes 0 and 2, then two probes per
    /// label; label 0's rows from `first_poison` on are pushed 5 along axis 1, which no other
    /// class varies along. Every row's spectral score.
    fn scores_with_label_zero_poisoned_from(first_poison: usize) -> Vec<f32> {
        let rows = 300;
        let value = |i: usize, j: usize| -> f32 {
            let (label, k) = (i % 3, i / 3);
            match j {
                0 => ((k % 3) as f32 - 1.0) * 0.5,
                1 if label == 0 && k >= first_poison && i < rows => 5.0,
                1 => (k % 2) as f32 * 0.1,
                _ => ((k % 5) as f32 - 2.0) * 0.2,
            }
        };
        let hidden = Array2::from_shape_fn((rows + 6, 3), |(i, j)| value(i, j));
        let labels: Vec<i64> = (0..rows + 6).map(|i| (i % 3) as i64).collect();
        spectral_scores(hidden.view(), &labels, rows)
    }

    /// The smallest score among label 0's poisons (window rows from `first_poison` on).
    fn lowest_poison_score(scores: &[f32], first_poison: usize) -> f32 {
        (0..300)
            .filter(|i| i % 3 == 0 && i / 3 >= first_poison)
            .map(|i| scores[i])
            .fold(f32::INFINITY, f32::min)
    }

    #[test]
    fn rows_that_share_a_direction_their_class_alone_varies_along_score_highest() {
        let scores = scores_with_label_zero_poisoned_from(90);
        let clean_max = (0..300).filter(|i| i % 3 == 0 && i / 3 < 90).map(|i| scores[i]).fold(0.0, f32::max);
        let poison_min = lowest_poison_score(&scores, 90);
        assert!(poison_min > 2.0 * clean_max, "{clean_max} vs {poison_min}");
    }

    #[test]
    fn a_class_that_is_two_fifths_poison_is_centred_on_its_clean_samples() {
        // Centred on the class mean, label 0's clean probes would sit 2 from the centre and
        // its 40 poisons 3; on the median, the probes sit at the centre.
        let scores = scores_with_label_zero_poisoned_from(60);
        let probes_max = [300, 303].iter().map(|&i| scores[i]).fold(0.0, f32::max);
        let poison_min = lowest_poison_score(&scores, 60);
        assert!(probes_max < 0.25 * poison_min, "probes {probes_max} vs poisons {poison_min}");
    }

    #[test]
    fn a_column_median_is_its_middle_value_or_the_mean_of_the_two() {
        let odd = Array2::from_shape_vec((3, 2), vec![1.0, 9.0, 5.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(coordinate_median(odd.view()).to_vec(), vec![3.0, 4.0]);
        let even = Array2::from_shape_vec((4, 1), vec![4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!(coordinate_median(even.view()).to_vec(), vec![2.5]);
    }

    #[test]
    fn whitened_rows_have_the_identity_covariance() {
        let rows = Array2::from_shape_fn((200, 3), |(i, j)| {
            let t = i as f64;
            [t.sin() * 3.0, t.sin() + (t * 0.7).cos(), (t * 1.3).sin()][j]
        });
        let covariance = rows.t().dot(&rows) / 200.0;
        let whitened = whiten(&rows, covariance);
        let identity = whitened.t().dot(&whitened) / 200.0;
        for ((i, j), v) in identity.indexed_iter() {
            let expected = if i == j { 1.0 } else { 0.0 };
            assert!((v - expected).abs() < 0.01, "{identity:?}");
        }
    }

    #[test]
    fn the_cholesky_factor_and_its_inverse_reproduce_the_matrix_and_the_identity() {
        let n = 20;
        let b = Array2::from_shape_fn((n, n), |(i, j)| ((i * 7 + j * 13) % 11) as f64 - 5.0);
        let a = b.t().dot(&b) + Array2::<f64>::eye(n);
        let lower = cholesky(&a);
        let inverse = lower_triangular_inverse(&lower);
        for ((i, j), v) in lower.dot(&lower.t()).indexed_iter() {
            assert!((v - a[[i, j]]).abs() < 1e-8 * a[[i, j]].abs().max(1.0), "L L^T at {i},{j}");
        }
        for ((i, j), v) in inverse.dot(&lower).indexed_iter() {
            let expected = if i == j { 1.0 } else { 0.0 };
            assert!((v - expected).abs() < 1e-9, "L^-1 L at {i},{j}: {v}");
            assert!(j <= i || lower[[i, j]] == 0.0 && inverse[[i, j]] == 0.0);
        }
    }

    #[test]
    fn the_blocked_factor_and_solve_agree_with_the_entry_by_entry_ones() {
        // 150 columns: two whole blocks and a part one.
        let n = 150;
        let b = Array2::from_shape_fn((n, n), |(i, j)| ((i * 7 + j * 13) % 11) as f64 - 5.0);
        let a = b.t().dot(&b) / n as f64 + Array2::<f64>::eye(n);
        let lower = blocked_cholesky(&a);
        let reference = cholesky(&a);
        assert!(lower.iter().zip(&reference).all(|(x, y)| (x - y).abs() < 1e-9), "factors differ");
        let rows = Array2::from_shape_fn((5, n), |(i, j)| ((i * 3 + j) % 7) as f64 - 3.0);
        let solved = solve_lower_transposed(rows.mapv(|v| v as f32).view(), &lower).mapv(f64::from);
        let back = solved.dot(&lower.t());
        assert!(back.iter().zip(&rows).all(|(x, y)| (x - y).abs() < 1e-4), "Y L^T is not the rows");
        let whitened = whitened_rows(rows.mapv(|v| v as f32).view(), a.mapv(|v| v as f32).view(), 0.0);
        let expected = rows.dot(&whitening(a, 0.0).t());
        assert!(whitened.iter().zip(&expected).all(|(x, y)| (f64::from(*x) - y).abs() < 1e-4));
    }

    #[test]
    fn the_hidden_layer_is_the_relu_of_the_first_dense_layer() {
        let x = Array2::from_shape_vec((1, 2), vec![1.0, 2.0]).unwrap();
        // W0 = [[1, -1], [1, -1]], b0 = [0.5, 0]: [3.5, -3] -> relu -> [3.5, 0].
        let parameters = vec![vec![1.0, -1.0, 1.0, -1.0], vec![0.5, 0.0], vec![1.0, 1.0], vec![0.0]];
        let hidden = last_hidden_layer(x.view(), &parameters, &[2]);
        assert_eq!(hidden.row(0).to_vec(), vec![3.5, 0.0]);
    }
}
