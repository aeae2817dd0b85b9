//! The data of one evaluation run: a dataset with its own train/test split, and per seed the
//! poisoned training stream, which attack poisoned each sample, and the trusted probes.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::attack::{Attack, AttackKind};
use crate::data::{read_csv, read_idx_pair, LabelledSamples};
use crate::probes::ProbesConfig;

/// Where the data comes from.
#[derive(Debug, Clone)]
pub enum DataSource {
    /// A folder with MNIST's four IDX files.
    Mnist(PathBuf),
    /// A user's IDX image/label pairs: (train images, train labels, test images, test labels).
    Idx([PathBuf; 4]),
    /// A user's CSV files with a label column.
    Csv { train: PathBuf, test: PathBuf, label_column: String },
}

pub struct Dataset {
    pub train: LabelledSamples,
    pub test: LabelledSamples,
    pub classes: usize,
}

impl Dataset {
    pub fn load(source: &DataSource) -> Result<Self> {
        let (train, test) = match source {
            DataSource::Mnist(dir) => load_mnist(dir)?,
            DataSource::Idx([train_x, train_y, test_x, test_y]) => {
                (read_idx_pair(train_x, train_y)?, read_idx_pair(test_x, test_y)?)
            }
            DataSource::Csv { train, test, label_column } => {
                (read_csv(train, label_column)?, read_csv(test, label_column)?)
            }
        };
        anyhow::ensure!(
            train.feature_count() == test.feature_count(),
            "the training split has {} features, the test split {}",
            train.feature_count(),
            test.feature_count()
        );
        let classes = train.labels.iter().chain(&test.labels).copied().max().unwrap_or(0) as usize + 1;
        Ok(Self { train, test, classes })
    }
}

/// MNIST's training and test splits from a folder of IDX files.
pub fn load_mnist(dir: &Path) -> Result<(LabelledSamples, LabelledSamples)> {
    let hint = || format!("MNIST IDX files expected in {} (run scripts/setup.sh)", dir.display());
    let train = read_idx_pair(&dir.join("train-images-idx3-ubyte"), &dir.join("train-labels-idx1-ubyte"))
        .with_context(hint)?;
    let test = read_idx_pair(&dir.join("t10k-images-idx3-ubyte"), &dir.join("t10k-labels-idx1-ubyte"))
        .with_context(hint)?;
    Ok((train, test))
}

/// One seed's poisoned stream and probes.
pub struct Scenario {
    pub stream: LabelledSamples,
    /// The attack (index into the attacks list) that poisoned each stream sample; `None`: clean.
    pub origin: Vec<Option<usize>>,
    /// Trusted clean samples held out of the stream (possibly contaminated on purpose).
    pub probes: LabelledSamples,
}

impl Scenario {
    /// Shuffles the training split with `seed`, holds out `probe_draw.count` samples as probes
    /// (the first in that order; with `every_class`, topped up as the daemon tops up its
    /// probes at `alpha`), keeps at most `max_samples` of the rest as the stream and lets every
    /// attack poison its share of it. `probe_contamination` of the probes are then poisoned too
    /// (the probe-trust question).
    pub fn build(
        dataset: &Dataset,
        attacks: &[Attack],
        probe_draw: (&ProbesConfig, f64),
        max_samples: Option<usize>,
        probe_contamination: f64,
        seed: u64,
    ) -> Self {
        let mut order: Vec<usize> = (0..dataset.train.len()).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        let (draw, alpha) = probe_draw;
        let held_out = draw.chosen(&dataset.train, &order, alpha);
        let mut probes = dataset.train.select(&held_out);
        let is_probe: std::collections::HashSet<usize> = held_out.into_iter().collect();
        let mut stream_order: Vec<usize> = order.into_iter().filter(|i| !is_probe.contains(i)).collect();
        stream_order.truncate(max_samples.unwrap_or(usize::MAX));
        let mut stream = dataset.train.select(&stream_order);
        let origin = poison_all(&mut stream, attacks, dataset.classes, seed, |a| Some(a.clone()));
        if probe_contamination > 0.0 {
            let backdoors = attacks.iter().filter(|a| a.is_backdoor()).count().max(1) as f64;
            poison_all(&mut probes, attacks, dataset.classes, seed ^ 0xb0b, |a| {
                // The backdoors share the contamination equally (SIG: its share of the target
                // class); label noise is not a poison an attacker plants in trusted data.
                let ratio = match a.kind {
                    AttackKind::LabelFlip => return None,
                    _ if a.is_clean_label() => probe_contamination,
                    _ => probe_contamination / backdoors,
                };
                Some(Attack { ratio, ..a.clone() })
            });
        }
        Self { stream, origin, probes }
    }

    pub fn poison_mask(&self) -> Vec<bool> {
        self.origin.iter().map(Option::is_some).collect()
    }

    /// Poisons per attack in the stream.
    pub fn poisons_per_attack(&self, attacks: usize) -> Vec<usize> {
        let mut counts = vec![0; attacks];
        for a in self.origin.iter().flatten() {
            counts[*a] += 1;
        }
        counts
    }
}

fn poison_all(
    data: &mut LabelledSamples,
    attacks: &[Attack],
    classes: usize,
    seed: u64,
    adjust: impl Fn(&Attack) -> Option<Attack>,
) -> Vec<Option<usize>> {
    let mut taken = vec![false; data.len()];
    let mut origin = vec![None; data.len()];
    for (index, attack) in attacks.iter().enumerate() {
        let Some(attack) = adjust(attack) else {
            continue;
        };
        let attack_seed = seed.wrapping_mul(31).wrapping_add(index as u64 + 1);
        for i in attack.poison(data, &mut taken, classes, attack_seed) {
            origin[i] = Some(index);
        }
    }
    origin
}
