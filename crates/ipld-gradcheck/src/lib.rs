#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

use candle_core::{DType, Tensor, Var};

/// Why a gradient check failed; each variant names the variable at fault.
#[derive(Debug, thiserror::Error)]
pub enum GradCheckError {
    /// The function did not return a scalar.
    #[error("the checked function must return a scalar, got shape {0:?}")]
    NotScalar(Vec<usize>),
    /// Backward did not reach the variable (a no-backward op, a detach, or an unused input).
    #[error("no gradient reached `{0}`")]
    NoGradient(String),
    /// The gradient has NaN or Inf entries.
    #[error("gradient of `{name}` is not finite at flat index {index}: {value}")]
    NonFinite {
        /// Variable name.
        name: String,
        /// Flat index of the first bad entry.
        index: usize,
        /// The bad value.
        value: f64,
    },
    /// Every entry of the gradient is exactly zero.
    #[error("gradient of `{0}` is identically zero")]
    AllZero(String),
    /// Analytic and numeric derivatives disagree beyond tolerance.
    #[error(
        "gradient of `{name}` at flat index {index}: analytic {analytic:.6e} vs finite-difference {numeric:.6e} (tolerance {tolerance:.2e})"
    )]
    Mismatch {
        /// Variable name.
        name: String,
        /// Flat index of the entry.
        index: usize,
        /// Backward's value.
        analytic: f64,
        /// Central-difference value.
        numeric: f64,
        /// atol + rtol * max(|analytic|, |numeric|).
        tolerance: f64,
    },
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Settings of the finite-difference check.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FdConfig {
    /// Central-difference step.
    pub step: f64,
    /// Relative tolerance.
    pub rtol: f64,
    /// Absolute tolerance.
    pub atol: f64,
    /// At most this many entries per variable are checked, evenly strided over the flat index.
    pub max_entries_per_var: usize,
}

impl Default for FdConfig {
    /// Suited to f64 variables: step 1e-6, rtol 1e-5, atol 1e-8, 64 entries per variable.
    fn default() -> Self {
        Self {
            step: 1e-6,
            rtol: 1e-5,
            atol: 1e-8,
            max_entries_per_var: 64,
        }
    }
}

/// What a finite-difference check covered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FdReport {
    /// Number of entries compared.
    pub checked: usize,
    /// Largest |analytic - numeric| seen.
    pub max_abs_error: f64,
}

fn inputs(vars: &[(&str, Var)]) -> Vec<Tensor> {
    vars.iter().map(|(_, v)| v.as_tensor().clone()).collect()
}

fn scalar<F>(f: &F, vars: &[(&str, Var)]) -> Result<Tensor, GradCheckError>
where
    F: Fn(&[Tensor]) -> candle_core::Result<Tensor>,
{
    let y = f(&inputs(vars))?;
    if y.elem_count() != 1 {
        return Err(GradCheckError::NotScalar(y.dims().to_vec()));
    }
    Ok(y)
}

fn flat_f64(t: &Tensor) -> candle_core::Result<Vec<f64>> {
    t.flatten_all()?.to_dtype(DType::F64)?.to_vec1()
}

/// Asserts that every variable gets a finite gradient that is not identically zero.
pub fn assert_gradients_flow<F>(f: &F, vars: &[(&str, Var)]) -> Result<(), GradCheckError>
where
    F: Fn(&[Tensor]) -> candle_core::Result<Tensor>,
{
    let y = scalar(f, vars)?;
    let grads = y.backward()?;
    for (name, var) in vars {
        let g = grads
            .get(var.as_tensor())
            .ok_or_else(|| GradCheckError::NoGradient(name.to_string()))?;
        let g = flat_f64(g)?;
        if let Some((index, value)) = g.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(GradCheckError::NonFinite {
                name: name.to_string(),
                index,
                value: *value,
            });
        }
        if g.iter().all(|v| *v == 0.0) {
            return Err(GradCheckError::AllZero(name.to_string()));
        }
    }
    Ok(())
}

/// Compares backward's gradient with central finite differences on up to
/// `cfg.max_entries_per_var` entries of each variable. Use f64 variables: f32 round-off swamps
/// the difference quotient. Variables are restored to their values afterwards.
pub fn check_finite_differences<F>(
    f: &F,
    vars: &[(&str, Var)],
    cfg: &FdConfig,
) -> Result<FdReport, GradCheckError>
where
    F: Fn(&[Tensor]) -> candle_core::Result<Tensor>,
{
    let y = scalar(f, vars)?;
    let grads = y.backward()?;
    let mut report = FdReport {
        checked: 0,
        max_abs_error: 0.0,
    };
    for (name, var) in vars {
        let analytic = match grads.get(var.as_tensor()) {
            Some(g) => flat_f64(g)?,
            None => return Err(GradCheckError::NoGradient(name.to_string())),
        };
        let original = var.as_tensor().detach().copy()?;
        let base = flat_f64(&original)?;
        let n = base.len();
        let count = n.min(cfg.max_entries_per_var.max(1));
        let eval_at = |i: usize, x: f64| -> Result<f64, GradCheckError> {
            let mut v = base.clone();
            v[i] = x;
            let t = Tensor::from_vec(v, original.shape(), original.device())?
                .to_dtype(original.dtype())?;
            var.set(&t)?;
            Ok(scalar(f, vars)?
                .to_dtype(DType::F64)?
                .flatten_all()?
                .to_vec1::<f64>()?[0])
        };
        let mut result = Ok(());
        for j in 0..count {
            let i = j * n / count;
            let h = cfg.step * base[i].abs().max(1.0);
            let numeric = match (eval_at(i, base[i] + h), eval_at(i, base[i] - h)) {
                (Ok(p), Ok(m)) => (p - m) / (2.0 * h),
                (Err(e), _) | (_, Err(e)) => {
                    result = Err(e);
                    break;
                }
            };
            let a = analytic[i];
            let err = (a - numeric).abs();
            let tolerance = cfg.atol + cfg.rtol * a.abs().max(numeric.abs());
            report.checked += 1;
            report.max_abs_error = report.max_abs_error.max(err);
            if err.is_nan() || err > tolerance {
                result = Err(GradCheckError::Mismatch {
                    name: name.to_string(),
                    index: i,
                    analytic: a,
                    numeric,
                    tolerance,
                });
                break;
            }
        }
        var.set(&original)?;
        result?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{D, Device};

    fn dev() -> Device {
        Device::Cpu
    }

    #[test]
    fn accepts_a_correct_gradient() {
        let a = Var::new(&[0.2f64, -0.4, 1.1], &dev()).unwrap();
        let b = Var::new(&[[0.5f64], [1.5], [-0.3]], &dev()).unwrap();
        let f = |v: &[Tensor]| {
            let s = v[0].unsqueeze(0)?.matmul(&v[1])?; // a . b
            (s.exp()? + v[0].sqr()?.sum_all()?.sqrt()?.unsqueeze(0)?.unsqueeze(0)?)?.sum_all()
        };
        let vars = [("a", a.clone()), ("b", b)];
        assert_gradients_flow(&f, &vars).unwrap();
        let r = check_finite_differences(&f, &vars, &FdConfig::default()).unwrap();
        assert_eq!(r.checked, 6);
        assert!(r.max_abs_error < 1e-7);
        // Variables are restored.
        assert_eq!(
            a.as_tensor().to_vec1::<f64>().unwrap(),
            vec![0.2, -0.4, 1.1]
        );
    }

    #[test]
    fn catches_candles_no_backward_softmax() {
        // softmax_last_dim computes the right values but records no backward op.
        let x = Var::new(&[[0.1f32, 0.7, -0.3]], &dev()).unwrap();
        let w = Tensor::new(&[[1.0f32], [2.0], [3.0]], &dev()).unwrap();
        let fused = |v: &[Tensor]| {
            candle_nn::ops::softmax_last_dim(&v[0])?
                .matmul(&w)?
                .sum_all()
        };
        let err = assert_gradients_flow(&fused, &[("x", x.clone())]).unwrap_err();
        assert!(
            matches!(err, GradCheckError::NoGradient(ref n) if n == "x"),
            "{err}"
        );
        let primitive = |v: &[Tensor]| {
            candle_nn::ops::softmax(&v[0], D::Minus1)?
                .matmul(&w)?
                .sum_all()
        };
        assert_gradients_flow(&primitive, &[("x", x)]).unwrap();
    }

    #[test]
    fn catches_a_wrong_gradient() {
        // A custom "gradient" that is off by a factor: d/dx of x^2 via detach tricks gives x, not 2x.
        let x = Var::new(&[1.5f64, -0.5], &dev()).unwrap();
        let f = |v: &[Tensor]| (&v[0] * v[0].detach())?.sum_all();
        let err = check_finite_differences(&f, &[("x", x)], &FdConfig::default()).unwrap_err();
        assert!(matches!(err, GradCheckError::Mismatch { .. }), "{err}");
    }

    #[test]
    fn catches_zero_and_non_finite_gradients() {
        let x = Var::new(&[1.0f64, 2.0], &dev()).unwrap();
        // A dead ReLU: the gradient exists but is exactly zero everywhere.
        let zero = |v: &[Tensor]| v[0].neg()?.relu()?.sum_all();
        let e = assert_gradients_flow(&zero, &[("x", x.clone())]).unwrap_err();
        assert!(matches!(e, GradCheckError::AllZero(_)), "{e}");
        let y = Var::new(&[0.0f64, 2.0], &dev()).unwrap();
        let sqrt = |v: &[Tensor]| v[0].sqrt()?.sum_all();
        assert!(matches!(
            assert_gradients_flow(&sqrt, &[("y", y)]).unwrap_err(),
            GradCheckError::NonFinite { index: 0, .. }
        ));
        let not_scalar = |v: &[Tensor]| Ok(v[0].clone());
        assert!(matches!(
            assert_gradients_flow(&not_scalar, &[("x", x)]).unwrap_err(),
            GradCheckError::NotScalar(_)
        ));
    }
}
