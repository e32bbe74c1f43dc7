//! Validation at the boundary: every range the types cannot express, checked once, and
//! [`ValidConfig`], the only form of a configuration a trainer accepts. Library crates name
//! parameter keys relative to their own structs; the key paths into a run's config are added
//! here.

use std::ops::Deref;

use ipld_particles::ParticleUpdate;

use crate::config::{
    ConfigError, DecoderConfig, DiffusionObjective, Method, PriorConfig, RunConfig,
};

/// A [`RunConfig`] that passed [`RunConfig::validate`]: what `Trainer::new` takes, so a trainer
/// never runs on a configuration nobody checked. Read it through `Deref`.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidConfig(RunConfig);

impl Deref for ValidConfig {
    type Target = RunConfig;
    fn deref(&self) -> &RunConfig {
        &self.0
    }
}

impl ValidConfig {
    /// Validates `cfg`; `origin` names it in errors.
    /// `data.normalize` is resolved, so a run's saved config names what it trained with.
    pub fn new(mut cfg: RunConfig, origin: &str) -> Result<Self, ConfigError> {
        cfg.validate(origin)?;
        cfg.data.normalize = Some(cfg.data.normalization());
        Ok(Self(cfg))
    }

    /// Back to a plain configuration (to change it and validate again).
    pub fn into_inner(self) -> RunConfig {
        self.0
    }
}

impl RunConfig {
    /// This configuration validated (see [`ValidConfig`]).
    pub fn validated(self, origin: &str) -> Result<ValidConfig, ConfigError> {
        ValidConfig::new(self, origin)
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
            .map_err(|e| invalid(e.under("diffusion.schedule").to_string()))?;
        self.eval
            .sampler
            .validate(&schedule)
            .map_err(|e| invalid(e.under("eval.sampler").to_string()))?;
        if let Some(g) = &self.eval.guidance {
            g.validate()
                .map_err(|e| invalid(e.under("eval.guidance").to_string()))?;
        }
        self.eval
            .mmd
            .validate()
            .map_err(|e| invalid(e.under("eval.mmd").to_string()))?;
        self.particles
            .update
            .validate()
            .map_err(|e| invalid(e.under("particles.update").to_string()))?;
        self.particles
            .step_size
            .validate()
            .map_err(|e| invalid(e.under("particles.step_size").to_string()))?;
        self.train
            .kl
            .validate()
            .map_err(|e| invalid(e.under("train.kl").to_string()))?;
        for (name, opt) in [
            ("train.optimizer_theta", &self.train.optimizer_theta),
            ("train.optimizer_phi", &self.train.optimizer_phi),
            ("train.optimizer_encoder", &self.train.optimizer_encoder),
        ] {
            opt.validate(name).map_err(invalid)?;
        }
        let rule = self.particles.update.kind();
        let allowed = self.method.allowed_updates();
        if !allowed.contains(&rule) {
            let names: Vec<&str> = allowed.iter().map(|k| k.name()).collect();
            return Err(key(
                "particles.update.type",
                format!(
                    "method `{}` runs with {}, got `{}` (e.g. --set particles.update.type={})",
                    self.method.name(),
                    names.join(" or "),
                    rule.name(),
                    names[0]
                ),
            ));
        }
        self.validate_published(&key)?;
        if self.diffusion.loss.is_stf() {
            if self.method != Method::Ipld {
                return Err(key(
                    "diffusion.loss",
                    format!(
                        "\"stf\" takes its reference batch from IPLD's particles; method `{}` has none (use \"simple\")",
                        self.method.name()
                    ),
                ));
            }
            if self.diffusion.stf_reference == 0 {
                return Err(key(
                    "diffusion.stf_reference",
                    "must be at least 1 (points in the reference batch)".into(),
                ));
            }
        }
        if self.particles.lazy_noise && !self.particles.update.rule().supports_lazy_noise() {
            return Err(key(
                "particles.lazy_noise",
                format!(
                    "{} moves every particle every step (its velocity); use the eager update",
                    rule.name()
                ),
            ));
        }
        // The paper mode is the paper's update; these options belong to the posterior mode.
        if let ipld_particles::UpdateConfig::AdaptiveLangevin(r) = &self.particles.update
            && self.particles.noise_scale == ipld_particles::NoiseScale::Paper
        {
            let off = [
                ("bias_correction", r.bias_correction),
                (
                    "second_moment_of",
                    r.second_moment_of != ipld_particles::SecondMomentOf::Particle,
                ),
            ];
            if let Some((k, _)) = off.iter().find(|(_, on)| *on) {
                return Err(key(
                    &format!("particles.update.{k}"),
                    "is not part of the paper's update; it needs particles.noise_scale = \"posterior\""
                        .into(),
                ));
            }
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
        if self.train.minibatches == super::MinibatchDraw::PerShard
            && self.train.batch_size < self.train.shards
        {
            return Err(key(
                "train.batch_size",
                format!(
                    "is {}, fewer than train.shards = {}: under train.minibatches = \"per-shard\" every shard draws at least one point",
                    self.train.batch_size, self.train.shards
                ),
            ));
        }
        if self.data.images.is_some() && self.data.normalization() != ipld_data::Normalize::None {
            return Err(key(
                "data.normalize",
                format!(
                    "`{}` applies to vector data (the synthetic sets or a `data.path` file); \
                     image loaders already scale pixels to [-1, 1]",
                    self.data.normalization().name()
                ),
            ));
        }
        if self.eval.samples < 2 {
            return Err(key(
                "eval.samples",
                format!("must be at least 2, got {}", self.eval.samples),
            ));
        }
        if let Some(b) = self
            .eval
            .mmd_bandwidths
            .iter()
            .find(|b| !(**b > 0.0 && b.is_finite()))
        {
            return Err(key(
                "eval.mmd_bandwidths",
                format!("each must be a positive finite multiple of the median bandwidth, got {b}"),
            ));
        }
        self.validate_model(&invalid, &key)?;
        for (k, s) in [
            ("diffusion.latent_scale", self.diffusion.latent_scale),
            ("particles.init_scale", self.particles.init_scale),
        ] {
            if !(s > 0.0 && s.is_finite()) {
                return Err(key(k, format!("must be finite and > 0, got {s}")));
            }
        }
        if let Some(ema) = &self.train.ema {
            ema.validate()
                .map_err(|e| invalid(e.under("train.ema").to_string()))?;
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
            if let Some(f) = r.final_lr
                && !(f >= 0.0 && f <= r.lr)
            {
                return Err(key(
                    "train.prior_refit.final_lr",
                    format!("must lie in [0, lr = {}], got {f}", r.lr),
                ));
            }
            if let Some(g) = r.min_snr_gamma {
                if !(g > 0.0 && g.is_finite()) {
                    return Err(key(
                        "train.prior_refit.min_snr_gamma",
                        format!("must be a finite number > 0, got {g}"),
                    ));
                }
                if self.diffusion.loss != DiffusionObjective::Simple {
                    return Err(key(
                        "train.prior_refit.min_snr_gamma",
                        format!(
                            "reweights eq. (41)'s simple loss; diffusion.loss is `{}`",
                            self.diffusion.loss.name()
                        ),
                    ));
                }
            }
            if r.gaussian_base && !self.method.uses_particles() {
                return Err(key(
                    "train.prior_refit.gaussian_base",
                    format!(
                        "the Gaussian base is fitted to the particle cloud, which `{}` does not keep",
                        self.method.name()
                    ),
                ));
            }
        }
        if !(self.train.lr_decay_phi > 0.0 && self.train.lr_decay_phi <= 1.0) {
            return Err(key(
                "train.lr_decay_phi",
                format!("must lie in (0, 1], got {}", self.train.lr_decay_phi),
            ));
        }
        if self.eval.classifier && self.data.images.is_none() {
            return Err(key(
                "eval.classifier",
                "the digit classifier needs labelled image data ([data.images])".into(),
            ));
        }
        if self.eval.every > 0 && self.eval.every_samples < 4 {
            return Err(key(
                "eval.every_samples",
                format!("must be at least 4, got {}", self.eval.every_samples),
            ));
        }
        if self.eval.every_fid && self.data.images.is_none() {
            return Err(key(
                "eval.every_fid",
                "FID needs image data ([data.images])".into(),
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

    /// The published PGD and MPGD: `train.phi_update` (with momentum exactly for MPGD) and none
    /// of the diffusion prior's options; the other methods refuse `train.phi_update`.
    fn validate_published(
        &self,
        key: &dyn Fn(&str, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        let method = self.method.name();
        if !self.method.is_published() {
            if self.train.phi_update.is_some() {
                return Err(key(
                    "train.phi_update",
                    format!(
                        "is the published PGD's and MPGD's decoder update; method `{method}` steps phi with train.optimizer_phi"
                    ),
                ));
            }
            return Ok(());
        }
        let Some(phi) = &self.train.phi_update else {
            return Err(key(
                "train.phi_update",
                format!(
                    "method `{method}` needs the decoder's update, e.g. --set 'train.phi_update={{ step_size = 0.01, preconditioner = \"rmsprop\"{} }}' (docs/baselines.md)",
                    if self.method == Method::Mpgd {
                        ", momentum = { gamma = 1.0, eta = 5.0 }"
                    } else {
                        ""
                    }
                ),
            ));
        };
        phi.validate("train.phi_update")
            .map_err(|m| key("train.phi_update", m))?;
        match (self.method, phi.momentum.is_some()) {
            (Method::Mpgd, false) => {
                return Err(key(
                    "train.phi_update.momentum",
                    "MPGD puts momentum on phi: set { gamma, eta }".into(),
                ));
            }
            (Method::Pgd, true) => {
                return Err(key(
                    "train.phi_update.momentum",
                    "PGD has no momentum on phi (that is MPGD)".into(),
                ));
            }
            _ => {}
        }
        let unsupported: [(&str, bool, &str); 4] = [
            (
                "train.ema",
                self.train.ema.is_some(),
                "there is no prior network to average",
            ),
            (
                "train.prior_refit",
                self.train.prior_refit.is_some(),
                "there is no prior network to refit",
            ),
            (
                "train.two_stage",
                self.train.two_stage,
                "it is an ablation of IPLD's diffusion prior",
            ),
            (
                "particles.lazy_noise",
                self.particles.lazy_noise,
                "only the minibatch's particles move, so there is no noise to defer",
            ),
        ];
        if let Some((k, _, why)) = unsupported.iter().find(|(_, on, _)| *on) {
            return Err(key(
                k,
                format!("does not apply to method `{method}`: {why}"),
            ));
        }
        Ok(())
    }

    /// `model.prior` and `model.decoder`: their own ranges, and that they fit the latents.
    fn validate_model(
        &self,
        invalid: &dyn Fn(String) -> ConfigError,
        key: &dyn Fn(&str, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        let dz = self.data.latent_dim;
        // The DiT and the convolutional prior take a C x H x W latent: (name, C, H, C H W).
        let spatial = match &self.model.prior {
            PriorConfig::Mlp(mlp) => {
                mlp.validate()
                    .map_err(|e| invalid(e.under("model.prior").to_string()))?;
                None
            }
            PriorConfig::Conv(c) => {
                c.validate()
                    .map_err(|e| invalid(e.under("model.prior").to_string()))?;
                Some((
                    "the convolutional prior's",
                    c.channels,
                    c.size,
                    c.latent_dim(),
                ))
            }
            PriorConfig::Dit(dit) => {
                dit.validate()
                    .map_err(|e| invalid(e.under("model.prior").to_string()))?;
                Some(("the DiT's", dit.channels, dit.size, dit.latent_dim()))
            }
        };
        if let Some((net, c, h, d)) = spatial
            && d != dz
        {
            return Err(key(
                "model.prior",
                format!("{net} latent {c} x {h} x {h} = {d} values, but data.latent_dim = {dz}"),
            ));
        }
        match &self.model.decoder {
            DecoderConfig::Linear(lin) => lin
                .validate()
                .map_err(|e| invalid(e.under("model.decoder").to_string()))?,
            DecoderConfig::Conv(dec) => {
                dec.validate()
                    .map_err(|e| invalid(e.under("model.decoder").to_string()))?;
                let d = dec.latent_channels * dec.latent_size * dec.latent_size;
                if d != dz {
                    return Err(key(
                        "model.decoder",
                        format!(
                            "the convolutional decoder takes {d} latent values, but data.latent_dim = {dz}"
                        ),
                    ));
                }
                if self.data.images.is_none() {
                    return Err(key(
                        "model.decoder",
                        "the convolutional decoder needs image data ([data.images])".into(),
                    ));
                }
            }
        }
        Ok(())
    }
}
