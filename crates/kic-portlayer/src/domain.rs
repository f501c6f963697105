//! Libvirt domain XML for container VMs, and the `<metadata>` element that carries each
//! container's configuration so the endpoint can rebuild its view from libvirt alone.

use std::path::Path;

/// Namespace of KIC's element inside a domain's `<metadata>`.
pub const METADATA_NS: &str = "https://kic.dev/xmlns/container/1";
pub const METADATA_PREFIX: &str = "kic";

pub struct DomainSpec<'a> {
    pub name: &'a str,
    pub title: &'a str,
    /// `kvm` where KVM works, `qemu` (TCG) otherwise.
    pub domain_type: &'a str,
    pub memory_mib: u64,
    pub vcpus: u32,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub cmdline: &'a str,
    pub disk: &'a Path,
    pub socket: &'a Path,
    pub console: &'a Path,
    /// JSON of the container's configuration.
    pub metadata: &'a str,
    /// Volume disks (raw), attached as `vdb`, `vdc`, ... in this order.
    pub volumes: &'a [VolumeDisk<'a>],
    /// Network interfaces (virtio-net on a tap device libvirt creates), in guest order.
    pub nics: &'a [Nic<'a>],
}

/// One NIC of the domain.
pub struct Nic<'a> {
    pub mac: &'a str,
    /// The tap device's name on the host side (at most 15 bytes).
    pub tap: &'a str,
}

fn nics(v: &[Nic]) -> String {
    v.iter()
        .map(|n| {
            format!(
                "    <interface type='ethernet'>\n      <mac address='{}'/>\n      <target dev='{}' managed='yes'/>\n      <model type='virtio'/>\n    </interface>\n",
                escape(n.mac),
                escape(n.tap)
            )
        })
        .collect()
}

/// One volume's disk in the domain.
pub struct VolumeDisk<'a> {
    pub path: &'a Path,
    /// What the guest sees in `/sys/block/vd*/serial`.
    pub serial: &'a str,
    pub read_only: bool,
}

/// Most volumes one container can have (`vdb` to `vdz`).
pub const MAX_VOLUMES: usize = 25;

/// The guest device name of the `i`-th volume disk (0 → `vdb`).
pub fn volume_dev(i: usize) -> String {
    format!("vd{}", (b'b' + i as u8) as char)
}

fn volume_disks(v: &[VolumeDisk]) -> String {
    let mut o = String::new();
    for (i, d) in v.iter().enumerate() {
        o.push_str(&format!(
            "    <disk type='file' device='disk'>\n      <driver name='qemu' type='raw' discard='unmap'/>\n      <source file='{}'/>\n      <target dev='{}' bus='virtio'/>\n      <serial>{}</serial>\n{}    </disk>\n",
            escape(&d.path.to_string_lossy()),
            volume_dev(i),
            escape(d.serial),
            if d.read_only { "      <readonly/>\n" } else { "" },
        ));
    }
    o
}

pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            c => o.push(c),
        }
    }
    o
}

fn unescape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        o.push_str(&rest[..i]);
        rest = &rest[i..];
        let end = rest.find(';').unwrap_or(rest.len() - 1);
        let ent = &rest[1..end];
        match ent {
            "amp" => o.push('&'),
            "lt" => o.push('<'),
            "gt" => o.push('>'),
            "quot" => o.push('"'),
            "apos" => o.push('\''),
            _ if ent.starts_with("#x") => {
                if let Some(c) = u32::from_str_radix(&ent[2..], 16)
                    .ok()
                    .and_then(char::from_u32)
                {
                    o.push(c)
                }
            }
            _ if ent.starts_with('#') => {
                if let Some(c) = ent[1..].parse().ok().and_then(char::from_u32) {
                    o.push(c)
                }
            }
            _ => o.push_str(&rest[..=end]),
        }
        rest = &rest[end + 1..];
    }
    o.push_str(rest);
    o
}

/// The text inside the metadata element as libvirt returns it (`<container ...>text</container>`).
pub fn metadata_text(element: &str) -> Option<String> {
    let start = element.find('>')? + 1;
    let end = element.rfind("</")?;
    (end >= start).then(|| unescape(element[start..end].trim()))
}

/// The element to store with `virDomainSetMetadata` or inside the domain XML.
pub fn metadata_element(json: &str) -> String {
    format!("<container>{}</container>", escape(json))
}

pub fn domain_xml(s: &DomainSpec) -> String {
    let p = |p: &Path| escape(&p.to_string_lossy());
    // Under TCG the default model plus RDRAND: with `random.trust_cpu=on` the guest's random
    // pool is ready at once instead of a second into the boot (anything calling getrandom()
    // early, as the tether and its multiplexer do, would wait for it).
    let cpu = if s.domain_type == "kvm" {
        "<cpu mode='host-passthrough'/>"
    } else {
        "<cpu mode='custom' match='exact' check='none'><model fallback='allow'>qemu64</model><feature policy='require' name='rdrand'/></cpu>"
    };
    format!(
        r#"<domain type='{dtype}'>
  <name>{name}</name>
  <title>{title}</title>
  <metadata>
    <{px}:container xmlns:{px}='{ns}'>{meta}</{px}:container>
  </metadata>
  <memory unit='MiB'>{mem}</memory>
  <vcpu>{vcpus}</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  {cpu}
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' discard='unmap'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
{volumes}{nics}    <channel type='unix'>
      <source mode='bind' path='{socket}'/>
      <target type='virtio' name='{channel}'/>
    </channel>
    <serial type='file'>
      <source path='{console}'/>
      <target port='0'/>
    </serial>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
"#,
        dtype = s.domain_type,
        name = escape(s.name),
        title = escape(s.title),
        px = METADATA_PREFIX,
        ns = METADATA_NS,
        meta = escape(s.metadata),
        mem = s.memory_mib,
        vcpus = s.vcpus,
        kernel = p(s.kernel),
        initrd = p(s.initrd),
        cmdline = escape(s.cmdline),
        disk = p(s.disk),
        socket = p(s.socket),
        console = p(s.console),
        channel = kic_proto::CHANNEL_NAME,
        volumes = volume_disks(s.volumes),
        nics = nics(s.nics),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_survives_escaping() {
        let json = r#"{"name":"a<b>&'c'","env":["X=\"1\""]}"#;
        let el = metadata_element(json);
        assert!(!el[11..el.len() - 12].contains('<'));
        assert_eq!(metadata_text(&el).unwrap(), json);
        assert_eq!(
            metadata_text("<kic:container xmlns:kic='x'>a&#x41;&#66;</kic:container>").unwrap(),
            "aAB"
        );
    }

    #[test]
    fn xml_names_type_and_channel() {
        let x = domain_xml(&DomainSpec {
            name: "kic-demo-web-0123456789ab",
            title: "web",
            domain_type: "qemu",
            memory_mib: 512,
            vcpus: 1,
            kernel: Path::new("/ds/bootstrap/v/vmlinux"),
            initrd: Path::new("/ds/bootstrap/v/initrd.img"),
            cmdline: "console=ttyS0",
            disk: Path::new("/ds/containers/x/disk.qcow2"),
            socket: Path::new("/run/kic/x.sock"),
            console: Path::new("/ds/containers/x/console.log"),
            metadata: "{}",
            volumes: &[
                VolumeDisk {
                    path: Path::new("/vs/volumes/a/disk.raw"),
                    serial: "kicvol0",
                    read_only: false,
                },
                VolumeDisk {
                    path: Path::new("/vs/volumes/b/disk.raw"),
                    serial: "kicvol1",
                    read_only: true,
                },
            ],
            nics: &[Nic {
                mac: "02:42:ac:10:00:02",
                tap: "kt0123456789a0",
            }],
        });
        assert!(x.starts_with("<domain type='qemu'>"));
        assert!(x.contains("<source file='/vs/volumes/a/disk.raw'/>\n      <target dev='vdb' bus='virtio'/>\n      <serial>kicvol0</serial>\n    </disk>"));
        assert!(x.contains("<target dev='vdc' bus='virtio'/>\n      <serial>kicvol1</serial>\n      <readonly/>\n    </disk>"));
        assert!(x.contains("<target type='virtio' name='org.kic.tether.0'/>"));
        assert!(!x.contains("host-passthrough"));
        assert!(x.contains("name='rdrand'"));
        assert!(x.contains("<mac address='02:42:ac:10:00:02'/>\n      <target dev='kt0123456789a0' managed='yes'/>\n      <model type='virtio'/>"));
    }
}
