//! Detection quality: ROC-AUC, true-positive and false-reject rates.

/// Area under the ROC curve of `scores` for telling positives (poisons) from negatives:
/// the probability that a random poison outscores a random clean sample, ties counting half.
pub fn roc_auc(scores: &[f32], positive: &[bool]) -> f64 {
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Confusion {
    pub poisons: usize,
    pub poisons_caught: usize,
    pub clean: usize,
    pub clean_rejected: usize,
}

impl Confusion {
    pub fn count(flagged: &[bool], poisoned: &[bool]) -> Self {
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

    pub fn add(&mut self, other: Confusion) {
        self.poisons += other.poisons;
        self.poisons_caught += other.poisons_caught;
        self.clean += other.clean;
        self.clean_rejected += other.clean_rejected;
    }

    /// Share of poisons caught.
    pub fn true_positive_rate(&self) -> f64 {
        self.poisons_caught as f64 / self.poisons.max(1) as f64
    }

    /// Share of clean samples quarantined.
    pub fn false_reject_rate(&self) -> f64 {
        self.clean_rejected as f64 / self.clean.max(1) as f64
    }
}

/// Mean and sample standard deviation.
pub fn mean_and_spread(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = if values.len() > 1 {
        values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
