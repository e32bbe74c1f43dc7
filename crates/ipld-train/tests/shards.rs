//! Data-parallel shards (`train.shards`): a run depends on the shard count but not on how many
//! threads run the shards (or the kernels inside them).

mod common;

use common::{assert_same_checkpoints, plan};
use ipld_train::{RunConfig, run};

fn tiny(method: &str, shards: usize) -> RunConfig {
    let mut sets = common::method_sets(method);
    sets.push(format!("train.shards={shards}"));
    common::tiny(20).with_overrides(&sets, method).unwrap()
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
}

#[test]
fn a_run_does_not_depend_on_the_thread_count() {
    let tmp = tempfile::tempdir().unwrap();
    for method in ["ipld", "diffusion-vae"] {
        for shards in [2, 3] {
            let dir = |threads: usize| tmp.path().join(format!("{method}-{shards}-{threads}"));
            for threads in [1, 4] {
                pool(threads)
                    .install(|| run(plan(tiny(method, shards), &dir(threads), false)))
                    .unwrap();
            }
            let what = format!("{method}, {shards} shards, 1 vs 4 threads");
            assert_same_checkpoints(&dir(1), &dir(4), &what);
        }
    }
}

#[test]
fn the_shard_count_changes_only_rounding() {
    // Same run with 1 and 2 shards: not the same bits (summation order), but the same training.
    // Whole-data draws, so both see the same minibatches (per-shard draws, the presets' choice,
    // draw each shard's part from its own slice: other minibatches for another shard count).
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("one"), tmp.path().join("two"));
    let whole = |shards| {
        tiny("ipld", shards)
            .with_overrides(&["train.minibatches=whole-data".into()], "t")
            .unwrap()
    };
    let sa = run(plan(whole(1), &a, false)).unwrap();
    let sb = run(plan(whole(2), &b, false)).unwrap();
    let (la, lb) = (sa.final_loss.unwrap(), sb.final_loss.unwrap());
    let ckpt = |d: &std::path::Path| std::fs::read(d.join(ipld_train::rundir::CHECKPOINT_FILE));
    assert_ne!(
        ckpt(&a).unwrap(),
        ckpt(&b).unwrap(),
        "sharding left every bit unchanged"
    );
    // Measured with the paper's noise: 123.96934509 vs 123.96933746 after 20 steps (with the
    // posterior's the two final losses happen to round to the same f32, 123.99915).
    assert!((la - lb).abs() < 1e-3 * la.abs(), "final loss {la} vs {lb}");
}

#[test]
fn zero_shards_and_a_changed_count_on_resume_are_refused() {
    let e = common::tiny(10)
        .with_overrides(&["train.shards=0".into()], "t")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("train.shards") && e.contains("at least 1"),
        "{e}"
    );
    // The shard count is part of the run: resuming with another one would not continue it.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    run(plan(tiny("ipld", 2), &dir, false)).unwrap();
    let e = run(plan(tiny("ipld", 3), &dir, true))
        .unwrap_err()
        .to_string();
    assert!(e.contains("train.shards"), "{e}");
}
