//! Fixing candle's CPU thread counts once per process.
//!
//! candle 0.11 asks for its thread count before every CPU matmul and elementwise op, and unless
//! `RAYON_NUM_THREADS` is set that means `num_cpus::get_physical()`, which reads and parses
//! `/proc/cpuinfo` each time: 7% of a `gmm` training step at N = 1 (perf, 2-core VM), and the
//! step ran 19% faster with the variable set.

/// Sets `RAYON_NUM_THREADS` to the count candle would choose (its `CANDLE_CPU_MASK`, preferred or
/// physical cores, shared among the MPI ranks on this machine) when the user has not set it, so candle reads it from the environment instead
/// of from `/proc/cpuinfo`. Call it first thing in `main`, before any other thread exists.
pub fn pin_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_some() {
        return;
    }
    // MPI ranks on one machine share its cores (OpenMPI and MPICH say how many ranks there are
    // per machine), and OpenMPI binds each of 2 or fewer ranks to one core.
    let local_ranks = ["OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"]
        .iter()
        .find_map(|k| std::env::var(k).ok()?.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    let n = (candle_core::utils::get_num_threads() / local_ranks).max(1);
    // SAFETY: `main` calls this before spawning threads, so nothing reads the environment
    // concurrently.
    unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
}

/// For a run whose minibatches are split into `shards` (`train.shards`) that run in parallel:
/// sets `CANDLE_NUM_THREADS=1` when the user has not set it, so candle's own pool for large
/// elementwise ops (a second pool, sized by that variable, that one caller at a time may use)
/// stays idle and the shards provide the parallelism. Measured on the 2-core VM with 2 shards:
/// gmm N = 16 119 steps/s with it, 50 without (and 64-68 unsharded); mnist5k 0.55 s per step
/// with it, 1.15 s without (0.96 s unsharded). Call it before the run does any tensor work.
pub fn quiet_candle_pool(shards: usize) {
    if shards < 2 || std::env::var_os("CANDLE_NUM_THREADS").is_some() {
        return;
    }
    // SAFETY: called by `main` after parsing and before the run starts any thread.
    unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
}
