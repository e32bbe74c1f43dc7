//! The configuration: presets, unknown keys, overrides, and the old layout's compatibility path.

use ipld_diffusion::{SamplerConfig, ScheduleConfig};
use ipld_train::config::{DecoderConfig, PriorConfig};
use ipld_train::{PRESETS, RunConfig};

#[test]
fn presets_parse_validate_and_round_trip() {
    for (name, _) in PRESETS {
        let cfg = RunConfig::preset(name).unwrap();
        let again = RunConfig::from_toml(&cfg.to_toml(), "round trip").unwrap();
        assert_eq!(cfg, again, "{name}");
    }
    let gmm = RunConfig::preset("gmm").unwrap();
    assert_eq!(gmm.diffusion.schedule, ScheduleConfig::default());
    assert_eq!(
        (gmm.train.steps, gmm.train.batch_size, gmm.particles.count),
        (1000, 500, 4)
    );
    assert_eq!(
        (gmm.train.kl.coefficient, gmm.train.kl.warmup_steps),
        (0.01, 1000)
    );
    assert_eq!(gmm.particles.step_size.initial, 0.1);
    // Issue 22's levers: theta's lr 3e-3 is the presets' one labelled deviation from B.1's
    // 1e-3; the decoder keeps it. The decoder init and latent scale are choices B.1 leaves open.
    assert_eq!(gmm.train.optimizer_theta.lr, 3e-3);
    assert_eq!(gmm.train.optimizer_phi.lr, 1e-3);
    assert_eq!(gmm.diffusion.latent_scale, 0.5);
    match &gmm.model.decoder {
        DecoderConfig::Linear(l) => assert_eq!(l.init_gain, 0.01),
        other => panic!("gmm's decoder is linear, got {other:?}"),
    }
    assert_eq!(gmm.eval.mmd.gamma, 0.1);
}

#[test]
fn unknown_keys_and_values_are_named() {
    let text = PRESETS[0]
        .1
        .replace("seed = 0\n\n[data]", "seed = 0\nsed = 1\n\n[data]");
    let e = RunConfig::from_toml(&text, "x.toml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("x.toml") && e.contains("sed"), "{e}");
    let text = PRESETS[0]
        .1
        .replace("method = \"ipld\"", "method = \"vae\"");
    let e = RunConfig::from_toml(&text, "x.toml")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("ipld") && e.contains("vae"),
        "lists valid methods: {e}"
    );
    let text = PRESETS[0]
        .1
        .replace("steps = 1000\nkind", "steps = 0\nkind");
    let e = RunConfig::from_toml(&text, "x.toml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("schedule.steps"), "{e}");
    let e = RunConfig::from_toml("method = [", "bad.toml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad.toml"), "{e}");
    assert!(
        RunConfig::preset("mnist")
            .unwrap_err()
            .to_string()
            .contains("gmm, circles")
    );
}

#[test]
fn overrides_set_dotted_keys_and_reject_unknown_ones() {
    let base = RunConfig::preset("gmm").unwrap();
    let sets = |s: &[&str]| {
        base.with_overrides(&s.iter().map(|x| x.to_string()).collect::<Vec<_>>(), "gmm")
    };
    let c = sets(&[
        "particles.count=16",
        "train.steps=200",
        "data.path=my data.npy",
        "method=ipld",
    ])
    .unwrap();
    assert_eq!(
        (c.particles.count, c.train.steps, c.data.path.as_str()),
        (16, 200, "my data.npy")
    );
    let c = sets(&["eval.sampler.type=ddim", "eval.sampler.steps=50"]).unwrap();
    assert_eq!(
        c.eval.sampler,
        SamplerConfig::Ddim(ipld_diffusion::Ddim {
            steps: 50,
            eta: 0.0
        })
    );
    let e = sets(&["train.stpes=5"]).unwrap_err().to_string();
    assert!(
        e.contains("train.stpes") && e.contains("train.steps") && e.contains("train.batch_size"),
        "{e}"
    );
    for bad in [
        "eval.mmd_bandwidths=[0.0]",
        "eval.mmd_bandwidths=[1.0, -4.0]",
    ] {
        let e = sets(&[bad]).unwrap_err().to_string();
        assert!(e.contains("eval.mmd_bandwidths"), "{e}");
    }
    let e = sets(&["particles.count=0"]).unwrap_err().to_string();
    assert!(e.contains("particles.count"), "{e}");
    let e = sets(&["particles.count=many"]).unwrap_err().to_string();
    assert!(e.contains("particles.count") || e.contains("count"), "{e}");
    assert!(
        sets(&["nokey"])
            .unwrap_err()
            .to_string()
            .contains("KEY=VALUE")
    );
    let e = sets(&["bogus=1"]).unwrap_err().to_string();
    assert!(e.contains("valid keys") && e.contains("particles"), "{e}");
}

/// The presets as they were before the tagged model choices (copies of the files at the commit
/// before the architecture refactor) read as today's presets: the compatibility path that lets
/// saved `config.toml` files load and resume.
#[test]
fn old_layout_files_read_as_todays_presets() {
    for (name, old) in [
        ("gmm", include_str!("data/legacy/gmm.toml")),
        ("cifar10", include_str!("data/legacy/cifar10.toml")),
        ("mnist5k", include_str!("data/legacy/mnist5k.toml")),
    ] {
        let cfg = RunConfig::from_toml(old, name).unwrap();
        // They predate `particles.noise_scale`, so they mean the paper's noise, which the presets
        // named until they moved to the posterior's (2026-12-06), and `eval.mmd_bandwidths`,
        // so they ask for no extra MMD², and `eval.classifier`, so they train no classifier;
        // gmm's also predates issue 22's levers (B.1's theta lr, latent scale 1, paper init).
        let mut sets: Vec<String> = vec![
            "particles.noise_scale=paper".into(),
            "eval.mmd_bandwidths=[]".into(),
            "eval.classifier=false".into(),
            // They predate `train.minibatches` too: they drew from the whole data.
            "train.minibatches=whole-data".into(),
        ];
        // mnist5k's evaluation moved from DDIM eta 0 to eta 1 (2026-12-07), and its prior from
        // the DiT to the convolutional eps-network (2026-12-07).
        if name == "mnist5k" {
            sets.push("eval.sampler.eta=0".into());
            sets.push(
                "model.prior={type=\"dit\", channels=4, size=7, patch=1, hidden=128, depth=4, \
                 heads=4, mlp_ratio=4, frequency_dim=256}"
                    .into(),
            );
        }
        if name == "gmm" {
            sets.extend([
                "train.optimizer_theta.lr=1e-3".into(),
                "diffusion.latent_scale=1".into(),
                "model.decoder.init_gain=1".into(),
            ]);
        }
        let preset = RunConfig::preset(name)
            .unwrap()
            .with_overrides(&sets, name)
            .unwrap();
        assert_eq!(cfg, preset, "{name}");
    }
    let gmm = RunConfig::from_toml(include_str!("data/legacy/gmm.toml"), "gmm").unwrap();
    assert!(matches!(gmm.model.prior, PriorConfig::Mlp(_)));
    assert!(matches!(gmm.model.decoder, DecoderConfig::Linear(_)));
    // The committed mnist5k result's saved config (older still: no particles.noise or shards).
    let saved = include_str!("../../../docs/results/mnist5k/config.toml");
    let cfg = RunConfig::from_toml(saved, "docs/results/mnist5k/config.toml").unwrap();
    assert!(matches!(cfg.model.prior, PriorConfig::Dit(_)));
    assert!(matches!(cfg.model.decoder, DecoderConfig::Conv(_)));
    // Written back, it is in today's layout.
    let text = cfg.to_toml();
    assert!(
        text.contains("[model.prior]") && !text.contains("conv_decoder"),
        "{text}"
    );
}

#[test]
fn old_layout_errors_name_the_key() {
    let old = include_str!("data/legacy/gmm.toml");
    let e = RunConfig::from_toml(&old.replace("[model.eps]\n", "[model.epz]\n"), "old.toml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("old.toml") && e.contains("model.epz"), "{e}");
    let e = RunConfig::from_toml(&old.replace("hidden = 128", "hidden = 0"), "old.toml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("`model.prior.hidden/layers`"), "{e}");
}

/// Library crates name keys relative to their own structs; the config adds the path.
#[test]
fn library_errors_carry_the_full_key_path() {
    let base = RunConfig::preset("gmm").unwrap();
    let err = |set: &str| {
        base.with_overrides(&[set.to_string()], "gmm")
            .unwrap_err()
            .to_string()
    };
    for (set, key) in [
        (
            "model.prior.time_embedding=3",
            "`model.prior.time_embedding`",
        ),
        ("model.decoder.sigma=-1", "`model.decoder.sigma`"),
        (
            "particles.update.momentum=1.5",
            "`particles.update.momentum`",
        ),
        (
            "particles.step_size.initial=0",
            "`particles.step_size.initial`",
        ),
        ("train.kl.coefficient=-1", "`train.kl.coefficient`"),
        ("eval.mmd.gamma=0", "`eval.mmd.gamma`"),
        (
            "eval.sampler={ type = \"ddim\", steps = 0, eta = 0.0 }",
            "`eval.sampler.steps`",
        ),
        ("diffusion.schedule.steps=0", "`diffusion.schedule.steps`"),
        ("train.ema={decay=1.5, start_step=0}", "`train.ema.decay`"),
    ] {
        let e = err(set);
        assert!(e.contains(key), "{set}: {e}");
    }
    let e = err("model.prior.type=dit");
    assert!(e.contains("channels"), "a DiT needs its fields: {e}");
}

#[test]
fn an_empty_table_removes_an_optional_section() {
    // `KEY={}` drops an optional section (the published methods' overrides remove the image
    // presets' EMA this way); on an absent section it is a no-op; on a required one serde
    // names what is then missing.
    let sets = |preset: &str, s: &str| {
        RunConfig::preset(preset)
            .unwrap()
            .with_overrides(&[s.to_string()], preset)
    };
    assert!(RunConfig::preset("cifar10").unwrap().train.ema.is_some());
    assert!(sets("cifar10", "train.ema={}").unwrap().train.ema.is_none());
    assert_eq!(
        sets("gmm", "train.prior_refit={}").unwrap(),
        RunConfig::preset("gmm").unwrap()
    );
    let e = sets("gmm", "train.kl={}").unwrap_err().to_string();
    assert!(e.contains("kl"), "{e}");
}

#[test]
fn optional_fields_left_out_of_a_preset_can_be_set() {
    // A preset omits an optional field it leaves unset (`final_lr`, `init_gain`); `--set` must
    // still reach it, and an unknown key beside it lists the optional fields among the valid.
    let sets = |preset: &str, s: &str| {
        RunConfig::preset(preset)
            .unwrap()
            .with_overrides(&[s.to_string()], preset)
    };
    let c = sets("mnist5k", "train.prior_refit.final_lr=0").unwrap();
    assert_eq!(c.train.prior_refit.unwrap().final_lr, Some(0.0));
    let e = sets("mnist5k", "train.prior_refit.final_lrx=0")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("unknown key `train.prior_refit.final_lrx`")
            && e.contains("train.prior_refit.final_lr,")
            && e.contains("train.prior_refit.steps"),
        "{e}"
    );
    // A value of the wrong type for a known optional field is a type error, not "unknown".
    let e = sets("mnist5k", "train.prior_refit.final_lr=\"x\"")
        .unwrap_err()
        .to_string();
    assert!(!e.contains("unknown key") && e.contains("final_lr"), "{e}");
}
