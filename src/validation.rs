//! The error every config section's check returns, naming the field, and `ensure`. A leaf
//! module: each stage's section validates itself with these without importing `config`,
//! which composes the sections.

use std::fmt;

/// A config value that cannot be used, with the field it is in.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("config field `{field}`: {problem}")]
pub struct ConfigError {
    pub field: String,
    pub problem: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, problem: impl fmt::Display) -> Self {
        Self { field: field.into(), problem: problem.to_string() }
    }
}

/// Fails with `field: problem` unless `ok`.
pub(crate) fn ensure(ok: bool, field: &str, problem: impl fmt::Display) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(field, problem))
    }
}
