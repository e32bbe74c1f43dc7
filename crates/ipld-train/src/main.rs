//! `ipld-train`: parse arguments, resolve and validate the configuration into a plan, hand over to
//! the library. The last line of stdout is always one JSON object; everything else goes to stderr.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use ipld_train::{Progress, RunConfig, RunPlan, default_run_dir};

// candle allocates a fresh buffer for every op; glibc serves the large ones with mmap/munmap, and
// the page faults cost as much as the arithmetic (measured: 52 s of kernel time in a 67 s run).
// mimalloc keeps freed pages for reuse.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

// mimalloc's own option setter (in the library the allocator above links). Option 15 is
// `mi_option_purge_delay` in both mimalloc v2 and v3 (mimalloc.h's mi_option_e).
unsafe extern "C" {
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// Never hands freed pages back to the OS (unless MIMALLOC_PURGE_DELAY says otherwise): the
/// default 10 ms purge made the kernel zero fresh pages for every large candle buffer, 13% of an
/// FID profile; without it FID features run at 9.4 instead of 7.0 images/s (docs/performance.md).
/// The cost: the process's RSS does not shrink after a peak.
fn keep_freed_pages() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a documented process-wide allocator option; no memory is touched.
        unsafe { mi_option_set(15, -1) };
    }
}

/// Train latent diffusion models with Interacting Particle Latent Diffusion (IPLD).
///
/// With no arguments, trains IPLD on the embedded `gmm` preset (N = 4 particles), evaluates MMD
/// against the data, and writes a run directory under ./runs/.
#[derive(Debug, Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    train: TrainArgs,
}

#[derive(Debug, Args)]
struct TrainArgs {
    /// TOML configuration file (default: the embedded `gmm` preset).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["preset", "resume"])]
    config: Option<PathBuf>,
    /// Embedded preset instead of a file: gmm, circles, mnist5k, cifar10, svhn, celeba64.
    #[arg(long, conflicts_with = "resume")]
    preset: Option<String>,
    /// Override a config key, e.g. --set particles.count=16 (repeatable; dotted keys).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// The run's seed (same as --set seed=N).
    #[arg(long, conflicts_with = "resume")]
    seed: Option<u64>,
    /// Run directory (default: runs/<dataset>-<method>-n<N>-seed<S>).
    #[arg(long, value_name = "DIR", conflicts_with = "resume")]
    out: Option<PathBuf>,
    /// Continue the run in DIR from its checkpoint, e.g. with --set train.steps=T.
    #[arg(long, value_name = "DIR")]
    resume: Option<PathBuf>,
    /// On --resume, continue although the data differ from those the run recorded (run.json's
    /// fingerprint); the record then takes the new data's fingerprint.
    #[arg(long, requires = "resume")]
    accept_data_change: bool,
    /// On --resume, roll the run back to its kept checkpoint of step S first
    /// (`train.keep_checkpoints`); the later checkpoints, metrics and summary move to
    /// DIR/checkpoints/rolled-back-from-T/.
    #[arg(long, value_name = "S", requires = "resume")]
    from_step: Option<u64>,
    /// Print the resolved configuration and exit without training.
    #[arg(long)]
    print_config: bool,
    /// No progress bar or log lines.
    #[arg(long)]
    quiet: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Draw samples from a trained run and write them to .npy or .safetensors.
    Sample {
        /// The run directory.
        #[arg(long, value_name = "DIR")]
        run: PathBuf,
        /// Number of samples.
        #[arg(long, default_value_t = 10_000)]
        n: usize,
        /// Output: .npy or .safetensors ([n, d_x] float32); for image runs any other path is a
        /// folder of PNGs (what `ipld-train fid` reads).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        #[command(flatten)]
        sampler: ipld_train::SamplerArgs,
        /// Sampling seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Overwrite an existing --out file, or replace the sample-NNNNN.png files of an earlier
        /// sample in the --out folder (a path inside a run directory is refused regardless).
        #[arg(long)]
        force: bool,
        /// No progress output.
        #[arg(long)]
        quiet: bool,
    },
    /// Fréchet Inception Distance between two image folders (or a folder and a statistics file);
    /// prints a JSON line with `fid`. Needs `cargo xtask fetch-inception` once.
    Fid {
        /// Reference images: a folder, or a .safetensors statistics file.
        real: PathBuf,
        /// Images to evaluate: a folder, or a .safetensors statistics file.
        fake: PathBuf,
        /// At most this many images per folder (the paper: 50,000).
        #[arg(long, default_value_t = 50_000)]
        limit: usize,
        /// Inception batch size.
        #[arg(long, default_value_t = 50)]
        batch: usize,
        /// Converted Inception weights (default: $IPLD_DATA_DIR/inception/...).
        #[arg(long, value_name = "FILE")]
        inception: Option<PathBuf>,
        /// Save the statistics of REAL (a folder) to this .safetensors file for reuse.
        #[arg(long, value_name = "FILE")]
        save_stats: Option<PathBuf>,
        /// No progress output.
        #[arg(long)]
        quiet: bool,
    },
    /// Draw a run's metrics to a PNG (loss terms, MMD²/FID, particle statistics, learning
    /// rates: DIR/training.png by default) and refresh its CSV copies (metrics.csv,
    /// evals.csv); works while the run trains.
    Plot {
        /// The run directory.
        #[arg(long, value_name = "DIR")]
        run: PathBuf,
        /// Write the picture here instead (an existing file only with --force).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Replace an existing --out file.
        #[arg(long)]
        force: bool,
    },
    /// Re-evaluate a trained run: fresh samples, MMD (and FID for image runs with eval.fid)
    /// against the data.
    Eval {
        /// The run directory.
        #[arg(long, value_name = "DIR")]
        run: PathBuf,
        /// Number of samples (default: the run's eval.samples).
        #[arg(long)]
        samples: Option<usize>,
        /// Sampling seed (default: the run's seed).
        #[arg(long)]
        seed: Option<u64>,
        #[command(flatten)]
        sampler: ipld_train::SamplerArgs,
        /// What to decode: samples of the prior, or the first particle of `--samples` training
        /// points (their reconstructions: the ceiling a perfect prior could reach, rFID).
        #[arg(long, value_enum, default_value = "prior")]
        latents: ipld_train::eval::Latents,
        /// No progress output.
        #[arg(long)]
        quiet: bool,
    },
}

fn progress(quiet: bool) -> Progress {
    if quiet {
        Progress::Quiet
    } else {
        Progress::auto()
    }
}

fn plan(args: TrainArgs) -> anyhow::Result<Option<RunPlan>> {
    let mut sets = args.sets.clone();
    if let (Some(seed), Some(set)) = (
        args.seed,
        sets.iter()
            .find(|s| s.split('=').next().map(str::trim) == Some("seed")),
    ) {
        bail!("--seed {seed} and --set {set} both set the seed: give one");
    }
    if let Some(seed) = args.seed {
        sets.insert(0, format!("seed={seed}"));
    }
    let (config, run_dir, resume) = if let Some(dir) = &args.resume {
        let path = dir.join(ipld_train::rundir::CONFIG_FILE);
        let cfg = RunConfig::from_file(&path)
            .with_context(|| format!("--resume {}: not a run directory", dir.display()))?
            .with_overrides(&sets, &path.display().to_string())?;
        (cfg, dir.clone(), true)
    } else {
        let (base, origin) = match (&args.config, &args.preset) {
            (Some(path), _) => (RunConfig::from_file(path)?, path.display().to_string()),
            (None, Some(name)) => (RunConfig::preset(name)?, format!("preset `{name}`")),
            (None, None) => (
                RunConfig::preset("gmm").context("loading the default preset")?,
                "preset `gmm`".into(),
            ),
        };
        let mut cfg = base.with_overrides(&sets, &origin)?;
        if !cfg.data.path.is_empty() {
            let p = PathBuf::from(&cfg.data.path);
            let abs =
                std::fs::canonicalize(&p).with_context(|| format!("data.path {}", p.display()))?;
            cfg.data.path = abs.display().to_string();
        }
        let dir = args.out.clone().unwrap_or_else(|| default_run_dir(&cfg));
        (cfg, dir, false)
    };
    if args.print_config {
        // Validated, as the run saves it (`data.normalize` resolved for the data's source).
        print!("{}", config.clone().validated("--print-config")?.to_toml());
        return Ok(None);
    }
    Ok(Some(RunPlan {
        config,
        run_dir,
        resume,
        progress: progress(args.quiet),
        accept_data_change: args.accept_data_change,
        from_step: args.from_step,
    }))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // A bad IPLD_ISA is refused here, once, with the choices (the kernels cannot report it).
    ipld_particles::Isa::from_env()?;
    let json = match cli.command {
        None => {
            let Some(plan) = plan(cli.train)? else {
                return Ok(());
            };
            let ranks = Ranks::start()?;
            let comm = ranks.collective();
            let local_shards = plan.config.train.shards / comm.size().max(1);
            ipld_train::quiet_candle_pool(local_shards.max(1));
            ipld_train::interrupt::install().map_err(anyhow::Error::msg)?;
            match ranks.fail_together(ipld_train::run_on(plan, comm))? {
                Some(summary) => serde_json::to_string(&summary)?,
                // Only rank 0 reports.
                None => return Ok(()),
            }
        }
        Some(Command::Sample {
            run,
            n,
            out,
            sampler,
            seed,
            force,
            quiet,
        }) => {
            let sampling = sampler.resolve().map_err(anyhow::Error::msg)?;
            serde_json::to_string(&ipld_train::sample_run(
                &run,
                n,
                &sampling,
                seed,
                &out,
                force,
                progress(quiet),
            )?)?
        }
        Some(Command::Eval {
            run,
            samples,
            seed,
            sampler,
            latents,
            quiet,
        }) => serde_json::to_string(&ipld_train::eval_run(
            &run,
            &ipld_train::commands::EvalRequest {
                samples,
                seed,
                latents,
                sampling: sampler.resolve().map_err(anyhow::Error::msg)?,
            },
            progress(quiet),
        )?)?,
        Some(Command::Plot { run, out, force }) => {
            if let Some(o) = &out
                && o.exists()
                && !force
            {
                bail!("{}: exists; pass --force to replace it", o.display());
            }
            let png = ipld_train::charts::plot_run(&run, out.as_deref())?;
            serde_json::json!({ "plot": png, "run": run }).to_string()
        }
        Some(Command::Fid {
            real,
            fake,
            limit,
            batch,
            inception,
            save_stats,
            quiet,
        }) => {
            let opts = ipld_train::fid::FidOptions {
                limit,
                batch,
                weights: inception.unwrap_or_else(ipld_train::fid::default_weights),
                save_stats,
                progress: progress(quiet),
            };
            serde_json::to_string(&ipld_train::fid::fid_paths(&real, &fake, &opts)?)?
        }
    };
    if json.is_empty() {
        bail!("no result");
    }
    println!("{json}");
    Ok(())
}

/// The error and its causes on one line, each cause once: a message that already quotes its
/// source (a path and its OS error) is not followed by that source again.
fn error_text(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// The training command's ranks: MPI's when built with the `mpi` feature (one rank when started
/// without `mpirun`/`srun`), else one process. MPI is initialised here, once, and finalised when
/// this is dropped.
struct Ranks {
    #[cfg(feature = "mpi")]
    _universe: mpi::environment::Universe,
    comm: std::sync::Arc<dyn ipld_train::collective::Collective>,
    #[cfg(feature = "mpi")]
    mpi: std::sync::Arc<ipld_train::collective::MpiCollective>,
}

impl Ranks {
    #[cfg(feature = "mpi")]
    fn start() -> anyhow::Result<Self> {
        use mpi::traits::Communicator;
        let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Funneled)
            .context("MPI was already initialised")?;
        let mpi = std::sync::Arc::new(ipld_train::collective::MpiCollective::new(universe.world()));
        let comm: std::sync::Arc<dyn ipld_train::collective::Collective> =
            match universe.world().size() {
                1 => ipld_train::collective::single_process(),
                _ => mpi.clone(),
            };
        Ok(Self {
            _universe: universe,
            comm,
            mpi,
        })
    }

    #[cfg(not(feature = "mpi"))]
    fn start() -> anyhow::Result<Self> {
        Ok(Self {
            comm: ipld_train::collective::single_process(),
        })
    }

    fn collective(&self) -> std::sync::Arc<dyn ipld_train::collective::Collective> {
        self.comm.clone()
    }

    /// With several ranks, an error other than a (collective) interrupt ends every rank through
    /// MPI_Abort: finalising one rank while the others wait in a collective would hang the job.
    fn fail_together<T>(&self, r: Result<T, ipld_train::RunError>) -> anyhow::Result<T> {
        #[cfg(feature = "mpi")]
        if let Err(e) = &r
            && self.comm.size() > 1
            && !matches!(e, ipld_train::RunError::Interrupted { .. })
        {
            eprintln!(
                "error (rank {} of {}): {}",
                self.comm.rank(),
                self.comm.size(),
                e
            );
            self.mpi.abort(1);
        }
        Ok(r?)
    }
}

fn main() -> ExitCode {
    keep_freed_pages();
    ipld_train::pin_thread_count();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_target(false)
        // Colour codes only on a terminal: logs redirected to a file stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_text(&e));
            match e.downcast_ref::<ipld_train::RunError>() {
                Some(ipld_train::RunError::Interrupted { .. }) => {
                    ExitCode::from(ipld_train::interrupt::EXIT_STATUS)
                }
                _ => ExitCode::FAILURE,
            }
        }
    }
}
