//! Shared by the criterion benches in `benches/`.

#[doc(hidden)]
pub use mimalloc;

/// `criterion_main!` with candle's CPU thread count pinned first (`ipld_train::pin_thread_count`,
/// from the bench binary's dependencies) and the binaries' allocator (mimalloc, see `ipld-train`'s
/// main.rs; with glibc's, the image bench spent more time in page faults than in arithmetic: 38 s
/// system against 27 s user for one step), so the benches measure what `ipld-train` runs.
#[macro_export]
macro_rules! criterion_main_pinned {
    ($($group:path),+ $(,)?) => {
        #[global_allocator]
        static GLOBAL: $crate::mimalloc::MiMalloc = $crate::mimalloc::MiMalloc;

        fn main() {
            ::ipld_train::pin_thread_count();
            $($group();)+
            ::criterion::Criterion::default()
                .configure_from_args()
                .final_summary();
        }
    };
}

/// Minibatch `t` of a scrambled epoch order over `m` points, `b` per step (`b <= m`): epoch e
/// visits x -> x p_e mod m for a prime p_e > 10^6, so rows lag by different amounts as in
/// training. The primes exceed any M benched, so x -> x p_e is a permutation of 0..m and a batch
/// never repeats a point.
pub fn scrambled_batch(m: usize, b: usize, t: u64) -> Vec<usize> {
    const PRIMES: [usize; 4] = [1_000_003, 1_000_033, 1_000_037, 1_000_039];
    assert!(
        m <= PRIMES[0],
        "scrambled_batch: m = {m} must not exceed {}",
        PRIMES[0]
    );
    let per_epoch = (m / b) as u64;
    let p = PRIMES[((t / per_epoch) % PRIMES.len() as u64) as usize];
    let first = (t % per_epoch) as usize * b;
    (first..first + b).map(|x| x * p % m).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn scrambled_batches_cover_each_epoch_once() {
        for (m, b) in [(10_000, 500), (1_000_000, 500), (1_000, 7)] {
            let per_epoch = (m / b) as u64;
            for epoch in [0, 1, 5] {
                let mut seen = vec![false; m];
                for t in epoch * per_epoch..(epoch + 1) * per_epoch {
                    for x in super::scrambled_batch(m, b, t) {
                        assert!(!seen[x], "m {m}: point {x} twice in epoch {epoch}");
                        seen[x] = true;
                    }
                }
                assert_eq!(seen.iter().filter(|&&s| s).count(), per_epoch as usize * b);
            }
        }
    }
}
