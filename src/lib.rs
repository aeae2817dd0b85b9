//! lossgate: a streaming data-poisoning firewall for online training.
//!
//! The data path, stage by stage: [`data`] and [`probes`] bring samples in; [`engine`] trains
//! the [`shadow`] model on a window and records loss trajectories; [`scorer`] measures each
//! trajectory against the clean probes'; [`decision`] turns scores into forward/quarantine.
//! [`eval`] drives the same engine offline on MNIST with a poisoning attack.

pub mod bench;
pub mod bench_pipeline;
pub mod cli;
pub mod codec;
pub mod config;
pub mod daemon;
pub mod data;
pub mod decision;
pub mod demo;
pub mod engine;
pub mod eval;
pub mod kafka;
pub mod metrics;
pub mod onnx;
pub mod probes;
pub mod quarantine;
pub mod scorer;
pub mod shadow;
pub mod tansu;
pub mod validation;

pub use engine::EngineConfig;
pub use engine::{Engine, WindowOutcome};
pub use validation::ConfigError;
