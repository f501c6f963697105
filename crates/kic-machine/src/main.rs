//! kic-machine: the administrator's CLI of KIC (create, ls, inspect, configure, upgrade,
//! delete, debug, version), after VIC's vic-machine.

mod certs;
mod checks;
mod cli;
/// The contract with kic-vch, compiled from kic-vch's own source so both read the same types
/// without kic-machine linking the endpoint (libvirt, the port layer) into itself.
#[path = "../../kic-vch/src/config.rs"]
#[allow(dead_code)]
mod config;
mod create;
mod http;
mod layout;
mod libvirt;
mod manage;
mod supervise;
mod util;

use clap::Parser;
use cli::{Cli, Cmd};

fn main() {
    let cli = Cli::parse();
    if !matches!(cli.cmd, Cmd::Supervise(_)) {
        // A CLI whose reader went away (`kic-machine inspect x | head`) ends quietly, as
        // coreutils do, instead of panicking on the next println!. The supervisor keeps
        // the ignored SIGPIPE: it must outlive whatever read its output.
        // SAFETY: called before any thread exists; SIG_DFL is a valid disposition.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    util::start_clock();
    // Absolute: the supervisor runs in the VCH's directory and gets this path.
    let root = match util::absolute(&cli.state_root) {
        Ok(r) => r,
        Err(e) => {
            error!("{e:#}");
            std::process::exit(1);
        }
    };
    let (verb, r) = match &cli.cmd {
        Cmd::Create(a) => ("create", create::run(&root, a)),
        Cmd::Ls { format } => ("ls", manage::ls(&root, *format)),
        Cmd::Inspect(a) => ("inspect", manage::inspect(&root, a)),
        Cmd::Configure(a) => ("configure", manage::configure(&root, a)),
        Cmd::Upgrade(a) => ("upgrade", manage::upgrade(&root, a)),
        Cmd::Delete(a) => ("delete", manage::delete(&root, a)),
        Cmd::Debug(a) => ("debug", manage::debug(&root, a)),
        Cmd::Start(a) => ("start", manage::start_cmd(&root, a)),
        Cmd::Stop(n) => ("stop", {
            layout::Vch::open(&root, n.name()).and_then(|v| {
                if supervise::stop(&v)? {
                    info!("Stopped the endpoint of VCH {}", v.name);
                } else {
                    info!("The endpoint of VCH {} was not running", v.name);
                }
                Ok(())
            })
        }),
        Cmd::Version => {
            manage::version();
            ("version", Ok(()))
        }
        Cmd::Supervise(n) => ("supervise", {
            layout::Vch::open(&root, n.name()).and_then(|v| supervise::run(&v))
        }),
    };
    if let Err(e) = r {
        error!("--------------------");
        error!("kic-machine {verb} failed: {e:#}");
        std::process::exit(1);
    }
}
