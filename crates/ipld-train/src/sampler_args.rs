//! The sampler and particle-guidance flags of `ipld-train sample` and `eval` (docs/sampling.md),
//! and their resolution into a [`Sampling`]: a flag that belongs to another sampler than the one
//! named is an error naming the sampler it needs.

use clap::ValueEnum;
use ipld_diffusion::{Ddim, Ddpm, DpmSolverPp, EdmGrid, Heun, Restart, SamplerConfig};

use crate::commands::Sampling;

/// `--sampler`.
#[derive(Debug, Clone, Copy, PartialEq, ValueEnum)]
pub enum SamplerKind {
    /// Ancestral DDPM over all K steps.
    Ddpm,
    /// DDIM.
    Ddim,
    /// Heun on the probability-flow ODE.
    Heun,
    /// DPM-Solver++(2M).
    #[value(name = "dpm-solver++")]
    DpmSolverPp,
    /// Restart sampling.
    Restart,
}

/// `--guidance`.
#[derive(Debug, Clone, Copy, PartialEq, ValueEnum)]
pub enum GuidanceKind {
    /// Independent samples (turns a run's eval.guidance off).
    None,
    /// Particle guidance (Xu 2024, thesis section 6.4).
    Particle,
}

/// The sampler and guidance flags of `sample` and `eval`.
#[derive(Debug, clap::Args)]
pub struct SamplerArgs {
    /// Sampler (default: the run's eval.sampler).
    #[arg(long, value_enum)]
    pub sampler: Option<SamplerKind>,
    /// Steps: DDIM's network evaluations (default 100), or the noise levels of heun (18),
    /// dpm-solver++ (25) and restart's main grid (18). Not for ddpm, which takes all K.
    #[arg(long, alias = "ddim-steps")]
    pub steps: Option<usize>,
    /// DDIM eta in [0, 1] (default 0).
    #[arg(long)]
    pub eta: Option<f64>,
    /// EDM grid curvature rho of heun, dpm-solver++ and restart (default 7).
    #[arg(long)]
    pub rho: Option<f64>,
    /// Restart: levels of each restart backward process (default 3).
    #[arg(long)]
    pub restart_steps: Option<usize>,
    /// Restart: repetitions K (default 10).
    #[arg(long)]
    pub restart_repetitions: Option<usize>,
    /// Restart: the interval [t_min, t_max] in sigma (default 0.06 and 0.30).
    #[arg(long)]
    pub t_min: Option<f64>,
    #[arg(long)]
    pub t_max: Option<f64>,
    /// Particle guidance: `particle` draws sets of samples jointly, `none` independently
    /// (default: the run's eval.guidance).
    #[arg(long, value_enum)]
    pub guidance: Option<GuidanceKind>,
    /// Particle guidance strength alpha (eq. 6.4; default 0.1).
    #[arg(long)]
    pub guidance_strength: Option<f64>,
    /// Particle guidance kernel bandwidth h (squared-distance units); default: the median
    /// heuristic.
    #[arg(long)]
    pub guidance_bandwidth: Option<f64>,
    /// Samples guided jointly per set (default 25; 0: all at once).
    #[arg(long)]
    pub guidance_set: Option<usize>,
}

impl SamplerArgs {
    /// The sampler and guidance asked for; None fields = the run's own.
    pub fn resolve(&self) -> Result<Sampling, String> {
        use SamplerKind as K;
        use ipld_diffusion::{Bandwidth, GuidanceConfig};
        let kind = self.sampler;
        let flag = |name: &str, set: bool, ok: &[SamplerKind]| -> Result<(), String> {
            if set && !kind.is_some_and(|k| ok.contains(&k)) {
                let names: Vec<String> = ok
                    .iter()
                    .map(|k| {
                        k.to_possible_value()
                            .map_or(String::new(), |v| v.get_name().to_string())
                    })
                    .collect();
                return Err(format!(
                    "--{name} sets the {} sampler: add --sampler {}",
                    names.join(" or "),
                    names[0]
                ));
            }
            Ok(())
        };
        flag(
            "steps",
            self.steps.is_some(),
            &[K::Ddim, K::Heun, K::DpmSolverPp, K::Restart],
        )?;
        flag("eta", self.eta.is_some(), &[K::Ddim])?;
        flag(
            "rho",
            self.rho.is_some(),
            &[K::Heun, K::DpmSolverPp, K::Restart],
        )?;
        for (name, set) in [
            ("restart-steps", self.restart_steps.is_some()),
            ("restart-repetitions", self.restart_repetitions.is_some()),
            ("t-min", self.t_min.is_some()),
            ("t-max", self.t_max.is_some()),
        ] {
            flag(name, set, &[K::Restart])?;
        }
        // The grid flags over a sampler's own defaults.
        let grid = |g: EdmGrid| EdmGrid {
            steps: self.steps.unwrap_or(g.steps),
            rho: self.rho.unwrap_or(g.rho),
            ..g
        };
        let sampler = kind.map(|k| match k {
            K::Ddpm => SamplerConfig::Ddpm(Ddpm::default()),
            K::Ddim => SamplerConfig::Ddim(Ddim {
                steps: self.steps.unwrap_or(100),
                eta: self.eta.unwrap_or(0.0),
            }),
            K::Heun => SamplerConfig::Heun(Heun::from(grid(Heun::default().grid()))),
            K::DpmSolverPp => {
                SamplerConfig::DpmSolverPp(DpmSolverPp::from(grid(DpmSolverPp::default().grid())))
            }
            K::Restart => {
                let d = Restart::default();
                let g = grid(d.grid());
                SamplerConfig::Restart(Restart {
                    steps: g.steps,
                    rho: g.rho,
                    restart_steps: self.restart_steps.unwrap_or(d.restart_steps),
                    repetitions: self.restart_repetitions.unwrap_or(d.repetitions),
                    t_min: self.t_min.unwrap_or(d.t_min),
                    t_max: self.t_max.unwrap_or(d.t_max),
                    ..d
                })
            }
        });
        let tuning = self.guidance_strength.is_some()
            || self.guidance_bandwidth.is_some()
            || self.guidance_set.is_some();
        let guidance = match self.guidance {
            Some(GuidanceKind::Particle) => Some(GuidanceConfig {
                strength: self.guidance_strength.unwrap_or(0.1),
                bandwidth: self
                    .guidance_bandwidth
                    .map_or(Bandwidth::Median, Bandwidth::Fixed),
                set_size: self.guidance_set.unwrap_or(25),
            }),
            Some(GuidanceKind::None) if !tuning => Some(GuidanceConfig {
                strength: 0.0,
                bandwidth: Bandwidth::Median,
                set_size: 0,
            }),
            _ if tuning => {
                return Err("--guidance-strength, --guidance-bandwidth and --guidance-set tune particle guidance: add --guidance particle".into());
            }
            _ => None,
        };
        Ok(Sampling { sampler, guidance })
    }
}
