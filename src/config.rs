//! The configuration file: one TOML document, one section per stage.
//!
//! Each stage owns its section's struct and its checks; this module only puts them together,
//! reads the file and reports the first problem with the field it concerns. Unknown fields are
//! errors, so a typo never silently falls back to a default.

use std::path::Path;

use serde::Deserialize;

use crate::data::InputConfig;
use crate::decision::DecisionConfig;
use crate::engine::pool::PoolConfig;
use crate::engine::{EngineConfig, WindowConfig};
use crate::kafka::delivery::DeliveryConfig;
use crate::kafka::KafkaConfig;
use crate::metrics::MetricsConfig;
use crate::probes::ProbesConfig;
use crate::scorer::ScorerConfig;
use crate::shadow::ShadowConfig;

pub use crate::validation::ConfigError;

/// The whole configuration file: the engine's sections plus the daemon's edges.
///
/// The engine's sections are repeated here rather than flattened from [`EngineConfig`]:
/// serde cannot combine `flatten` with `deny_unknown_fields`, and refusing unknown fields
/// matters more.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub input: InputConfig,
    pub window: WindowConfig,
    pub shadow: ShadowConfig,
    pub probes: ProbesConfig,
    pub scorer: ScorerConfig,
    pub decision: DecisionConfig,
    /// `[engine]`: how many windows are trained at once.
    #[serde(rename = "engine")]
    pub engine_pool: PoolConfig,
    pub kafka: KafkaConfig,
    pub delivery: DeliveryConfig,
    pub metrics: MetricsConfig,
}

impl Config {
    pub fn engine(&self) -> EngineConfig {
        EngineConfig {
            input: self.input.clone(),
            window: self.window.clone(),
            shadow: self.shadow.clone(),
            probes: self.probes.clone(),
            scorer: self.scorer.clone(),
            decision: self.decision.clone(),
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.engine().validate()?;
        self.engine_pool.validate()?;
        self.kafka.validate()?;
        self.delivery.validate()
    }

    /// Parses and validates a TOML document; relative paths are taken from `base_dir`.
    pub fn from_toml(text: &str, base_dir: &Path) -> anyhow::Result<Self> {
        let mut config: Config = toml::from_str(text)?;
        config.probes.resolve_paths(base_dir);
        if let Some(lib) = &mut config.shadow.onnxruntime_library {
            *lib = base_dir.join(&*lib);
        }
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a config file.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_toml(&text, base)
            .map_err(|e| anyhow::anyhow!("config file {} refused: {e}", path.display()))
    }

    /// The sections a live reload may not change, by name, where `other` differs from `self`.
    /// Destructured, so that a section added to `Config` cannot be left out of this check.
    pub fn fixed_sections_changed(&self, other: &Config) -> Vec<&'static str> {
        let Config {
            input,
            window,
            shadow,
            probes,
            scorer,
            decision: _live,
            engine_pool,
            kafka,
            delivery,
            metrics,
        } = self;
        let sections = [
            ("input", *input == other.input),
            ("window", *window == other.window),
            ("shadow", *shadow == other.shadow),
            ("probes", *probes == other.probes),
            ("scorer", *scorer == other.scorer),
            ("engine", *engine_pool == other.engine_pool),
            ("kafka", *kafka == other.kafka),
            ("delivery", *delivery == other.delivery),
            ("metrics", *metrics == other.metrics),
        ];
        sections.into_iter().filter(|(_, same)| !same).map(|(name, _)| name).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shadow::LearningRate;

    fn parse(text: &str) -> anyhow::Result<Config> {
        Config::from_toml(text, Path::new("."))
    }

    fn refused_field(text: &str) -> String {
        let err = parse(text).expect_err("config should be refused");
        match err.downcast_ref::<ConfigError>() {
            Some(e) => e.field.clone(),
            None => panic!("expected a ConfigError, got: {err}"),
        }
    }

    #[test]
    fn a_learning_rate_is_a_number_or_auto() {
        let err = format!("{:#}", parse("[shadow]\nlearning_rate = \"fast\"\n").unwrap_err());
        assert!(err.contains("learning_rate") && err.contains("\"auto\""), "{err}");
        assert_eq!(
            parse("[shadow]\nlearning_rate = 0.05\n").unwrap().shadow.learning_rate,
            LearningRate::Fixed(0.05)
        );
        assert_eq!(parse("").unwrap().shadow.learning_rate, LearningRate::Auto);
    }

    #[test]
    fn empty_file_gives_the_documented_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.window.size, 4096);
        assert_eq!(c.shadow.hidden, vec![256]);
        assert_eq!(c.shadow.epochs, 10);
        assert!(c.shadow.second_pass);
        assert_eq!(c.shadow.losses, crate::shadow::LossRecording::AtStep);
        assert!(c.shadow.recheck_rate);
        assert!(c.decision.keep_hard_clean);
        assert!(c.scorer.per_label);
        assert!(c.scorer.label_vote && c.scorer.neighbour_labels);
        assert_eq!(c.scorer.k, 50);
        assert_eq!(c.probes.count, 250);
    }

    #[test]
    fn shipped_example_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/lossgate.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        // The example names probe files in the setup cache; check the rest without them.
        let text = text.replace("file = ", "# file = ").replace("labels_file = ", "# labels_file = ");
        parse(&text).unwrap();
    }

    #[test]
    fn the_loss_recording_is_at_step_or_after_epoch() {
        let after = parse("[shadow]\nlosses = \"after-epoch\"\n").unwrap();
        assert_eq!(after.shadow.losses, crate::shadow::LossRecording::AfterEpoch);
        let err = format!("{:#}", parse("[shadow]\nlosses = \"per-batch\"\n").unwrap_err());
        assert!(err.contains("losses") && err.contains("at-step"), "{err}");
    }

    #[test]
    fn the_rate_recheck_is_a_switch() {
        assert!(!parse("[shadow]\nrecheck_rate = false\n").unwrap().shadow.recheck_rate);
        let err = format!("{:#}", parse("[shadow]\nrecheck_rate = \"sometimes\"\n").unwrap_err());
        assert!(err.contains("recheck_rate"), "{err}");
    }

    #[test]
    fn unknown_field_is_refused_with_its_name() {
        let err = parse("[scorer]\nkk = 3\n").unwrap_err().to_string();
        assert!(err.contains("unknown field `kk`"), "{err}");
    }

    #[test]
    fn each_invalid_value_names_its_field() {
        let cases = [
            ("[scorer]\nk = 250\n", "scorer.k"),
            ("[scorer]\nk = 0\n", "scorer.k"),
            ("[decision]\nalpha = 1.0\n", "decision.alpha"),
            ("[decision]\nalpha = 0.0\n", "decision.alpha"),
            ("[decision]\nreject_fraction = 1.5\n", "decision.reject_fraction"),
            ("[decision]\npolicy = \"threshold\"\n", "decision.threshold"),
            ("[shadow]\nepochs = 0\n", "shadow.epochs"),
            ("[shadow]\nhidden = [256, 0]\n", "shadow.hidden[1]"),
            ("[shadow]\nhidden = [8, 8, 8]\n", "shadow.hidden"),
            ("[shadow]\nlearning_rate = -0.1\n", "shadow.learning_rate"),
            ("[shadow]\nmomentum = 1.0\n", "shadow.momentum"),
            ("[shadow]\nbatch_size = 0\n", "shadow.batch_size"),
            ("[window]\nsize = 0\n", "window.size"),
            ("[engine]\nworkers = 0\n", "engine.workers"),
            ("[input]\nfeatures = 784\nclasses = 10\nimage = [28, 27]\n", "input.image"),
            ("[input]\nfeatures = 784\nclasses = 1\n", "input.classes"),
            ("[probes]\ncount = 1\n", "probes.count"),
            ("[probes]\ntopic = \"p\"\nfile = \"Cargo.toml\"\nformat = \"csv\"\n", "probes.topic"),
            ("[kafka]\noutput_topic = \"samples\"\n", "kafka.output_topic"),
            (
                "[kafka.properties]\n\"sasl.password\" = \"env:LOSSGATE_UNSET_VARIABLE\"\n",
                "kafka.properties.sasl.password",
            ),
            ("[delivery]\nmode = \"transactional\"\n", "delivery.transactional_id"),
            ("[window]\nmax_wait = \"0s\"\n", "window.max_wait"),
            ("[probes]\nfile = \"/no/such/probes.csv\"\nformat = \"csv\"\n", "probes.file"),
            ("[shadow]\nonnxruntime_library = \"/no/such/lib.so\"\n", "shadow.onnxruntime_library"),
        ];
        for (text, field) in cases {
            assert_eq!(refused_field(text), field, "for config:\n{text}");
        }
    }
}
