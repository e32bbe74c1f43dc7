//! The run configuration: a serde struct per concern (data, diffusion prior, evaluation), read from
//! TOML with unknown keys rejected, and presets mirroring the paper (`configs/*.toml`, embedded in
//! the binary so it runs from any directory).

use std::path::{Path, PathBuf};

use ipld_data::SyntheticConfig;
use ipld_diffusion::{LossWeighting, SamplerConfig, ScheduleConfig};
use ipld_eval::MmdConfig;
use serde::{Deserialize, Serialize};

/// Errors reading or validating a configuration; each names the file or key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading config {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown/missing keys.
    #[error("parsing config {origin}: {message}")]
    Parse {
        /// File path or preset name.
        origin: String,
        /// The parser's message (names the key and line).
        message: String,
    },
    /// A value is out of range.
    #[error("config {origin}: {message}")]
    Invalid {
        /// File path or preset name.
        origin: String,
        /// Which key and why.
        message: String,
    },
    /// No preset of that name.
    #[error("unknown preset `{name}`; valid presets: {}", PRESETS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "))]
    UnknownPreset {
        /// The name asked for.
        name: String,
    },
}

/// The presets shipped in `configs/`, embedded at compile time.
pub const PRESETS: &[(&str, &str)] = &[
    ("gmm", include_str!("../../../configs/gmm.toml")),
    ("circles", include_str!("../../../configs/circles.toml")),
];

/// The training method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Interacting Particle Latent Diffusion (Algorithm 2).
    Ipld,
}

/// Where the training data come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum DataSource {
    /// One of the paper's synthetic benchmarks (Appendix B.1).
    Synthetic(SyntheticConfig),
    /// A user's [M, d] float32 matrix in `.npy` or `.safetensors`.
    File {
        /// Path to the file.
        path: PathBuf,
    },
}

/// Data section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// The dataset.
    pub source: DataSource,
}

/// The latent DDPM prior.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiffusionConfig {
    /// Noise schedule (Appendix B: linear, 1e-4 to 0.02, K = 1000).
    pub schedule: ScheduleConfig,
    /// Diffusion loss weighting: `simple` (eq. 41) or `likelihood-weighted` (eq. 40).
    pub loss: LossWeighting,
}

/// Evaluation after training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Number of generated samples compared with the data (10,000 in Appendix B.1).
    pub samples: usize,
    /// Reverse-process sampler.
    pub sampler: SamplerConfig,
    /// MMD kernel settings.
    pub mmd: MmdConfig,
}

/// A whole run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Training method.
    pub method: Method,
    /// Seed of every random draw in the run.
    pub seed: u64,
    /// Training data.
    pub data: DataConfig,
    /// Latent diffusion prior.
    pub diffusion: DiffusionConfig,
    /// Evaluation.
    pub eval: EvalConfig,
}

impl RunConfig {
    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let cfg: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
        cfg.validate(origin)?;
        Ok(cfg)
    }

    /// A named preset (`gmm`, `circles`).
    pub fn preset(name: &str) -> Result<Self, ConfigError> {
        let (_, text) =
            PRESETS
                .iter()
                .find(|(n, _)| *n == name)
                .ok_or_else(|| ConfigError::UnknownPreset {
                    name: name.to_string(),
                })?;
        Self::from_toml(text, &format!("preset `{name}`"))
    }

    /// Reads and validates a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// Checks every range the types cannot express.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            origin: origin.to_string(),
            message,
        };
        let schedule = self
            .diffusion
            .schedule
            .build()
            .map_err(|e| invalid(e.to_string()))?;
        self.eval
            .sampler
            .validate(&schedule)
            .map_err(|e| invalid(e.to_string()))?;
        self.eval
            .mmd
            .validate()
            .map_err(|e| invalid(e.to_string()))?;
        if self.eval.samples < 2 {
            return Err(invalid(format!(
                "invalid parameter `eval.samples`: must be at least 2, got {}",
                self.eval.samples
            )));
        }
        if let DataSource::Synthetic(s) = &self.data.source
            && (s.points < 2 || s.ambient_dim < ipld_data::LATENT_DIM)
        {
            return Err(invalid(format!(
                "invalid parameter `data.source`: need points >= 2 and ambient_dim >= {}, got {} and {}",
                ipld_data::LATENT_DIM,
                s.points,
                s.ambient_dim
            )));
        }
        Ok(())
    }

    /// The resolved configuration as TOML (what a run directory saves).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("RunConfig serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_parse_validate_and_round_trip() {
        for (name, _) in PRESETS {
            let cfg = RunConfig::preset(name).unwrap();
            let again = RunConfig::from_toml(&cfg.to_toml(), "round trip").unwrap();
            assert_eq!(cfg, again, "{name}");
        }
        let gmm = RunConfig::preset("gmm").unwrap();
        assert_eq!(gmm.diffusion.schedule, ScheduleConfig::default());
        assert_eq!(gmm.eval.samples, 10_000);
        assert_eq!(gmm.eval.mmd.gamma, 0.1);
    }

    #[test]
    fn unknown_keys_and_values_are_named() {
        let text = PRESETS[0].1.replace(
            "seed = 0\n\n[data.source]",
            "seed = 0\nsed = 1\n\n[data.source]",
        );
        let e = RunConfig::from_toml(&text, "x.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("x.toml") && e.contains("sed"), "{e}");
        let text = PRESETS[0]
            .1
            .replace("method = \"ipld\"", "method = \"vae\"");
        let e = RunConfig::from_toml(&text, "x.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ipld") && e.contains("vae"),
            "lists valid methods: {e}"
        );
        let text = PRESETS[0].1.replace("steps = 1000", "steps = 0");
        let e = RunConfig::from_toml(&text, "x.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("schedule.steps"), "{e}");
        let e = RunConfig::from_toml("method = [", "bad.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad.toml"), "{e}");
        assert!(
            RunConfig::preset("mnist")
                .unwrap_err()
                .to_string()
                .contains("gmm, circles")
        );
    }
}
