//! The container's network inside the guest: loopback, and each virtio-net device the host
//! attached, found by its MAC address, renamed (`eth0`, `eth1`, ...), addressed and brought up,
//! with the default route through the gateway the host names. An interface marked `dhcp` gets
//! its address (and, if it is the first, the default route) from a DHCP server on its segment
//! instead ([`crate::dhcp`]), and keeps it renewed.
//!
//! Plain `ioctl`s on an `AF_INET` socket (the same calls `ifconfig` and `route` make): the guest
//! has no netlink tooling, and these few calls need none.

use crate::dhcp;
use kic_proto::{Lease, NetInterface};
use std::ffi::CString;
use std::fs;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

/// Where the kernel lists network devices.
const SYS_CLASS_NET: &str = "/sys/class/net";
/// How long a device the host attached may take to appear.
const DEVICE_WAIT: Duration = Duration::from_secs(10);

/// A MAC address, compared as bytes (the host may write it in either case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mac([u8; 6]);

impl std::str::FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> Result<Mac, String> {
        let bad = || format!("invalid MAC address {s:?} (want six hex pairs: 02:42:ac:11:00:02)");
        let s = s.trim();
        let parts: Vec<&str> = s.split([':', '-']).collect();
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut m = [0u8; 6];
        for (b, p) in m.iter_mut().zip(parts) {
            if p.len() != 2 {
                return Err(bad());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        Ok(Mac(m))
    }
}

impl Mac {
    pub fn bytes(&self) -> [u8; 6] {
        self.0
    }
}

impl std::fmt::Display for Mac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// An IPv4 address with its prefix length, from `a.b.c.d/len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    pub fn netmask(&self) -> Ipv4Addr {
        match self.prefix {
            0 => Ipv4Addr::UNSPECIFIED,
            p => Ipv4Addr::from(u32::MAX << (32 - u32::from(p))),
        }
    }

    /// True when `ip` is on this address's subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::from(self.netmask());
        u32::from(ip) & mask == u32::from(self.addr) & mask
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Cidr, String> {
        let (a, p) = s.split_once('/').ok_or_else(|| {
            format!("address {s:?} has no prefix length (want a.b.c.d/len, e.g. 172.17.0.2/16)")
        })?;
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("invalid IPv4 address {a:?} in {s:?}"))?;
        let prefix: u8 = p
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("invalid prefix length {p:?} in {s:?} (want 0 to 32)"))?;
        Ok(Cidr { addr, prefix })
    }
}

/// How an interface gets its address.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Addressing {
    /// The host's address, and the default route through `gateway` if there is one.
    Static {
        cidr: Cidr,
        gateway: Option<Ipv4Addr>,
    },
    /// A DHCP server's.
    Dhcp,
}

/// One interface to set up, checked before anything in the guest changes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Plan {
    mac: Mac,
    name: String,
    addressing: Addressing,
}

impl Plan {
    fn gateway(&self) -> Option<Ipv4Addr> {
        match self.addressing {
            Addressing::Static { gateway, .. } => gateway,
            Addressing::Dhcp => None,
        }
    }
}

/// The kernel's rules for interface names (`dev_valid_name`).
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
}

fn plan(ifaces: &[NetInterface]) -> Result<Vec<Plan>, String> {
    let mut plans: Vec<Plan> = Vec::new();
    for i in ifaces {
        let what = format!("network interface {:?} (MAC {})", i.name, i.mac);
        let mac: Mac = i.mac.parse().map_err(|e| format!("{what}: {e}"))?;
        if !valid_name(&i.name) {
            return Err(format!(
                "{what}: invalid interface name (1 to 15 characters, no '/', ':' or spaces)"
            ));
        }
        let addressing = if i.dhcp {
            if !i.address.is_empty() || i.gateway.is_some() {
                return Err(format!(
                    "{what}: DHCP and a fixed address or gateway exclude each other"
                ));
            }
            Addressing::Dhcp
        } else {
            let cidr: Cidr = i.address.parse().map_err(|e| format!("{what}: {e}"))?;
            let gateway = match &i.gateway {
                None => None,
                Some(g) => {
                    let gw: Ipv4Addr = g
                        .parse()
                        .map_err(|_| format!("{what}: invalid gateway address {g:?}"))?;
                    if !cidr.contains(gw) {
                        return Err(format!(
                            "{what}: gateway {gw} is not on the subnet of {}",
                            i.address
                        ));
                    }
                    Some(gw)
                }
            };
            Addressing::Static { cidr, gateway }
        };
        if let Some(p) = plans.iter().find(|p| p.name == i.name || p.mac == mac) {
            return Err(format!(
                "{what}: clashes with interface {:?} (MAC {}): names and MACs must be unique",
                p.name, p.mac
            ));
        }
        let has_gateway = matches!(
            addressing,
            Addressing::Static {
                gateway: Some(_),
                ..
            }
        );
        if has_gateway && plans.iter().any(|p| p.gateway().is_some()) {
            return Err(format!(
                "{what}: a second default gateway; only one interface may have one"
            ));
        }
        if has_gateway
            && plans
                .first()
                .is_some_and(|p| p.addressing == Addressing::Dhcp)
        {
            return Err(format!(
                "{what}: a second default gateway; the first interface's DHCP lease gives the \
                 default route"
            ));
        }
        plans.push(Plan {
            mac,
            name: i.name.clone(),
            addressing,
        });
    }
    Ok(plans)
}

/// The devices in a `/sys/class/net`-like directory: (name, MAC, is backed by hardware).
fn devices(dir: &Path) -> Vec<(String, Option<Mac>, bool)> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<_> = rd
        .flatten()
        .map(|e| {
            let p = e.path();
            let mac = fs::read_to_string(p.join("address"))
                .ok()
                .and_then(|a| a.parse().ok());
            (
                e.file_name().to_string_lossy().into_owned(),
                mac,
                p.join("device").exists(),
            )
        })
        .collect();
    v.sort();
    v
}

/// The name of the device with `mac`; a device backed by hardware wins over a virtual one with
/// the same address (a failover master copies its member's MAC).
fn device_with_mac(devs: &[(String, Option<Mac>, bool)], mac: Mac) -> Option<String> {
    devs.iter()
        .filter(|(_, m, _)| *m == Some(mac))
        .max_by_key(|(_, _, hw)| *hw)
        .map(|(n, _, _)| n.clone())
}

/// Wait until every planned MAC is present; the current name of each, in plan order.
fn wait_for_devices(dir: &Path, plans: &[Plan], timeout: Duration) -> Result<Vec<String>, String> {
    let start = Instant::now();
    loop {
        let devs = devices(dir);
        let found: Vec<Option<String>> = plans
            .iter()
            .map(|p| device_with_mac(&devs, p.mac))
            .collect();
        if let Some(missing) = found.iter().position(Option::is_none) {
            if start.elapsed() >= timeout {
                let present: Vec<String> = devs
                    .iter()
                    .map(|(n, m, _)| match m {
                        Some(m) => format!("{n} ({m})"),
                        None => n.clone(),
                    })
                    .collect();
                let p = &plans[missing];
                return Err(format!(
                    "network interface {}: no network device with MAC {} appeared within {:?} \
                     (devices present: {}); is the VM's NIC attached with that MAC and a virtio model?",
                    p.name,
                    p.mac,
                    timeout,
                    present.join(", ")
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        return Ok(found.into_iter().map(|n| n.expect("all found")).collect());
    }
}

/// False when the device `name` in a `/sys/class/net`-like directory reports no carrier (its
/// link is down); true when it has one or does not say.
fn has_carrier(sys_class_net: &Path, name: &str) -> bool {
    fs::read_to_string(sys_class_net.join(name).join("carrier")).map_or(true, |c| c.trim() != "0")
}

/// An `AF_INET` datagram socket for the interface `ioctl`s.
struct Ctl(OwnedFd);

fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr are both 16 bytes of plain data; this is how the
    // kernel's interface calls take an IPv4 address.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn c_name(name: &str) -> [libc::c_char; libc::IFNAMSIZ] {
    let mut n = [0 as libc::c_char; libc::IFNAMSIZ];
    for (d, s) in n.iter_mut().zip(name.bytes().take(libc::IFNAMSIZ - 1)) {
        *d = s as libc::c_char;
    }
    n
}

/// The kernel's `struct rtentry` (`<linux/route.h>`), which the libc crate has only for musl.
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

impl Ctl {
    fn new() -> Result<Ctl, String> {
        // SAFETY: plain socket(2).
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(format!(
                "cannot open a socket to configure the network: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: fd is a fresh descriptor we own.
        Ok(Ctl(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn ifreq_ioctl(&self, req: libc::c_ulong, ifr: &mut libc::ifreq) -> std::io::Result<()> {
        // SAFETY: every request used here takes a `struct ifreq`, which outlives the call.
        let r = unsafe { libc::ioctl(self.0.as_raw_fd(), req as _, ifr as *mut libc::ifreq) };
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    fn ifreq(name: &str) -> libc::ifreq {
        // SAFETY: ifreq is plain data; all zeroes is a valid value.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        ifr.ifr_name = c_name(name);
        ifr
    }

    fn rename(&self, from: &str, to: &str) -> std::io::Result<()> {
        let mut ifr = Ctl::ifreq(from);
        ifr.ifr_ifru.ifru_newname = c_name(to);
        self.ifreq_ioctl(libc::SIOCSIFNAME, &mut ifr)
    }

    fn set_addr(&self, name: &str, cidr: Cidr) -> std::io::Result<()> {
        let mut ifr = Ctl::ifreq(name);
        ifr.ifr_ifru.ifru_addr = sockaddr(cidr.addr);
        self.ifreq_ioctl(libc::SIOCSIFADDR, &mut ifr)?;
        // After the address: SIOCSIFADDR resets the mask to the address's class; setting the
        // mask also moves the broadcast address with it.
        let mut ifr = Ctl::ifreq(name);
        ifr.ifr_ifru.ifru_netmask = sockaddr(cidr.netmask());
        self.ifreq_ioctl(libc::SIOCSIFNETMASK, &mut ifr)
    }

    fn up(&self, name: &str) -> std::io::Result<()> {
        let mut ifr = Ctl::ifreq(name);
        self.ifreq_ioctl(libc::SIOCGIFFLAGS, &mut ifr)?;
        // SAFETY: SIOCGIFFLAGS filled in the flags member.
        let flags = unsafe { ifr.ifr_ifru.ifru_flags };
        ifr.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
        self.ifreq_ioctl(libc::SIOCSIFFLAGS, &mut ifr)
    }

    fn default_route(&self, dev: &str, gateway: Ipv4Addr) -> std::io::Result<()> {
        let dev = CString::new(dev).map_err(|_| std::io::ErrorKind::InvalidInput)?;
        let mut rt = RtEntry {
            rt_pad1: 0,
            rt_dst: sockaddr(Ipv4Addr::UNSPECIFIED),
            rt_gateway: sockaddr(gateway),
            rt_genmask: sockaddr(Ipv4Addr::UNSPECIFIED),
            rt_flags: libc::RTF_UP | libc::RTF_GATEWAY,
            rt_pad2: 0,
            rt_pad3: 0,
            rt_pad4: std::ptr::null_mut(),
            rt_metric: 0,
            rt_dev: dev.as_ptr() as *mut libc::c_char,
            rt_mtu: 0,
            rt_window: 0,
            rt_irtt: 0,
        };
        // SAFETY: SIOCADDRT takes a `struct rtentry`; it and the name it points to outlive
        // the call, and the kernel only reads them.
        let r = unsafe {
            libc::ioctl(
                self.0.as_raw_fd(),
                libc::SIOCADDRT as _,
                &mut rt as *mut RtEntry,
            )
        };
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

/// Bring `lo` up and set up every interface the host attached, before the container runs. The
/// leases of the DHCP interfaces, which stay renewed for as long as the VM runs.
pub fn configure(ifaces: &[NetInterface]) -> Result<Vec<Lease>, String> {
    let c = configure_in(Path::new(SYS_CLASS_NET), ifaces, DEVICE_WAIT, &dhcp::TIMING)?;
    for k in c.keepers {
        k.detach();
    }
    Ok(c.leases)
}

/// What [`configure_in`] set up: the DHCP leases and the threads keeping them.
struct Configured {
    leases: Vec<Lease>,
    keepers: Vec<dhcp::Keeper>,
}

fn configure_in(
    sys_class_net: &Path,
    ifaces: &[NetInterface],
    wait: Duration,
    timing: &dhcp::Timing,
) -> Result<Configured, String> {
    let plans = plan(ifaces)?;
    let ctl = Ctl::new()?;
    // Bringing `lo` up gives it 127.0.0.1/8 (and ::1), as in every Docker container.
    ctl.up("lo")
        .map_err(|e| format!("cannot bring up the loopback interface lo: {e}"))?;
    let mut done = Configured {
        leases: Vec::new(),
        keepers: Vec::new(),
    };
    if plans.is_empty() {
        return Ok(done);
    }
    let current = wait_for_devices(sys_class_net, &plans, wait)?;
    // A device whose current name another one wants moves to a temporary name first, so that
    // devices the kernel named in another order (the device for eth1 came up as eth0) can swap.
    // In the usual case (the kernel's order is the wanted one) nothing is renamed at all.
    let mut names = current.clone();
    for (i, (p, cur)) in plans.iter().zip(&current).enumerate() {
        if *cur != p.name && plans.iter().any(|q| q.name == *cur) {
            let tmp = format!("kicnet{i}");
            ctl.rename(cur, &tmp).map_err(|e| {
                format!(
                    "network interface {} (MAC {}): cannot rename device {cur} to {tmp}: {e}",
                    p.name, p.mac
                )
            })?;
            names[i] = tmp;
        }
    }
    for (p, cur) in plans.iter().zip(&names) {
        let what = format!("network interface {} (MAC {})", p.name, p.mac);
        if *cur != p.name {
            ctl.rename(cur, &p.name).map_err(|e| {
                let hint = if e.raw_os_error() == Some(libc::EEXIST) {
                    " (another device has that name)"
                } else {
                    ""
                };
                format!(
                    "{what}: cannot rename device {cur} to {}: {e}{hint}",
                    p.name
                )
            })?;
        }
        if let Addressing::Static { cidr, .. } = p.addressing {
            ctl.set_addr(&p.name, cidr).map_err(|e| {
                format!(
                    "{what}: cannot set address {}/{}: {e}",
                    cidr.addr, cidr.prefix
                )
            })?;
        }
        ctl.up(&p.name)
            .map_err(|e| format!("{what}: cannot bring the interface up: {e}"))?;
    }
    for p in &plans {
        if let Some(gw) = p.gateway() {
            ctl.default_route(&p.name, gw).map_err(|e| {
                format!(
                    "network interface {} (MAC {}): cannot add the default route via {gw}: {e}",
                    p.name, p.mac
                )
            })?;
        }
    }
    // The DHCP interfaces, all at once: each may wait for its server up to `timing.give_up`.
    let acquired = std::thread::scope(|s| {
        let clients: Vec<_> = plans
            .iter()
            .zip(ifaces)
            .enumerate()
            .filter(|(_, (p, _))| p.addressing == Addressing::Dhcp)
            .map(|(n, (p, i))| {
                let h = s.spawn(move || {
                    let label = format!("{} (MAC {})", p.name, p.mac);
                    let mut t = dhcp::UdpTransport::on_device(&p.name).map_err(|e| {
                        format!("network interface {label}: cannot open a DHCP client socket: {e}")
                    })?;
                    let (b, since) =
                        dhcp::acquire(&mut t, p.mac.bytes(), &label, timing).map_err(|e| {
                            if has_carrier(sys_class_net, &p.name) {
                                e
                            } else {
                                format!("{e} (the device has no carrier: its link is down)")
                            }
                        })?;
                    Ok((t, b, since))
                });
                (n, p, i, h)
            })
            .collect();
        clients
            .into_iter()
            .map(|(n, p, i, h)| {
                let r: Result<_, String> = h
                    .join()
                    .unwrap_or_else(|_| Err(format!("DHCP on {}: the client panicked", p.name)));
                (n, p, i, r)
            })
            .collect::<Vec<_>>()
    });
    for (n, p, i, r) in acquired {
        let (t, b, since) = r?;
        let what = format!("network interface {} (MAC {})", p.name, p.mac);
        let cidr = Cidr {
            addr: b.address,
            prefix: b.prefix,
        };
        ctl.set_addr(&p.name, cidr).map_err(|e| {
            format!(
                "{what}: cannot set address {}/{} (leased from the DHCP server {}): {e}",
                cidr.addr, cidr.prefix, b.server
            )
        })?;
        // The first interface's router is the default route, as a static gateway is.
        if let (0, Some(gw)) = (n, b.routers.first()) {
            ctl.default_route(&p.name, *gw).map_err(|e| {
                format!(
                    "{what}: cannot add the default route via {gw} (the router of its DHCP \
                     lease from {}): {e}",
                    b.server
                )
            })?;
        }
        done.leases.push(Lease {
            mac: i.mac.clone(),
            address: format!("{}/{}", b.address, b.prefix),
            gateway: b.routers.first().map(Ipv4Addr::to_string),
            dns: b.dns.iter().map(Ipv4Addr::to_string).collect(),
            server: b.server.to_string(),
            lease_secs: b.lease_secs,
        });
        let label = format!("{} (MAC {})", p.name, p.mac);
        done.keepers
            .push(dhcp::keep(t, p.mac.bytes(), label, b, since, *timing));
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(mac: &str, name: &str, address: &str, gateway: Option<&str>) -> NetInterface {
        NetInterface {
            mac: mac.into(),
            name: name.into(),
            address: address.into(),
            gateway: gateway.map(String::from),
            dhcp: false,
        }
    }

    fn dhcp_iface(mac: &str, name: &str) -> NetInterface {
        NetInterface {
            mac: mac.into(),
            name: name.into(),
            dhcp: true,
            ..Default::default()
        }
    }

    #[test]
    fn cidr_parses_into_address_and_mask() {
        let c: Cidr = "172.17.0.2/16".parse().unwrap();
        assert_eq!(c.addr, Ipv4Addr::new(172, 17, 0, 2));
        assert_eq!(c.netmask(), Ipv4Addr::new(255, 255, 0, 0));
        let masks = [
            ("10.0.0.1/0", "0.0.0.0"),
            ("10.0.0.1/1", "128.0.0.0"),
            ("10.0.0.1/8", "255.0.0.0"),
            ("192.168.1.9/20", "255.255.240.0"),
            ("192.168.1.9/24", "255.255.255.0"),
            ("192.168.1.9/31", "255.255.255.254"),
            ("192.168.1.9/32", "255.255.255.255"),
        ];
        for (s, m) in masks {
            let c: Cidr = s.parse().unwrap();
            assert_eq!(c.netmask().to_string(), m, "{s}");
        }
        assert!(c.contains(Ipv4Addr::new(172, 17, 255, 1)));
        assert!(!c.contains(Ipv4Addr::new(172, 18, 0, 1)));
        for bad in [
            "172.17.0.2",
            "172.17.0.2/33",
            "172.17.0.2/",
            "172.17.0/16",
            "172.17.0.256/16",
            "/16",
            "172.17.0.2/-1",
            "fe80::1/64",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        let e = "172.17.0.2".parse::<Cidr>().unwrap_err();
        assert!(e.contains("no prefix length"), "{e}");
    }

    #[test]
    fn macs_compare_as_bytes() {
        let a: Mac = "02:42:AC:10:00:02".parse().unwrap();
        let b: Mac = "02:42:ac:10:00:02\n".parse().unwrap();
        assert_eq!(a, b);
        assert_eq!(a, "02-42-ac-10-00-02".parse().unwrap());
        assert_ne!(a, "02:42:ac:10:00:03".parse().unwrap());
        assert_eq!(a.to_string(), "02:42:ac:10:00:02");
        for bad in [
            "02:42:ac:10:00",
            "02:42:ac:10:00:02:01",
            "2:42:ac:10:00:02",
            "02:42:ac:10:00:0g",
            "0242ac100002",
            "",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
    }

    #[test]
    fn plans_are_checked_before_anything_changes() {
        let ok = plan(&[
            iface(
                "02:42:ac:10:00:02",
                "eth0",
                "172.16.0.2/16",
                Some("172.16.0.1"),
            ),
            iface("02:42:ac:11:00:02", "eth1", "172.17.0.2/16", None),
        ])
        .unwrap();
        assert_eq!(ok[0].gateway(), Some(Ipv4Addr::new(172, 16, 0, 1)));
        let err = |v: &[NetInterface]| plan(v).unwrap_err();
        let e = err(&[iface("02:42:ac:10:00:02", "eth0", "172.16.0.2", None)]);
        assert!(
            e.contains("\"eth0\"") && e.contains("no prefix length"),
            "{e}"
        );
        let e = err(&[iface("02:42:ac:10:00", "eth0", "172.16.0.2/16", None)]);
        assert!(e.contains("invalid MAC"), "{e}");
        let e = err(&[iface("02:42:ac:10:00:02", "a/b", "172.16.0.2/16", None)]);
        assert!(e.contains("invalid interface name"), "{e}");
        let e = err(&[iface(
            "02:42:ac:10:00:02",
            "averyveryverylongname",
            "1.2.3.4/8",
            None,
        )]);
        assert!(e.contains("invalid interface name"), "{e}");
        let e = err(&[iface(
            "02:42:ac:10:00:02",
            "eth0",
            "172.16.0.2/16",
            Some("10.0.0.1"),
        )]);
        assert!(e.contains("not on the subnet"), "{e}");
        let e = err(&[
            iface("02:42:ac:10:00:02", "eth0", "172.16.0.2/16", None),
            iface("02:42:AC:10:00:02", "eth1", "172.17.0.2/16", None),
        ]);
        assert!(e.contains("must be unique"), "{e}");
        let e = err(&[
            iface(
                "02:42:ac:10:00:02",
                "eth0",
                "172.16.0.2/16",
                Some("172.16.0.1"),
            ),
            iface(
                "02:42:ac:11:00:02",
                "eth1",
                "172.17.0.2/16",
                Some("172.17.0.1"),
            ),
        ]);
        assert!(e.contains("second default gateway"), "{e}");
    }

    #[test]
    fn dhcp_interfaces_have_no_fixed_address_and_the_first_gives_the_route() {
        let ok = plan(&[
            dhcp_iface("02:42:0a:63:07:32", "eth0"),
            iface("02:42:ac:11:00:02", "eth1", "172.17.0.2/16", None),
        ])
        .unwrap();
        assert_eq!(ok[0].addressing, Addressing::Dhcp);
        assert_eq!(ok[0].gateway(), None);
        // A later DHCP interface next to a static gateway: that gateway is the route.
        let ok = plan(&[
            iface(
                "02:42:ac:11:00:02",
                "eth0",
                "172.17.0.2/16",
                Some("172.17.0.1"),
            ),
            dhcp_iface("02:42:0a:63:07:32", "eth1"),
        ])
        .unwrap();
        assert_eq!(ok[1].addressing, Addressing::Dhcp);
        let e = plan(&[NetInterface {
            address: "10.99.7.50/24".into(),
            ..dhcp_iface("02:42:0a:63:07:32", "eth0")
        }])
        .unwrap_err();
        assert!(
            e.contains("\"eth0\"") && e.contains("exclude each other"),
            "{e}"
        );
        let e = plan(&[NetInterface {
            gateway: Some("10.99.7.1".into()),
            ..dhcp_iface("02:42:0a:63:07:32", "eth0")
        }])
        .unwrap_err();
        assert!(e.contains("exclude each other"), "{e}");
        let e = plan(&[
            dhcp_iface("02:42:0a:63:07:32", "eth0"),
            iface(
                "02:42:ac:11:00:02",
                "eth1",
                "172.17.0.2/16",
                Some("172.17.0.1"),
            ),
        ])
        .unwrap_err();
        assert!(
            e.contains("\"eth1\"") && e.contains("DHCP lease gives the default route"),
            "{e}"
        );
        let e = plan(&[
            dhcp_iface("02:42:0a:63:07:32", "eth0"),
            dhcp_iface("02:42:0a:63:07:32", "eth1"),
        ])
        .unwrap_err();
        assert!(e.contains("must be unique"), "{e}");
    }

    fn fake_sysfs(devs: &[(&str, &str, bool)]) -> tempfile_dir::Dir {
        let d = tempfile_dir::Dir::new("sysnet");
        for (name, mac, hw) in devs {
            let p = d.0.join(name);
            fs::create_dir_all(&p).unwrap();
            fs::write(p.join("address"), format!("{mac}\n")).unwrap();
            if *hw {
                fs::create_dir(p.join("device")).unwrap();
            }
        }
        d
    }

    /// A temporary directory removed on drop (the tether has no tempfile dependency).
    mod tempfile_dir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new(tag: &str) -> Dir {
                use std::sync::atomic::{AtomicUsize, Ordering};
                static N: AtomicUsize = AtomicUsize::new(0);
                let p = std::env::temp_dir().join(format!(
                    "kic-tether-{tag}-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                let _ = std::fs::remove_dir_all(&p);
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn devices_are_found_by_mac_and_a_missing_one_is_named() {
        let d = fake_sysfs(&[
            ("lo", "00:00:00:00:00:00", false),
            ("eth0", "02:42:ac:11:00:02", true),
            ("eth1", "02:42:AC:10:00:02", true),
            // A failover master carries its member's MAC; the hardware device is the one.
            ("net0", "02:42:ac:11:00:02", false),
        ]);
        let plans = plan(&[
            iface("02:42:ac:10:00:02", "eth0", "172.16.0.2/16", None),
            iface("02:42:ac:11:00:02", "eth1", "172.17.0.2/16", None),
        ])
        .unwrap();
        let names = wait_for_devices(&d.0, &plans, Duration::ZERO).unwrap();
        assert_eq!(names, ["eth1", "eth0"]);
        let missing = plan(&[iface("02:42:ac:12:00:02", "eth2", "172.18.0.2/16", None)]).unwrap();
        let t = Instant::now();
        let e = wait_for_devices(&d.0, &missing, Duration::from_millis(100)).unwrap_err();
        assert!(t.elapsed() >= Duration::from_millis(100));
        assert!(
            e.contains("02:42:ac:12:00:02")
                && e.contains("eth2")
                && e.contains("eth0 (02:42:ac:11:00:02)"),
            "{e}"
        );
    }

    #[test]
    fn a_missing_carrier_is_seen() {
        let d = tempfile_dir::Dir::new("carrier");
        for (name, carrier) in [("eth0", "1"), ("eth1", "0")] {
            fs::create_dir(d.0.join(name)).unwrap();
            fs::write(d.0.join(name).join("carrier"), format!("{carrier}\n")).unwrap();
        }
        assert!(has_carrier(&d.0, "eth0"));
        assert!(!has_carrier(&d.0, "eth1"));
        // A device that does not say (the file cannot be read while it is down).
        assert!(has_carrier(&d.0, "absent"));
    }

    fn sh_in(cmd: &str) -> String {
        let out = std::process::Command::new("sh")
            .args(["-c", cmd])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The real calls, in a network namespace of a thread of its own with two veth devices
    /// whose kernel names are the other way round from the names wanted. Needs root and `ip`.
    #[test]
    fn configures_real_devices_in_a_private_network_namespace() {
        if !nix::unistd::geteuid().is_root()
            || !Path::new("/usr/sbin/ip").exists() && !Path::new("/sbin/ip").exists()
        {
            eprintln!("skipped: needs root and iproute2");
            return;
        }
        std::thread::spawn(|| {
            use nix::mount::{mount, MsFlags};
            use nix::sched::{unshare, CloneFlags};
            unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_FS)
                .expect("unshare");
            mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
                .expect("make / private");
            let sys = tempfile_dir::Dir::new("sysfs");
            // A sysfs mounted from this namespace lists this namespace's devices.
            mount(Some("sysfs"), &sys.0, Some("sysfs"), MsFlags::empty(), None::<&str>)
                .expect("mount sysfs");
            let net = sys.0.join("class/net");
            sh_in("ip link add eth0 address 02:42:ac:11:00:02 type veth peer name eth1 address 02:42:ac:10:00:02");
            // And one whose kernel name is wanted by nobody: renamed directly.
            sh_in("ip link add foo0 address 02:42:ac:12:00:02 type veth peer name foo1");
            let ifaces = [
                iface("02:42:ac:10:00:02", "eth0", "172.16.0.2/16", Some("172.16.0.1")),
                iface("02:42:AC:11:00:02", "eth1", "172.17.0.9/24", None),
                iface("02:42:ac:12:00:02", "eth2", "10.1.2.3/8", None),
            ];
            let c = configure_in(&net, &ifaces, Duration::from_secs(2), &dhcp::TIMING).unwrap();
            assert!(c.leases.is_empty() && c.keepers.is_empty());
            let lo = sh_in("ip -4 -o addr show dev lo");
            assert!(lo.contains("inet 127.0.0.1/8"), "{lo}");
            let link = sh_in("ip -o link show eth0");
            assert!(link.contains("02:42:ac:10:00:02") && link.contains(",UP"), "{link}");
            let eth0 = sh_in("ip -4 -o addr show dev eth0");
            assert!(eth0.contains("inet 172.16.0.2/16 brd 172.16.255.255"), "{eth0}");
            let eth1 = sh_in("ip -4 -o addr show dev eth1");
            assert!(eth1.contains("inet 172.17.0.9/24 brd 172.17.0.255"), "{eth1}");
            let link = sh_in("ip -o link show eth1");
            assert!(link.contains("02:42:ac:11:00:02"), "{link}");
            let eth2 = sh_in("ip -4 -o addr show dev eth2");
            assert!(eth2.contains("inet 10.1.2.3/8 brd 10.255.255.255"), "{eth2}");
            let links = sh_in("ip -o link show");
            assert!(!links.contains("foo0") && !links.contains("kicnet"), "{links}");
            let route = sh_in("ip route show default");
            assert!(route.contains("default via 172.16.0.1 dev eth0"), "{route}");
            // A device that never comes is named in the error.
            let e = configure_in(
                &net,
                &[iface("02:42:ac:13:00:02", "eth3", "172.18.0.2/16", None)],
                Duration::from_millis(50),
                &dhcp::TIMING,
            )
            .err()
            .unwrap();
            assert!(e.contains("MAC 02:42:ac:13:00:02"), "{e}");
            nix::mount::umount(&sys.0).expect("umount sysfs");
        })
        .join()
        .expect("network namespace test");
    }

    /// A named network namespace, deleted on drop.
    struct Netns(String);
    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "delete", &self.0])
                .status();
        }
    }

    /// A process we started, ended on drop.
    struct Daemon(std::process::Child);
    impl Drop for Daemon {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// DHCP against a real server: dnsmasq in a namespace of its own serving two segments
    /// (10.99.7.0/24 and 10.99.8.0/24, veth pairs), the client's two devices in the network
    /// namespace of a thread of this test. Leases of 120 s, on a clock where a second lasts
    /// 10 ms, so that renewals come within the test. Needs root, iproute2 and dnsmasq.
    #[test]
    fn dhcp_leases_from_dnsmasq_in_private_network_namespaces() {
        let have = |p: &str| Path::new(p).exists();
        if !nix::unistd::geteuid().is_root()
            || !(have("/usr/sbin/ip") || have("/sbin/ip"))
            || !have("/usr/sbin/dnsmasq")
        {
            eprintln!("skipped: needs root, iproute2 and dnsmasq");
            return;
        }
        std::thread::spawn(|| {
            use nix::mount::{mount, MsFlags};
            use nix::sched::{unshare, CloneFlags};
            unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_FS)
                .expect("unshare");
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .expect("make / private");
            let sys = tempfile_dir::Dir::new("sysfs-dhcp");
            mount(
                Some("sysfs"),
                &sys.0,
                Some("sysfs"),
                MsFlags::empty(),
                None::<&str>,
            )
            .expect("mount sysfs");
            let net = sys.0.join("class/net");
            let ns = Netns(format!("kic-tether-dhcp-{}", std::process::id()));
            sh_in(&format!("ip netns add {}", ns.0));
            let n = &ns.0;
            sh_in(&format!(
                "ip link add veth7 address 02:42:0a:63:07:32 type veth peer name srv7 netns {n}
                 ip link add veth8 address 02:42:0a:63:08:32 type veth peer name srv8 netns {n}
                 ip -n {n} link set lo up
                 ip -n {n} addr add 10.99.7.1/24 dev srv7
                 ip -n {n} addr add 10.99.8.1/24 dev srv8
                 ip -n {n} link set srv7 up
                 ip -n {n} link set srv8 up"
            ));
            let work = tempfile_dir::Dir::new("dnsmasq");
            let log = work.0.join("log");
            let dnsmasq = Daemon(
                std::process::Command::new("ip")
                    .args([
                        "netns",
                        "exec",
                        n,
                        "dnsmasq",
                        "--no-daemon",
                        "--conf-file=/dev/null",
                    ])
                    .args([
                        "--port=0",
                        "--bind-interfaces",
                        "--interface=srv7",
                        "--interface=srv8",
                    ])
                    .arg(format!(
                        "--dhcp-leasefile={}",
                        work.0.join("leases").display()
                    ))
                    .args(["--dhcp-range=10.99.7.50,10.99.7.60,255.255.255.0,2m"])
                    .args(["--dhcp-range=10.99.8.50,10.99.8.60,255.255.255.0,2m"])
                    .args(["--dhcp-option=option:dns-server,10.99.7.53,10.99.7.54"])
                    // Without the ping before each offer (3 s each, one at a time).
                    .args(["--no-ping", "--log-dhcp", "--log-facility=-"])
                    .stderr(fs::File::create(&log).unwrap())
                    .spawn()
                    .expect("start dnsmasq"),
            );
            let ready = Instant::now();
            while !fs::read_to_string(&log)
                .unwrap()
                .contains("IP range 10.99.7.50")
            {
                assert!(
                    ready.elapsed() < Duration::from_secs(10),
                    "dnsmasq did not start"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            let timing = dhcp::Timing {
                give_up: Duration::from_secs(15),
                renew_min: Duration::from_millis(50),
                second: Duration::from_millis(10),
                ..dhcp::TIMING
            };
            let ifaces = [
                dhcp_iface("02:42:0a:63:07:32", "eth0"),
                dhcp_iface("02:42:0A:63:08:32", "eth1"),
            ];
            let t = Instant::now();
            let c = configure_in(&net, &ifaces, Duration::from_secs(2), &timing)
                .unwrap_or_else(|e| panic!("{e}\n{}", fs::read_to_string(&log).unwrap()));
            assert_eq!(c.leases.len(), 2);
            // Both at once, in milliseconds; at most one retransmission (0.5 s): the server's
            // end of a veth pair may drop its first answer while the kernel activates it.
            assert!(
                t.elapsed() < Duration::from_millis(1400),
                "{:?}",
                t.elapsed()
            );
            let (l0, l1) = (&c.leases[0], &c.leases[1]);
            assert_eq!(l0.mac, "02:42:0a:63:07:32");
            assert_eq!(l1.mac, "02:42:0A:63:08:32", "the host's spelling");
            assert!(
                l0.address.starts_with("10.99.7.5") && l0.address.ends_with("/24"),
                "{l0:?}"
            );
            assert!(
                l1.address.starts_with("10.99.8.5") && l1.address.ends_with("/24"),
                "{l1:?}"
            );
            assert_eq!(l0.gateway.as_deref(), Some("10.99.7.1"));
            assert_eq!(l1.gateway.as_deref(), Some("10.99.8.1"));
            assert_eq!(l0.dns, ["10.99.7.53", "10.99.7.54"]);
            assert_eq!((l0.server.as_str(), l0.lease_secs), ("10.99.7.1", 120));
            assert_eq!((l1.server.as_str(), l1.lease_secs), ("10.99.8.1", 120));
            let eth0 = sh_in("ip -4 -o addr show dev eth0");
            assert!(
                eth0.contains(&format!("inet {} brd 10.99.7.255", l0.address)),
                "{eth0}"
            );
            let eth1 = sh_in("ip -4 -o addr show dev eth1");
            assert!(
                eth1.contains(&format!("inet {} brd 10.99.8.255", l1.address)),
                "{eth1}"
            );
            // The first interface's router is the default route; the second's is not.
            let route = sh_in("ip route show default");
            assert_eq!(route.trim(), "default via 10.99.7.1 dev eth0", "{route}");
            // T1 is 60 "seconds": 600 ms. Two renewals each within 1.5 s, unicast from the
            // leased address, acknowledged.
            std::thread::sleep(Duration::from_millis(1500));
            let text = fs::read_to_string(&log).unwrap();
            for (dev, l) in [("srv7", l0), ("srv8", l1)] {
                let addr = l.address.split('/').next().unwrap();
                let acks = text.matches(&format!("DHCPACK({dev}) {addr} ")).count();
                assert!(acks >= 3, "{acks} acknowledgements on {dev}:\n{text}");
                let renewals = text
                    .lines()
                    .filter(|l| l.contains(&format!("DHCPREQUEST({dev}) {addr} ")))
                    .count();
                assert!(renewals >= 2, "{text}");
            }
            drop(c);
            // The ACKs to renewals went to the leased address: the leases are in dnsmasq's file.
            let leases = fs::read_to_string(work.0.join("leases")).unwrap();
            assert!(leases.contains(" 02:42:0a:63:07:32 10.99.7.5"), "{leases}");
            drop(dnsmasq);

            // Nobody answers: the start fails, naming the interface.
            sh_in(
                "ip link add veth9 address 02:42:0a:63:09:32 type veth peer name peer9
                   ip link set peer9 up",
            );
            let quick = dhcp::Timing {
                give_up: Duration::from_secs(1),
                ..timing
            };
            let t = Instant::now();
            let e = configure_in(
                &net,
                &[dhcp_iface("02:42:0a:63:09:32", "eth2")],
                Duration::from_secs(2),
                &quick,
            )
            .err()
            .unwrap();
            assert!(t.elapsed() >= Duration::from_secs(1));
            assert!(
                e.starts_with("no DHCP server answered on eth2 (MAC 02:42:0a:63:09:32) within 1 s"),
                "{e}"
            );
            assert!(!e.contains("carrier"), "{e}");
            // A device whose link never comes up: said so.
            sh_in("ip link add veth10 address 02:42:0a:63:0a:32 type veth peer name peer10");
            let e = configure_in(
                &net,
                &[dhcp_iface("02:42:0a:63:0a:32", "eth3")],
                Duration::from_secs(2),
                &quick,
            )
            .err()
            .unwrap();
            assert!(
                e.starts_with("no DHCP server answered on eth3 (MAC 02:42:0a:63:0a:32) within 1 s")
                    && e.ends_with("(the device has no carrier: its link is down)"),
                "{e}"
            );
            nix::mount::umount(&sys.0).expect("umount sysfs");
        })
        .join()
        .expect("network namespace test");
    }
}
