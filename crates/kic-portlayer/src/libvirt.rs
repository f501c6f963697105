//! The hypervisor seam: the only module that talks to libvirt.

use crate::domain::{metadata_text, METADATA_NS};
use crate::error::{Error, Result};
use std::sync::Arc;
use virt::connect::Connect;
use virt::domain::Domain;

/// `VIR_DOMAIN_METADATA_ELEMENT`.
const METADATA_ELEMENT: i32 = 2;
/// `VIR_CONNECT_LIST_DOMAINS_*`: all domains, active or not.
const LIST_ALL: u32 = 0;
/// `VIR_DOMAIN_UNDEFINE_NVRAM | VIR_DOMAIN_UNDEFINE_MANAGED_SAVE`... none apply; plain undefine.
const UNDEFINE_FLAGS: u32 = 0;

#[derive(Clone)]
pub struct Hypervisor {
    conn: Arc<Connect>,
    pub uri: String,
    /// `kvm` or `qemu`, decided by probing KVM once.
    pub domain_type: &'static str,
    /// Why KVM is not used, when it is not.
    pub kvm_note: Option<String>,
}

/// A KIC domain as libvirt lists it.
#[derive(Debug, Clone)]
pub struct DomainEntry {
    pub name: String,
    pub active: bool,
    /// The metadata JSON (a `ContainerConfig`).
    pub metadata: String,
}

fn lv(what: &str, e: virt::error::Error) -> Error {
    Error::unavailable(format!("libvirt: {what}: {e}"))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal(format!("libvirt call panicked: {e}")))?
}

impl Hypervisor {
    /// Connect to `uri` and decide the domain type by booting the bootstrap image once.
    pub async fn connect(uri: &str, boot: &kic_bootstrap::BootImage) -> Result<Hypervisor> {
        let u = uri.to_string();
        // Errors come back as values; libvirt must not also print them on stderr.
        virt::error::clear_error_callback();
        let conn = blocking(move || {
            Connect::open(Some(&u)).map_err(|e| {
                Error::unavailable(format!(
                    "cannot connect to libvirt at {u}: {e} (is libvirtd running? `make deps` starts it)"
                ))
            })
        })
        .await?;
        let (k, i) = (boot.kernel.clone(), boot.initrd.clone());
        let probe = tokio::task::spawn_blocking(move || {
            crate::kvm::usable(&k, &i, kic_bootstrap::KERNEL_CMDLINE)
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        let (domain_type, kvm_note) = match probe {
            Ok(()) => ("kvm", None),
            Err(e) => ("qemu", Some(e)),
        };
        Ok(Hypervisor {
            conn: Arc::new(conn),
            uri: uri.to_string(),
            domain_type,
            kvm_note,
        })
    }

    fn lookup(conn: &Connect, name: &str) -> Result<Domain> {
        Domain::lookup_by_name(conn, name).map_err(|e| lv(&format!("look up domain {name}"), e))
    }

    /// Define a domain, or redefine an existing one of the same name (keeping its UUID, which
    /// libvirt requires).
    pub async fn define(&self, xml: String) -> Result<()> {
        let c = self.conn.clone();
        blocking(move || {
            let mut xml = xml;
            if !xml.contains("<uuid>") {
                let name = xml
                    .split_once("<name>")
                    .and_then(|(_, r)| r.split_once("</name>"))
                    .map(|(n, _)| n.to_string());
                if let Some(uuid) = name
                    .and_then(|n| Domain::lookup_by_name(&c, &n).ok())
                    .and_then(|d| d.get_uuid_string().ok())
                {
                    xml = xml.replacen("</name>", &format!("</name>\n  <uuid>{uuid}</uuid>"), 1);
                }
            }
            Domain::define_xml(&c, &xml)
                .map(|_| ())
                .map_err(|e| lv("define domain", e))
        })
        .await
    }

    pub async fn start(&self, name: &str) -> Result<()> {
        let (c, n) = (self.conn.clone(), name.to_string());
        blocking(move || {
            Self::lookup(&c, &n)?
                .create()
                .map(|_| ())
                .map_err(|e| lv(&format!("start domain {n}"), e))
        })
        .await
    }

    /// Start a defined domain with its vCPUs paused (see [`Hypervisor::resume`]).
    pub async fn start_paused(&self, name: &str) -> Result<()> {
        let (c, n) = (self.conn.clone(), name.to_string());
        blocking(move || {
            Self::lookup(&c, &n)?
                .create_with_flags(virt::sys::VIR_DOMAIN_START_PAUSED)
                .map(|_| ())
                .map_err(|e| lv(&format!("start domain {n} paused"), e))
        })
        .await
    }

    pub async fn resume(&self, name: &str) -> Result<()> {
        let (c, n) = (self.conn.clone(), name.to_string());
        blocking(move || {
            Self::lookup(&c, &n)?
                .resume()
                .map(|_| ())
                .map_err(|e| lv(&format!("resume domain {n}"), e))
        })
        .await
    }

    /// The QEMU process of a running domain (local libvirt only): its network namespace
    /// holds the tap devices libvirt made for it.
    pub fn qemu_pid(&self, name: &str) -> Result<u32> {
        let p = format!("/run/libvirt/qemu/{name}.pid");
        std::fs::read_to_string(&p)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| {
                Error::unavailable(format!(
                    "cannot read the QEMU pid of domain {name} from {p}: container networks need libvirt on this host (qemu:///system)"
                ))
            })
    }

    /// Power the VM off at once; fine if it is not running.
    pub async fn destroy(&self, name: &str) -> Result<()> {
        let (c, n) = (self.conn.clone(), name.to_string());
        blocking(move || {
            let d = Self::lookup(&c, &n)?;
            if d.is_active().unwrap_or(false) {
                if let Err(e) = d.destroy() {
                    if d.is_active().unwrap_or(false) {
                        return Err(lv(&format!("destroy domain {n}"), e));
                    }
                }
            }
            Ok(())
        })
        .await
    }

    /// Remove the domain's definition; fine if there is none.
    pub async fn undefine(&self, name: &str) -> Result<()> {
        let (c, n) = (self.conn.clone(), name.to_string());
        blocking(move || match Domain::lookup_by_name(&c, &n) {
            Ok(d) => d
                .undefine_flags(UNDEFINE_FLAGS)
                .map_err(|e| lv(&format!("undefine domain {n}"), e)),
            Err(_) => Ok(()),
        })
        .await
    }

    pub async fn is_active(&self, name: &str) -> Result<bool> {
        let (c, n) = (self.conn.clone(), name.to_string());
        blocking(move || match Domain::lookup_by_name(&c, &n) {
            Ok(d) => d
                .is_active()
                .map_err(|e| lv(&format!("state of domain {n}"), e)),
            Err(_) => Ok(false),
        })
        .await
    }

    pub async fn exists(&self, name: &str) -> bool {
        let (c, n) = (self.conn.clone(), name.to_string());
        blocking(move || Ok(Domain::lookup_by_name(&c, &n).is_ok()))
            .await
            .unwrap_or(false)
    }

    /// Resident memory of the VM's QEMU process, in KiB, and CPU time in ns (for stats).
    pub async fn info(&self, name: &str) -> Result<(u64, u64)> {
        let (c, n) = (self.conn.clone(), name.to_string());
        blocking(move || {
            let d = Self::lookup(&c, &n)?;
            let i = d.get_info().map_err(|e| lv("domain info", e))?;
            // The QEMU process's resident set (tag 7, VIR_DOMAIN_MEMORY_STAT_RSS) is what the
            // VM really uses; the domain's allocation is the fallback.
            let rss = d
                .memory_stats(0)
                .ok()
                .and_then(|v| v.iter().find(|m| m.tag == 7).map(|m| m.val));
            Ok((rss.unwrap_or(i.memory), i.cpu_time))
        })
        .await
    }

    /// Every domain that carries KIC metadata.
    pub async fn list(&self) -> Result<Vec<DomainEntry>> {
        let c = self.conn.clone();
        blocking(move || {
            let doms = c
                .list_all_domains(LIST_ALL)
                .map_err(|e| lv("list domains", e))?;
            let mut out = Vec::new();
            for d in doms {
                let Ok(el) = d.get_metadata(METADATA_ELEMENT, Some(METADATA_NS), 0) else {
                    continue;
                };
                let Some(metadata) = metadata_text(&el) else {
                    continue;
                };
                out.push(DomainEntry {
                    name: d.get_name().unwrap_or_default(),
                    active: d.is_active().unwrap_or(false),
                    metadata,
                });
            }
            Ok(out)
        })
        .await
    }
}
