//! The optional prior refit (`train.prior_refit`): prior-only steps on the frozen latents after
//! the joint phase. Only theta and its EMA move, the prior's loss on the frozen cloud falls,
//! resume stays exact across the phase boundary, and bad settings are clear errors.

mod common;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use common::{plan, tensors};
use ipld_diffusion::{DiffusionLoss, LossWeighting, gaussian, sample_timesteps, timestep_tensor};
use ipld_train::rundir::{CHECKPOINT_FILE, METRICS_FILE, open_run};
use ipld_train::{RunConfig, run};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn with(cfg: RunConfig, sets: &[String]) -> RunConfig {
    cfg.with_overrides(sets, "test").unwrap()
}

fn refit(steps: u64) -> String {
    format!("train.prior_refit={{steps={steps}, batch_size=100, lr=1e-3}}")
}

/// Trains `cfg` into `dir` and returns its `metrics.jsonl` lines.
fn run_metrics(cfg: RunConfig, dir: &Path) -> Vec<serde_json::Value> {
    run(plan(cfg, dir, false)).unwrap();
    std::fs::read_to_string(dir.join(METRICS_FILE))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Mean simple diffusion loss of the run's (non-EMA) prior on every particle of its frozen cloud,
/// with 4 fixed (k, eps) draws per particle: the same draws before and after, so the comparison
/// has no Monte Carlo noise.
fn cloud_loss(dir: &Path) -> f64 {
    let t = open_run(dir, &[]).unwrap();
    let cloud = t.synced_cloud().unwrap().unwrap();
    let [m, n, d] = cloud.shape();
    let z = Tensor::from_slice(cloud.z(), (m * n, d), &Device::Cpu)
        .unwrap()
        .repeat((4, 1))
        .unwrap();
    let rows = 4 * m * n;
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    let k = timestep_tensor(
        &sample_timesteps(&mut rng, rows, t.schedule().steps()),
        t.schedule().steps(),
        &Device::Cpu,
    )
    .unwrap();
    let eps = gaussian(&mut rng, (rows, d), DType::F32, &Device::Cpu).unwrap();
    let loss = DiffusionLoss::new(t.schedule(), LossWeighting::Simple, &Device::Cpu).unwrap();
    loss.per_sample(&t.eps_model().unwrap(), &z, &eps, &k)
        .unwrap()
        .total
        .mean_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar()
        .unwrap()
}

#[test]
fn refit_moves_only_the_prior_and_lowers_its_loss_on_the_frozen_latents() {
    let tmp = tempfile::tempdir().unwrap();
    for method in ["ipld", "diffusion-vae"] {
        let dir = tmp.path().join(method);
        let mut sets = common::method_sets(method);
        // Also exercises filling an absent optional section with an inline table.
        sets.push("train.ema={decay=0.99, start_step=0}".into());
        let joint = with(common::tiny(60), &sets);
        run(plan(joint.clone(), &dir, false)).unwrap();
        let before = tensors(&dir.join(CHECKPOINT_FILE));
        let particles = method == "ipld";
        let loss_before = if particles { cloud_loss(&dir) } else { 0.0 };

        let s = run(plan(with(joint, &[refit(300)]), &dir, true)).unwrap();
        assert_eq!((s.steps, s.steps_this_invocation), (360, 300), "{method}");
        let after = tensors(&dir.join(CHECKPOINT_FILE));
        assert_eq!(before.len(), after.len(), "{method}");
        for (name, a) in &after {
            let moved = before[name] != *a;
            let prior = name.starts_with("theta/")
                || name.starts_with("ema/")
                || name.starts_with("opt_theta/");
            assert_eq!(moved, prior, "{method}: `{name}` moved = {moved}");
        }
        if particles {
            let loss_after = cloud_loss(&dir);
            eprintln!("prior loss on the frozen particles: {loss_before} -> {loss_after}");
            // Measured 2026-11-23: 1.588 -> 0.939; the bar asks for a 10% drop.
            assert!(
                loss_after < 0.9 * loss_before,
                "prior loss on the frozen particles {loss_before} -> {loss_after}"
            );
        }
        // The metrics say which phase a line belongs to, with no decoder NLL in the refit.
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(dir.join(METRICS_FILE))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let last = lines.last().unwrap();
        assert_eq!(last["step"], 360);
        assert_eq!(last["phase"], "prior-refit");
        assert!(last["nll"].is_null(), "{last}");
        let joint_line = lines.iter().find(|l| l["step"] == 60).unwrap();
        assert_eq!(joint_line["phase"], "joint");
        assert!(joint_line["nll"].as_f64().unwrap().is_finite());
    }
}

#[test]
fn refit_resumes_exactly_across_the_phase_boundary_with_lazy_noise() {
    let tmp = tempfile::tempdir().unwrap();
    let lazy = "particles.lazy_noise=true".to_string();
    let cfg = |steps: u64, refit_steps: Option<u64>| {
        let mut sets = vec![lazy.clone()];
        sets.extend(refit_steps.map(refit));
        with(common::tiny(steps), &sets)
    };
    let (straight, split) = (tmp.path().join("s"), tmp.path().join("p"));
    run(plan(cfg(30, Some(20)), &straight, false)).unwrap();
    // 15 joint steps (rows lagging), then to the end of the joint phase plus 7 refit steps,
    // then the rest.
    run(plan(cfg(15, None), &split, false)).unwrap();
    run(plan(cfg(30, Some(7)), &split, true)).unwrap();
    run(plan(cfg(30, Some(20)), &split, true)).unwrap();
    assert!(tensors(&straight.join(CHECKPOINT_FILE)).contains_key("particles/missed_noise_steps"));
    common::assert_same_checkpoints(&straight, &split, "resume across the refit boundary");
    // The synced cloud of a refitted run is the cloud at the end of the joint phase.
    let joint_only = tmp.path().join("j");
    run(plan(cfg(30, None), &joint_only, false)).unwrap();
    let c1 = open_run(&joint_only, &[]).unwrap().synced_cloud().unwrap();
    let c2 = open_run(&straight, &[]).unwrap().synced_cloud().unwrap();
    assert_eq!(c1.unwrap().z(), c2.unwrap().z());

    // Once the refit has begun, the joint phase cannot be extended or the refit dropped.
    for bad in [cfg(40, Some(20)), cfg(40, None)] {
        let e = run(plan(bad, &split, true)).unwrap_err().to_string();
        assert!(e.contains("train.steps must stay 30"), "{e}");
    }
}

#[test]
fn bad_refit_settings_are_named() {
    for (set, needle) in [
        (
            "train.prior_refit={steps=0, batch_size=10, lr=1e-3}",
            "train.prior_refit",
        ),
        (
            "train.prior_refit={steps=5, batch_size=0, lr=1e-3}",
            "train.prior_refit",
        ),
        (
            "train.prior_refit={steps=5, batch_size=10, lr=0.0}",
            "train.prior_refit.lr",
        ),
        (
            "train.prior_refit={steps=5, batch_size=10, lr=1e-3, epochs=2}",
            "epochs",
        ),
        ("train.prior_refit={steps=5, batch_size=10}", "lr"),
    ] {
        let e = common::tiny(5)
            .with_overrides(&[set.to_string()], "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle), "{set}: {e}");
    }
    // A plain value still cannot invent a key.
    let e = common::tiny(5)
        .with_overrides(&["train.prior_refits=3".to_string()], "t")
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown key `train.prior_refits`"), "{e}");
}

/// `metrics.jsonl` logs the learning rates each step used: phi's after its per-epoch decay
/// (`train.lr_decay_phi`), and in the refit theta's `train.prior_refit.lr` with phi not stepped.
#[test]
fn metrics_log_the_learning_rates_in_use() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lr");
    // 300 points in batches of 50: 6 steps per epoch; lines every 5 steps.
    let cfg = with(
        common::tiny(15),
        &[
            "train.lr_decay_phi=0.5".into(),
            "train.optimizer_theta.lr=1e-3".into(),
            "train.prior_refit={steps=5, batch_size=100, lr=3e-4}".into(),
        ],
    );
    let lines = run_metrics(cfg, &dir);
    let got: Vec<(u64, f64, f64, &str)> = lines
        .iter()
        .map(|l| {
            (
                l["step"].as_u64().unwrap(),
                l["lr_theta"].as_f64().unwrap(),
                l["lr_phi"].as_f64().unwrap(),
                l["phase"].as_str().unwrap(),
            )
        })
        .collect();
    // Steps 5, 10, 15 are the 0-based steps 4 (epoch 0), 9 (epoch 1) and 14 (epoch 2).
    assert_eq!(
        got,
        vec![
            (5, 1e-3, 1e-3, "joint"),
            (10, 1e-3, 5e-4, "joint"),
            (15, 1e-3, 2.5e-4, "joint"),
            (20, 3e-4, 0.0, "prior-refit"),
        ]
    );
}

/// `train.prior_refit.final_lr` anneals theta's learning rate by a half cosine over the refit:
/// each refit step logs the closed-form value; a value outside [0, lr] is refused.
#[test]
fn refit_learning_rate_follows_the_half_cosine() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cos");
    let cfg = with(
        common::tiny(5),
        &[
            "train.log_every=1".into(),
            "train.prior_refit={steps=5, batch_size=100, lr=1e-3, final_lr=1e-5}".into(),
        ],
    );
    let refit_lrs: Vec<f64> = run_metrics(cfg, &dir)
        .into_iter()
        .filter(|l| l["phase"] == "prior-refit")
        .map(|l| l["lr_theta"].as_f64().unwrap())
        .collect();
    // python3 -c "import math; [print(1e-5+(1e-3-1e-5)*0.5*(1+math.cos(math.pi*i/5))) for i in range(5)]"
    let want = [
        1e-3,
        0.000905463412215599,
        0.000657963412215599,
        0.0003520365877844011,
        0.00010453658778440107,
    ];
    assert_eq!(refit_lrs.len(), 5);
    for (got, want) in refit_lrs.iter().zip(want) {
        assert!((got - want).abs() <= 1e-15, "{got} vs {want}");
    }
    // Out of [0, lr] is refused, naming the key.
    let e = common::tiny(5)
        .with_overrides(
            &["train.prior_refit={steps=5, batch_size=10, lr=1e-3, final_lr=2e-3}".into()],
            "t",
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("train.prior_refit.final_lr"), "{e}");
}

/// Theta's gradient at a step, recovered from AdamW's first moments in the checkpoints before
/// and after it: g_t = (m_t - beta1 m_{t-1}) / (1 - beta1), all of theta's tensors together.
fn theta_gradient(before: &[u8], after: &[u8], beta1: f64) -> Vec<f64> {
    let (a, b) = (
        safetensors::SafeTensors::deserialize(before).unwrap(),
        safetensors::SafeTensors::deserialize(after).unwrap(),
    );
    let mut names: Vec<String> = a
        .names()
        .into_iter()
        .filter(|n| n.starts_with("opt_theta/m/"))
        .map(|n| n.to_string())
        .collect();
    names.sort();
    assert!(!names.is_empty());
    let f32s = |t: safetensors::tensor::TensorView| -> Vec<f64> {
        t.data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect()
    };
    names
        .iter()
        .flat_map(|n| {
            let (m0, m1) = (f32s(a.tensor(n).unwrap()), f32s(b.tensor(n).unwrap()));
            m0.into_iter()
                .zip(m1)
                .map(|(m0, m1)| (m1 - beta1 * m0) / (1.0 - beta1))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn refit_gradient_keeps_the_joint_phase_scale() {
    // The joint loss weights the prior's diffusion loss by gamma (eq. 64); the refit scales its
    // loss the same way, so theta's gradient does not jump by 1/gamma (20 here) at the phase
    // boundary while AdamW's second moments still hold the joint phase's scale.
    let cfg = with(
        common::tiny(20),
        &[
            "train.kl={coefficient=0.05, warmup_steps=0}".into(),
            refit(2),
        ],
    );
    let beta1 = cfg.train.optimizer_theta.beta1;
    let data = ipld_train::data::load_data(&cfg).unwrap();
    let mut t =
        ipld_train::Trainer::new(cfg.validated("test").unwrap(), data, Device::Cpu).unwrap();
    let mut snaps = Vec::new();
    for step in 0..22 {
        if step >= 18 {
            snaps.push(t.checkpoint_bytes().unwrap());
        }
        let m = t.train_step().unwrap();
        assert_eq!(m.prior_refit, step >= 20);
    }
    snaps.push(t.checkpoint_bytes().unwrap());
    let norm = |g: Vec<f64>| g.iter().map(|x| x * x).sum::<f64>().sqrt();
    // Steps 18 and 19 (joint), 20 and 21 (refit).
    let g: Vec<f64> = (0..4)
        .map(|i| norm(theta_gradient(&snaps[i], &snaps[i + 1], beta1)))
        .collect();
    let joint = (g[0] + g[1]) / 2.0;
    for r in &g[2..] {
        let ratio = r / joint;
        assert!(
            (0.2..5.0).contains(&ratio),
            "refit gradient {r:.3e} vs joint {joint:.3e}: ratio {ratio:.2} (1/gamma = 20)"
        );
    }
}

/// `train.prior_refit.min_snr_gamma`: the refit trains on the Min-SNR-gamma weighting and logs
/// eq. (41)'s loss. An unbounded cap weights every step 1 (bit for bit the simple refit); a small
/// cap logs the same first loss (same weights, same draws) but takes a smaller, different step.
#[test]
fn min_snr_refit_reweights_theta_and_logs_the_simple_loss() {
    let refit_with = |gamma: Option<&str>| -> (f64, Vec<u8>, Vec<f64>) {
        let table = match gamma {
            None => "train.prior_refit={steps=1, batch_size=100, lr=1e-3}".to_string(),
            Some(g) => {
                format!("train.prior_refit={{steps=1, batch_size=100, lr=1e-3, min_snr_gamma={g}}}")
            }
        };
        let cfg = with(common::tiny(20), &[table]);
        let beta1 = cfg.train.optimizer_theta.beta1;
        let data = ipld_train::data::load_data(&cfg).unwrap();
        let mut t =
            ipld_train::Trainer::new(cfg.validated("test").unwrap(), data, Device::Cpu).unwrap();
        for _ in 0..20 {
            t.train_step().unwrap();
        }
        let before = t.checkpoint_bytes().unwrap();
        let m = t.train_step().unwrap();
        assert!(m.prior_refit);
        let after = t.checkpoint_bytes().unwrap();
        let g = theta_gradient(&before, &after, beta1);
        (m.loss, after, g)
    };
    let (loss, simple, g_simple) = refit_with(None);
    let (loss_inf, unbounded, _) = refit_with(Some("1e300"));
    assert_eq!(loss_inf, loss);
    // The checkpoints' metadata carries the config, so compare their tensors.
    let tensors = common::tensors_of;
    assert!(
        tensors(&simple) == tensors(&unbounded),
        "an unbounded cap must be the simple refit"
    );
    let (loss_small, capped, g_capped) = refit_with(Some("0.01"));
    assert_eq!(
        loss_small, loss,
        "the logged loss is eq. (41)'s under any cap"
    );
    assert!(tensors(&capped) != tensors(&simple));
    // SNR_k > 0.01 for k below about 670 of 1,000: most steps' weights shrink.
    let norm = |g: &[f64]| g.iter().map(|x| x * x).sum::<f64>().sqrt();
    let (a, b) = (norm(&g_simple), norm(&g_capped));
    assert!(
        b < 0.8 * a,
        "gradient norm {b:.3e} (capped) vs {a:.3e} (simple)"
    );
}

#[test]
fn bad_min_snr_settings_are_named() {
    for (sets, needle) in [
        (
            vec!["train.prior_refit={steps=5, batch_size=10, lr=1e-3, min_snr_gamma=0.0}"],
            "must be a finite number > 0",
        ),
        (
            vec!["train.prior_refit={steps=5, batch_size=10, lr=1e-3, min_snr_gamma=-2.0}"],
            "must be a finite number > 0",
        ),
        (
            vec![
                "diffusion.loss=\"stf\"",
                "train.prior_refit={steps=5, batch_size=10, lr=1e-3, min_snr_gamma=5.0}",
            ],
            "diffusion.loss is `stf`",
        ),
        (
            vec![
                "diffusion.loss=\"likelihood-weighted\"",
                "train.prior_refit={steps=5, batch_size=10, lr=1e-3, min_snr_gamma=5.0}",
            ],
            "diffusion.loss is `likelihood-weighted`",
        ),
    ] {
        let sets: Vec<String> = sets.into_iter().map(String::from).collect();
        let e = common::tiny(5)
            .with_overrides(&sets, "t")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("train.prior_refit.min_snr_gamma"),
            "{sets:?}: {e}"
        );
        assert!(e.contains(needle), "{sets:?}: {e}");
    }
}
