//! `kic-bootstrap`: build the bootstrap image from the host's kernel package and a tether binary.

use anyhow::Context;
use clap::Parser;
use std::path::PathBuf;

/// Build (or reuse) a bootstrap image and print its directory.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The static kic-tether binary to put in as /init.
    #[arg(long)]
    tether: PathBuf,
    /// Directory holding bootstrap images (one subdirectory per version).
    #[arg(long)]
    out: PathBuf,
    /// Kernel release to use (default: the newest installed).
    #[arg(long)]
    kernel: Option<String>,
    /// Print the manifest as JSON.
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let mut inputs = kic_bootstrap::BuildInputs::new(&a.tether);
    inputs.kernel_release = a.kernel;
    let img = kic_bootstrap::build(&a.out, &inputs)
        .with_context(|| format!("building the bootstrap image in {}", a.out.display()))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&img.manifest)?);
    } else {
        println!("{}", img.dir.display());
    }
    Ok(())
}
