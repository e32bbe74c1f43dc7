//! The run configuration: one serde struct per concern (data, model, diffusion prior, particles,
//! training, evaluation), read from TOML with unknown keys rejected, validated at the boundary,
//! and presets mirroring the paper (`configs/*.toml`, embedded so the binary runs anywhere).
//! `--set a.b.c=VALUE` overrides are applied to the fully resolved tree, so every valid key exists
//! and an unknown one is reported with the valid keys beside it.

use std::path::{Path, PathBuf};

use ipld_data::SyntheticKind;
use ipld_diffusion::{EmaConfig, LossWeighting, SamplerConfig, ScheduleConfig};
use ipld_eval::MmdConfig;
use ipld_models::{ConvDecoderConfig, DitConfig, LinearDecoderConfig, MlpEpsConfig};
use ipld_particles::{KlAnnealing, NoiseGenerator, StepSizeSchedule, UpdateConfig};
use serde::{Deserialize, Serialize};

use crate::optim::AdamWConfig;

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
    /// A `--set` override is malformed or names an unknown key.
    #[error("--set {assignment}: {message}")]
    Override {
        /// The KEY=VALUE text.
        assignment: String,
        /// What is wrong.
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
    ("mnist5k", include_str!("../../../configs/mnist5k.toml")),
    ("cifar10", include_str!("../../../configs/cifar10.toml")),
    ("svhn", include_str!("../../../configs/svhn.toml")),
    ("celeba64", include_str!("../../../configs/celeba64.toml")),
];

/// The training method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Interacting Particle Latent Diffusion (Algorithm 2; Algorithm 1 with the `langevin` rule).
    Ipld,
    /// VAE with a diffusion prior (Wehenkel & Louppe 2021) as the paper re-implements it: a linear
    /// Gaussian encoder, N reparameterised samples per point, the same decoder, prior and KL
    /// annealing.
    DiffusionVae,
    /// Particle gradient descent (Kuntz et al. 2023): plain Langevin particles (`langevin` rule).
    Pgd,
    /// Momentum particle descent (Lim et al. 2024): kinetic Langevin particles
    /// (`kinetic-langevin` rule).
    Mpgd,
}

impl Method {
    /// The config name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ipld => "ipld",
            Self::DiffusionVae => "diffusion-vae",
            Self::Pgd => "pgd",
            Self::Mpgd => "mpgd",
        }
    }

    /// Whether the method keeps a particle cloud (all but DiffusionVAE).
    pub fn uses_particles(self) -> bool {
        self != Self::DiffusionVae
    }

    /// The particle rules (`particles.update.type`) the method may run with.
    pub fn allowed_updates(self) -> &'static [&'static str] {
        match self {
            Self::Ipld => &["adaptive-langevin", "langevin"],
            Self::DiffusionVae => &["adaptive-langevin", "langevin", "kinetic-langevin"],
            Self::Pgd => &["langevin"],
            Self::Mpgd => &["kinetic-langevin"],
        }
    }
}

/// `--set` overrides that select `method` together with the particle rule and step size it runs
/// with on the synthetic benchmarks: PGD and MPGD have no preconditioner and diverge at IPLD's
/// step 0.1 (step sizes measured in docs/baselines.md).
pub fn method_overrides(method: &str) -> Result<Vec<String>, ConfigError> {
    let v: &[&str] = match method {
        "ipld" => &["method=ipld"],
        "diffusion-vae" => &["method=diffusion-vae"],
        "pgd" => &[
            "method=pgd",
            "particles.update.type=langevin",
            "particles.step_size.initial=0.01",
        ],
        "mpgd" => &[
            "method=mpgd",
            "particles.update.type=kinetic-langevin",
            "particles.step_size.initial=0.03",
        ],
        other => {
            return Err(ConfigError::Invalid {
                origin: "method".into(),
                message: format!("unknown method `{other}`; valid: ipld, diffusion-vae, pgd, mpgd"),
            });
        }
    };
    Ok(v.iter().map(|s| s.to_string()).collect())
}

/// Training data: a synthetic benchmark, or a user's file when `path` is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Synthetic benchmark (`gmm` or `circles`, Appendix B.1), used when `path` is empty.
    pub synthetic: SyntheticKind,
    /// A user's [M, d] float32 matrix (`.npy` or `.safetensors`); empty = the synthetic data.
    pub path: String,
    /// Number of synthetic points M.
    pub points: usize,
    /// Ambient dimension d_x of the synthetic data.
    pub ambient_dim: usize,
    /// Seed of the synthetic data (independent of the run's seed).
    pub seed: u64,
    /// Latent dimension d_z of the particles and the prior.
    pub latent_dim: usize,
    /// Image data (`[data.images]`, `format = "cifar10" | "svhn" | "mnist-idx" | "folder" |
    /// "csv"`); when set it replaces `synthetic`/`path`. A relative path that does not exist is
    /// looked up under the data directory (`$IPLD_DATA_DIR`, else `~/.cache/ipld/data`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<ipld_data::ImageSourceConfig>,
    /// Use at most this many image training points, evenly spaced over the set (0 = all), e.g. a
    /// CPU-sized subset that keeps every class of a file sorted by label.
    #[serde(default)]
    pub max_points: usize,
}

impl DataConfig {
    /// The dataset's short name: the synthetic kind or the file stem.
    pub fn name(&self) -> String {
        if let Some(img) = &self.images {
            let p = img.path();
            let stem = p
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            return stem
                .split('.')
                .next()
                .filter(|s| !s.is_empty())
                .unwrap_or("images")
                .to_string();
        }
        if self.path.is_empty() {
            self.synthetic.name().to_string()
        } else {
            Path::new(&self.path)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "data".into())
        }
    }
}

/// The networks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The epsilon-network of the latent prior (Appendix B.1).
    pub eps: MlpEpsConfig,
    /// The Gaussian decoder p_phi(x | z): its `sigma` is the observation noise of every decoder;
    /// the linear map is used unless `conv_decoder` is set.
    pub decoder: LinearDecoderConfig,
    /// A DiT prior (B.2) instead of the MLP `eps`; its latent C x H x W must equal
    /// `data.latent_dim`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dit: Option<DitConfig>,
    /// The LDM convolutional decoder (Table 2) instead of the linear one; DiffusionVAE then uses
    /// the mirrored convolutional encoder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conv_decoder: Option<ConvDecoderConfig>,
}

/// The latent DDPM prior.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiffusionConfig {
    /// Noise schedule (Appendix B: linear, 1e-4 to 0.02, K = 1000).
    pub schedule: ScheduleConfig,
    /// Diffusion loss weighting: `simple` (eq. 41) or `likelihood-weighted` (eq. 40).
    pub loss: LossWeighting,
    /// The prior models u = z / s with this s (the role of LDM's latent scale factor, Rombach
    /// et al. 2022): the diffusion loss of eq. (64) sees z / s and prior samples are s u. The
    /// ideal score of z is unchanged, only the schedule's noise levels move relative to the
    /// latents' scale. 1 = the paper.
    #[serde(default = "unit_scale")]
    pub latent_scale: f64,
}

fn unit_scale() -> f64 {
    1.0
}

/// The particle cloud and its dynamics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParticlesConfig {
    /// Particles per training point N.
    pub count: usize,
    /// Train with one particle for this many steps, then replicate to `count` (Appendix B.3);
    /// 0 starts with `count` particles.
    pub warm_start_steps: u64,
    /// Particle step size h_z and its per-epoch decay.
    pub step_size: StepSizeSchedule,
    /// The update rule: `adaptive-langevin` (Algorithm 2) or `langevin` (Algorithm 1).
    pub update: UpdateConfig,
    /// Exact lazy noise: touch only the minibatch's particles per step and give every other
    /// particle its missed noise, as one Gaussian of the summed variance, when it is next read
    /// (same distribution as the eager update; not for `kinetic-langevin`).
    #[serde(default)]
    pub lazy_noise: bool,
    /// The particle noise's generator (the Langevin W of eqs. 22 and 66, and lazy noise's
    /// catch-up draws): `philox4x32-7` (the presets) or `philox4x32-10` (Random123's default, 3
    /// rounds of safety margin; what a config without this key means, so older runs resume
    /// and reproduce bit for bit). Same distribution, other bits; with 7 rounds the eager
    /// update takes about 15% less time (docs/performance.md).
    #[serde(default)]
    pub noise: NoiseGenerator,
}

/// Optimisation of theta and phi, and bookkeeping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Total optimisation steps.
    pub steps: u64,
    /// Minibatch size |B| (training points per step; each brings its N particles).
    pub batch_size: usize,
    /// KL annealing gamma_t = c_KL min(1, t / T) (A.4.1).
    pub kl: KlAnnealing,
    /// AdamW for the prior's parameters theta.
    pub optimizer_theta: AdamWConfig,
    /// AdamW for the decoder's parameters phi.
    pub optimizer_phi: AdamWConfig,
    /// AdamW for the encoder (DiffusionVAE only).
    pub optimizer_encoder: AdamWConfig,
    /// Exponential learning-rate decay per epoch for the decoder and encoder (B.2: 0.999 on
    /// images; 1 = constant).
    #[serde(default = "one")]
    pub lr_decay_phi: f64,
    /// Exponential moving average of the prior's weights, used for sampling (Table 2: decay
    /// 0.999 / 0.9999 from step 40,000); absent = sample with the raw weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ema: Option<EmaConfig>,
    /// Monte Carlo draws of (k, eps) per latent in the diffusion loss's estimate (1 in the
    /// paper). More draws lower the variance of the prior's gradient at the cost of extra prior
    /// evaluations only, which on images are cheap next to the decoder.
    #[serde(default = "one_draw")]
    pub diffusion_samples: usize,
    /// Data-parallel shards of each minibatch: the loss (64) and its backward run per shard of
    /// points, on separate CPU threads (one after the other on a GPU), and the gradients are
    /// summed. The result depends on this (float summation order), never on the thread count.
    /// 1 (the default when absent, as in configs written before this key) = one pass over the
    /// whole minibatch; the CPU-sized presets use 2, one per core of the development VM.
    #[serde(default = "one_shard")]
    pub shards: usize,
    /// Two-stage ablation (Table 4): the particles see only the decoder's likelihood; the
    /// diffusion loss trains theta on detached particles.
    pub two_stage: bool,
    /// Optional prior refit after the `steps` joint steps of Algorithm 2 (not in the paper):
    /// further steps that train only theta (and its EMA) on the frozen latents. Absent = none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prior_refit: Option<PriorRefitConfig>,
    /// Write a metrics line every this many steps.
    pub log_every: u64,
    /// Write a checkpoint every this many steps (and at the end).
    pub checkpoint_every: u64,
}

/// Prior-only steps after joint training (`train.prior_refit`). On a CPU budget the joint phase
/// ends long before the prior has fitted the latents (the paper gives the prior ~10^5 steps,
/// Table 2); these steps cost one prior evaluation each and no decoder pass. Step numbers
/// continue after `train.steps`, so checkpoints, resume and the EMA carry over unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriorRefitConfig {
    /// Number of prior-only steps.
    pub steps: u64,
    /// Training points per step, drawn without replacement; each brings all its N particles
    /// (DiffusionVAE: N encoder draws).
    pub batch_size: usize,
    /// AdamW learning rate for theta in this phase (the optimizer state carries over).
    pub lr: f64,
}

/// Evaluation after training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Number of generated samples (10,000 in Appendix B.1).
    pub samples: usize,
    /// Training points they are compared with (all of them if fewer).
    pub reference_points: usize,
    /// Reverse-process sampler.
    pub sampler: SamplerConfig,
    /// MMD kernel settings.
    pub mmd: MmdConfig,
    /// Image runs: also compute FID of the samples against the training images (needs `cargo
    /// xtask fetch-inception`), and write a sample grid.
    #[serde(default)]
    pub fid: bool,
    /// Image runs with particles: decode the particle clouds of `cloud_points` training points at
    /// the start of these epochs into `clouds/epoch-EEEE.png` (D.2, Figure 5).
    #[serde(default)]
    pub cloud_epochs: Vec<u64>,
    /// Training points (evenly spaced over the data) shown in the cloud pictures and the latent
    /// interpolation (D.1, Figure 4).
    #[serde(default = "eight")]
    pub picture_points: usize,
}

fn eight() -> usize {
    8
}

fn one() -> f64 {
    1.0
}

fn one_draw() -> usize {
    1
}

fn one_shard() -> usize {
    1
}

/// A whole run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Training method.
    pub method: Method,
    /// Seed of every random draw of the run (particles, batches, noise, sampling).
    pub seed: u64,
    /// Training data.
    pub data: DataConfig,
    /// Networks.
    pub model: ModelConfig,
    /// Latent diffusion prior.
    pub diffusion: DiffusionConfig,
    /// Particle cloud.
    pub particles: ParticlesConfig,
    /// Optimisation.
    pub train: TrainConfig,
    /// Evaluation.
    pub eval: EvalConfig,
}

impl RunConfig {
    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let cfg: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
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

    /// The particle-noise generator the presets draw with (`particles.noise`; every preset sets
    /// the same, which tests/noise.rs checks). Benchmarks time this one.
    pub fn presets_noise() -> Result<NoiseGenerator, ConfigError> {
        Ok(Self::preset("gmm")?.particles.noise)
    }

    /// Reads and validates a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// Applies `KEY=VALUE` overrides in order (dotted keys into the config) and re-validates.
    pub fn with_overrides(&self, sets: &[String], origin: &str) -> Result<Self, ConfigError> {
        let mut cfg = self.clone();
        for assignment in sets {
            let err = |message: String| ConfigError::Override {
                assignment: assignment.clone(),
                message,
            };
            let (key, raw) = assignment
                .split_once('=')
                .ok_or_else(|| err("expected KEY=VALUE".into()))?;
            let key = key.trim();
            let mut tree = toml::Value::try_from(&cfg).map_err(|e| err(e.to_string()))?;
            set_dotted(&mut tree, key, parse_value(raw.trim())).map_err(err)?;
            // Round-trip through the struct so defaults of a newly chosen variant appear as keys.
            cfg = tree
                .try_into()
                .map_err(|e: toml::de::Error| err(e.to_string().trim_end().to_string()))?;
        }
        cfg.validate(&format!("{origin} with --set overrides"))?;
        Ok(cfg)
    }

    /// Checks every range the types cannot express.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            origin: origin.to_string(),
            message,
        };
        let key = |k: &str, why: String| invalid(format!("invalid parameter `{k}`: {why}"));
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
        self.model
            .eps
            .validate()
            .map_err(|e| invalid(e.to_string()))?;
        self.particles
            .update
            .validate()
            .map_err(|e| invalid(e.to_string()))?;
        self.particles
            .step_size
            .validate()
            .map_err(|e| invalid(e.to_string()))?;
        self.train
            .kl
            .validate()
            .map_err(|e| invalid(e.to_string()))?;
        self.train
            .optimizer_theta
            .validate("train.optimizer_theta")
            .map_err(|e| invalid(e.to_string()))?;
        self.train
            .optimizer_phi
            .validate("train.optimizer_phi")
            .map_err(|e| invalid(e.to_string()))?;
        self.train
            .optimizer_encoder
            .validate("train.optimizer_encoder")
            .map_err(|e| invalid(e.to_string()))?;
        let rule = self.particles.update.name();
        if !self.method.allowed_updates().contains(&rule) {
            return Err(key(
                "particles.update.type",
                format!(
                    "method `{}` runs with {}, got `{rule}` (e.g. --set particles.update.type={})",
                    self.method.name(),
                    self.method.allowed_updates().join(" or "),
                    self.method.allowed_updates()[0]
                ),
            ));
        }
        if self.particles.lazy_noise && rule == "kinetic-langevin" {
            return Err(key(
                "particles.lazy_noise",
                "kinetic-langevin moves every particle every step (its velocity); use the eager update".into(),
            ));
        }
        if self.train.two_stage && self.method == Method::DiffusionVae {
            return Err(key(
                "train.two_stage",
                "is an IPLD/particle ablation; DiffusionVAE has no particles".into(),
            ));
        }
        let positive: [(&str, u64); 9] = [
            ("train.shards", self.train.shards as u64),
            (
                "train.diffusion_samples",
                self.train.diffusion_samples as u64,
            ),
            ("particles.count", self.particles.count as u64),
            ("train.steps", self.train.steps),
            ("train.batch_size", self.train.batch_size as u64),
            ("train.log_every", self.train.log_every),
            ("train.checkpoint_every", self.train.checkpoint_every),
            ("data.latent_dim", self.data.latent_dim as u64),
            ("eval.reference_points", self.eval.reference_points as u64),
        ];
        for (k, v) in positive {
            if v == 0 {
                return Err(key(k, "must be at least 1, got 0".into()));
            }
        }
        if self.eval.samples < 2 {
            return Err(key(
                "eval.samples",
                format!("must be at least 2, got {}", self.eval.samples),
            ));
        }
        if !(self.model.decoder.sigma > 0.0 && self.model.decoder.sigma.is_finite()) {
            return Err(key(
                "model.decoder.sigma",
                format!("must be > 0, got {}", self.model.decoder.sigma),
            ));
        }
        if let Some(dit) = &self.model.dit {
            dit.validate().map_err(|e| invalid(e.to_string()))?;
            if dit.latent_dim() != self.data.latent_dim {
                return Err(key(
                    "model.dit",
                    format!(
                        "latent {} x {} x {} = {} values, but data.latent_dim = {}",
                        dit.channels,
                        dit.size,
                        dit.size,
                        dit.latent_dim(),
                        self.data.latent_dim
                    ),
                ));
            }
        }
        if let Some(dec) = &self.model.conv_decoder {
            dec.validate().map_err(|e| invalid(e.to_string()))?;
            let d = dec.latent_channels * dec.latent_size * dec.latent_size;
            if d != self.data.latent_dim {
                return Err(key(
                    "model.conv_decoder",
                    format!(
                        "takes {d} latent values, but data.latent_dim = {}",
                        self.data.latent_dim
                    ),
                ));
            }
            if self.data.images.is_none() {
                return Err(key(
                    "model.conv_decoder",
                    "needs image data ([data.images])".into(),
                ));
            }
        }
        let s = self.diffusion.latent_scale;
        if !(s > 0.0 && s.is_finite()) {
            return Err(key(
                "diffusion.latent_scale",
                format!("must be finite and > 0, got {s}"),
            ));
        }
        if let Some(ema) = &self.train.ema {
            ema.validate().map_err(|e| invalid(e.to_string()))?;
        }
        if let Some(r) = &self.train.prior_refit {
            if r.steps == 0 || r.batch_size == 0 {
                return Err(key(
                    "train.prior_refit",
                    format!(
                        "steps and batch_size must be at least 1, got {} and {}",
                        r.steps, r.batch_size
                    ),
                ));
            }
            if !(r.lr > 0.0 && r.lr.is_finite()) {
                return Err(key(
                    "train.prior_refit.lr",
                    format!("must be > 0, got {}", r.lr),
                ));
            }
        }
        if !(self.train.lr_decay_phi > 0.0 && self.train.lr_decay_phi <= 1.0) {
            return Err(key(
                "train.lr_decay_phi",
                format!("must lie in (0, 1], got {}", self.train.lr_decay_phi),
            ));
        }
        if self.eval.fid && self.data.images.is_none() {
            return Err(key(
                "eval.fid",
                "FID needs image data ([data.images])".into(),
            ));
        }
        if self.data.images.is_none() && self.data.path.is_empty() {
            if self.data.points < 2 {
                return Err(key(
                    "data.points",
                    format!("must be at least 2, got {}", self.data.points),
                ));
            }
            if self.data.ambient_dim < ipld_data::LATENT_DIM {
                return Err(key(
                    "data.ambient_dim",
                    format!(
                        "must be at least {}, got {}",
                        ipld_data::LATENT_DIM,
                        self.data.ambient_dim
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The observation noise sigma of p_phi(x | z): the convolutional decoder's when it is used.
    pub fn decoder_sigma(&self) -> f64 {
        self.model
            .conv_decoder
            .as_ref()
            .map_or(self.model.decoder.sigma, |c| c.sigma)
    }

    /// All steps of the run: the joint steps plus any prior-refit steps.
    pub fn total_steps(&self) -> u64 {
        self.train.steps + self.train.prior_refit.map_or(0, |r| r.steps)
    }

    /// Whether the data are images (`[data.images]`).
    pub fn is_image_run(&self) -> bool {
        self.data.images.is_some()
    }

    /// The resolved configuration as TOML (what a run directory saves).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("RunConfig serialises")
    }
}

/// A `--set` value: TOML syntax when it parses (numbers, booleans, arrays, inline tables,
/// quoted strings), otherwise the raw text as a string (so `data.path=x.npy` needs no quotes).
fn parse_value(raw: &str) -> toml::Value {
    match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t.remove("v").expect("key v"),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

/// Sets `key` (dotted) in `tree`; every component must already exist, except that an inline
/// table may fill an absent optional section (e.g. `train.prior_refit={steps=100, ...}`), whose
/// fields serde then checks.
fn set_dotted(tree: &mut toml::Value, key: &str, value: toml::Value) -> Result<(), String> {
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(format!("malformed key `{key}`"));
    }
    let mut node = tree;
    for (i, part) in parts.iter().enumerate() {
        let here = parts[..i].join(".");
        let table = node
            .as_table_mut()
            .ok_or_else(|| format!("`{here}` is a value, not a table"))?;
        if !table.contains_key(*part) {
            if i + 1 == parts.len() && value.is_table() {
                table.insert(part.to_string(), value);
                return Ok(());
            }
            let mut valid: Vec<String> = table
                .keys()
                .map(|k| {
                    if here.is_empty() {
                        k.clone()
                    } else {
                        format!("{here}.{k}")
                    }
                })
                .collect();
            valid.sort();
            return Err(format!(
                "unknown key `{}`; valid keys{}: {}",
                parts[..=i].join("."),
                if here.is_empty() {
                    String::new()
                } else {
                    format!(" under `{here}`")
                },
                valid.join(", ")
            ));
        }
        if i + 1 == parts.len() {
            let slot = table.get_mut(*part).expect("checked");
            if *part == "type" {
                // A new variant: drop the old variant's fields so its defaults fill in.
                *table = toml::Table::from_iter([("type".to_string(), value)]);
            } else {
                *slot = value;
            }
            return Ok(());
        }
        node = table.get_mut(*part).expect("checked");
    }
    unreachable!("loop returns on the last component")
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
        assert_eq!(
            (gmm.train.steps, gmm.train.batch_size, gmm.particles.count),
            (1000, 500, 4)
        );
        assert_eq!(
            (gmm.train.kl.coefficient, gmm.train.kl.warmup_steps),
            (0.01, 1000)
        );
        assert_eq!(gmm.particles.step_size.initial, 0.1);
        assert_eq!(gmm.train.optimizer_theta.lr, 1e-3);
        assert_eq!(gmm.eval.mmd.gamma, 0.1);
    }

    #[test]
    fn unknown_keys_and_values_are_named() {
        let text = PRESETS[0]
            .1
            .replace("seed = 0\n\n[data]", "seed = 0\nsed = 1\n\n[data]");
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
        let text = PRESETS[0]
            .1
            .replace("steps = 1000\nkind", "steps = 0\nkind");
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

    #[test]
    fn overrides_set_dotted_keys_and_reject_unknown_ones() {
        let base = RunConfig::preset("gmm").unwrap();
        let sets = |s: &[&str]| {
            base.with_overrides(&s.iter().map(|x| x.to_string()).collect::<Vec<_>>(), "gmm")
        };
        let c = sets(&[
            "particles.count=16",
            "train.steps=200",
            "data.path=my data.npy",
            "method=ipld",
        ])
        .unwrap();
        assert_eq!(
            (c.particles.count, c.train.steps, c.data.path.as_str()),
            (16, 200, "my data.npy")
        );
        let c = sets(&["eval.sampler.type=ddim", "eval.sampler.steps=50"]).unwrap();
        assert_eq!(
            c.eval.sampler,
            SamplerConfig::Ddim(ipld_diffusion::Ddim {
                steps: 50,
                eta: 0.0
            })
        );
        let e = sets(&["train.stpes=5"]).unwrap_err().to_string();
        assert!(
            e.contains("train.stpes")
                && e.contains("train.steps")
                && e.contains("train.batch_size"),
            "{e}"
        );
        let e = sets(&["particles.count=0"]).unwrap_err().to_string();
        assert!(e.contains("particles.count"), "{e}");
        let e = sets(&["particles.count=many"]).unwrap_err().to_string();
        assert!(e.contains("particles.count") || e.contains("count"), "{e}");
        assert!(
            sets(&["nokey"])
                .unwrap_err()
                .to_string()
                .contains("KEY=VALUE")
        );
        let e = sets(&["bogus=1"]).unwrap_err().to_string();
        assert!(e.contains("valid keys") && e.contains("particles"), "{e}");
    }
}
