//! The crate's error type.

/// Errors from metrics.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A configuration value is out of range.
    #[error("invalid parameter `{key}`: {reason}")]
    Param {
        /// Dotted name of the parameter.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Inputs have the wrong shape or contain NaN/Inf.
    #[error("invalid input: {0}")]
    Input(String),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl EvalError {
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
