//! lossgate: a streaming data-poisoning firewall for online training.
//!
//! The detection engine, pure (no Kafka, no files, no clocks): [`data`] and [`probes`] bring
//! samples in; [`engine`] trains the [`shadow`] model on a window and records loss
//! trajectories; [`scorer`] measures each trajectory against the clean probes'; [`decision`]
//! turns scores into forward / quarantine.
//!
//! The stages around it: [`codec`] decodes records; [`daemon`] is the streaming path (intake,
//! window, the engine pool, sink, commit, recovery); [`kafka`] holds the edges (client
//! settings, headers, checkpoints, the [`kafka::delivery`] guarantee); [`metrics`] names every
//! metric once; [`quarantine`] reviews and releases quarantined records; [`config`] composes
//! each stage's section into one file.
//!
//! Drivers of the same engine: the daemon, the offline [`eval`] harness, [`bench`] and the
//! [`cli`] (including the embedded demo).

pub mod bench;
pub mod cli;
pub mod codec;
pub mod config;
pub mod daemon;
pub mod data;
pub mod decision;
pub(crate) mod demo;
pub mod engine;
pub mod eval;
pub mod kafka;
pub mod metrics;
pub(crate) mod onnx;
pub mod probes;
pub mod quarantine;
pub mod scorer;
pub mod shadow;
pub(crate) mod validation;

pub use engine::EngineConfig;
pub use engine::{Engine, WindowOutcome};
pub use validation::ConfigError;
