//! Known-clean probe samples: where they come from and how many are used.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Deserialize;

use crate::config::{ensure, ConfigError};
use crate::data::{read_csv, read_idx_pair, read_json_lines, LabelledSamples};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ProbeFormat {
    /// IDX images (`file`) and labels (`labels_file`), as MNIST ships.
    #[default]
    Idx,
    /// CSV with a header row and a label column.
    Csv,
    /// JSON lines in the input record format.
    Jsonl,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbesConfig {
    /// How many probes join every window (drawn once, at start-up, from the file).
    pub count: usize,
    /// The trusted clean samples. Optional for `lossgate eval`, which draws probes from the
    /// MNIST test split.
    pub file: Option<PathBuf>,
    pub format: ProbeFormat,
    /// A trusted Kafka topic of clean samples in the input format (`[kafka]` codec and
    /// connection), read whole at start-up; instead of `file`. Daemon only.
    pub topic: Option<String>,
    /// IDX only: the label file beside the image file.
    pub labels_file: Option<PathBuf>,
    /// CSV only: the name of the label column.
    pub label_column: String,
    /// Which `count` samples of the file are drawn.
    pub seed: u64,
}

impl Default for ProbesConfig {
    fn default() -> Self {
        Self {
            count: 250,
            file: None,
            topic: None,
            format: ProbeFormat::Idx,
            labels_file: None,
            label_column: "label".into(),
            seed: 0,
        }
    }
}

impl ProbesConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        ensure(
            self.count >= 2,
            "probes.count",
            format!("{}: at least 2 probes are needed to score against", self.count),
        )?;
        if self.file.is_some() && self.topic.is_some() {
            return Err(ConfigError::new("probes.topic", "give probes.file or probes.topic, not both"));
        }
        if let Some(topic) = &self.topic {
            ensure(!topic.trim().is_empty(), "probes.topic", "is empty")?;
        }
        if let Some(file) = &self.file {
            ensure(
                file.is_file(),
                "probes.file",
                format!("{} does not exist or is not a file", file.display()),
            )?;
            if self.format == ProbeFormat::Idx {
                let labels = self.labels_file.as_ref().ok_or_else(|| {
                    ConfigError::new(
                        "probes.labels_file",
                        "format \"idx\" needs the label file beside the image file",
                    )
                })?;
                ensure(
                    labels.is_file(),
                    "probes.labels_file",
                    format!("{} does not exist or is not a file", labels.display()),
                )?;
            }
        }
        Ok(())
    }

    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        for p in [&mut self.file, &mut self.labels_file].into_iter().flatten() {
            *p = base.join(&*p);
        }
    }

    /// Loads the probe file, checks it against the input shape and draws `count` probes.
    pub fn load(&self, features: usize, classes: usize) -> Result<LabelledSamples> {
        let file = self.file.as_ref().context("no probe file configured (probes.file)")?;
        let all = match self.format {
            ProbeFormat::Idx => {
                read_idx_pair(file, self.labels_file.as_ref().context("probes.labels_file is missing")?)?
            }
            ProbeFormat::Csv => read_csv(file, &self.label_column)?,
            ProbeFormat::Jsonl => read_json_lines(file)?,
        };
        all.check_shape(features, classes).with_context(|| format!("probe file {}", file.display()))?;
        draw(&all, self.count, self.seed).with_context(|| format!("probe file {}", file.display()))
    }
}

/// `count` samples drawn without replacement with a fixed seed.
pub fn draw(from: &LabelledSamples, count: usize, seed: u64) -> Result<LabelledSamples> {
    anyhow::ensure!(from.len() >= count, "holds {} samples, probes.count asks for {count}", from.len());
    let mut indices: Vec<usize> = (0..from.len()).collect();
    indices.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    indices.truncate(count);
    Ok(from.select(&indices))
}
