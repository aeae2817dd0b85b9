//! Poisoning attacks, defined in a config file (`config/attacks.toml`) so that a user can add a
//! trigger without code. Each attack poisons its own disjoint samples of the stream; its trigger
//! is applied again to test images to measure the attack success rate.

use std::f32::consts::PI;
use std::path::Path;

use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::data::LabelledSamples;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttackKind {
    /// A square of `size` pixels set to `value`, `margin` pixels from the bottom-right corner.
    Patch,
    /// One pixel at (`row`, `col`) set to `value`.
    Pixel,
    /// `x = (1 - alpha) x + alpha p` with a fixed pattern `p` (`pattern`: noise or grid).
    Blend,
    /// Sinusoidal stripes, `x + alpha sin(2 pi frequency col / side)`; clean-label: only images
    /// of the target class are poisoned (`ratio` of that class) and keep their label.
    Sig,
    /// `magnitude` added to a few 2-D DCT coefficients (`coefficients`, [row, col] pairs).
    Frequency,
    /// A random wrong label, image untouched: data-quality noise, not a backdoor.
    LabelFlip,
    /// For tabular data: `features[i]` set to `values[i]`.
    Features,
    /// Every pixel moved along one fixed, smooth random field of at most `strength` pixels
    /// (`grid` random control points a side, interpolated; `pattern_seed`), as WaNet warps:
    /// every value stays in range and nothing is added to the image, only moved.
    Warp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BlendPattern {
    /// Uniform noise in [0, 1], fixed by `pattern_seed`.
    Noise,
    /// Bright lines every `grid_step` rows and columns.
    Grid,
}

/// One attack as written in the attacks file. Which optional fields apply depends on `kind`;
/// [`Attack::validate`] refuses a missing or a meaningless one by name.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Attack {
    pub name: String,
    pub kind: AttackKind,
    /// Class the poisons are labelled (dirty) or chosen from (clean-label); none for label-flip.
    pub target: Option<i64>,
    /// Share of the whole training data poisoned; for `sig`, share of the target class.
    pub ratio: f64,
    pub size: Option<usize>,
    pub margin: Option<usize>,
    pub value: Option<f32>,
    pub row: Option<usize>,
    pub col: Option<usize>,
    pub alpha: Option<f32>,
    /// The trigger's strength on test images, where it may be stronger than in the poisons
    /// (as in the SIG paper); default: `alpha`.
    pub test_alpha: Option<f32>,
    pub pattern: Option<BlendPattern>,
    pub pattern_seed: Option<u64>,
    pub grid_step: Option<usize>,
    pub frequency: Option<f32>,
    pub coefficients: Option<Vec<[usize; 2]>>,
    pub magnitude: Option<f32>,
    /// For `warp`: the largest displacement, in pixels.
    pub strength: Option<f32>,
    /// For `warp`: random control points per image side (at least 2).
    pub grid: Option<usize>,
    pub features: Option<Vec<usize>>,
    pub values: Option<Vec<f32>>,
    /// For every backdoor kind but `sig` (always clean-label): poison samples of the target
    /// class and keep their labels (`ratio` is then the share of the target class, as for `sig`).
    pub clean_label: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AttacksFile {
    attack: Vec<Attack>,
}

/// Reads and validates an attacks file for data of `features` features and `classes` classes.
pub fn load_attacks(path: &Path, features: usize, classes: usize) -> Result<Vec<Attack>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_attacks(&text, features, classes).with_context(|| format!("attacks file {}", path.display()))
}

pub fn parse_attacks(text: &str, features: usize, classes: usize) -> Result<Vec<Attack>> {
    let file: AttacksFile = toml::from_str(text)?;
    for (i, attack) in file.attack.iter().enumerate() {
        attack.validate(features, classes).with_context(|| format!("attack[{i}] ({})", attack.name))?;
    }
    Ok(file.attack)
}

/// The attacks of `config/attacks.toml`, built in (the harness's default).
pub fn default_attacks() -> Vec<Attack> {
    parse_attacks(include_str!("../../config/attacks.toml"), 784, 10)
        .expect("the shipped attacks file is valid")
}

impl Attack {
    fn side(features: usize) -> Option<usize> {
        let side = (features as f64).sqrt().round() as usize;
        (side * side == features).then_some(side)
    }

    /// Poisons keep their true label: SIG always, the other backdoors when asked.
    pub fn is_clean_label(&self) -> bool {
        self.kind == AttackKind::Sig || self.clean_label == Some(true)
    }

    pub fn is_backdoor(&self) -> bool {
        self.kind != AttackKind::LabelFlip
    }

    pub fn validate(&self, features: usize, classes: usize) -> Result<()> {
        use AttackKind::*;
        let given: Vec<&str> = [
            ("size", self.size.is_some()),
            ("margin", self.margin.is_some()),
            ("value", self.value.is_some()),
            ("row", self.row.is_some()),
            ("col", self.col.is_some()),
            ("alpha", self.alpha.is_some()),
            ("test_alpha", self.test_alpha.is_some()),
            ("pattern", self.pattern.is_some()),
            ("pattern_seed", self.pattern_seed.is_some()),
            ("grid_step", self.grid_step.is_some()),
            ("frequency", self.frequency.is_some()),
            ("coefficients", self.coefficients.is_some()),
            ("magnitude", self.magnitude.is_some()),
            ("strength", self.strength.is_some()),
            ("grid", self.grid.is_some()),
            ("features", self.features.is_some()),
            ("values", self.values.is_some()),
            ("clean_label", self.clean_label.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect();
        let (required, optional): (&[&str], &[&str]) = match self.kind {
            Patch => (&["size"], &["margin", "value", "clean_label"]),
            Pixel => (&["row", "col"], &["value", "clean_label"]),
            Blend => (&["alpha", "pattern"], &["pattern_seed", "grid_step", "test_alpha", "clean_label"]),
            Sig => (&["alpha"], &["frequency", "test_alpha"]),
            Frequency => (&["coefficients", "magnitude"], &["clean_label"]),
            LabelFlip => (&[], &[]),
            Features => (&["features", "values"], &["clean_label"]),
            Warp => (&["strength"], &["grid", "pattern_seed", "clean_label"]),
        };
        for field in required {
            if !given.contains(field) {
                bail!("`{field}` is required for kind {:?}", self.kind);
            }
        }
        if let Some(extra) = given.iter().find(|f| !required.contains(f) && !optional.contains(f)) {
            bail!(
                "`{extra}` has no meaning for kind {:?} (allowed: {:?} {:?})",
                self.kind,
                required,
                optional
            );
        }
        if !(self.ratio > 0.0 && self.ratio < 1.0) {
            bail!("`ratio` = {} must be strictly between 0 and 1", self.ratio);
        }
        match (self.kind, self.target) {
            (LabelFlip, Some(_)) => bail!("`target` has no meaning for label-flip (labels are random)"),
            (LabelFlip, None) => {}
            (_, None) => bail!("`target` (the class the attack aims at) is required"),
            (_, Some(t)) if t < 0 || t >= classes as i64 => bail!("`target` = {t} is outside 0..{classes}"),
            _ => {}
        }
        let image_kinds = [Patch, Pixel, Sig, Frequency, Warp];
        let side = Self::side(features);
        if image_kinds.contains(&self.kind) && side.is_none() {
            bail!("kind {:?} needs square images; {features} features are not a square", self.kind);
        }
        let side = side.unwrap_or(0);
        if let (Some(size), margin) = (self.size, self.margin.unwrap_or(0)) {
            if size == 0 || size + margin > side {
                bail!("`size` {size} + `margin` {margin} must fit in the {side}-pixel image");
            }
        }
        if let Some(strength) = self.strength.filter(|&s| !(s > 0.0 && s < side as f32)) {
            bail!("`strength` = {strength} must be a displacement between 0 and the image side {side}");
        }
        if self.grid.is_some_and(|g| g < 2) {
            bail!("`grid` must be at least 2 control points a side");
        }
        if self.row.is_some_and(|r| r >= side) || self.col.is_some_and(|c| c >= side) {
            bail!("`row`/`col` must be below the image side {side}");
        }
        for (name, value) in [("alpha", self.alpha), ("test_alpha", self.test_alpha)] {
            if let Some(alpha) = value.filter(|a| !(*a > 0.0 && *a <= 1.0)) {
                bail!("`{name}` = {alpha} must be in (0, 1]");
            }
        }
        if let Some(c) =
            self.coefficients.as_ref().and_then(|c| c.iter().find(|[r, c]| *r >= side || *c >= side))
        {
            bail!("`coefficients` entry {c:?} is outside the {side}x{side} DCT");
        }
        if let (Some(f), Some(v)) = (&self.features, &self.values) {
            if f.len() != v.len() || f.is_empty() {
                bail!("`features` and `values` must be non-empty and of equal length");
            }
            if let Some(i) = f.iter().find(|&&i| i >= features) {
                bail!("`features` index {i} is beyond the data's {features} features");
            }
        }
        Ok(())
    }

    /// Applies the trigger to one sample in place.
    pub fn stamp(&self, x: &mut [f32]) {
        let side = Self::side(x.len()).unwrap_or(0);
        match self.kind {
            AttackKind::Patch => {
                let (size, margin) = (self.size.unwrap_or(3), self.margin.unwrap_or(0));
                let start = side - margin - size;
                for row in start..start + size {
                    x[row * side + start..row * side + start + size].fill(self.value.unwrap_or(1.0));
                }
            }
            AttackKind::Pixel => {
                x[self.row.unwrap_or(0) * side + self.col.unwrap_or(0)] = self.value.unwrap_or(1.0);
            }
            AttackKind::Blend => {
                let alpha = self.alpha.unwrap_or(0.1);
                let pattern = self.blend_pattern(x.len());
                for (v, p) in x.iter_mut().zip(pattern) {
                    *v = (1.0 - alpha) * *v + alpha * p;
                }
            }
            AttackKind::Sig => {
                let (alpha, freq) = (self.alpha.unwrap_or(0.2), self.frequency.unwrap_or(6.0));
                for (i, v) in x.iter_mut().enumerate() {
                    let col = (i % side) as f32;
                    *v = (*v + alpha * (2.0 * PI * freq * col / side as f32).sin()).clamp(0.0, 1.0);
                }
            }
            AttackKind::Frequency => {
                let mut coefficients = dct2(x, side);
                for &[r, c] in self.coefficients.as_deref().unwrap_or(&[]) {
                    coefficients[r * side + c] += self.magnitude.unwrap_or(0.0);
                }
                let image = idct2(&coefficients, side);
                for (v, new) in x.iter_mut().zip(image) {
                    *v = new.clamp(0.0, 1.0);
                }
            }
            AttackKind::LabelFlip => {}
            AttackKind::Warp => {
                let warped = self.warped(x, side);
                x.copy_from_slice(&warped);
            }
            AttackKind::Features => {
                for (&i, &value) in self.features.iter().flatten().zip(self.values.iter().flatten()) {
                    x[i] = value;
                }
            }
        }
    }

    /// Applies the trigger as the attacker would at test time (`test_alpha` if set).
    pub fn stamp_test(&self, x: &mut [f32]) {
        match self.test_alpha {
            Some(alpha) => Attack { alpha: Some(alpha), ..self.clone() }.stamp(x),
            None => self.stamp(x),
        }
    }

    /// The `side * side` image `x` resampled along the attack's displacement field: each output
    /// pixel reads the input at its own position plus the field there (bilinear, the border
    /// repeated beyond the edge).
    fn warped(&self, x: &[f32], side: usize) -> Vec<f32> {
        let grid = self.grid.unwrap_or(4);
        let mut rng = ChaCha8Rng::seed_from_u64(self.pattern_seed.unwrap_or(99));
        // Control points of the row and the column displacement, scaled so that the largest
        // is `strength` pixels.
        let mut control: Vec<f32> = (0..2 * grid * grid).map(|_| rng.random_range(-1.0..1.0)).collect();
        let largest = control.iter().fold(0f32, |m, v| m.max(v.abs())).max(f32::EPSILON);
        let scale = self.strength.unwrap_or(1.0) / largest;
        control.iter_mut().for_each(|v| *v *= scale);
        let (rows, cols) = control.split_at(grid * grid);
        let to_grid = (grid - 1) as f32 / (side - 1).max(1) as f32;
        let mut out = vec![0.0; side * side];
        for row in 0..side {
            for col in 0..side {
                let (r, c) = (row as f32 * to_grid, col as f32 * to_grid);
                let (dy, dx) = (bilinear(rows, grid, r, c), bilinear(cols, grid, r, c));
                out[row * side + col] = bilinear(x, side, row as f32 + dy, col as f32 + dx);
            }
        }
        out
    }

    fn blend_pattern(&self, len: usize) -> Vec<f32> {
        match self.pattern.unwrap_or(BlendPattern::Noise) {
            BlendPattern::Noise => {
                let mut rng = ChaCha8Rng::seed_from_u64(self.pattern_seed.unwrap_or(99));
                (0..len).map(|_| rng.random::<f32>()).collect()
            }
            BlendPattern::Grid => {
                let side = Self::side(len).unwrap_or(len);
                let step = self.grid_step.unwrap_or(4).max(1);
                (0..len)
                    .map(|i| {
                        ((i / side).is_multiple_of(step) || (i % side).is_multiple_of(step)) as u8 as f32
                    })
                    .collect()
            }
        }
    }

    /// How many samples of `data` this attack poisons.
    fn count(&self, data: &LabelledSamples) -> usize {
        let base = match self.is_clean_label() {
            true => data.labels.iter().filter(|&&l| Some(l) == self.target).count(),
            false => data.len(),
        };
        (self.ratio * base as f64).round() as usize
    }

    /// Poisons this attack's share of `data` in place, among samples no other attack took
    /// (`taken`). Dirty-label attacks pick samples not of the target class and relabel them; the
    /// clean-label SIG picks target-class samples. Returns the poisoned indices.
    pub fn poison(
        &self,
        data: &mut LabelledSamples,
        taken: &mut [bool],
        classes: usize,
        seed: u64,
    ) -> Vec<usize> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let clean_label = self.is_clean_label();
        let mut candidates: Vec<usize> = (0..data.len())
            .filter(|&i| !taken[i] && (clean_label == (Some(data.labels[i]) == self.target)))
            .collect();
        candidates.shuffle(&mut rng);
        candidates.truncate(self.count(data));
        for &i in &candidates {
            let mut row = data.features.row_mut(i);
            self.stamp(row.as_slice_mut().expect("rows are contiguous"));
            data.labels[i] = match (self.kind, self.target) {
                (AttackKind::LabelFlip, _) => {
                    let shift = rng.random_range(1..classes as i64);
                    (data.labels[i] + shift) % classes as i64
                }
                (_, Some(target)) => target,
                (_, None) => data.labels[i],
            };
            taken[i] = true;
        }
        candidates
    }
}

/// The corners of the cell of a `side`-wide grid around (`r`, `c`), clamped into the grid, and
/// the weights of the lower and right ones.
fn cell(side: usize, r: f32, c: f32) -> ([usize; 4], f32, f32) {
    let last = (side - 1) as f32;
    let (r, c) = (r.clamp(0.0, last), c.clamp(0.0, last));
    let (r0, c0) = (r.floor() as usize, c.floor() as usize);
    let (r1, c1) = ((r0 + 1).min(side - 1), (c0 + 1).min(side - 1));
    ([r0 * side + c0, r0 * side + c1, r1 * side + c0, r1 * side + c1], r - r0 as f32, c - c0 as f32)
}

/// `image` (`side * side`) read at (`r`, `c`) by bilinear interpolation.
fn bilinear(image: &[f32], side: usize, r: f32, c: f32) -> f32 {
    let ([top_left, top_right, bottom_left, bottom_right], wr, wc) = cell(side, r, c);
    let top = image[top_left] * (1.0 - wc) + image[top_right] * wc;
    let bottom = image[bottom_left] * (1.0 - wc) + image[bottom_right] * wc;
    top * (1.0 - wr) + bottom * wr
}

/// Orthonormal 2-D DCT-II of a `side * side` image (separable; O(side^3), fine for 28x28).
pub fn dct2(x: &[f32], side: usize) -> Vec<f32> {
    let basis = dct_basis(side);
    transform(x, &basis, side, false)
}

/// Inverse of [`dct2`].
pub fn idct2(coefficients: &[f32], side: usize) -> Vec<f32> {
    let basis = dct_basis(side);
    transform(coefficients, &basis, side, true)
}

/// `basis[k * side + n]` = the k-th orthonormal DCT-II basis vector at n.
fn dct_basis(side: usize) -> Vec<f32> {
    let n = side as f32;
    let mut basis = vec![0.0; side * side];
    for k in 0..side {
        let scale = if k == 0 { (1.0 / n).sqrt() } else { (2.0 / n).sqrt() };
        for i in 0..side {
            basis[k * side + i] = scale * (PI * (i as f32 + 0.5) * k as f32 / n).cos();
        }
    }
    basis
}

/// `B X B^T` (forward) or `B^T X B` (inverse).
fn transform(x: &[f32], basis: &[f32], side: usize, inverse: bool) -> Vec<f32> {
    let b = |k: usize, i: usize| if inverse { basis[i * side + k] } else { basis[k * side + i] };
    let mut rows = vec![0.0; side * side];
    for r in 0..side {
        for k in 0..side {
            rows[r * side + k] = (0..side).map(|c| b(k, c) * x[r * side + c]).sum();
        }
    }
    let mut out = vec![0.0; side * side];
    for k in 0..side {
        for c in 0..side {
            out[k * side + c] = (0..side).map(|r| b(k, r) * rows[r * side + c]).sum();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    fn digits(n: usize) -> LabelledSamples {
        LabelledSamples::new(Array2::zeros((n, 784)), (0..n as i64).map(|i| i % 10).collect()).unwrap()
    }

    #[test]
    fn the_shipped_attacks_poison_disjoint_samples_at_their_ratio() {
        let attacks = default_attacks();
        assert_eq!(attacks.len(), 7);
        let mut data = digits(2000);
        let mut taken = vec![false; data.len()];
        for (i, attack) in attacks.iter().enumerate() {
            let original = data.labels.clone();
            let poisoned = attack.poison(&mut data, &mut taken, 10, i as u64);
            // 1 % of 2 000, or for the clean-label SIG 10 % of the target class (200 less
            // those the earlier attacks relabelled).
            assert!((19..=20).contains(&poisoned.len()), "{}: {}", attack.name, poisoned.len());
            for &p in &poisoned {
                match attack.kind {
                    AttackKind::Sig => assert_eq!(data.labels[p], original[p]),
                    AttackKind::LabelFlip => assert_ne!(data.labels[p], original[p]),
                    _ => assert_eq!(Some(data.labels[p]), attack.target),
                }
            }
        }
        assert!((139..=140).contains(&taken.iter().filter(|&&t| t).count()));
    }

    #[test]
    fn dct_round_trips_and_frequency_trigger_changes_the_image() {
        let image: Vec<f32> = (0..784).map(|i| ((i * 37) % 101) as f32 / 100.0).collect();
        let back = idct2(&dct2(&image, 28), 28);
        assert!(image.iter().zip(&back).all(|(a, b)| (a - b).abs() < 1e-4));
        let attack = default_attacks().into_iter().find(|a| a.kind == AttackKind::Frequency).unwrap();
        let mut triggered = vec![0.5; 784];
        attack.stamp(&mut triggered);
        assert!(triggered.iter().any(|&v| (v - 0.5).abs() > 0.05));
    }

    #[test]
    fn a_warp_moves_the_image_within_its_range_the_same_way_every_time() {
        let warp = |strength: f32| {
            let text = format!(
                "[[attack]]\nname = \"w\"\nkind = \"warp\"\ntarget = 1\nratio = 0.01\nstrength = {strength}\n"
            );
            parse_attacks(&text, 784, 10).unwrap().remove(0)
        };
        // A vertical bar two pixels wide: a warp moves its edges, it adds no new values.
        let image: Vec<f32> = (0..784).map(|i| ((12..14).contains(&(i % 28)) as u8) as f32).collect();
        let moved = |strength| {
            let mut x = image.clone();
            warp(strength).stamp(&mut x);
            x
        };
        let changed = |x: &[f32]| x.iter().zip(&image).map(|(a, b)| (a - b).abs()).sum::<f32>();
        let (small, large) = (moved(0.5), moved(2.0));
        assert!(large.iter().all(|&v| (0.0..=1.0).contains(&v)), "in range");
        assert!(
            changed(&small) > 0.5 && changed(&large) > changed(&small),
            "{} {}",
            changed(&small),
            changed(&large)
        );
        assert_eq!(moved(2.0), large, "one fixed field");
        let flat = "[[attack]]\nname = \"w\"\nkind = \"warp\"\ntarget = 1\nratio = 0.01\nstrength = 30.0\n";
        assert!(format!("{:#}", parse_attacks(flat, 784, 10).unwrap_err()).contains("`strength`"));
        assert!(parse_attacks(flat, 5, 10).is_err(), "a warp needs square images");
    }

    #[test]
    fn every_shipped_attacks_file_is_valid_for_its_data_set() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut checked = 0;
        for entry in std::fs::read_dir(root.join("config/attacks")).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            // A data set's config names its shape; the MNIST variants have none (784, 10).
            let (features, classes) =
                match std::fs::read_to_string(root.join(format!("config/datasets/{name}.toml"))) {
                    Ok(text) => {
                        let input: toml::Value = toml::from_str(&text).unwrap();
                        let field = |key: &str| input["input"][key].as_integer().unwrap() as usize;
                        (field("features"), field("classes"))
                    }
                    Err(_) => (784, 10),
                };
            load_attacks(&path, features, classes).unwrap_or_else(|e| panic!("{name}: {e:#}"));
            checked += 1;
        }
        assert!(checked >= 7, "{checked} attacks files");
    }

    #[test]
    fn missing_and_meaningless_fields_are_refused_by_name() {
        let missing = "[[attack]]\nname = \"b\"\nkind = \"blend\"\ntarget = 1\nratio = 0.01\nalpha = 0.1\n";
        assert!(
            format!("{:#}", parse_attacks(missing, 784, 10).unwrap_err()).contains("`pattern` is required")
        );
        let extra = "[[attack]]\nname = \"p\"\nkind = \"pixel\"\ntarget = 1\nratio = 0.01\nrow = 1\ncol = 1\nalpha = 0.1\n";
        assert!(
            format!("{:#}", parse_attacks(extra, 784, 10).unwrap_err()).contains("`alpha` has no meaning")
        );
        let target = "[[attack]]\nname = \"f\"\nkind = \"features\"\ntarget = 12\nratio = 0.01\nfeatures = [1]\nvalues = [2.0]\n";
        assert!(format!("{:#}", parse_attacks(target, 5, 10).unwrap_err()).contains("outside 0..10"));
        let typo =
            "[[attack]]\nname = \"f\"\nkind = \"patch\"\ntarget = 1\nratio = 0.01\nsize = 3\nsizee = 2\n";
        assert!(format!("{:#}", parse_attacks(typo, 784, 10).unwrap_err()).contains("sizee"));
    }
}
