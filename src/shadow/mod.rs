//! The shadow model stage: an MLP trained on ONNX Runtime through graphs built in Rust.

mod config;
pub mod graphs;
mod model;
pub mod runtime;

pub use config::{LearningRate, LossRecording, ShadowConfig};
pub use graphs::MlpShape;
pub use model::{Evaluation, ResidentLosses, Sgd, ShadowModel};
pub use runtime::{ExecutionProvider, Runtime, RuntimeOptions};
