//! The crate's error type: parameter errors (bad configuration, caught at the boundary) kept apart
//! from runtime errors (tensor operations).

/// Errors from schedules, losses, samplers and EMA.
#[derive(Debug, thiserror::Error)]
pub enum DiffusionError {
    /// A configuration value is out of range; `key` names it.
    #[error("invalid parameter `{key}`: {reason}")]
    Param {
        /// Dotted name of the offending parameter.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Inputs disagree in shape, length or range.
    #[error("invalid input: {0}")]
    Input(String),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl DiffusionError {
    pub(crate) fn param(key: &str, reason: &str) -> Self {
        Self::Param {
            key: key.to_string(),
            reason: reason.to_string(),
        }
    }

    /// The same error with `prefix.` before a parameter's key: a library names keys relative to
    /// its own config struct, and the program that nests that struct adds the path to it.
    pub fn under(self, prefix: &str) -> Self {
        match self {
            Self::Param { key, reason } => Self::Param {
                key: format!("{prefix}.{key}"),
                reason,
            },
            other => other,
        }
    }
}
