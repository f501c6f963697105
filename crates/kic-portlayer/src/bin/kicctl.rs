//! `kicctl`: drive the port layer directly (a developer's and test front end; users get the
//! Docker API from `kic-vch`). Each invocation is a host process: it rebuilds its view from
//! libvirt and the datastore, serves the containers it touches, and can be killed at any time.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use kic_portlayer::{Config, CreateRequest, PortLayer};
use kic_proto::{ProcessSpec, STDERR};
use std::io::Write;
use std::path::PathBuf;
use tokio::io::AsyncReadExt;

#[derive(Parser)]
#[command(version, about = "Run containers as VMs through KIC's port layer")]
struct Cli {
    /// The datastore directory (images, container disks, bootstrap images).
    #[arg(long, env = "KIC_DATASTORE", default_value = "/var/lib/kic/datastore")]
    datastore: PathBuf,
    /// The VCH whose containers this acts on.
    #[arg(long, env = "KIC_VCH", default_value = "default")]
    vch: String,
    /// libvirt connection URI.
    #[arg(long, env = "KIC_LIBVIRT_URI", default_value = "qemu:///system")]
    uri: String,
    /// The static kic-tether binary (default: beside this program, or the cargo build output).
    #[arg(long, env = "KIC_TETHER")]
    tether: Option<PathBuf>,
    /// Extra guest kernel arguments for new containers (`kic.debug` logs boot steps to console.log).
    #[arg(long, env = "KIC_KERNEL_ARGS", default_value = "")]
    kernel_args: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct CreateArgs {
    #[arg(long)]
    name: Option<String>,
    #[arg(short = 't', long)]
    tty: bool,
    #[arg(short = 'i', long)]
    interactive: bool,
    #[arg(short = 'e', long = "env")]
    env: Vec<String>,
    #[arg(short = 'w', long)]
    workdir: Option<String>,
    #[arg(short = 'u', long)]
    user: Option<String>,
    #[arg(long)]
    entrypoint: Option<String>,
    #[arg(long)]
    hostname: Option<String>,
    #[arg(short = 'm', long)]
    memory_mib: Option<u64>,
    image: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    cmd: Vec<String>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Pull an image from a registry.
    Pull {
        reference: String,
        #[arg(long = "insecure-registry")]
        insecure: Vec<String>,
    },
    /// Import an OCI image layout directory.
    Import {
        dir: PathBuf,
        #[arg(long)]
        tag: Option<String>,
    },
    /// List images.
    Images,
    /// Create a container and print its id.
    Create(CreateArgs),
    /// Create and start a container, print its output, exit with its exit code.
    Run {
        #[command(flatten)]
        args: CreateArgs,
        #[arg(long)]
        rm: bool,
        #[arg(short = 'd', long)]
        detach: bool,
    },
    Start {
        container: String,
    },
    /// Print a container's output; `-f` follows until it stops.
    Logs {
        #[arg(short = 'f', long)]
        follow: bool,
        container: String,
    },
    /// Wait for a container to stop and print its exit code.
    Wait {
        container: String,
    },
    Kill {
        #[arg(short = 's', long, default_value = "KILL")]
        signal: String,
        container: String,
    },
    Stop {
        #[arg(short = 't', long)]
        time: Option<u64>,
        container: String,
    },
    Rm {
        #[arg(short = 'f', long)]
        force: bool,
        containers: Vec<String>,
    },
    /// List containers.
    Ps,
    Inspect {
        container: String,
    },
    Top {
        container: String,
    },
    /// Run a further process in a running container.
    Exec {
        #[arg(short = 't', long)]
        tty: bool,
        #[arg(short = 'i', long)]
        interactive: bool,
        #[arg(short = 'e', long = "env")]
        env: Vec<String>,
        #[arg(short = 'u', long)]
        user: Option<String>,
        #[arg(short = 'w', long)]
        workdir: Option<String>,
        container: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        cmd: Vec<String>,
    },
    /// Print the hypervisor and bootstrap image in use.
    Info,
}

/// The static tether: beside this program when installed, else cargo's static build output
/// (`make tether`). A plain workspace build also leaves a dynamic `kic-tether` beside this
/// program, which cannot be PID 1, so only a statically linked one is taken.
fn default_tether() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    let candidates = [
        dir.join("../x86_64-unknown-linux-gnu/release/kic-tether"),
        dir.join("../../x86_64-unknown-linux-gnu/release/kic-tether"),
        dir.join("kic-tether"),
    ];
    for c in &candidates {
        if std::fs::read(c).is_ok_and(|b| kic_bootstrap::is_static_elf(&b)) {
            return c.clone();
        }
    }
    candidates[0].clone()
}

fn create_request(a: &CreateArgs) -> CreateRequest {
    CreateRequest {
        name: a.name.clone(),
        image: a.image.clone(),
        cmd: (!a.cmd.is_empty()).then(|| a.cmd.clone()),
        entrypoint: a.entrypoint.clone().map(|e| vec![e]),
        env: a.env.clone(),
        workdir: a.workdir.clone(),
        user: a.user.clone(),
        hostname: a.hostname.clone(),
        tty: a.tty,
        open_stdin: a.interactive,
        memory_mib: a.memory_mib,
        ..Default::default()
    }
}

/// Copy our stdin into the container's until it ends, then close it explicitly.
async fn forward_stdin(mut w: kic_portlayer::StdinWriter) {
    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; 32 << 10];
    loop {
        match stdin.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if w.write(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = w.close().await;
}

async fn print_logs(pl: &PortLayer, id: &str, follow: bool) -> Result<()> {
    let mut rx = pl.logs(id, follow, false)?;
    while let Some(r) = rx.recv().await {
        if r.stream == STDERR {
            let mut e = std::io::stderr().lock();
            e.write_all(&r.data)?;
            e.flush()?;
        } else {
            let mut o = std::io::stdout().lock();
            o.write_all(&r.data)?;
            o.flush()?;
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("KIC_LOG"))
        .with_writer(std::io::stderr)
        .init();
    match real_main().await {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("kicctl: {e:#}");
            std::process::exit(125);
        }
    }
}

async fn real_main() -> Result<i32> {
    let cli = Cli::parse();
    let mut cfg = Config::new(
        &cli.datastore,
        &cli.vch,
        cli.tether.clone().unwrap_or_else(default_tether),
    );
    cfg.libvirt_uri = cli.uri.clone();
    cfg.extra_kernel_args = cli.kernel_args.clone();
    let pl = PortLayer::open(cfg)
        .await
        .context("opening the port layer")?;
    match cli.cmd {
        Cmd::Info => {
            println!("domain type: {}", pl.domain_type());
            if let Some(n) = pl.kvm_note() {
                println!("kvm: not used: {n}");
            }
            println!("bootstrap: {}", pl.boot_version());
            println!("datastore: {}", pl.datastore().display());
        }
        Cmd::Pull {
            reference,
            insecure,
        } => {
            let opts = kic_image::PullOptions {
                insecure_registries: insecure,
                ..Default::default()
            };
            let rec = pl
                .images()
                .pull(&reference, &opts, &|p: kic_image::PullProgress| {
                    eprintln!("{}: {}", p.id, p.status)
                })
                .await?;
            println!("{}", rec.id);
        }
        Cmd::Import { dir, tag } => {
            let rec = pl.images().import_oci_layout(&dir, tag.as_deref()).await?;
            println!("{}", rec.id);
        }
        Cmd::Images => {
            for i in pl.images().list()? {
                println!("{}\t{}\t{}", &i.id, i.repo_tags.join(","), i.size);
            }
        }
        Cmd::Create(a) => {
            let v = pl.create(create_request(&a)).await?;
            println!("{}", v.config.id);
        }
        Cmd::Run { args, rm, detach } => {
            let v = pl.create(create_request(&args)).await?;
            let id = v.config.id.clone();
            if detach {
                pl.start(&id).await?;
                println!("{id}");
                return Ok(0);
            }
            if let Err(e) = pl.start(&id).await {
                let code = e.exit_code.unwrap_or(125);
                eprintln!("kicctl: {e}");
                if rm {
                    let _ = pl.remove(&id, true).await;
                }
                return Ok(code);
            }
            // Follow the log from its start: nothing the process printed can be missed.
            let logs = {
                let pl = pl.clone();
                let id = id.clone();
                tokio::spawn(async move { print_logs(&pl, &id, true).await })
            };
            if args.interactive {
                let w = pl.attach_stdin(&id).await?;
                tokio::spawn(forward_stdin(w));
            }
            let code = pl.wait(&id).await?;
            let _ = logs.await;
            // Let this process finish ending the VM it serves before it exits.
            pl.settle(&id, std::time::Duration::from_secs(15)).await;
            if rm {
                pl.remove(&id, true).await?;
            }
            return Ok(code);
        }
        Cmd::Start { container } => {
            pl.start(&container).await?;
            println!("{container}");
        }
        Cmd::Logs { follow, container } => {
            print_logs(&pl, &container, follow).await?;
            pl.settle(&container, std::time::Duration::from_secs(15))
                .await;
        }
        Cmd::Wait { container } => {
            println!("{}", pl.wait(&container).await?);
            pl.settle(&container, std::time::Duration::from_secs(15))
                .await;
        }
        Cmd::Kill { signal, container } => {
            pl.kill(&container, kic_portlayer::parse_signal(&signal)?)
                .await?;
            println!("{container}");
        }
        Cmd::Stop { time, container } => {
            pl.stop(&container, time).await?;
            println!("{container}");
        }
        Cmd::Rm { force, containers } => {
            for c in containers {
                pl.remove(&c, force).await?;
                println!("{c}");
            }
        }
        Cmd::Ps => {
            println!(
                "{:<14}{:<24}{:<10}{:<6}IMAGE",
                "ID", "NAME", "STATUS", "EXIT"
            );
            for v in pl.list() {
                let exit = v.state.exit_code.map(|c| c.to_string()).unwrap_or_default();
                println!(
                    "{:<14}{:<24}{:<10}{:<6}{}",
                    &v.config.id[..12],
                    v.config.name,
                    v.state.status.as_str(),
                    exit,
                    v.config.image
                );
            }
        }
        Cmd::Inspect { container } => {
            let v = pl.inspect(&container)?;
            println!(
                "{}",
                serde_json::to_string_pretty(
                    &serde_json::json!({"Config": v.config, "State": v.state})
                )?
            );
        }
        Cmd::Top { container } => {
            let (titles, rows) = pl.top(&container).await?;
            println!("{}", titles.join("\t"));
            for r in rows {
                println!("{}", r.join("\t"));
            }
        }
        Cmd::Exec {
            tty,
            interactive,
            env,
            user,
            workdir,
            container,
            cmd,
        } => {
            let spec = ProcessSpec {
                args: cmd,
                env,
                cwd: workdir.unwrap_or_default(),
                user: user.unwrap_or_default(),
                tty,
                stdin: interactive,
                size: None,
            };
            let mut p = match pl.exec(&container, spec).await {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("kicctl: {e}");
                    return Ok(e.exit_code.unwrap_or(126));
                }
            };
            if let Some(w) = p.stdin.take() {
                tokio::spawn(forward_stdin(w));
            }
            while let Some((fd, b)) = p.output.recv().await {
                if fd == STDERR {
                    std::io::stderr().write_all(&b)?;
                } else {
                    let mut o = std::io::stdout().lock();
                    o.write_all(&b)?;
                    o.flush()?;
                }
            }
            return Ok(p.wait().await);
        }
    }
    Ok(0)
}
