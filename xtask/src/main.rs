//! Project chores, run as `cargo xtask <command>` (alias in `.cargo/config.toml`).
//!
//! - `synth`: write one of the paper's synthetic datasets (Appendix B.1) to `.npy`/`.safetensors`,
//!   e.g. to inspect it in NumPy or to feed it back through `data.path`.

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
enum Command {
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
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
