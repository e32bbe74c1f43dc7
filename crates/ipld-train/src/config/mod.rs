//! The run configuration: one serde struct per concern (data, model, diffusion prior, particles,
//! training, evaluation), read from TOML with unknown keys rejected, validated at the boundary,
//! and presets mirroring the paper (`configs/*.toml`, embedded so the binary runs anywhere).
//! `--set a.b.c=VALUE` overrides are applied to the fully resolved tree, so every valid key exists
//! and an unknown one is reported with the valid keys beside it. Choices between networks or
//! rules are tagged enums (`model.prior = { type = "mlp" | "dit", ... }`). Files in the layout
//! before those enums still load (`compat.rs`), so saved runs resume.

use std::path::{Path, PathBuf};

use ipld_data::SyntheticKind;
use ipld_diffusion::{EmaConfig, GuidanceConfig, SamplerConfig};
use ipld_eval::MmdConfig;
use ipld_models::{ConvDecoderConfig, ConvEpsConfig, DitConfig, LinearDecoderConfig, MlpEpsConfig};
use ipld_particles::{KlAnnealing, NoiseGenerator, NoiseScale, StepSizeSchedule, UpdateConfig};
use serde::{Deserialize, Serialize};

use crate::optim::{AdamWConfig, PhiUpdateConfig};

mod compat;
mod diffusion;
mod method;
mod overrides;
mod refit;
mod validate;

pub use diffusion::{DiffusionConfig, DiffusionObjective};
pub use method::Method;
pub use overrides::{METHOD_LABELS, method_overrides};
pub use refit::PriorRefitConfig;
pub use validate::ValidConfig;

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
    ("gmm", include_str!("../../../../configs/gmm.toml")),
    ("circles", include_str!("../../../../configs/circles.toml")),
    ("mnist5k", include_str!("../../../../configs/mnist5k.toml")),
    ("cifar10", include_str!("../../../../configs/cifar10.toml")),
    ("svhn", include_str!("../../../../configs/svhn.toml")),
    (
        "celeba64",
        include_str!("../../../../configs/celeba64.toml"),
    ),
];

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
    /// Per-feature normalisation fitted to the training data before training and inverted on
    /// every sample: `"none"`, `"center"` (subtract the means) or `"standardize"` (also divide by
    /// the standard deviations). Absent = by source: `"standardize"` for a user's `path` file
    /// (docs/training.md, "A user's data", says why), `"none"` for the synthetic and image data
    /// (so the presets' runs are unchanged). A run's saved config names the resolved choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalize: Option<ipld_data::Normalize>,
}

impl DataConfig {
    /// The normalisation this run trains with: `normalize`, or when absent the default for the
    /// data's source.
    pub fn normalization(&self) -> ipld_data::Normalize {
        use ipld_data::Normalize;
        self.normalize
            .unwrap_or(if self.images.is_none() && !self.path.is_empty() {
                Normalize::Standardize
            } else {
                Normalize::None
            })
    }

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

/// The networks: which prior epsilon-network and which decoder, each a tagged choice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The epsilon-network of the latent prior: `{ type = "mlp", ... }` (Appendix B.1),
    /// `{ type = "dit", ... }` (B.2) or `{ type = "conv", ... }` (residual convolutions); the
    /// last two take a latent C x H x W that must equal `data.latent_dim`.
    pub prior: PriorConfig,
    /// The Gaussian decoder p_phi(x | z) = N(g_phi(z), sigma² I): `{ type = "linear", ... }`
    /// (B.1) or `{ type = "conv", ... }` (the LDM decoder of Table 2, image data only).
    /// DiffusionVAE's encoder mirrors it (linear, or the LDM encoder).
    pub decoder: DecoderConfig,
}

/// The prior's epsilon-network (`model.prior`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum PriorConfig {
    /// Residual MLP with a sinusoidal time embedding (Appendix B.1).
    Mlp(MlpEpsConfig),
    /// DiT with adaLN-Zero (B.2, Table 2: DiT-S).
    Dit(DitConfig),
    /// Residual convolutions at the latent's resolution with scale-shift timestep modulation
    /// (the DDPM / ADM U-Net's blocks; image latents only).
    Conv(ConvEpsConfig),
}

/// The decoder g_phi (`model.decoder`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum DecoderConfig {
    /// Linear map (Appendix B.1).
    Linear(LinearDecoderConfig),
    /// LDM convolutional decoder (Table 2).
    Conv(ConvDecoderConfig),
}

impl DecoderConfig {
    /// The observation noise sigma of p_phi(x | z).
    pub fn sigma(&self) -> f64 {
        match self {
            Self::Linear(d) => d.sigma,
            Self::Conv(d) => d.sigma,
        }
    }
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
    /// The update rule: `adaptive-langevin` (Algorithm 2), `langevin` (Algorithm 1) or
    /// `kinetic-langevin` (an ablation) for IPLD; `batch-langevin` for PGD and
    /// `underdamped-langevin` for MPGD, as published.
    pub update: UpdateConfig,
    /// Exact lazy noise: touch only the minibatch's particles per step and give every other
    /// particle its missed noise, as one Gaussian of the summed variance, when it is next read
    /// (same distribution as the eager update; not for `kinetic-langevin`).
    #[serde(default)]
    pub lazy_noise: bool,
    /// The particles start as N(0, s² I) with this s (Algorithm 2, line 1: s = 1, what a config
    /// without the key means). Larger starts put the particles near the data's scale sooner
    /// when the decoder's weights can grow only about lr per AdamW step (docs/training.md).
    #[serde(default = "one")]
    pub init_scale: f64,
    /// The particle noise's generator (the Langevin W of eqs. 22 and 66, and lazy noise's
    /// catch-up draws): `philox4x32-7` (the presets) or `philox4x32-10` (Random123's default, 3
    /// rounds of safety margin; what a config without this key means, so older runs resume
    /// and reproduce bit for bit). Same distribution, other bits; with 7 rounds the eager
    /// update takes about 15% less time (docs/performance.md).
    #[serde(default)]
    pub noise: NoiseGenerator,
    /// The Langevin noise's scale, for every rule: `paper` (Algorithm 1's sqrt(2 h gamma_t |B| /
    /// M), Algorithm 2's sqrt(2 h gamma_t / M) G^(1/2) / |B|, kinetic Langevin at gamma_t |B| /
    /// M; what a config without this key means, so older runs resume bit for bit) or
    /// `posterior` (the noise under which the subsampled chain keeps the tilted posterior of
    /// eq. (21) as its stationary law: sqrt(2 h gamma_t), times G^(1/2) for Algorithm 2,
    /// temperature gamma_t for kinetic Langevin). docs/training.md derives both; the presets
    /// name `posterior` (the figure1 README says why). The published PGD and MPGD have their own
    /// noise, which samples their posterior, so the key does not apply to them.
    #[serde(default)]
    pub noise_scale: NoiseScale,
}

/// How a step's minibatch is drawn (`train.minibatches`, issue 26).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MinibatchDraw {
    /// Each epoch, one permutation of all M points, cut into |B|-point minibatches.
    #[default]
    WholeData,
    /// The data split into `train.shards` contiguous slices; each epoch permutes every slice
    /// on its own, and shard s's part of step t's minibatch is the next block of slice s. A
    /// rank then needs only the particles of its shards' slices, and a result depends on the
    /// shard count, never on how many ranks compute the shards.
    PerShard,
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
    /// AdamW for the decoder's parameters phi (IPLD, DiffusionVAE).
    pub optimizer_phi: AdamWConfig,
    /// The decoder's update under the published PGD and MPGD (`method = "pgd" | "mpgd"`, which
    /// require it; the other methods refuse it): `{ step_size, preconditioner = "rmsprop" |
    /// "none", rmsprop_alpha, momentum = { gamma, eta } }` (momentum for MPGD only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phi_update: Option<PhiUpdateConfig>,
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
    /// How each step's minibatch is drawn from the data: `per-shard` (each shard's part from its
    /// own contiguous slice of the data, which data-parallel ranks need: docs/distributed.md) or
    /// `whole-data` (one permutation of all M points per epoch; the default when absent, as in
    /// configs written before this key). With `shards = 1` the two are the same draw.
    #[serde(default)]
    pub minibatches: MinibatchDraw,
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
    /// Also keep the last this many checkpoints as `checkpoints/step-SSSSSSSS.safetensors`, to
    /// roll back to with `--resume R --from-step S`; 0 (the default) keeps only the latest.
    #[serde(default)]
    pub keep_checkpoints: usize,
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
    /// Particle guidance (Xu 2024, thesis section 6.4): sets of samples drawn jointly with a
    /// repulsive kernel, `{ strength = 0.1, bandwidth = "median" | { fixed = H }, set_size = 25 }`;
    /// absent: independent samples (docs/sampling.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guidance: Option<GuidanceConfig>,
    /// MMD kernel settings.
    pub mmd: MmdConfig,
    /// Also report MMD² with the median-heuristic bandwidth sigma_med times each of these
    /// (gamma = 1 / (2 sigma²); e.g. [0.25, 1, 4]), beside the fixed `mmd.gamma`, which can miss
    /// structure finer or coarser than its own scale. Each costs one more MMD²; empty: none.
    #[serde(default)]
    pub mmd_bandwidths: Vec<f64>,
    /// Image runs: also compute FID of the samples against the training images (needs `cargo
    /// xtask fetch-inception`), and write a sample grid.
    #[serde(default)]
    pub fid: bool,
    /// Image runs on labelled images: train a small classifier on all the file's labelled images
    /// (an MLP, seed 0, so every run is scored by the same one) and report the fraction of
    /// samples it labels with confidence >= 0.9, the entropy of their label histogram and the
    /// classes present (summary's `recognisability`, with the classifier's held-out accuracy).
    #[serde(default)]
    pub classifier: bool,
    /// Image runs with particles: decode the particle clouds of `cloud_points` training points at
    /// the start of these epochs into `clouds/epoch-EEEE.png` (D.2, Figure 5).
    #[serde(default)]
    pub cloud_epochs: Vec<u64>,
    /// Training points (evenly spaced over the data) shown in the cloud pictures and the latent
    /// interpolation (D.1, Figure 4).
    #[serde(default = "eight")]
    pub picture_points: usize,
    /// Evaluate during training every this many steps (0, the default: only at the end):
    /// `every_samples` samples, their MMD² and structure metrics in a `phase = "eval"` line of
    /// `metrics.jsonl` and `evals.csv`, and a picture `evals/step-SSSSSSSS.png`.
    #[serde(default)]
    pub every: u64,
    /// Samples per evaluation during training (compared with as many training points).
    #[serde(default = "thousand")]
    pub every_samples: usize,
    /// Image runs: also compute FID at each evaluation during training (Inception on every
    /// sample: slow on a CPU).
    #[serde(default)]
    pub every_fid: bool,
}

fn thousand() -> usize {
    1000
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
    /// Parses and validates TOML text; `origin` names it in errors. Text in the layout before
    /// the tagged model choices (`[model.eps]`, `[model.dit]`, `[model.conv_decoder]`) is read
    /// as the same configuration in today's layout, and `pgd`/`mpgd` with their old rules as
    /// `ipld` (see `compat.rs`).
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let parse = |message: String| ConfigError::Parse {
            origin: origin.to_string(),
            message: message.trim_end().to_string(),
        };
        let mut tree: toml::Table = toml::from_str(text).map_err(|e| parse(e.to_string()))?;
        let model = compat::upgrade(&mut tree).map_err(parse)?;
        let method = compat::upgrade_method(&mut tree);
        let cfg: Self = if model || method {
            toml::Value::Table(tree)
                .try_into()
                .map_err(|e: toml::de::Error| parse(e.to_string()))?
        } else {
            // Parsed from the text itself, so errors carry their line and column.
            toml::from_str(text).map_err(|e| parse(e.to_string()))?
        };
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

    /// The observation noise sigma of p_phi(x | z).
    pub fn decoder_sigma(&self) -> f64 {
        self.model.decoder.sigma()
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
