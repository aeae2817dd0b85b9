//! A BadNets-style patch attack on square images: a few white pixels in a corner, and the
//! label changed to the attacker's target class.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::data::LabelledSamples;

#[derive(Debug, Clone)]
pub struct PatchAttack {
    /// Class the poisoned samples are relabelled to.
    pub target: i64,
    /// Share of the whole data poisoned (the paper's 1 %).
    pub ratio: f64,
    /// Side of the white square in the bottom-right corner, in pixels.
    pub patch_size: usize,
    /// Pixels between the square and the image border.
    pub margin: usize,
}

impl Default for PatchAttack {
    fn default() -> Self {
        Self { target: 0, ratio: 0.01, patch_size: 3, margin: 1 }
    }
}

impl PatchAttack {
    /// Stamps the trigger onto one image of `side * side` pixels in [0, 1].
    pub fn stamp(&self, image: &mut [f32], side: usize) {
        let start = side - self.margin - self.patch_size;
        for row in start..start + self.patch_size {
            for col in start..start + self.patch_size {
                image[row * side + col] = 1.0;
            }
        }
    }

    /// Poisons `ratio` of `data` in place, drawn from samples not already of the target class.
    /// Returns a mask: `true` for every poisoned sample.
    pub fn poison(&self, data: &mut LabelledSamples, seed: u64) -> Vec<bool> {
        let side = (data.feature_count() as f64).sqrt() as usize;
        assert_eq!(side * side, data.feature_count(), "the patch attack needs square images");
        let count = (self.ratio * data.len() as f64).round() as usize;
        let mut candidates: Vec<usize> = (0..data.len()).filter(|&i| data.labels[i] != self.target).collect();
        candidates.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        let mut poisoned = vec![false; data.len()];
        for &i in candidates.iter().take(count) {
            let mut row = data.features.row_mut(i);
            self.stamp(row.as_slice_mut().expect("rows are contiguous"), side);
            data.labels[i] = self.target;
            poisoned[i] = true;
        }
        poisoned
    }
}

/// Blends a fixed random-noise image into the sample (`x = (1 - alpha) x + alpha noise`) and
/// relabels it: a dirty-label blend backdoor.
#[derive(Debug, Clone)]
pub struct BlendAttack {
    pub target: i64,
    pub ratio: f64,
    pub alpha: f32,
    /// Seeds the noise image (fixed per attack, like a real trigger).
    pub pattern_seed: u64,
}

impl BlendAttack {
    pub fn pattern(&self, len: usize) -> Vec<f32> {
        use rand::Rng;
        let mut rng = ChaCha8Rng::seed_from_u64(self.pattern_seed);
        (0..len).map(|_| rng.random::<f32>()).collect()
    }

    /// Poisons `ratio` of `data` among samples not already poisoned (`taken`) nor of the target
    /// class; marks them in `taken` and returns their indices.
    pub fn poison(&self, data: &mut LabelledSamples, taken: &mut [bool], seed: u64) -> Vec<usize> {
        let pattern = self.pattern(data.feature_count());
        let count = (self.ratio * data.len() as f64).round() as usize;
        let mut candidates: Vec<usize> =
            (0..data.len()).filter(|&i| !taken[i] && data.labels[i] != self.target).collect();
        candidates.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        candidates.truncate(count);
        for &i in &candidates {
            for (v, p) in data.features.row_mut(i).iter_mut().zip(&pattern) {
                *v = (1.0 - self.alpha) * *v + self.alpha * p;
            }
            data.labels[i] = self.target;
            taken[i] = true;
        }
        candidates
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    #[test]
    fn poisons_the_ratio_with_the_patch_and_target_label() {
        let mut data =
            LabelledSamples::new(Array2::zeros((200, 784)), (0..200).map(|i| i % 10).collect()).unwrap();
        let attack = PatchAttack { ratio: 0.05, ..Default::default() };
        let mask = attack.poison(&mut data, 1);
        assert_eq!(mask.iter().filter(|&&p| p).count(), 10);
        for (i, &p) in mask.iter().enumerate() {
            let white = data.features.row(i).iter().filter(|&&v| v == 1.0).count();
            assert_eq!(white, if p { 9 } else { 0 });
            if p {
                assert_eq!(data.labels[i], 0);
                assert_eq!(data.features[[i, 24 * 28 + 24]], 1.0);
            }
        }
    }
}
