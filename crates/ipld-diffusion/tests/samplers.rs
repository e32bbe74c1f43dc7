//! Samplers against closed forms: with the exact epsilon of Gaussian data N(mu, s^2 I), DDPM and
//! DDIM must return samples whose mean and standard deviation match (mu, s) within stated
//! standard errors, and DDIM with eta = 1 on all K steps must coincide with DDPM using the
//! posterior variance.

use candle_core::{DType, Device, Tensor};
use ipld_diffusion::{
    Ddim, Ddpm, DdpmVariance, GaussianEps, NoiseSchedule, Sampler, SamplerConfig, ScheduleConfig,
    ddim_timesteps, gaussian,
};
use rand::SeedableRng;
use rand::rngs::StdRng;

const MU: [f64; 2] = [1.5, -0.5];
const S: f64 = 0.6;
const N: usize = 10_000;

fn run(sampler: &dyn Sampler, schedule: &NoiseSchedule, seed: u64) -> Vec<Vec<f64>> {
    let model = GaussianEps::new(schedule, MU.to_vec(), S).unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let z = gaussian(&mut rng, (N, 2), DType::F32, &Device::Cpu).unwrap();
    let mut calls = 0;
    let out = sampler
        .sample(&model, schedule, z, &mut rng, &mut |p| {
            calls += 1;
            assert_eq!(p.step, calls);
        })
        .unwrap();
    assert_eq!(
        calls,
        sampler.evaluations(schedule),
        "progress callback once per evaluation"
    );
    out.to_dtype(DType::F64).unwrap().to_vec2().unwrap()
}

/// Checks each coordinate's mean within 4 s.e. (sd/sqrt(n)) of `mean_factor * mu` and its
/// standard deviation within 4 s.e. (sd/sqrt(2(n-1)) for Gaussian output) of `sd`.
fn assert_law(x: &[Vec<f64>], mean_factor: f64, sd_want: f64, what: &str) {
    let n = x.len() as f64;
    for j in 0..2 {
        let mean = x.iter().map(|r| r[j]).sum::<f64>() / n;
        let sd = (x.iter().map(|r| (r[j] - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
        let (se_mean, se_sd) = (sd_want / n.sqrt(), sd_want / (2.0 * (n - 1.0)).sqrt());
        let mu = mean_factor * MU[j];
        assert!(
            (mean - mu).abs() < 4.0 * se_mean,
            "{what}: coordinate {j} mean {mean:.4} vs {mu:.4} (4 s.e. = {:.4})",
            4.0 * se_mean
        );
        assert!(
            (sd - sd_want).abs() < 4.0 * se_sd,
            "{what}: coordinate {j} sd {sd:.4} vs {sd_want:.4} (4 s.e. = {:.4})",
            4.0 * se_sd
        );
    }
}

/// The data law itself: mean mu, standard deviation s.
fn assert_matches_target(x: &[Vec<f64>], what: &str) {
    assert_law(x, 1.0, S, what);
}

#[test]
fn ddpm_recovers_gaussian_mean_and_std() {
    let schedule = ScheduleConfig::default().build().unwrap();
    for variance in [DdpmVariance::Beta, DdpmVariance::Posterior] {
        let x = run(&Ddpm { variance }, &schedule, 1);
        assert_matches_target(&x, &format!("DDPM {variance:?}"));
    }
}

#[test]
fn ddim_100_nfe_recovers_gaussian_mean_and_std() {
    let schedule = ScheduleConfig::default().build().unwrap();
    let x = run(
        &Ddim {
            steps: 100,
            eta: 0.0,
        },
        &schedule,
        2,
    );
    assert_matches_target(&x, "DDIM eta=0");
}

#[test]
fn ddim_eta_one_100_nfe_matches_its_exact_law() {
    // With eta = 1 and only 100 of 1000 steps, each step injects the full posterior noise of a
    // 10-step jump, which shrinks the output: the exact output law of this linear-Gaussian chain
    // has sd 0.5665, not 0.6 (a discretisation bias, not sampling error). Reference from an
    // independent float64 recursion of mean and variance through the sampler's updates:
    //   import numpy as np
    //   K=1000; k=np.arange(1,K+1); b=(1-k/K)*1e-4+(k/K)*0.02; ab=np.r_[1.0,np.cumprod(1-b)]
    //   s, mu, S, eta = 0.6, 1.5, 100, 1.0
    //   taus=[int(round(i*K/S)) for i in range(1,S+1)]; m, V = 0.0, 1.0
    //   for j in reversed(range(S)):
    //       t=taus[j]; p=taus[j-1] if j>0 else 0; a, ap = ab[t], ab[p]; v=a*s*s+1-a
    //       sig2=eta**2*(1-ap)/(1-a)*(1-a/ap); r=np.sqrt(ap/a)
    //       ce=r*np.sqrt(1-a)-np.sqrt(max(1-ap-sig2,0)); g=np.sqrt(1-a)/v
    //       m=r*m-ce*g*(m-np.sqrt(a)*mu); V=(r-ce*g)**2*V+sig2
    //   print(m/mu, np.sqrt(V))   # -> 0.9999856154650829 0.5664974384772608
    let schedule = ScheduleConfig::default().build().unwrap();
    let x = run(
        &Ddim {
            steps: 100,
            eta: 1.0,
        },
        &schedule,
        2,
    );
    assert_law(
        &x,
        0.999_985_615_465_082_9,
        0.566_497_438_477_260_8,
        "DDIM eta=1",
    );
}

#[test]
fn samplers_work_on_the_cosine_schedule() {
    let schedule = ScheduleConfig::cosine(1000).build().unwrap();
    assert_matches_target(&run(&Ddpm::default(), &schedule, 3), "DDPM cosine");
    assert_matches_target(
        &run(
            &Ddim {
                steps: 100,
                eta: 0.0,
            },
            &schedule,
            4,
        ),
        "DDIM cosine",
    );
}

#[test]
fn ddim_eta_one_on_all_steps_is_ddpm_with_posterior_variance() {
    let schedule = ScheduleConfig::default().build().unwrap();
    let model = GaussianEps::new(&schedule, MU.to_vec(), S).unwrap();
    let z = Tensor::new(&[[0.3f32, -1.2], [2.0, 0.1]], &Device::Cpu).unwrap();
    let go = |s: &dyn Sampler| -> Vec<Vec<f32>> {
        // Same seed: both draw one Gaussian per step for k >= 2 and none at k = 1.
        let mut rng = StdRng::seed_from_u64(9);
        s.sample(&model, &schedule, z.clone(), &mut rng, &mut |_| {})
            .unwrap()
            .to_vec2()
            .unwrap()
    };
    let a = go(&Ddim {
        steps: 1000,
        eta: 1.0,
    });
    let b = go(&Ddpm {
        variance: DdpmVariance::Posterior,
    });
    for (ra, rb) in a.iter().zip(&b) {
        for (x, y) in ra.iter().zip(rb) {
            assert!((x - y).abs() < 1e-3, "{a:?} vs {b:?}");
        }
    }
}

#[test]
fn ddim_timesteps_are_even_and_end_at_k() {
    assert_eq!(ddim_timesteps(1000, 4), vec![250, 500, 750, 1000]);
    let t = ddim_timesteps(1000, 100);
    assert_eq!((t[0], t[99], t.len()), (10, 1000, 100));
    let t = ddim_timesteps(10, 10);
    assert_eq!(t, (1..=10).collect::<Vec<_>>());
    let t = ddim_timesteps(1000, 999);
    assert!(t.windows(2).all(|w| w[1] > w[0]));
}

#[test]
fn sampler_config_parses_and_validates() {
    let schedule = ScheduleConfig::default().build().unwrap();
    #[derive(serde::Deserialize)]
    struct W {
        sampler: SamplerConfig,
    }
    let w: W = toml::from_str("sampler = { type = \"ddim\", steps = 50, eta = 0.5 }").unwrap();
    assert_eq!(
        w.sampler,
        SamplerConfig::Ddim(Ddim {
            steps: 50,
            eta: 0.5
        })
    );
    let w: W = toml::from_str("sampler = { type = \"ddpm\" }").unwrap();
    assert_eq!(w.sampler, SamplerConfig::Ddpm(Ddpm::default()));
    assert!(toml::from_str::<W>("sampler = { type = \"euler\" }").is_err());
    let bad = SamplerConfig::Ddim(Ddim {
        steps: 2000,
        eta: 0.0,
    });
    assert!(
        bad.validate(&schedule)
            .unwrap_err()
            .to_string()
            .contains("`steps`")
    );
}
