//! The shadow model stage: an MLP trained on ONNX Runtime through graphs built in Rust.

mod config;
pub mod graphs;
mod model;
pub mod runtime;
mod subnormals;

pub use config::{LearningRate, LossRecording, ShadowConfig};
pub use graphs::MlpShape;
pub use model::{Evaluation, ResidentLosses, Sgd, ShadowModel};
pub use runtime::{ExecutionProvider, Runtime, RuntimeOptions};
pub(crate) use subnormals::flushing_subnormals;
