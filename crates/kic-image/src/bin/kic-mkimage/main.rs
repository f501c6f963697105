//! `kic-mkimage`: builds test images as OCI layouts without internet, optionally pushes them.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use kic_image::mkimage::{self, PushCompression};

#[derive(Parser)]
#[command(about = "Build KIC test images (OCI layouts) from host packages, no internet needed")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// busybox from the host's busybox-static, every applet linked, users root and user (1000)
    Busybox {
        #[command(flatten)]
        common: Common,
        /// The static busybox binary to use
        #[arg(long, default_value = "/bin/busybox")]
        busybox: PathBuf,
    },
    /// A minimal Debian made by debootstrap from this machine's apt mirror
    Debian {
        #[command(flatten)]
        common: Common,
        /// Cache for downloaded packages and the debootstrapped tree (second run is fast)
        #[arg(long, default_value = "/var/cache/kic-mkimage")]
        cache: PathBuf,
        #[arg(long, default_value = "bookworm")]
        suite: String,
        /// Mirror URL; default: the first apt source of this machine serving the suite
        #[arg(long)]
        mirror: Option<String>,
    },
    /// An index with linux/amd64 (busybox) and a tiny linux/arm64 image
    Multiarch {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value = "/bin/busybox")]
        busybox: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Compress {
    Gzip,
    Zstd,
}

#[derive(Args)]
struct Common {
    /// Directory for the OCI image layout
    #[arg(long)]
    out: PathBuf,
    /// Ref name inside the layout
    #[arg(long, default_value = "latest")]
    tag: String,
    /// Push to this reference (e.g. 127.0.0.1:5000/busybox:latest) with skopeo
    #[arg(long)]
    push: Option<String>,
    /// Push over plain HTTP / unverified TLS
    #[arg(long)]
    insecure: bool,
    /// Credentials for the push, user:password
    #[arg(long)]
    creds: Option<String>,
    /// Layer compression in the registry
    #[arg(long, value_enum, default_value = "gzip")]
    compress: Compress,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let common = match &cli.cmd {
        Cmd::Busybox { common, busybox } => {
            mkimage::busybox(&common.out, busybox, &common.tag)
                .context("building the busybox image")?;
            common
        }
        Cmd::Debian {
            common,
            cache,
            suite,
            mirror,
        } => {
            mkimage::debian(&common.out, cache, suite, mirror.as_deref(), &common.tag)
                .context("building the Debian image")?;
            common
        }
        Cmd::Multiarch { common, busybox } => {
            mkimage::multiarch(&common.out, busybox, &common.tag)
                .context("building the multi-arch index")?;
            common
        }
    };
    println!("wrote OCI layout {}:{}", common.out.display(), common.tag);
    if let Some(dest) = &common.push {
        let c = match common.compress {
            Compress::Gzip => PushCompression::Keep,
            Compress::Zstd => PushCompression::Zstd,
        };
        mkimage::push(
            &common.out,
            &common.tag,
            dest,
            common.insecure,
            common.creds.as_deref(),
            c,
        )
        .with_context(|| format!("pushing to {dest}"))?;
        println!("pushed {dest}");
    }
    Ok(())
}
