//! Detection quality: ROC-AUC, true-positive and false-reject rates.

use serde::{Deserialize, Serialize};

/// Area under the ROC curve of `scores` for telling positives (poisons) from negatives:
/// the probability that a random poison outscores a random clean sample, ties counting half.
pub(crate) fn roc_auc(scores: &[f32], positive: &[bool]) -> f64 {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Mann-Whitney U with average ranks for ties.
    let mut rank_sum_positive = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let average_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum_positive += average_rank * order[i..=j].iter().filter(|&&k| positive[k]).count() as f64;
        i = j + 1;
    }
    let n_pos = positive.iter().filter(|&&p| p).count() as f64;
    let n_neg = positive.len() as f64 - n_pos;
    if n_pos == 0.0 || n_neg == 0.0 {
        return f64::NAN;
    }
    (rank_sum_positive - n_pos * (n_pos + 1.0) / 2.0) / (n_pos * n_neg)
}

/// Counts of one confusion matrix: flagged against truly poisoned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Confusion {
    pub poisons: usize,
    pub poisons_caught: usize,
    pub clean: usize,
    pub clean_rejected: usize,
}

impl Confusion {
    pub(crate) fn count(flagged: &[bool], poisoned: &[bool]) -> Self {
        let mut c = Self::default();
        for (&f, &p) in flagged.iter().zip(poisoned) {
            if p {
                c.poisons += 1;
                c.poisons_caught += f as usize;
            } else {
                c.clean += 1;
                c.clean_rejected += f as usize;
            }
        }
        c
    }

    /// Share of poisons caught.
    pub(crate) fn true_positive_rate(&self) -> f64 {
        self.poisons_caught as f64 / self.poisons.max(1) as f64
    }

    /// Share of clean samples quarantined.
    pub(crate) fn false_reject_rate(&self) -> f64 {
        self.clean_rejected as f64 / self.clean.max(1) as f64
    }
}

/// Mean and sample standard deviation.
pub(crate) fn mean_and_spread(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = if values.len() > 1 {
        values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

/// The ROC curve as (false-positive rate, true-positive rate) points, thresholds from high to low.
pub(crate) fn roc_curve(scores: &[f32], positive: &[bool]) -> Vec<(f64, f64)> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let n_pos = positive.iter().filter(|&&p| p).count().max(1) as f64;
    let n_neg = (positive.len() as f64 - n_pos).max(1.0);
    let (mut tp, mut fp) = (0.0, 0.0);
    let mut curve = vec![(0.0, 0.0)];
    for (rank, &i) in order.iter().enumerate() {
        if positive[i] {
            tp += 1.0;
        } else {
            fp += 1.0;
        }
        let last_of_tie = order.get(rank + 1).is_none_or(|&next| scores[next] != scores[i]);
        if last_of_tie {
            curve.push((fp / n_neg, tp / n_pos));
        }
    }
    curve
}

/// What one defence did to one seed's stream, against the truth.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Detection {
    /// Share of the whole stream dropped.
    pub dropped: f64,
    /// Share of clean samples dropped.
    pub clean_false_reject: f64,
    /// Share of all poisons dropped.
    pub caught: f64,
    /// Per attack: share of its poisons dropped.
    pub caught_per_attack: Vec<f64>,
    /// Per class (by the sample's label): share of clean samples dropped.
    pub false_reject_per_class: Vec<f64>,
    /// ROC-AUC of the scores, all poisons against clean (defences that score).
    pub auc: Option<f64>,
    pub auc_per_attack: Vec<Option<f64>>,
    /// Per attack: the share of its poisons scored above the clean samples' top
    /// [`TARGET_FALSE_REJECT`] (the score alone, with a threshold set on the truth): what the
    /// score could catch at the target false-reject rate, against what the decision caught.
    #[serde(default)]
    pub caught_at_target_false_reject: Vec<Option<f64>>,
    /// Per class, the share of its clean probes above the window's threshold (lossgate only,
    /// [`super::defence::StreamRun::probes_above_threshold_per_class`]): where it follows the
    /// class's false-reject, the calibration, pooled over the classes, gave that class more of
    /// the budget; where the false-reject runs above it, the class's window samples score
    /// above its probes.
    #[serde(default)]
    pub probes_above_threshold_per_class: Vec<Option<f64>>,
}

/// The detection issue's bound on the clean false-reject rate.
pub(crate) const TARGET_FALSE_REJECT: f64 = 0.05;

/// The share of `poison_scores` above the score that all but `false_reject` of `clean_scores`
/// stay at or below.
fn caught_at_false_reject(clean_scores: &[f32], poison_scores: &[f32], false_reject: f64) -> Option<f64> {
    if clean_scores.is_empty() || poison_scores.is_empty() {
        return None;
    }
    let mut clean = clean_scores.to_vec();
    clean.sort_by(f32::total_cmp);
    let kept = ((1.0 - false_reject) * clean.len() as f64).ceil() as usize;
    let threshold = clean[kept.clamp(1, clean.len()) - 1];
    let caught = poison_scores.iter().filter(|&&s| s > threshold).count();
    Some(caught as f64 / poison_scores.len() as f64)
}

impl Detection {
    pub fn measure(
        flagged: &[bool],
        scores: Option<&[f32]>,
        origin: &[Option<usize>],
        labels: &[i64],
        attacks: usize,
        classes: usize,
    ) -> Self {
        let share = |hits: usize, of: usize| hits as f64 / of.max(1) as f64;
        let poisoned: Vec<bool> = origin.iter().map(Option::is_some).collect();
        let all = Confusion::count(flagged, &poisoned);
        let caught_per_attack = (0..attacks)
            .map(|a| {
                let mine: Vec<usize> = (0..origin.len()).filter(|&i| origin[i] == Some(a)).collect();
                share(mine.iter().filter(|&&i| flagged[i]).count(), mine.len())
            })
            .collect();
        let false_reject_per_class = (0..classes as i64)
            .map(|c| {
                let clean: Vec<usize> =
                    (0..origin.len()).filter(|&i| origin[i].is_none() && labels[i] == c).collect();
                share(clean.iter().filter(|&&i| flagged[i]).count(), clean.len())
            })
            .collect();
        let auc_against = |attack: Option<usize>| {
            scores.map(|scores| {
                let (s, p): (Vec<f32>, Vec<bool>) = (0..origin.len())
                    .filter(|&i| origin[i].is_none() || attack.is_none() || origin[i] == attack)
                    .map(|i| (scores[i], origin[i].is_some()))
                    .unzip();
                roc_auc(&s, &p)
            })
        };
        let caught_at_target_false_reject = (0..attacks)
            .map(|a| {
                let scores = scores?;
                let of = |wanted: Option<usize>| -> Vec<f32> {
                    (0..origin.len()).filter(|&i| origin[i] == wanted).map(|i| scores[i]).collect()
                };
                caught_at_false_reject(&of(None), &of(Some(a)), TARGET_FALSE_REJECT)
            })
            .collect();
        Self {
            dropped: share(flagged.iter().filter(|&&f| f).count(), flagged.len()),
            clean_false_reject: all.false_reject_rate(),
            caught: all.true_positive_rate(),
            caught_per_attack,
            false_reject_per_class,
            auc: auc_against(None),
            auc_per_attack: (0..attacks).map(|a| auc_against(Some(a))).collect(),
            caught_at_target_false_reject,
            probes_above_threshold_per_class: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caught_at_a_false_reject_rate_counts_poisons_above_the_clean_quantile() {
        // 20 clean scores 1..=20: at 5 % the threshold is 19 (one clean sample above it).
        let clean: Vec<f32> = (1..=20).map(|s| s as f32).collect();
        assert_eq!(caught_at_false_reject(&clean, &[19.5, 25.0, 10.0, 19.0], 0.05), Some(0.5));
        assert_eq!(caught_at_false_reject(&clean, &[], 0.05), None);
        assert_eq!(caught_at_false_reject(&[], &[1.0], 0.05), None);
    }

    #[test]
    fn auc_of_perfect_random_and_inverted_scores() {
        let positive = [false, false, true, true];
        assert_eq!(roc_auc(&[0.1, 0.2, 0.8, 0.9], &positive), 1.0);
        assert_eq!(roc_auc(&[0.9, 0.8, 0.2, 0.1], &positive), 0.0);
        assert_eq!(roc_auc(&[0.5, 0.5, 0.5, 0.5], &positive), 0.5);
        // One of four pairs misordered.
        assert_eq!(roc_auc(&[0.1, 0.85, 0.8, 0.9], &positive), 0.75);
    }

    #[test]
    fn confusion_rates() {
        let c = Confusion::count(&[true, false, true, false], &[true, true, false, false]);
        assert_eq!((c.true_positive_rate(), c.false_reject_rate()), (0.5, 0.5));
    }

    #[test]
    fn detection_per_attack_and_per_class() {
        let origin = [None, None, Some(0), Some(1), Some(1), None];
        let labels = [0, 1, 0, 1, 1, 1];
        let flagged = [true, false, true, true, false, false];
        let scores = [0.9f32, 0.1, 0.8, 0.7, 0.05, 0.2];
        let d = Detection::measure(&flagged, Some(&scores), &origin, &labels, 2, 2);
        assert_eq!(d.caught_per_attack, vec![1.0, 0.5]);
        assert_eq!(d.false_reject_per_class, vec![1.0, 0.0]);
        assert_eq!(d.auc_per_attack[0], Some(2.0 / 3.0));
        let curve = roc_curve(&scores, &origin.map(|o| o.is_some()));
        assert_eq!((curve[0], *curve.last().unwrap()), ((0.0, 0.0), (1.0, 1.0)));
    }
}
