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
