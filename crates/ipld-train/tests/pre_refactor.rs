//! Runs written by the binary as it was before the architecture refactor (config in the old
//! model layout, checkpoint at step 20) resume with today's code exactly as a run started today:
//! checkpoints equal tensor for tensor and bit for bit. The fixtures in `tests/data/pre-refactor/`
//! were made at the commit before it with the tiny settings of `common::tiny`:
//!
//! ```sh
//! T="--set data.points=300 --set data.ambient_dim=8 --set particles.count=2 \
//!    --set train.batch_size=50 --set train.log_every=5 --set train.checkpoint_every=10 \
//!    --set train.kl.warmup_steps=20 --set model.eps.hidden=32 --set model.eps.time_embedding=16 \
//!    --set eval.samples=200 --set eval.reference_points=300 --set eval.sampler.type=ddim \
//!    --set eval.sampler.steps=20 --set train.steps=20"
//! ipld-train --quiet $T --set particles.lazy_noise=true --out ipld-lazy
//! ipld-train --quiet $T --set method=diffusion-vae --out diffusion-vae
//! ipld-train --quiet $T --set 'train.ema={decay=0.9, start_step=5}' --out ipld-ema
//! ```
//!
//! (A checkpoint taken inside a prior refit does not resume to the same bits: the refit's stream
//! id changed from 3, which evaluation sampling also used, to 5.)

mod common;

use std::path::Path;

use common::{assert_same_checkpoints, plan};
use ipld_train::rundir::CONFIG_FILE;
use ipld_train::{RunConfig, run};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// Resumes the fixture `name` (`done` steps taken) with `sets` and checks it against a fresh run
/// of the same config.
fn resumes_exactly(name: &str, done: u64, sets: &[&str]) {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/pre-refactor")
        .join(name);
    let tmp = tempfile::tempdir().unwrap();
    let (resumed, fresh) = (tmp.path().join("resumed"), tmp.path().join("fresh"));
    copy_dir(&fixture, &resumed);
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    let cfg = RunConfig::from_file(&resumed.join(CONFIG_FILE))
        .unwrap()
        .with_overrides(&sets, name)
        .unwrap();
    let s = run(plan(cfg.clone(), &resumed, true)).unwrap();
    assert_eq!(
        (s.steps, s.steps_this_invocation),
        (40, 40 - done),
        "{name}"
    );
    let f = run(plan(cfg, &fresh, false)).unwrap();
    assert_eq!(s.mmd, f.mmd, "{name}: MMD");
    assert_same_checkpoints(&resumed, &fresh, name);
    // The resumed run's config was rewritten in today's layout.
    let text = std::fs::read_to_string(resumed.join(CONFIG_FILE)).unwrap();
    assert!(text.contains("[model.prior]"), "{name}: {text}");
}

#[test]
fn an_ipld_run_with_lazy_noise_from_before_the_refactor_resumes_exactly() {
    resumes_exactly("ipld-lazy", 20, &["train.steps=40"]);
}

#[test]
fn a_diffusion_vae_run_from_before_the_refactor_resumes_exactly() {
    resumes_exactly("diffusion-vae", 20, &["train.steps=40"]);
}

#[test]
fn an_ema_run_from_before_the_refactor_resumes_exactly_into_a_prior_refit() {
    resumes_exactly(
        "ipld-ema",
        20,
        &[
            "train.steps=30",
            "train.prior_refit={steps=10, batch_size=50, lr=1e-3}",
        ],
    );
}
