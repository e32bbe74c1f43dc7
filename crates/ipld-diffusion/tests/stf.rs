//! The stable target field against closed forms (Xu 2024, thesis section 3.4). For a 1-d mixture
//! of two Gaussians the true E[eps | z_k] and the posterior p(z_0 | z_k) are known, so the STF
//! minimiser (thesis eq. 3.6: x_1 from the posterior, x_2..x_n from the data) can be estimated by
//! Monte Carlo at a fixed noised point.
//!
//! The thesis bounds the minimiser's bias and shows that the bound vanishes as n grows. It is in
//! fact zero for every n: the target is symmetric in the reference, so its expectation is
//! unchanged when the noised point's source is drawn uniformly from the n references, and then
//! w_r is exactly the conditional probability that x_r is the source given the reference and
//! z_k; the STF target is the conditional expectation of the DSM target, whose expectation
//! given z_k is the true one (tower property). So the test asserts no bias at any n, shows that
//! it could see one (dropping the row's own z_0 from the reference is biased), and asserts that
//! the target's variance falls with n, which is what STF is for.

use candle_core::{Device, Tensor};
use ipld_diffusion::{ScheduleConfig, stf_eps_targets};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};

/// Weights, means and standard deviations of the data's two components.
const PI: [f64; 2] = [0.8, 0.2];
const M: [f64; 2] = [-1.0, 1.0];
const SD: [f64; 2] = [0.1, 0.1];
const REPS: usize = 4000;

struct Estimate {
    bias: f64,
    se: f64,
    spread: f64,
}

fn normal_pdf(x: f64, var: f64) -> f64 {
    (-x * x / (2.0 * var)).exp() / (2.0 * std::f64::consts::PI * var).sqrt()
}

/// Monte Carlo mean of the STF target at the noised point z over REPS reference batches of size
/// n (the first from the posterior when `own`, as in training, else from the data too): its distance to the exact E[eps | z_k], that distance's standard error, and the target's
/// variance.
fn estimate(n: usize, k: usize, z: f64, own: bool, seed: u64) -> Estimate {
    let s = ScheduleConfig::default().build().unwrap();
    let dev = Device::Cpu;
    let ab = s.alpha_bar(k);
    let (a, s2) = (ab.sqrt(), 1.0 - ab);
    // Per component: the marginal variance of z_k, the responsibility, and the posterior of z_0.
    let var_c: Vec<f64> = (0..2).map(|c| ab * SD[c] * SD[c] + s2).collect();
    let mut resp: Vec<f64> = (0..2)
        .map(|c| PI[c] * normal_pdf(z - a * M[c], var_c[c]))
        .collect();
    let tot: f64 = resp.iter().sum();
    resp.iter_mut().for_each(|r| *r /= tot);
    let exact: f64 = (0..2)
        .map(|c| resp[c] * s2.sqrt() * (z - a * M[c]) / var_c[c])
        .sum();
    let post_var: Vec<f64> = (0..2)
        .map(|c| 1.0 / (1.0 / (SD[c] * SD[c]) + ab / s2))
        .collect();
    let post_mean: Vec<f64> = (0..2)
        .map(|c| post_var[c] * (M[c] / (SD[c] * SD[c]) + a * z / s2))
        .collect();
    let mut rng = StdRng::seed_from_u64(seed);
    let zk = Tensor::new(&[[z as f32]], &dev).unwrap();
    let kt = Tensor::new(&[k as u32], &dev).unwrap();
    let mut targets = Vec::with_capacity(REPS);
    for _ in 0..REPS {
        let mut x = Vec::with_capacity(n);
        if own {
            let g: f64 = StandardNormal.sample(&mut rng);
            let c = usize::from(rng.random::<f64>() >= resp[0]);
            x.push((post_mean[c] + post_var[c].sqrt() * g) as f32);
        }
        while x.len() < n {
            let g: f64 = StandardNormal.sample(&mut rng);
            let c = usize::from(rng.random::<f64>() >= PI[0]);
            x.push((M[c] + SD[c] * g) as f32);
        }
        let r = Tensor::from_vec(x, (n, 1), &dev).unwrap();
        let v: Vec<Vec<f32>> = stf_eps_targets(s.alpha_bars(), &zk, &kt, &r)
            .unwrap()
            .to_vec2()
            .unwrap();
        targets.push(v[0][0] as f64);
    }
    let r = REPS as f64;
    let mean = targets.iter().sum::<f64>() / r;
    let spread = targets.iter().map(|t| (t - mean).powi(2)).sum::<f64>() / (r - 1.0);
    Estimate {
        bias: (mean - exact).abs(),
        se: (spread / r).sqrt(),
        spread,
    }
}

#[test]
fn stf_is_unbiased_at_every_reference_size_and_its_variance_falls() {
    // Two noise levels of the intermediate phase (thesis Figure 3.2), at points between the modes
    // where the posterior is split and the DSM target varies most.
    for (k, z) in [(100usize, 0.3), (200, 0.6)] {
        let e: Vec<(usize, Estimate)> = [1usize, 4, 32, 256]
            .iter()
            .map(|&n| (n, estimate(n, k, z, true, 11 + n as u64)))
            .collect();
        for (n, x) in &e {
            eprintln!(
                "k = {k}, z = {z}, n = {n}: bias {:.4} (se {:.4}), variance {:.4}",
                x.bias, x.se, x.spread
            );
            assert!(
                x.bias < 4.0 * x.se,
                "k = {k}, n = {n}: bias {:.4} beyond 4 s.e. ({:.4})",
                x.bias,
                4.0 * x.se
            );
        }
        for w in e.windows(2) {
            assert!(
                w[1].1.spread < w[0].1.spread,
                "k = {k}: the variance does not fall from n = {} to {}",
                w[0].0,
                w[1].0
            );
        }
        assert!(e[3].1.spread < 0.1 * e[0].1.spread, "k = {k}");
        // The same estimate without the row's own z_0 in the reference (all n from the data) is
        // biased, far beyond the Monte Carlo error: the test can see a bias when there is one.
        let wrong = estimate(4, k, z, false, 5);
        assert!(
            wrong.bias > 8.0 * wrong.se,
            "k = {k}: the reference without z_0 scored bias {:.4} (se {:.4})",
            wrong.bias,
            wrong.se
        );
    }
}
