//! `ipld-train`: parse arguments, resolve and validate the configuration, hand over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use ipld_train::RunConfig;

/// Train latent diffusion models with Interacting Particle Latent Diffusion (IPLD).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// TOML configuration file (default: the embedded `gmm` preset).
    #[arg(long, value_name = "FILE", conflicts_with = "preset")]
    config: Option<PathBuf>,
    /// Embedded preset to use instead of a file (gmm, circles).
    #[arg(long)]
    preset: Option<String>,
}

fn run(args: Args) -> anyhow::Result<ExitCode> {
    let cfg = match (&args.config, &args.preset) {
        (Some(path), _) => RunConfig::from_file(path)?,
        (None, Some(name)) => RunConfig::preset(name)?,
        (None, None) => RunConfig::preset("gmm").context("loading the default preset")?,
    };
    print!("{}", cfg.to_toml());
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
