//! Fixing candle's CPU thread count once per process.
//!
//! candle 0.11 asks for its thread count before every CPU matmul and elementwise op, and unless
//! `RAYON_NUM_THREADS` is set that means `num_cpus::get_physical()`, which reads and parses
//! `/proc/cpuinfo` each time: 7% of a `gmm` training step at N = 1 (perf, 2-core VM), and the
//! step ran 19% faster with the variable set.

/// Sets `RAYON_NUM_THREADS` to the count candle would choose (its `CANDLE_CPU_MASK`, preferred or
/// physical cores) when the user has not set it, so candle reads it from the environment instead
/// of from `/proc/cpuinfo`. Call it first thing in `main`, before any other thread exists.
pub fn pin_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_some() {
        return;
    }
    let n = candle_core::utils::get_num_threads();
    // SAFETY: `main` calls this before spawning threads, so nothing reads the environment
    // concurrently.
    unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
}
