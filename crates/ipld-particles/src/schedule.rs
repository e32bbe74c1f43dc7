//! Scalar schedules of the particle dynamics: KL annealing gamma_t = c_KL min(1, t / T_warm)
//! (Appendix A.4.1, eq. 64) and the exponential per-epoch decay of the particle step size
//! (Appendix B.2, following Kuntz et al. 2023).

use serde::{Deserialize, Serialize};

use crate::ParticleError;

/// KL annealing weight gamma_t.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KlAnnealing {
    /// c_KL (0.01 on the synthetic data, Appendix B.1).
    pub coefficient: f64,
    /// Warm-up steps T; 0 means gamma_t = c_KL from the start (1000 on the synthetic data).
    pub warmup_steps: u64,
}

impl KlAnnealing {
    /// gamma_t at step t.
    pub fn gamma(&self, t: u64) -> f64 {
        if self.warmup_steps == 0 {
            return self.coefficient;
        }
        self.coefficient * (t as f64 / self.warmup_steps as f64).min(1.0)
    }

    /// Checks c_KL is finite and >= 0.
    pub fn validate(&self) -> Result<(), ParticleError> {
        if !(self.coefficient >= 0.0 && self.coefficient.is_finite()) {
            return Err(ParticleError::param(
                "coefficient",
                format!("must be finite and >= 0, got {}", self.coefficient),
            ));
        }
        Ok(())
    }
}

/// h_z(epoch) = initial * decay^epoch.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSizeSchedule {
    /// Initial particle step size h_z (0.1 on the synthetic data, 5e-2 on images).
    pub initial: f64,
    /// Multiplicative decay per epoch (1.0 = constant; 0.995 on images).
    pub decay_per_epoch: f64,
}

impl StepSizeSchedule {
    /// The step size during `epoch` (0-based).
    pub fn at_epoch(&self, epoch: u64) -> f64 {
        self.initial * self.decay_per_epoch.powf(epoch as f64)
    }

    /// Checks initial > 0 and decay in (0, 1].
    pub fn validate(&self) -> Result<(), ParticleError> {
        if !(self.initial > 0.0 && self.initial.is_finite()) {
            return Err(ParticleError::param(
                "initial",
                format!("must be > 0, got {}", self.initial),
            ));
        }
        if !(self.decay_per_epoch > 0.0 && self.decay_per_epoch <= 1.0) {
            return Err(ParticleError::param(
                "decay_per_epoch",
                format!("must lie in (0, 1], got {}", self.decay_per_epoch),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gamma_ramps_linearly_then_holds() {
        let k = KlAnnealing {
            coefficient: 0.01,
            warmup_steps: 1000,
        };
        assert_eq!(k.gamma(0), 0.0);
        assert!((k.gamma(250) - 0.0025).abs() < 1e-15);
        assert_eq!(k.gamma(1000), 0.01);
        assert_eq!(k.gamma(5000), 0.01);
        assert_eq!(
            KlAnnealing {
                coefficient: 0.5,
                warmup_steps: 0
            }
            .gamma(0),
            0.5
        );
        assert!(
            KlAnnealing {
                coefficient: -1.0,
                warmup_steps: 0
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn step_size_decays_geometrically() {
        let s = StepSizeSchedule {
            initial: 0.05,
            decay_per_epoch: 0.995,
        };
        assert_eq!(s.at_epoch(0), 0.05);
        assert!((s.at_epoch(200) - 0.05 * 0.995f64.powi(200)).abs() < 1e-15);
        assert!(
            StepSizeSchedule {
                initial: 0.1,
                decay_per_epoch: 1.5
            }
            .validate()
            .is_err()
        );
    }
}
