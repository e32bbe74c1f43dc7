//! Exponential moving average of a list of parameter tensors (Song & Ermon 2020; Table 2 of the
//! paper gives decay and start step): before `start_step` the average tracks the parameters
//! exactly, afterwards shadow <- decay * shadow + (1 - decay) * param. Works on plain tensors so
//! any model's parameters (in a stable order) can be averaged and checkpointed.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::DiffusionError;

/// EMA hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmaConfig {
    /// Decay in [0, 1) (0.999 or 0.9999 in Table 2).
    pub decay: f64,
    /// Step from which averaging starts; before it the shadow copies the parameters (40000 in Table 2).
    pub start_step: u64,
}

impl Default for EmaConfig {
    fn default() -> Self {
        Self {
            decay: 0.999,
            start_step: 0,
        }
    }
}

/// The running average; `shadow()[i]` averages the i-th tensor passed to `update`.
#[derive(Debug, Clone)]
pub struct Ema {
    config: EmaConfig,
    shadow: Vec<Tensor>,
}

fn own(t: &Tensor) -> candle_core::Result<Tensor> {
    // A fresh buffer, so in-place optimiser updates of the parameter do not reach the shadow.
    Ok(t.detach().copy()?.detach())
}

impl EmaConfig {
    /// Checks 0 <= decay < 1.
    pub fn validate(&self) -> Result<(), DiffusionError> {
        if !(0.0..1.0).contains(&self.decay) {
            return Err(DiffusionError::param(
                "decay",
                &format!("must lie in [0, 1), got {}", self.decay),
            ));
        }
        Ok(())
    }
}

impl Ema {
    /// Starts the average at the current parameter values.
    pub fn new(config: EmaConfig, params: &[Tensor]) -> Result<Self, DiffusionError> {
        config.validate()?;
        Ok(Self {
            config,
            shadow: params.iter().map(own).collect::<candle_core::Result<_>>()?,
        })
    }

    /// Restores an average from saved tensors (e.g. a checkpoint).
    pub fn from_shadow(config: EmaConfig, shadow: Vec<Tensor>) -> Result<Self, DiffusionError> {
        config.validate()?;
        Ok(Self { config, shadow })
    }

    /// The configuration.
    pub fn config(&self) -> &EmaConfig {
        &self.config
    }

    /// The averaged tensors, in the order of `params`.
    pub fn shadow(&self) -> &[Tensor] {
        &self.shadow
    }

    /// Folds in the parameters after optimiser step `step`.
    pub fn update(&mut self, step: u64, params: &[Tensor]) -> Result<(), DiffusionError> {
        if params.len() != self.shadow.len() {
            return Err(DiffusionError::Input(format!(
                "EMA tracks {} tensors but got {}",
                self.shadow.len(),
                params.len()
            )));
        }
        for (i, (s, p)) in self.shadow.iter_mut().zip(params).enumerate() {
            if s.dims() != p.dims() {
                return Err(DiffusionError::Input(format!(
                    "EMA tensor {i} has shape {:?} but the parameter has {:?}",
                    s.dims(),
                    p.dims()
                )));
            }
            *s = if step < self.config.start_step {
                own(p)?
            } else {
                let d = self.config.decay;
                (s.affine(d, 0.0)? + p.detach().affine(1.0 - d, 0.0)?)?
            };
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn follows_closed_form_geometric_average() {
        // p_t = t for t = 1..=n after start 0: s_n = d^n s_0 + (1-d) sum_t d^(n-t) t.
        let dev = Device::Cpu;
        let v = Var::new(&[0.0f64, 10.0], &dev).unwrap();
        let cfg = EmaConfig {
            decay: 0.9,
            start_step: 0,
        };
        let mut ema = Ema::new(cfg, &[v.as_tensor().clone()]).unwrap();
        let n = 25;
        for t in 1..=n {
            v.set(&Tensor::new(&[t as f64, 10.0], &dev).unwrap())
                .unwrap();
            ema.update(t, &[v.as_tensor().clone()]).unwrap();
        }
        let want: f64 = (1..=n)
            .map(|t| 0.1 * 0.9f64.powi((n - t) as i32) * t as f64)
            .sum();
        let got: Vec<f64> = ema.shadow()[0].to_vec1().unwrap();
        assert!((got[0] - want).abs() < 1e-12, "{} vs {want}", got[0]);
        assert!((got[1] - 10.0).abs() < 1e-12, "a constant stays constant");
    }

    #[test]
    fn copies_before_start_step_and_owns_its_buffer() {
        let dev = Device::Cpu;
        let v = Var::new(&[1.0f32], &dev).unwrap();
        let mut ema = Ema::new(
            EmaConfig {
                decay: 0.5,
                start_step: 3,
            },
            &[v.as_tensor().clone()],
        )
        .unwrap();
        v.set(&Tensor::new(&[5.0f32], &dev).unwrap()).unwrap();
        // The in-place set must not have reached the shadow.
        assert_eq!(ema.shadow()[0].to_vec1::<f32>().unwrap(), vec![1.0]);
        ema.update(2, &[v.as_tensor().clone()]).unwrap();
        assert_eq!(ema.shadow()[0].to_vec1::<f32>().unwrap(), vec![5.0]);
        v.set(&Tensor::new(&[7.0f32], &dev).unwrap()).unwrap();
        ema.update(3, &[v.as_tensor().clone()]).unwrap();
        assert_eq!(ema.shadow()[0].to_vec1::<f32>().unwrap(), vec![6.0]);
    }

    #[test]
    fn rejects_bad_decay_and_mismatched_params() {
        let dev = Device::Cpu;
        let t = Tensor::new(&[1.0f32], &dev).unwrap();
        assert!(
            Ema::new(
                EmaConfig {
                    decay: 1.0,
                    start_step: 0
                },
                std::slice::from_ref(&t)
            )
            .is_err()
        );
        let mut ema = Ema::new(EmaConfig::default(), std::slice::from_ref(&t)).unwrap();
        assert!(ema.update(0, &[]).is_err());
        assert!(
            ema.update(0, &[Tensor::new(&[1.0f32, 2.0], &dev).unwrap()])
                .is_err()
        );
    }
}
