//! A score from the inputs alone for triggers that a class's poisons share and clean data never
//! varies along: the class's top direction off the probes' principal subspace.
//!
//! A clean-label trigger added to a class's images (SIG's sinusoid, a blended pattern) leaves
//! every view of how the shadow learns them ordinary: the poisons keep their true label, the
//! shadow needs no trigger to fit them, and the hidden layer does not represent it (Animal-MNIST's
//! SIG: hidden-layer AUC 0.46). In the inputs the poisons all carry the same pattern, but most of
//! what separates one clean image from another is larger. So each row is first stripped of the
//! directions along which the probes vary most (the leading principal directions holding 95 % of
//! their variance); what is left is small for clean data and, for the poisons, mostly the
//! trigger. The residuals are whitened by their pooled within-class covariance
//! ([`whitened_within_classes`]); within each label they are centred on the window samples'
//! coordinate-wise median, and each row scores its |projection| on the top principal direction
//! of the class's other residuals (spectral signatures, Tran et al. 2018; SPECTRE's whitening).
//!
//! Every fit is arranged so that the probes, which calibrate every view and are never in the
//! window, stay exchangeable with the window's clean samples: each half of the probes fits a
//! subspace that strips the other half and every window sample, and each half's world (those
//! rows) is whitened and scored on its own (a window sample takes its parity's world's score);
//! the whitening counts each sample and each probe of the world once; a class's direction is
//! fitted on three quarters of its window samples and scores the fourth (and every fourth probe
//! of the label). The window before this one in the stream, when there is one ([`EarlierRows`]),
//! is stripped, whitened and fitted in every fold beside them and never scored: neither a probe
//! nor a scored sample is ever in its own direction's fit. The scores are
//! standardised per label on the class's window samples (median and MAD), hundreds where the
//! probes of a label are tens: the same transform for the class's probes and samples, without
//! the noise of a spread measured on 25 probes. Measured on window dumps (3 seeds, Python
//! replica): beyond every probe lie 91 % of Animal-MNIST's SIG poisons, 90 % of its corner
//! patch's and its blend's, 99 % of MNIST's pixel backdoor's, and 0.2-0.6 % of the clean
//! samples. README, session 16.

use ndarray::{Array1, Array2, ArrayView2, Axis};

use super::representation::{coordinate_median, whitened_rows};
use super::scoring::robust_centre_and_spread;

/// The share of a probe half's variance its principal subspace keeps (the rest is the residual
/// the score looks at). Checked at 0.90, 0.95 and 0.99 on six data sets' window dumps: 0.95
/// keeps the most of each trigger in the residual; none of the three was fitted to one set.
const VARIANCE_KEPT: f64 = 0.95;

/// Each half's subspace is fitted on at most this many of its probes: the eigendecomposition
/// costs their number cubed (125 a half with the default 250 probes: milliseconds, once an
/// engine), and a few hundred clean rows find the directions that hold 95 % of the variance.
const MAX_SUBSPACE_PROBES: usize = 256;

/// Folds a class's window samples are split into for its directions.
const FOLDS: usize = 4;

/// A class with fewer window samples than this gets no direction: its rows score 0.
const MIN_ROWS: usize = 20;

/// Residuals wider than this are scored unwhitened: the whitening's factor costs the width
/// cubed and its solve the rows times the width squared (784 pixels: 10-15 ms for the blocked
/// factor; 3 072 would take seconds).
pub(crate) const MAX_WHITENED_WIDTH: usize = 1024;

/// Power-iteration steps on a class's Gram matrix. Where the class's top direction stands clear
/// of the rest (the triggers caught whole in session 33's Animal-MNIST dumps: a top singular
/// value of 1 against 0.85-0.87 next), 30 steps reach it; in a nearly flat spectrum (a few
/// hundred rows in hundreds of dimensions) they stop short of it, between the near-uniform
/// start (the class's mean offset from its median) and the top. Other step counts and a step
/// chosen on held-out rows were measured and not kept (README, session 33).
const POWER_STEPS: usize = 30;

/// At most this many Jacobi sweeps (each rotates every off-diagonal pair to zero once); the
/// loop stops as soon as the off-diagonal part is negligible.
const JACOBI_SWEEPS: usize = 50;

/// The probes' principal subspaces, one fitted on each half (even and odd probes): fitted once,
/// since the probes are fixed for an engine's life.
#[derive(Debug, Clone)]
pub(crate) struct ProbeSubspaces {
    halves: [Subspace; 2],
}

/// One half of the probes: its mean and the unit directions (rows of `basis`) holding
/// [`VARIANCE_KEPT`] of its variance.
#[derive(Debug, Clone)]
struct Subspace {
    mean: Array1<f32>,
    basis: Array2<f32>,
}

impl ProbeSubspaces {
    /// `None` with fewer than four probes (two a half). Probes beyond [`MAX_SUBSPACE_PROBES`] a
    /// half fit neither subspace; they are stripped like the others, by the other half's.
    pub(crate) fn fit(probes: ArrayView2<f32>) -> Option<Self> {
        if probes.nrows() < 4 {
            return None;
        }
        let half = |parity: usize| {
            let rows: Vec<usize> = (parity..probes.nrows()).step_by(2).take(MAX_SUBSPACE_PROBES).collect();
            Subspace::fit(probes.select(Axis(0), &rows).view())
        };
        Some(Self { halves: [half(0), half(1)] })
    }

    /// Every row's coordinates on the even half's principal directions, for distances off the
    /// probes' subspace between window samples (`neighbours::same_label_neighbours`): either half
    /// would do, since no probe is compared there.
    pub(crate) fn coordinates(&self, rows: ArrayView2<f32>) -> Array2<f32> {
        let subspace = &self.halves[0];
        (&rows - &subspace.mean).dot(&subspace.basis.t())
    }

    /// The number of directions each half keeps.
    #[cfg(test)]
    fn widths(&self) -> [usize; 2] {
        self.halves.clone().map(|h| h.basis.nrows())
    }
}

impl Subspace {
    fn fit(probes: ArrayView2<f32>) -> Self {
        let mean = probes.mean_axis(Axis(0)).expect("at least one probe");
        let centred = (&probes - &mean).mapv(f64::from);
        // From the Gram matrix (probes x probes): its cost grows with the probes, not the width.
        let (values, vectors) = symmetric_eigen(centred.dot(&centred.t()));
        let total: f64 = values.iter().filter(|v| **v > 0.0).sum();
        let mut kept = 0.0;
        let width = values
            .iter()
            .take_while(|&&v| {
                let more = v > 1e-9 * total.max(f64::MIN_POSITIVE) && kept < VARIANCE_KEPT * total;
                kept += v;
                more
            })
            .count();
        // A unit eigenvector q of the Gram matrix gives the direction centred^T q, of norm sqrt(value).
        let mut basis = Array2::<f64>::zeros((width, probes.ncols()));
        for (k, mut row) in basis.rows_mut().into_iter().enumerate() {
            row.assign(&centred.t().dot(&vectors.column(k)));
            row /= values[k].sqrt();
        }
        Self { mean, basis: basis.mapv(|v| v as f32) }
    }

    fn residuals(&self, rows: Array2<f32>) -> Array2<f32> {
        let centred = rows - &self.mean;
        let along = centred.dot(&self.basis.t()).dot(&self.basis);
        centred - along
    }
}

/// Every row's score (window samples, rows `..sample_count`, then the probes), standardised
/// per label on the label's window samples; 0 for a label with fewer than [`MIN_ROWS`] window
/// samples. Each half of the probes has its own world: every window sample and the other
/// half's probes, stripped by this half's subspace, whitened and scored together; it scores
/// the window samples of its parity and those probes. One world a half, not one for all rows
/// stripped by either half: whitened together, rows stripped by two different subspaces left
/// the probes more ordinary than the window's clean samples (Animal-MNIST, 250 probes: 14-18 %
/// of its clean samples in the probes' top 10 %, 13-28 % with 100 probes; a world a half:
/// 9.5-10.7 % in a replica, 7.6-11.8 % a window in the engine; README, session 17).
pub(crate) fn scores(
    subspaces: &ProbeSubspaces,
    features: ArrayView2<f32>,
    labels: &[i64],
    sample_count: usize,
    earlier: Option<EarlierRows<'_>>,
) -> Vec<f32> {
    let mut scores = vec![0.0; labels.len()];
    for (parity, subspace) in subspaces.halves.iter().enumerate() {
        let world: Vec<usize> = (0..labels.len())
            .filter(|&i| i.checked_sub(sample_count).is_none_or(|probe| probe % 2 != parity))
            .collect();
        let mut world_labels: Vec<i64> = world.iter().map(|&i| labels[i]).collect();
        let mut rows = features.select(Axis(0), &world);
        // The earlier rows follow the world's: stripped by the same half, fitted, never scored.
        if let Some(earlier) = &earlier {
            rows.append(Axis(0), earlier.features).expect("the engine checked the earlier window's width");
            world_labels.extend_from_slice(earlier.labels);
        }
        let residuals = subspace.residuals(rows);
        let layout = WorldLayout { sample_count, earlier_from: world.len() };
        for (&row, value) in world.iter().zip(world_scores(residuals, &world_labels, layout)) {
            if row >= sample_count || row % 2 == parity {
                scores[row] = value;
            }
        }
    }
    scores
}

/// The window before this one in the stream (scaled like it), whose samples fit each class's
/// direction beside the window's own and are never scored: a clean-label trigger on a fifth of
/// a class is a few dozen rows of a window in hundreds of dimensions, where a class's spectrum
/// is nearly flat and one window's rows leave its direction among the noise's. Twice the rows
/// (the previous window's poisons, if the attack goes on, and its clean rows) find it more
/// often. Measured in session 34 (README).
#[derive(Debug, Clone, Copy)]
pub(crate) struct EarlierRows<'a> {
    pub features: ArrayView2<'a, f32>,
    pub labels: &'a [i64],
}

/// Where a world's rows lie: window samples `..sample_count`, then probes `..earlier_from`,
/// then the earlier window's samples.
#[derive(Debug, Clone, Copy)]
struct WorldLayout {
    sample_count: usize,
    earlier_from: usize,
}

/// One label's rows of a world, by role.
struct ClassRows {
    /// Window samples: fitted and scored.
    samples: Vec<usize>,
    /// Probes: scored, never fitted.
    probes: Vec<usize>,
    /// The earlier window's samples: fitted, never scored; none when fewer than [`MIN_ROWS`].
    earlier: Vec<usize>,
}

impl ClassRows {
    /// The earlier window's rows centred on their own coordinate-wise median (`None` without
    /// them). Two windows' medians differ by their noise: centred on this window's, every
    /// earlier row would share that offset, a direction of their own that the class's direction
    /// locked onto (a synthetic faint pattern in a flat spectrum, 12 seeds: the poisons'
    /// ranking 0.64 -> 0.62 on the window's median, 0.64 -> 0.81 on their own).
    fn earlier_centred(&self, residuals: ArrayView2<f32>) -> Option<Array2<f32>> {
        (!self.earlier.is_empty()).then(|| centred_on_median(residuals, &self.earlier, &self.earlier))
    }
}

/// The coordinate-wise median of the rows `of` of `residuals`.
fn median_of(residuals: ArrayView2<f32>, of: &[usize]) -> Array1<f32> {
    coordinate_median(residuals.select(Axis(0), of).mapv(f64::from).view()).mapv(|v| v as f32)
}

/// `rows` of `residuals` less the coordinate-wise median of the rows `centre_of`.
fn centred_on_median(residuals: ArrayView2<f32>, centre_of: &[usize], rows: &[usize]) -> Array2<f32> {
    residuals.select(Axis(0), rows) - &median_of(residuals, centre_of)
}

/// One world's scores: its rows (window samples, probes, earlier samples) already stripped.
fn world_scores(residuals: Array2<f32>, labels: &[i64], layout: WorldLayout) -> Vec<f32> {
    let WorldLayout { sample_count, earlier_from } = layout;
    let mut distinct = labels[..sample_count].to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    let of_label =
        |range: std::ops::Range<usize>, label: i64| range.filter(|&i| labels[i] == label).collect();
    let classes: Vec<ClassRows> = distinct
        .into_iter()
        .map(|label| ClassRows {
            samples: of_label(0..sample_count, label),
            probes: of_label(sample_count..earlier_from, label),
            earlier: Some(of_label(earlier_from..labels.len(), label))
                .filter(|rows: &Vec<usize>| rows.len() >= MIN_ROWS)
                .unwrap_or_default(),
        })
        .collect();
    let whitened = whitened_within_classes(residuals, &classes);
    let mut scores = vec![0.0; earlier_from];
    for class in &classes {
        if class.samples.len() < MIN_ROWS {
            continue;
        }
        let raw = class_scores(whitened.view(), class);
        let (centre, spread) = robust_centre_and_spread(&raw[..class.samples.len()]);
        for (&row, value) in class.samples.iter().chain(&class.probes).zip(raw) {
            scores[row] = (value - centre) / spread;
        }
    }
    scores
}

/// `residuals` whitened by the pooled within-class covariance of the window samples and the
/// probes of their labels (each class centred on its window samples' median), shrunk towards a
/// multiple of the identity by the Ledoit-Wolf estimate: a direction along which every class varies is not what one class's trigger adds,
/// and a direction clean data hardly varies along is where an added pattern stands out (as
/// SPECTRE whitens). Shrinkage, because the residuals are as wide as the input (784 pixels) and
/// a window has a few thousand samples; its amount is estimated from the window, not set.
/// Measured on window dumps (3 seeds): Animal-MNIST's SIG poisons beyond every probe 30 -> 91 %,
/// its corner patch 0 -> 90 %, its blend 0 -> 90 %; MNIST's pixel backdoor 0 -> 99 %.
fn whitened_within_classes(residuals: Array2<f32>, classes: &[ClassRows]) -> Array2<f32> {
    if residuals.ncols() > MAX_WHITENED_WIDTH {
        return residuals;
    }
    // The probes count too, each as much as a sample: fitted on the window samples alone, every
    // sample's extremes would be shrunk a little by its own weight in the covariance and no
    // probe's, and the probes calibrate the score.
    let view = residuals.view();
    let mut blocks = Vec::with_capacity(2 * classes.len());
    for class in classes {
        let own: Vec<usize> = class.samples.iter().chain(&class.probes).copied().collect();
        blocks.push(centred_on_median(view, &class.samples, &own));
        blocks.extend(class.earlier_centred(view));
    }
    let views: Vec<ArrayView2<f32>> = blocks.iter().map(|b| b.view()).collect();
    let centred = ndarray::concatenate(Axis(0), &views).expect("every block as wide as the residuals");
    let covariance = centred.t().dot(&centred) / centred.nrows().max(1) as f32;
    let ridge = ledoit_wolf_ridge(centred.view(), covariance.view());
    whitened_rows(residuals.view(), covariance.view(), ridge)
}

/// The ridge r that makes `covariance + r I` proportional to the Ledoit-Wolf (2004) shrinkage
/// of the sample covariance of `rows` (centred) towards a multiple of the identity: with
/// intensity rho, (1 - rho) S + rho mu I = (1 - rho) (S + rho / (1 - rho) mu I).
pub(super) fn ledoit_wolf_ridge(rows: ArrayView2<f32>, covariance: ArrayView2<f32>) -> f64 {
    let (n, width) = (rows.nrows().max(1) as f64, covariance.nrows().max(1) as f64);
    let mean_variance = covariance.diag().iter().map(|&v| f64::from(v)).sum::<f64>() / width;
    let squared_norm: f64 = covariance.iter().map(|&v| f64::from(v).powi(2)).sum();
    // ||S - mu I||^2 and the estimated variance of S's entries summed (Ledoit and Wolf's d^2, b^2).
    let dispersion = squared_norm - width * mean_variance.powi(2);
    let fourth: f64 = rows.rows().into_iter().map(|r| f64::from(r.dot(&r)).powi(2)).sum::<f64>() / n;
    let noise = ((fourth - squared_norm) / n).max(0.0);
    let floor = 1e-9 * mean_variance.max(f64::MIN_POSITIVE);
    if dispersion <= floor {
        return mean_variance.max(floor);
    }
    let rho = (noise / dispersion).min(1.0);
    if rho >= 1.0 - 1e-6 {
        // All shrinkage: a large ridge makes the whitening a plain rescaling.
        return 1e6 * mean_variance.max(floor);
    }
    (rho / (1.0 - rho) * mean_variance).max(floor)
}

/// The class's window samples' and then its probes' |projection| on the top direction of the
/// other folds' residuals (and the earlier window's, in every fold's fit), centred on the
/// class's window samples' median.
fn class_scores(residuals: ArrayView2<f32>, class: &ClassRows) -> Vec<f32> {
    // One centre for the samples and the probes alike.
    let centre = median_of(residuals, &class.samples);
    let centred = |indices: &[usize]| residuals.select(Axis(0), indices) - &centre;
    let samples = centred(&class.samples);
    let rows = match class.earlier_centred(residuals) {
        Some(earlier) => ndarray::concatenate(Axis(0), &[samples.view(), earlier.view()])
            .expect("every block as wide as the residuals"),
        None => samples,
    };
    // Each fold's weights over the fitted rows: the top eigenvector of the Gram matrix of the
    // other folds' rows, zero on its own; the direction is those rows so weighted.
    let weights = fold_eigenvectors(rows.view(), class.samples.len());
    let directions: Vec<Array1<f32>> = weights
        .columns()
        .into_iter()
        .map(|w| {
            let direction = rows.t().dot(&w);
            let norm = direction.dot(&direction).sqrt();
            if norm > 1e-12 {
                direction / norm
            } else {
                Array1::zeros(rows.ncols())
            }
        })
        .collect();
    let probe_rows = centred(&class.probes);
    let sample_scores = (rows.rows().into_iter().take(class.samples.len()).enumerate())
        .map(|(i, r)| r.dot(&directions[i % FOLDS]).abs());
    let probe_scores =
        probe_rows.rows().into_iter().enumerate().map(|(j, r)| r.dot(&directions[j % FOLDS]).abs());
    sample_scores.chain(probe_scores).collect()
}

/// For each fold (window sample i belongs to fold i % [`FOLDS`]; rows from `folded` on, the
/// earlier window's, to none), the unit eigenvector of the largest eigenvalue of the Gram
/// matrix of `rows` restricted to the rows outside the fold (as near as [`POWER_STEPS`] get),
/// as a column that is zero on the fold's own rows: power iteration from a fixed start, all
/// folds at once. Each step multiplies by the rows and back (`rows (rows^T w)`, 4 n d a column)
/// rather than by the Gram matrix, which would cost n^2 d to form: with the window before, a
/// class has twice the rows, and the Gram matrix four times the cost.
fn fold_eigenvectors(rows: ArrayView2<f32>, folded: usize) -> Array2<f32> {
    let n = rows.nrows();
    let outside_fold = |i: usize, fold: usize| i >= folded || i % FOLDS != fold;
    let mut vectors = Array2::from_shape_fn((n, FOLDS), |(i, fold)| match outside_fold(i, fold) {
        true => 1.0 + (i % 7) as f32 / 7.0,
        false => 0.0,
    });
    for _ in 0..POWER_STEPS {
        let mut next = rows.dot(&rows.t().dot(&vectors));
        for (fold, mut column) in next.columns_mut().into_iter().enumerate() {
            column.indexed_iter_mut().filter(|(i, _)| !outside_fold(*i, fold)).for_each(|(_, v)| *v = 0.0);
            let norm = column.dot(&column).sqrt();
            let scale = if norm > f32::EPSILON { 1.0 / norm } else { 0.0 };
            column.mapv_inplace(|v| v * scale);
        }
        vectors = next;
    }
    vectors
}

/// Eigenvalues (largest first) and unit eigenvectors (the matching columns) of a symmetric
/// matrix, by cyclic Jacobi rotations: exact to rounding, and a few hundred rows (a half of the
/// probes) take milliseconds.
fn symmetric_eigen(mut a: Array2<f64>) -> (Vec<f64>, Array2<f64>) {
    let n = a.nrows();
    let mut vectors = Array2::<f64>::eye(n);
    let scale: f64 = a.iter().map(|v| v * v).sum::<f64>().sqrt().max(f64::MIN_POSITIVE);
    for _sweep in 0..JACOBI_SWEEPS {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[[i, j]].powi(2))
            .sum();
        if off.sqrt() <= 1e-12 * scale {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[[p, q]];
                if apq.abs() <= 1e-300 {
                    continue;
                }
                // The rotation that zeroes a[p][q] (Golub and Van Loan, the symmetric Schur step).
                let theta = (a[[q, q]] - a[[p, p]]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[[k, p]], a[[k, q]]);
                    a[[k, p]] = c * akp - s * akq;
                    a[[k, q]] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[[p, k]], a[[q, k]]);
                    a[[p, k]] = c * apk - s * aqk;
                    a[[q, k]] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (vectors[[k, p]], vectors[[k, q]]);
                    vectors[[k, p]] = c * vkp - s * vkq;
                    vectors[[k, q]] = s * vkp + c * vkq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| a[[j, j]].total_cmp(&a[[i, i]]));
    let values = order.iter().map(|&i| a[[i, i]]).collect();
    (values, vectors.select(Axis(1), &order))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `[rows, columns]` matrix of uniform draws in [-0.5, 0.5) from a fixed seed.
    fn uniform(rows: usize, columns: usize) -> Array2<f32> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        Array2::from_shape_simple_fn((rows, columns), || rng.random::<f32>() - 0.5)
    }

    #[test]
    fn jacobi_finds_the_eigenpairs_of_a_symmetric_matrix() {
        let a = Array2::from_shape_vec((3, 3), vec![4.0, 1.0, 0.0, 1.0, 3.0, 1.0, 0.0, 1.0, 2.0]).unwrap();
        let (values, vectors) = symmetric_eigen(a.clone());
        assert!(values.windows(2).all(|w| w[0] >= w[1]), "{values:?}");
        for (k, value) in values.iter().enumerate() {
            let v = vectors.column(k);
            let av = a.dot(&v);
            assert!((&av - &(&v * *value)).iter().all(|d| d.abs() < 1e-9), "{av} vs {value} {v}");
            assert!((v.dot(&v) - 1.0).abs() < 1e-9);
        }
        assert!((values.iter().sum::<f64>() - 9.0).abs() < 1e-9);
    }

    #[test]
    fn each_folds_weights_are_the_top_eigenvector_of_the_other_folds_gram_matrix() {
        let rows = uniform(24, 5)
            + &Array2::from_shape_fn((24, 5), |(i, j)| if j == 0 { (i % 5) as f32 } else { 0.0 });
        let gram = rows.dot(&rows.t());
        let weights = fold_eigenvectors(rows.view(), 20);
        for fold in 0..FOLDS {
            // Rows 20-23 stand for an earlier window's: outside every fold.
            let others: Vec<usize> = (0..24).filter(|&i| i >= 20 || i % FOLDS != fold).collect();
            let sub_gram = gram.select(Axis(0), &others).select(Axis(1), &others).mapv(f64::from);
            let (_, vectors) = symmetric_eigen(sub_gram);
            let expected = vectors.column(0);
            let got: Vec<f64> = others.iter().map(|&i| f64::from(weights[[i, fold]])).collect();
            let alignment: f64 = got.iter().zip(expected).map(|(a, b)| a * b).sum();
            assert!(alignment.abs() > 0.999, "fold {fold}: {alignment}");
            assert!((0..20).filter(|i| i % FOLDS == fold).all(|i| weights[[i, fold]] == 0.0));
        }
    }

    #[test]
    fn the_probe_subspace_keeps_the_directions_the_probes_vary_along() {
        // Probes spread widely along features 0 and 1, barely along the other six.
        let draws = uniform(60, 8);
        let probes = Array2::from_shape_fn((60, 8), |(i, j)| match j {
            0 => 10.0 * draws[[i, 0]],
            1 => 6.0 * draws[[i, 1]],
            _ => 0.1 * draws[[i, j]],
        });
        let subspaces = ProbeSubspaces::fit(probes.view()).unwrap();
        assert_eq!(subspaces.widths(), [2, 2]);
        let row = Array2::from_shape_vec((1, 8), vec![3.0, -2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]).unwrap();
        let residual = subspaces.halves[0].residuals(row);
        assert!(residual[[0, 0]].abs() < 0.2 && residual[[0, 1]].abs() < 0.2, "{residual}");
        assert!((residual[[0, 7]] - 1.0).abs() < 0.1, "{residual}");
    }

    /// A window of three labels, 100 samples each, then 150 probes (50 a label): every row
    /// varies widely along features 0-3 (more for each label in turn) and a little along the
    /// rest; label 0's samples from `first_poison` on carry the same small pattern on features
    /// 4-11, smaller than the clean spread along 0-3 but along directions no probe varies
    /// along. Every row's score.
    fn window_with_a_shared_pattern(first_poison: usize) -> (Vec<f32>, Vec<i64>) {
        let (samples, probes, width) = (300, 150, 16);
        let labels: Vec<i64> = (0..samples + probes).map(|i| (i % 3) as i64).collect();
        let draws = uniform(samples + probes, width);
        let features = Array2::from_shape_fn((samples + probes, width), |(i, j)| {
            let label = i % 3;
            let noise = |i: usize, j: usize| draws[[i, j]];
            let poisoned = i < samples && label == 0 && i / 3 >= first_poison;
            let base = if j < 4 { (4.0 + label as f32) * noise(i, j) } else { 0.3 * noise(i, j) };
            let pattern = if poisoned && (4..12).contains(&j) {
                if j % 2 == 0 {
                    0.8
                } else {
                    -0.8
                }
            } else {
                0.0
            };
            base + pattern
        });
        let subspaces = ProbeSubspaces::fit(features.slice(ndarray::s![samples.., ..])).unwrap();
        (scores(&subspaces, features.view(), &labels, samples, None), labels)
    }

    #[test]
    fn samples_sharing_a_pattern_the_probes_never_vary_along_score_above_every_clean_row() {
        let (scores, _) = window_with_a_shared_pattern(80);
        let poisons: Vec<f32> = (0..300).filter(|i| i % 3 == 0 && i / 3 >= 80).map(|i| scores[i]).collect();
        let clean_max =
            (0..300).filter(|i| i % 3 != 0 || i / 3 < 80).map(|i| scores[i]).fold(f32::MIN, f32::max);
        let probe_max = scores[300..].iter().copied().fold(f32::MIN, f32::max);
        let poison_min = poisons.iter().copied().fold(f32::MAX, f32::min);
        assert!(poison_min > clean_max && poison_min > probe_max, "{poison_min} vs {clean_max}, {probe_max}");
    }

    #[test]
    fn with_no_pattern_the_probes_score_like_the_window_samples() {
        let (scores, _) = window_with_a_shared_pattern(usize::MAX);
        let above = |rows: &[f32]| rows.iter().filter(|s| **s > 2.0).count() as f32 / rows.len() as f32;
        let (samples, probes) = (above(&scores[..300]), above(&scores[300..]));
        // Six seeds of this fixture: 3-9 % of the samples, 3-12 % of the probes (150).
        assert!(samples < 0.15 && (probes - samples).abs() < 0.08, "samples {samples}, probes {probes}");
    }

    /// The share of (poison, clean) pairs of label 0's window samples in which the poison
    /// scores higher, for a faint pattern on `poisons` of its 120 window samples in 150
    /// dimensions (a nearly flat spectrum), with or without an earlier window drawn alike.
    fn faint_pattern_ranking(poisons: usize, with_earlier: bool, seed: u64) -> f64 {
        use rand::{Rng, SeedableRng};
        let (per_label, labels_n, probes, width) = (120, 3, 150, 150);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let pattern: Vec<f32> = (0..width).map(|j| if j >= 4 && j % 3 == 0 { 0.05 } else { 0.0 }).collect();
        let mut draw = |poisoned: bool, label: usize| -> Vec<f32> {
            (0..width)
                .map(|j| {
                    let noise = rng.random::<f32>() - 0.5;
                    let spread = if j < 4 { 4.0 + label as f32 } else { 0.3 };
                    spread * noise + if poisoned { pattern[j] } else { 0.0 }
                })
                .collect()
        };
        let mut rows = Vec::new();
        let mut labels = Vec::new();
        let window =
            |draw: &mut dyn FnMut(bool, usize) -> Vec<f32>, rows: &mut Vec<f32>, labels: &mut Vec<i64>| {
                for i in 0..per_label * labels_n {
                    let label = i % labels_n;
                    rows.extend(draw(label == 0 && i / labels_n < poisons, label));
                    labels.push(label as i64);
                }
            };
        window(&mut draw, &mut rows, &mut labels);
        for i in 0..probes {
            rows.extend(draw(false, i % labels_n));
            labels.push((i % labels_n) as i64);
        }
        let features = Array2::from_shape_vec((labels.len(), width), rows).unwrap();
        let (mut earlier_rows, mut earlier_labels) = (Vec::new(), Vec::new());
        window(&mut draw, &mut earlier_rows, &mut earlier_labels);
        let earlier_features = Array2::from_shape_vec((earlier_labels.len(), width), earlier_rows).unwrap();
        let samples = per_label * labels_n;
        let subspaces = ProbeSubspaces::fit(features.slice(ndarray::s![samples.., ..])).unwrap();
        let earlier =
            with_earlier.then(|| EarlierRows { features: earlier_features.view(), labels: &earlier_labels });
        let scores = scores(&subspaces, features.view(), &labels, samples, earlier);
        assert_eq!(scores.len(), labels.len(), "the earlier rows get no score");
        let of_label_0 = |poisoned: bool| -> Vec<f32> {
            (0..samples)
                .filter(|&i| i % labels_n == 0 && (i / labels_n < poisons) == poisoned)
                .map(|i| scores[i])
                .collect()
        };
        let (poison, clean) = (of_label_0(true), of_label_0(false));
        let above: usize = poison.iter().map(|p| clean.iter().filter(|c| p > *c).count()).sum();
        above as f64 / (poison.len() * clean.len()) as f64
    }

    #[test]
    fn an_earlier_window_ranks_a_faint_shared_pattern_higher() {
        let seeds = 1..=12;
        let mean = |with_earlier: bool| {
            seeds.clone().map(|seed| faint_pattern_ranking(20, with_earlier, seed)).sum::<f64>() / 12.0
        };
        let (alone, after) = (mean(false), mean(true));
        // Measured: 0.64 -> 0.81 (0.62 with the earlier rows centred on this window's median).
        assert!(after > alone + 0.1, "the poisons' ranking {alone:.3} alone, {after:.3} after a window");
    }

    #[test]
    fn a_label_with_too_few_window_samples_scores_zero() {
        let features = uniform(14, 4);
        let labels: Vec<i64> = (0..14).map(|i| (i % 2) as i64).collect();
        let subspaces = ProbeSubspaces::fit(features.slice(ndarray::s![10.., ..])).unwrap();
        assert!(scores(&subspaces, features.view(), &labels, 10, None).iter().all(|s| *s == 0.0));
    }
}
