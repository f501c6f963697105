//! A DHCPv4 client (RFC 2131) for the interfaces the host marks `dhcp`: the address of a
//! container on a container network whose segment has its own DHCP server.
//!
//! Acquiring: DISCOVER (broadcast flag set, client id = the MAC), the first usable OFFER,
//! REQUEST it from its server, ACK (a NAK starts over), each step retransmitted with a doubling
//! delay, all within [`Timing::give_up`]. The messages go through a UDP socket bound to
//! `0.0.0.0:68` on the one device (`SO_BINDTODEVICE`), sent to `255.255.255.255:67`: Linux
//! sends from `0.0.0.0` while the device has no address, and delivers the servers' broadcast
//! answers to the socket.
//!
//! Keeping ([`keep`]): a thread per lease sleeps until T1 (option 58, else half the lease),
//! then asks its server to renew (unicast, `ciaddr` set), from T2 (option 59, else 7/8 of the
//! lease) any server (broadcast), each attempt waiting half the time left to the next stage
//! but at least [`Timing::renew_min`]. **A lease that expires, or that a server refuses to
//! renew, does not take the address away**: the container keeps running with it and the
//! tether keeps asking (for the same address) and says so on the console. Pulling the address
//! from under a running container would break every connection it has for no gain: the host
//! owns the container's lifetime, and an address conflict is the DHCP server's to resolve.

use rand::Rng;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;

const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
const BOOTREQUEST: u8 = 1;
const BOOTREPLY: u8 = 2;
const HTYPE_ETHERNET: u8 = 1;
const FLAG_BROADCAST: u16 = 0x8000;
/// The fixed part of a message up to the magic cookie.
const FIXED_LEN: usize = 236;
/// The smallest BOOTP message (RFC 1542): relays and old servers drop shorter ones.
const MIN_LEN: usize = 300;
/// A lease time of all ones is a lease that never ends.
pub const INFINITE: u32 = u32::MAX;

pub const OPT_PAD: u8 = 0;
pub const OPT_SUBNET_MASK: u8 = 1;
pub const OPT_ROUTER: u8 = 3;
pub const OPT_DNS: u8 = 6;
pub const OPT_REQUESTED_IP: u8 = 50;
pub const OPT_LEASE_TIME: u8 = 51;
pub const OPT_MESSAGE_TYPE: u8 = 53;
pub const OPT_SERVER_ID: u8 = 54;
pub const OPT_PARAMETERS: u8 = 55;
pub const OPT_MESSAGE: u8 = 56;
pub const OPT_RENEWAL_TIME: u8 = 58;
pub const OPT_REBINDING_TIME: u8 = 59;
pub const OPT_CLIENT_ID: u8 = 61;
pub const OPT_END: u8 = 255;

/// What the client asks servers to include.
const PARAMETERS: [u8; 6] = [
    OPT_SUBNET_MASK,
    OPT_ROUTER,
    OPT_DNS,
    OPT_LEASE_TIME,
    OPT_RENEWAL_TIME,
    OPT_REBINDING_TIME,
];

/// Option 53.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Discover = 1,
    Offer = 2,
    Request = 3,
    Decline = 4,
    Ack = 5,
    Nak = 6,
    Release = 7,
    Inform = 8,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Discover,
            2 => Kind::Offer,
            3 => Kind::Request,
            4 => Kind::Decline,
            5 => Kind::Ack,
            6 => Kind::Nak,
            7 => Kind::Release,
            8 => Kind::Inform,
            _ => return None,
        })
    }
}

/// One DHCP message on an Ethernet link (the only hardware type a virtio NIC has).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// [`BOOTREQUEST`] from clients, [`BOOTREPLY`] from servers.
    pub op: u8,
    pub xid: u32,
    pub secs: u16,
    /// Ask the server to broadcast its answer (the client has no address yet).
    pub broadcast: bool,
    pub ciaddr: Ipv4Addr,
    pub yiaddr: Ipv4Addr,
    pub siaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub mac: [u8; 6],
    /// Options in their order, each code once: an option split over several entries of a
    /// message (RFC 3396) comes back joined.
    pub options: Vec<(u8, Vec<u8>)>,
}

impl Message {
    fn new(op: u8, xid: u32, mac: [u8; 6]) -> Message {
        Message {
            op,
            xid,
            secs: 0,
            broadcast: false,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            siaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: Ipv4Addr::UNSPECIFIED,
            mac,
            options: Vec::new(),
        }
    }

    pub fn option(&self, code: u8) -> Option<&[u8]> {
        self.options
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, v)| v.as_slice())
    }

    pub fn kind(&self) -> Option<Kind> {
        match self.option(OPT_MESSAGE_TYPE)? {
            [k] => Kind::from_u8(*k),
            _ => None,
        }
    }

    /// An option holding one address; `Err` when it is there but malformed.
    fn addr_option(&self, code: u8) -> Result<Option<Ipv4Addr>, String> {
        match self.option(code) {
            None => Ok(None),
            Some(&[a, b, c, d]) => Ok(Some(Ipv4Addr::new(a, b, c, d))),
            Some(v) => Err(format!("option {code} has {} bytes, not 4", v.len())),
        }
    }

    /// An option holding a list of addresses (routers, DNS servers).
    fn addrs_option(&self, code: u8) -> Result<Vec<Ipv4Addr>, String> {
        match self.option(code) {
            None => Ok(Vec::new()),
            Some(v) if !v.is_empty() && v.len() % 4 == 0 => Ok(v
                .chunks(4)
                .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]))
                .collect()),
            Some(v) => Err(format!(
                "option {code} has {} bytes, not a list of addresses",
                v.len()
            )),
        }
    }

    fn u32_option(&self, code: u8) -> Result<Option<u32>, String> {
        match self.option(code) {
            None => Ok(None),
            Some(&[a, b, c, d]) => Ok(Some(u32::from_be_bytes([a, b, c, d]))),
            Some(v) => Err(format!("option {code} has {} bytes, not 4", v.len())),
        }
    }

    /// The server's message (option 56), for errors.
    fn text(&self) -> Option<String> {
        self.option(OPT_MESSAGE)
            .map(|m| {
                String::from_utf8_lossy(m)
                    .trim_end_matches('\0')
                    .to_string()
            })
            .filter(|m| !m.is_empty())
    }

    /// The wire form: the fixed header, the magic cookie, the options (longer than 255 bytes
    /// split, RFC 3396), END, padded to the BOOTP minimum of 300 bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(MIN_LEN);
        b.extend_from_slice(&[self.op, HTYPE_ETHERNET, 6, 0]);
        b.extend_from_slice(&self.xid.to_be_bytes());
        b.extend_from_slice(&self.secs.to_be_bytes());
        let flags = if self.broadcast { FLAG_BROADCAST } else { 0 };
        b.extend_from_slice(&flags.to_be_bytes());
        for a in [self.ciaddr, self.yiaddr, self.siaddr, self.giaddr] {
            b.extend_from_slice(&a.octets());
        }
        b.extend_from_slice(&self.mac);
        b.resize(FIXED_LEN, 0); // the rest of chaddr, sname, file
        b.extend_from_slice(&MAGIC_COOKIE);
        for (code, value) in &self.options {
            if value.is_empty() {
                b.extend_from_slice(&[*code, 0]);
            }
            for part in value.chunks(255) {
                b.extend_from_slice(&[*code, part.len() as u8]);
                b.extend_from_slice(part);
            }
        }
        b.push(OPT_END);
        if b.len() < MIN_LEN {
            b.resize(MIN_LEN, OPT_PAD);
        }
        b
    }

    pub fn decode(b: &[u8]) -> Result<Message, String> {
        if b.len() < FIXED_LEN + MAGIC_COOKIE.len() {
            return Err(format!("{} bytes is too short for a DHCP message", b.len()));
        }
        if b[1] != HTYPE_ETHERNET || b[2] != 6 {
            return Err(format!(
                "hardware type {} with {}-byte addresses, not Ethernet",
                b[1], b[2]
            ));
        }
        if b[FIXED_LEN..FIXED_LEN + 4] != MAGIC_COOKIE {
            return Err("no DHCP magic cookie (a plain BOOTP message)".into());
        }
        let addr = |at: usize| Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3]);
        let mut m = Message::new(
            b[0],
            u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            b[28..34].try_into().expect("6 bytes"),
        );
        m.secs = u16::from_be_bytes([b[8], b[9]]);
        m.broadcast = u16::from_be_bytes([b[10], b[11]]) & FLAG_BROADCAST != 0;
        m.ciaddr = addr(12);
        m.yiaddr = addr(16);
        m.siaddr = addr(20);
        m.giaddr = addr(24);
        let mut i = FIXED_LEN + 4;
        while i < b.len() {
            let code = b[i];
            match code {
                OPT_PAD => i += 1,
                OPT_END => break,
                _ => {
                    let Some(&len) = b.get(i + 1) else {
                        return Err(format!("option {code} is cut off"));
                    };
                    let value = b.get(i + 2..i + 2 + usize::from(len)).ok_or_else(|| {
                        format!("option {code} is cut off ({len} bytes announced)")
                    })?;
                    match m.options.iter_mut().find(|(c, _)| *c == code) {
                        Some((_, v)) => v.extend_from_slice(value),
                        None => m.options.push((code, value.to_vec())),
                    }
                    i += 2 + usize::from(len);
                }
            }
        }
        Ok(m)
    }
}

/// The prefix length of a subnet mask; `None` when its ones are not contiguous.
pub fn prefix_of(mask: Ipv4Addr) -> Option<u8> {
    let m = u32::from(mask);
    let ones = m.leading_ones();
    let want = u32::MAX.checked_shl(32 - ones).unwrap_or(0);
    (m == want).then_some(ones as u8)
}

/// The mask an address has without a subnet mask option (its class).
fn classful_prefix(a: Ipv4Addr) -> u8 {
    match a.octets()[0] {
        0..=127 => 8,
        128..=191 => 16,
        _ => 24,
    }
}

/// An address a server gave (OFFER) or confirmed (ACK).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub routers: Vec<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    /// The server identifier (option 54).
    pub server: Ipv4Addr,
    pub lease_secs: u32,
    /// When to renew and rebind, in seconds from the start of the lease ([`INFINITE`] for a
    /// lease that never ends).
    pub t1_secs: u32,
    pub t2_secs: u32,
}

/// T1 and T2 of a lease: the server's (options 58 and 59) when they make sense
/// (T1 <= T2 <= lease), else RFC 2131's defaults, half and seven eighths of the lease.
pub fn renewal_times(lease: u32, t1: Option<u32>, t2: Option<u32>) -> (u32, u32) {
    if lease == INFINITE {
        return (INFINITE, INFINITE);
    }
    let d2 = (u64::from(lease) * 7 / 8) as u32;
    let t2 = t2.filter(|t| *t <= lease).unwrap_or(d2);
    let t1 = t1.filter(|t| *t <= t2).unwrap_or((lease / 2).min(t2));
    (t1, t2)
}

impl Binding {
    /// What an OFFER or ACK says; `Err` for one that cannot be used.
    pub fn from_message(m: &Message) -> Result<Binding, String> {
        let address = m.yiaddr;
        if address.is_unspecified() || address.is_broadcast() || address.is_multicast() {
            return Err(format!("it offers no usable address ({address})"));
        }
        let prefix = match m.addr_option(OPT_SUBNET_MASK)? {
            Some(mask) => prefix_of(mask)
                .ok_or_else(|| format!("its subnet mask {mask} is not a valid mask"))?,
            None => classful_prefix(address),
        };
        let server = match m.addr_option(OPT_SERVER_ID)? {
            Some(s) => s,
            None if !m.siaddr.is_unspecified() => m.siaddr,
            None => return Err("it has no server identifier (option 54)".into()),
        };
        let lease_secs = m
            .u32_option(OPT_LEASE_TIME)?
            .ok_or("it has no lease time (option 51)")?;
        let (t1_secs, t2_secs) = renewal_times(
            lease_secs,
            m.u32_option(OPT_RENEWAL_TIME)?,
            m.u32_option(OPT_REBINDING_TIME)?,
        );
        Ok(Binding {
            address,
            prefix,
            routers: m.addrs_option(OPT_ROUTER)?,
            dns: m.addrs_option(OPT_DNS)?,
            server,
            lease_secs,
            t1_secs,
            t2_secs,
        })
    }
}

/// A client's message: the client identifier is the MAC (type 1, Ethernet).
fn client_message(kind: Kind, xid: u32, mac: [u8; 6]) -> Message {
    let mut m = Message::new(BOOTREQUEST, xid, mac);
    m.options.push((OPT_MESSAGE_TYPE, vec![kind as u8]));
    let mut id = vec![HTYPE_ETHERNET];
    id.extend_from_slice(&mac);
    m.options.push((OPT_CLIENT_ID, id));
    m
}

fn discover(xid: u32, mac: [u8; 6], secs: u16) -> Message {
    let mut m = client_message(Kind::Discover, xid, mac);
    m.secs = secs;
    m.broadcast = true;
    m.options.push((OPT_PARAMETERS, PARAMETERS.to_vec()));
    m
}

/// REQUEST in the SELECTING state: the offered address from the server that offered it.
fn select(xid: u32, mac: [u8; 6], secs: u16, offer: &Binding) -> Message {
    let mut m = client_message(Kind::Request, xid, mac);
    m.secs = secs;
    m.broadcast = true;
    m.options
        .push((OPT_REQUESTED_IP, offer.address.octets().to_vec()));
    m.options
        .push((OPT_SERVER_ID, offer.server.octets().to_vec()));
    m.options.push((OPT_PARAMETERS, PARAMETERS.to_vec()));
    m
}

/// Where a renewal stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// From T1: ask the server that gave the lease, unicast.
    Renewing,
    /// From T2: ask any server, broadcast.
    Rebinding,
    /// The lease ended or a server refused it: ask any server for the same address, as a
    /// client that rebooted does (INIT-REBOOT: requested address, no `ciaddr`).
    Reclaiming,
}

fn renew_request(xid: u32, mac: [u8; 6], address: Ipv4Addr, stage: Stage) -> Message {
    let mut m = client_message(Kind::Request, xid, mac);
    match stage {
        Stage::Renewing | Stage::Rebinding => m.ciaddr = address,
        Stage::Reclaiming => {
            m.broadcast = true;
            m.options
                .push((OPT_REQUESTED_IP, address.octets().to_vec()));
        }
    }
    m.options.push((OPT_PARAMETERS, PARAMETERS.to_vec()));
    m
}

/// How a client sends and receives its messages.
pub trait Transport {
    /// To every server on the segment.
    fn broadcast(&mut self, msg: &[u8]) -> io::Result<()>;
    /// To one server.
    fn unicast(&mut self, msg: &[u8], server: Ipv4Addr) -> io::Result<()>;
    /// The next datagram, or `None` once `deadline` passes.
    fn recv(&mut self, deadline: Instant) -> io::Result<Option<Vec<u8>>>;
}

/// The client's UDP socket.
pub struct UdpTransport {
    sock: UdpSocket,
    broadcast_to: SocketAddrV4,
    server_port: u16,
    buf: Vec<u8>,
}

fn setsockopt(fd: &OwnedFd, level: i32, name: i32, value: &[u8]) -> io::Result<()> {
    // SAFETY: `value` is valid for its length, which is passed along.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            value.as_ptr().cast(),
            value.len() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl UdpTransport {
    /// The socket of a client on network device `dev`: `0.0.0.0:68` on that device only, so
    /// that clients on several devices can each have port 68.
    pub fn on_device(dev: &str) -> io::Result<UdpTransport> {
        UdpTransport::new(
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, CLIENT_PORT),
            Some(dev),
            SocketAddrV4::new(Ipv4Addr::BROADCAST, SERVER_PORT),
            SERVER_PORT,
        )
    }

    /// A socket bound to `bind` (on `device` only, if given) that broadcasts to
    /// `broadcast_to` and reaches servers on `server_port`.
    pub fn new(
        bind: SocketAddrV4,
        device: Option<&str>,
        broadcast_to: SocketAddrV4,
        server_port: u16,
    ) -> io::Result<UdpTransport> {
        // SAFETY: plain socket(2).
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let one = 1i32.to_ne_bytes();
        setsockopt(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, &one)?;
        setsockopt(&fd, libc::SOL_SOCKET, libc::SO_BROADCAST, &one)?;
        if let Some(dev) = device {
            // Before bind: sockets bound to different devices do not clash on the port.
            setsockopt(&fd, libc::SOL_SOCKET, libc::SO_BINDTODEVICE, dev.as_bytes())?;
        }
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: bind.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*bind.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: `sin` is a valid sockaddr_in of the length passed.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sin as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(UdpTransport {
            sock: UdpSocket::from(fd),
            broadcast_to,
            server_port,
            buf: vec![0; 4096],
        })
    }
}

impl Transport for UdpTransport {
    fn broadcast(&mut self, msg: &[u8]) -> io::Result<()> {
        self.sock.send_to(msg, self.broadcast_to).map(|_| ())
    }

    fn unicast(&mut self, msg: &[u8], server: Ipv4Addr) -> io::Result<()> {
        self.sock
            .send_to(msg, SocketAddrV4::new(server, self.server_port))
            .map(|_| ())
    }

    fn recv(&mut self, deadline: Instant) -> io::Result<Option<Vec<u8>>> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            // A zero timeout would mean "block forever".
            self.sock
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
            match self.sock.recv_from(&mut self.buf) {
                Ok((n, _)) => return Ok(Some(self.buf[..n].to_vec())),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// The client's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// The first retransmission delay; it doubles up to `max_retry` (each one ±10 %).
    pub first_retry: Duration,
    pub max_retry: Duration,
    /// How long acquiring a lease may take in all.
    pub give_up: Duration,
    /// The shortest wait between two renewal attempts (RFC 2131 says 60 s).
    pub renew_min: Duration,
    /// How long one second of a lease is: a second, except in tests.
    pub second: Duration,
}

pub const TIMING: Timing = Timing {
    first_retry: Duration::from_millis(500),
    max_retry: Duration::from_secs(4),
    give_up: Duration::from_secs(20),
    renew_min: Duration::from_secs(60),
    second: Duration::from_secs(1),
};

impl Timing {
    /// `secs` lease seconds after `from`; `None` for never.
    fn after(&self, from: Instant, secs: u32) -> Option<Instant> {
        if secs == INFINITE {
            return None;
        }
        from.checked_add(self.second.checked_mul(secs)?)
    }
}

/// `20 s`, `0.3 s`.
fn seconds(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::thread_rng().gen_range(0.9..=1.1))
}

/// What went wrong on the way, for the error of an acquisition that fails.
#[derive(Default)]
struct Noted {
    /// The last problem: a failed send, an unusable answer.
    problem: Option<String>,
    /// Some server answered (if unusably).
    heard: bool,
}

/// What a received datagram means to an exchange.
enum Pick<R> {
    /// Not an answer to this exchange (another client's, a stray): keep waiting.
    Skip,
    /// An answer that cannot be used: noted, keep waiting.
    Bad(String),
    Take(R),
}

/// Send `make(secs)` with a doubling delay until `pick` takes an answer, `sends` have gone
/// unanswered, or `deadline` passes (`None`). Answers must be replies to `xid` for `mac`.
/// Problems (failed sends, unusable answers) are noted in `noted`.
#[allow(clippy::too_many_arguments)]
fn exchange<T: Transport, R>(
    t: &mut T,
    timing: &Timing,
    started: Instant,
    deadline: Instant,
    sends: usize,
    (xid, mac): (u32, [u8; 6]),
    noted: &mut Noted,
    make: impl Fn(u16) -> Message,
    mut pick: impl FnMut(&Message) -> Pick<R>,
) -> io::Result<Option<(R, Instant)>> {
    let mut delay = timing.first_retry;
    for _ in 0..sends {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let secs = now
            .duration_since(started)
            .as_secs()
            .min(u64::from(u16::MAX)) as u16;
        if let Err(e) = t.broadcast(&make(secs).encode()) {
            // The link may not be ready yet: the next attempt may go through.
            noted.problem = Some(format!("sending failed: {e}"));
        }
        let until = (now + jitter(delay)).min(deadline);
        while let Some(d) = t.recv(until)? {
            let m = match Message::decode(&d) {
                Ok(m) if m.op == BOOTREPLY && m.xid == xid && m.mac == mac => m,
                _ => continue,
            };
            match pick(&m) {
                Pick::Skip => {}
                Pick::Bad(e) => {
                    noted.problem = Some(e);
                    noted.heard = true;
                }
                Pick::Take(r) => return Ok(Some((r, now))),
            }
        }
        delay = (delay * 2).min(timing.max_retry);
    }
    Ok(None)
}

/// How far an acquisition got, for its error.
enum Progress {
    Nothing,
    Offered(Binding),
    Refused(Binding, String),
}

/// Acquire a lease for `mac` (DISCOVER, OFFER, REQUEST, ACK) within `timing.give_up`;
/// `label` names the interface in errors (`eth0 (MAC 02:42:0a:63:07:32)`). The binding and
/// when its lease started (the REQUEST that was acknowledged).
pub fn acquire<T: Transport>(
    t: &mut T,
    mac: [u8; 6],
    label: &str,
    timing: &Timing,
) -> Result<(Binding, Instant), String> {
    let started = Instant::now();
    let deadline = started + timing.give_up;
    let mut noted = Noted::default();
    let mut progress = Progress::Nothing;
    let io_err = |e: io::Error| format!("DHCP on {label}: receiving failed: {e}");
    while Instant::now() < deadline {
        let xid: u32 = rand::thread_rng().gen();
        let offer = exchange(
            t,
            timing,
            started,
            deadline,
            usize::MAX,
            (xid, mac),
            &mut noted,
            |secs| discover(xid, mac, secs),
            |m| match m.kind() {
                Some(Kind::Offer) => match Binding::from_message(m) {
                    Ok(b) => Pick::Take(b),
                    Err(e) => Pick::Bad(format!(
                        "an offer of {} from {} was ignored: {e}",
                        m.yiaddr,
                        m.addr_option(OPT_SERVER_ID)
                            .ok()
                            .flatten()
                            .unwrap_or(m.siaddr)
                    )),
                },
                _ => Pick::Skip,
            },
        )
        .map_err(io_err)?;
        let Some((offer, _)) = offer else { break };
        progress = Progress::Offered(offer.clone());
        // A REQUEST that goes unanswered four times starts over with a DISCOVER.
        let answer = exchange(
            t,
            timing,
            started,
            deadline,
            4,
            (xid, mac),
            &mut noted,
            |secs| select(xid, mac, secs, &offer),
            |m| match m.kind() {
                Some(Kind::Ack) => match Binding::from_message(m) {
                    Ok(b) if b.address == offer.address => Pick::Take(Ok(b)),
                    Ok(b) => Pick::Bad(format!(
                        "the server {} acknowledged {} instead of the {} it offered",
                        offer.server, b.address, offer.address
                    )),
                    Err(e) => Pick::Bad(format!(
                        "an acknowledgement from {} was ignored: {e}",
                        offer.server
                    )),
                },
                Some(Kind::Nak) => Pick::Take(Err(m.text())),
                _ => Pick::Skip,
            },
        )
        .map_err(io_err)?;
        match answer {
            Some((Ok(b), sent)) => return Ok((b, sent)),
            Some((Err(text), _)) => {
                let why = text.map(|t| format!(": {t}")).unwrap_or_default();
                progress = Progress::Refused(offer, why);
                // Start over, but not in a tight loop with a server that refuses at once.
                std::thread::sleep(
                    timing
                        .first_retry
                        .min(deadline.saturating_duration_since(Instant::now())),
                );
            }
            None => {}
        }
    }
    let within = seconds(timing.give_up);
    let mut msg = match progress {
        Progress::Nothing if noted.heard => {
            format!("no usable DHCP offer came on {label} within {within}")
        }
        Progress::Nothing => format!("no DHCP server answered on {label} within {within}"),
        Progress::Offered(o) => format!(
            "the DHCP server {} offered {} on {label} but did not acknowledge it within {within}",
            o.server, o.address
        ),
        Progress::Refused(o, why) => format!(
            "the DHCP server {} refused (DHCPNAK{why}) the address {} it offered on {label}, \
             and no lease was acknowledged within {within}",
            o.server, o.address
        ),
    };
    if let Some(p) = noted.problem {
        msg.push_str(&format!(" ({p})"));
    }
    msg.push_str(
        "; is a DHCP server running on the network the interface is attached to, \
         with a free address?",
    );
    Err(msg)
}

/// The thread keeping one lease; dropping it ends the thread (at its next wake-up).
pub struct Keeper {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Keeper {
    /// Let the thread run for as long as the VM does.
    pub fn detach(mut self) {
        std::mem::forget(self.stop.take());
        self.thread.take();
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Wait until `until` (forever for `None`); false when the keeper was dropped.
fn sleep_until(stop: &mpsc::Receiver<()>, until: Option<Instant>) -> bool {
    match until {
        None => stop.recv().is_ok(),
        Some(u) => loop {
            let left = u.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            match stop.recv_timeout(left) {
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                _ => return false,
            }
        },
    }
}

/// Keep the lease `binding` (started at `since`) of `mac` for as long as the VM runs, on a
/// thread of its own that sleeps until the next timer; see the module's documentation.
pub fn keep<T: Transport + Send + 'static>(
    mut t: T,
    mac: [u8; 6],
    label: String,
    binding: Binding,
    since: Instant,
    timing: Timing,
) -> Keeper {
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name(format!("dhcp {label}"))
        .spawn(move || renew_loop(&mut t, mac, &label, binding, since, &timing, &rx))
        .expect("spawn the DHCP renewal thread");
    Keeper {
        stop: Some(tx),
        thread: Some(thread),
    }
}

fn renew_loop<T: Transport>(
    t: &mut T,
    mac: [u8; 6],
    label: &str,
    mut lease: Binding,
    mut since: Instant,
    timing: &Timing,
    stop: &mpsc::Receiver<()>,
) {
    let address = lease.address;
    // A server refused the lease: reclaim it until one acknowledges it again.
    let mut refused = false;
    let mut told_expired = false;
    loop {
        let t1 = timing.after(since, lease.t1_secs);
        let t2 = timing.after(since, lease.t2_secs);
        let end = timing.after(since, lease.lease_secs);
        let now = Instant::now();
        if !refused && t1.is_none_or(|t1| now < t1) {
            if !sleep_until(stop, t1) {
                return;
            }
            continue;
        }
        let (stage, next) = match (t2, end) {
            _ if refused => (Stage::Reclaiming, None),
            (Some(t2), _) if now < t2 => (Stage::Renewing, Some(t2)),
            (_, Some(end)) if now < end => (Stage::Rebinding, Some(end)),
            _ => (Stage::Reclaiming, None),
        };
        if stage == Stage::Reclaiming && !refused && !told_expired {
            eprintln!(
                "kic-tether: the DHCP lease of {address} on {label} expired without a renewal; \
                 the container keeps the address while it runs, and the tether keeps asking"
            );
            told_expired = true;
        }
        // Half the time to the next stage, at least `renew_min`, at most up to that stage.
        let wait = match next {
            Some(n) => {
                let half = n.saturating_duration_since(now) / 2;
                (now + half.max(timing.renew_min)).min(n)
            }
            None => now + timing.renew_min,
        };
        let xid: u32 = rand::thread_rng().gen();
        let msg = renew_request(xid, mac, address, stage).encode();
        let sent = match stage {
            Stage::Renewing => t.unicast(&msg, lease.server),
            Stage::Rebinding | Stage::Reclaiming => t.broadcast(&msg),
        };
        if let Err(e) = sent {
            eprintln!("kic-tether: DHCP on {label}: cannot send a renewal of {address}: {e}");
        }
        let answer = loop {
            let d = match t.recv(wait) {
                Ok(Some(d)) => d,
                Ok(None) => break None,
                Err(e) => {
                    eprintln!("kic-tether: DHCP on {label}: receiving failed: {e}");
                    // Not again at once: the next attempt is at `wait` as usual.
                    if !sleep_until(stop, Some(wait)) {
                        return;
                    }
                    break None;
                }
            };
            match Message::decode(&d) {
                Ok(m) if m.op == BOOTREPLY && m.xid == xid && m.mac == mac => match m.kind() {
                    Some(Kind::Ack) => match Binding::from_message(&m) {
                        Ok(b) if b.address == address => break Some(Ok(b)),
                        Ok(b) => eprintln!(
                            "kic-tether: DHCP on {label}: ignored an acknowledgement of {} \
                             (the container has {address})",
                            b.address
                        ),
                        Err(e) => eprintln!(
                            "kic-tether: DHCP on {label}: ignored an acknowledgement: {e}"
                        ),
                    },
                    Some(Kind::Nak) => break Some(Err(m)),
                    _ => {}
                },
                _ => {}
            }
        };
        match answer {
            Some(Ok(b)) => {
                if refused || told_expired {
                    eprintln!(
                        "kic-tether: DHCP on {label}: {address} is leased again (server {})",
                        b.server
                    );
                }
                lease = b;
                since = now;
                refused = false;
                told_expired = false;
            }
            Some(Err(nak)) => {
                if !refused {
                    let why = nak.text().map(|t| format!(": {t}")).unwrap_or_default();
                    eprintln!(
                        "kic-tether: DHCP on {label}: the server refused to renew {address} \
                         (DHCPNAK{why}); the container keeps the address while it runs, and \
                         the tether keeps asking"
                    );
                }
                refused = true;
                if !sleep_until(stop, Some(wait)) {
                    return;
                }
            }
            None => {}
        }
        if matches!(stop.try_recv(), Err(mpsc::TryRecvError::Disconnected)) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    const MAC: [u8; 6] = [0x02, 0x42, 0x0a, 0x63, 0x07, 0x32];

    #[test]
    fn masks_give_prefixes() {
        for (mask, p) in [
            ("0.0.0.0", Some(0)),
            ("128.0.0.0", Some(1)),
            ("255.0.0.0", Some(8)),
            ("255.255.240.0", Some(20)),
            ("255.255.255.0", Some(24)),
            ("255.255.255.254", Some(31)),
            ("255.255.255.255", Some(32)),
            ("255.0.255.0", None),
            ("0.255.255.255", None),
            ("255.255.255.1", None),
        ] {
            assert_eq!(prefix_of(mask.parse().unwrap()), p, "{mask}");
        }
    }

    #[test]
    fn renewal_times_default_to_half_and_seven_eighths() {
        assert_eq!(renewal_times(3600, None, None), (1800, 3150));
        assert_eq!(renewal_times(120, None, None), (60, 105));
        assert_eq!(renewal_times(3600, Some(600), Some(900)), (600, 900));
        // Out of order or past the end: the defaults.
        assert_eq!(renewal_times(3600, Some(3000), Some(2000)), (1800, 2000));
        assert_eq!(renewal_times(3600, Some(100), Some(4000)), (100, 3150));
        assert_eq!(renewal_times(100, Some(200), None), (50, 87));
        assert_eq!(
            renewal_times(INFINITE, Some(5), Some(6)),
            (INFINITE, INFINITE)
        );
        assert_eq!(renewal_times(u32::MAX - 1, None, None).1, 3_758_096_382);
    }

    #[test]
    fn a_discover_has_the_fixed_fields_and_options_in_place() {
        let b = discover(0x0102_0304, MAC, 3).encode();
        assert_eq!(b.len(), MIN_LEN);
        assert_eq!(&b[..4], &[BOOTREQUEST, 1, 6, 0]);
        assert_eq!(&b[4..8], &[1, 2, 3, 4]);
        assert_eq!(&b[8..10], &[0, 3], "secs");
        assert_eq!(&b[10..12], &[0x80, 0], "broadcast flag");
        assert_eq!(&b[12..28], &[0; 16], "no addresses yet");
        assert_eq!(&b[28..34], &MAC);
        assert!(b[34..236].iter().all(|x| *x == 0));
        assert_eq!(&b[236..240], &MAGIC_COOKIE);
        let opts = [
            53, 1, 1, // DISCOVER
            61, 7, 1, 0x02, 0x42, 0x0a, 0x63, 0x07, 0x32, // client id
            55, 6, 1, 3, 6, 51, 58, 59, // parameters
            255,
        ];
        assert_eq!(&b[240..240 + opts.len()], &opts);
        assert!(b[240 + opts.len()..].iter().all(|x| *x == OPT_PAD));
    }

    #[test]
    fn messages_round_trip_and_long_options_split_and_join() {
        let mut m = Message::new(BOOTREPLY, 7, MAC);
        m.yiaddr = Ipv4Addr::new(10, 99, 7, 50);
        m.siaddr = Ipv4Addr::new(10, 99, 7, 1);
        m.giaddr = Ipv4Addr::new(10, 99, 8, 1);
        m.ciaddr = Ipv4Addr::new(10, 99, 7, 9);
        m.secs = 300;
        m.options = vec![
            (OPT_MESSAGE_TYPE, vec![Kind::Offer as u8]),
            (OPT_DNS, (0..100u8).collect()),
            (OPT_MESSAGE, vec![b'x'; 600]),
            (80, vec![]),
        ];
        let b = m.encode();
        // 600 bytes go as 255 + 255 + 90.
        let at = b.windows(2).position(|w| w == [OPT_MESSAGE, 255]).unwrap();
        assert_eq!(b[at + 257], OPT_MESSAGE);
        assert_eq!(b[at + 258], 255);
        assert_eq!(&b[at + 514..at + 516], &[OPT_MESSAGE, 90]);
        assert_eq!(Message::decode(&b).unwrap(), m);
        assert_eq!(Message::decode(&b).unwrap().kind(), Some(Kind::Offer));
    }

    #[test]
    fn decoding_skips_padding_and_stops_at_end() {
        let mut b = Message::new(BOOTREPLY, 9, MAC).encode();
        b.truncate(240);
        b.extend_from_slice(&[
            0, 0, 53, 1, 5, 0, 1, 4, 255, 255, 0, 0, 255, 3, 4, 1, 2, 3, 4,
        ]);
        let m = Message::decode(&b).unwrap();
        assert_eq!(m.kind(), Some(Kind::Ack));
        assert_eq!(
            m.addr_option(OPT_SUBNET_MASK).unwrap(),
            Some(Ipv4Addr::new(255, 255, 0, 0))
        );
        assert_eq!(m.option(OPT_ROUTER), None, "after END");
        // Without END, the options run to the end of the datagram.
        b.truncate(b.len() - 7);
        assert_eq!(Message::decode(&b).unwrap().options.len(), 2);
    }

    #[test]
    fn broken_messages_are_refused() {
        let good = Message::new(BOOTREPLY, 9, MAC).encode();
        let e = Message::decode(&good[..239]).unwrap_err();
        assert!(e.contains("too short"), "{e}");
        let mut b = good.clone();
        b[236] = 0;
        assert!(Message::decode(&b).unwrap_err().contains("magic cookie"));
        let mut b = good.clone();
        b[1] = 6;
        assert!(Message::decode(&b).unwrap_err().contains("not Ethernet"));
        let mut b = good[..240].to_vec();
        b.extend_from_slice(&[OPT_DNS, 8, 1, 2, 3, 4]);
        assert!(Message::decode(&b).unwrap_err().contains("cut off"));
        b.truncate(241);
        assert!(Message::decode(&b).unwrap_err().contains("cut off"));
    }

    fn offer_message(xid: u32, kind: Kind, opts: &[(u8, &[u8])]) -> Message {
        let mut m = Message::new(BOOTREPLY, xid, MAC);
        m.yiaddr = Ipv4Addr::new(10, 99, 7, 50);
        m.options.push((OPT_MESSAGE_TYPE, vec![kind as u8]));
        for (c, v) in opts {
            m.options.push((*c, v.to_vec()));
        }
        m
    }

    #[test]
    fn bindings_read_the_options_and_refuse_unusable_offers() {
        let m = offer_message(
            1,
            Kind::Offer,
            &[
                (OPT_SUBNET_MASK, &[255, 255, 255, 0]),
                (OPT_ROUTER, &[10, 99, 7, 1, 10, 99, 7, 2]),
                (OPT_DNS, &[10, 99, 7, 53]),
                (OPT_SERVER_ID, &[10, 99, 7, 1]),
                (OPT_LEASE_TIME, &120u32.to_be_bytes()),
                (OPT_RENEWAL_TIME, &30u32.to_be_bytes()),
            ],
        );
        let b = Binding::from_message(&m).unwrap();
        assert_eq!(
            b,
            Binding {
                address: Ipv4Addr::new(10, 99, 7, 50),
                prefix: 24,
                routers: vec![Ipv4Addr::new(10, 99, 7, 1), Ipv4Addr::new(10, 99, 7, 2)],
                dns: vec![Ipv4Addr::new(10, 99, 7, 53)],
                server: Ipv4Addr::new(10, 99, 7, 1),
                lease_secs: 120,
                t1_secs: 30,
                t2_secs: 105,
            }
        );
        // No mask: the address's class; no server id: siaddr.
        let mut m = offer_message(1, Kind::Offer, &[(OPT_LEASE_TIME, &[0, 0, 1, 0])]);
        m.siaddr = Ipv4Addr::new(10, 99, 7, 1);
        let b = Binding::from_message(&m).unwrap();
        assert_eq!((b.prefix, b.server, b.t1_secs), (8, m.siaddr, 128));
        for (opts, why) in [
            (
                vec![(OPT_SERVER_ID, &[10u8, 99, 7, 1][..])],
                "no lease time",
            ),
            (vec![(OPT_LEASE_TIME, &[0u8, 0, 1, 0][..])], "no server"),
            (
                vec![
                    (OPT_LEASE_TIME, &[0u8, 0, 1, 0][..]),
                    (OPT_SERVER_ID, &[10, 99, 7, 1]),
                    (OPT_SUBNET_MASK, &[255, 0, 255, 0]),
                ],
                "not a valid mask",
            ),
            (
                vec![
                    (OPT_LEASE_TIME, &[0u8, 0, 1, 0][..]),
                    (OPT_SERVER_ID, &[10, 99, 7, 1]),
                    (OPT_DNS, &[10, 99, 7]),
                ],
                "option 6 has 3 bytes",
            ),
        ] {
            let e = Binding::from_message(&offer_message(1, Kind::Offer, &opts)).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
        let mut m = offer_message(1, Kind::Offer, &[]);
        m.yiaddr = Ipv4Addr::UNSPECIFIED;
        assert!(Binding::from_message(&m)
            .unwrap_err()
            .contains("no usable address"));
    }

    /// Which of the fake server's sockets a message came to.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Via {
        Broadcast,
        Unicast,
    }

    /// A DHCP server for the client's tests on loopback: two sockets, one standing for the
    /// segment's broadcast address and one for the server's own address, and `answer` deciding
    /// what to send back for each message it gets (all of them logged with their time).
    struct FakeServer {
        log: Arc<Mutex<Vec<(Instant, Via, Message)>>>,
        stop: Arc<std::sync::atomic::AtomicBool>,
        threads: Vec<std::thread::JoinHandle<()>>,
        broadcast_port: u16,
        unicast_port: u16,
    }

    type Answer = dyn FnMut(Via, &Message) -> Vec<Message> + Send;

    impl FakeServer {
        fn start(answer: impl FnMut(Via, &Message) -> Vec<Message> + Send + 'static) -> Self {
            let answer: Arc<Mutex<Box<Answer>>> = Arc::new(Mutex::new(Box::new(answer)));
            let log = Arc::new(Mutex::new(Vec::new()));
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let mut ports = Vec::new();
            let mut threads = Vec::new();
            for via in [Via::Broadcast, Via::Unicast] {
                let s = UdpSocket::bind("127.0.0.1:0").unwrap();
                s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
                ports.push(s.local_addr().unwrap().port());
                let (answer, log, stop) = (answer.clone(), log.clone(), stop.clone());
                threads.push(std::thread::spawn(move || {
                    let mut buf = [0u8; 2048];
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let Ok((n, from)) = s.recv_from(&mut buf) else {
                            continue;
                        };
                        let m = Message::decode(&buf[..n]).expect("the client's message decodes");
                        log.lock().unwrap().push((Instant::now(), via, m.clone()));
                        let replies = answer.lock().unwrap()(via, &m);
                        for r in replies {
                            s.send_to(&r.encode(), from).unwrap();
                        }
                    }
                }));
            }
            FakeServer {
                log,
                stop,
                threads,
                broadcast_port: ports[0],
                unicast_port: ports[1],
            }
        }

        fn client(&self) -> UdpTransport {
            UdpTransport::new(
                "127.0.0.1:0".parse().unwrap(),
                None,
                SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.broadcast_port),
                self.unicast_port,
            )
            .unwrap()
        }

        fn log(&self) -> Vec<(Instant, Via, Message)> {
            self.log.lock().unwrap().clone()
        }

        /// The log once `done` says it is complete (within 3 s).
        fn wait_for(
            &self,
            done: impl Fn(&[(Instant, Via, Message)]) -> bool,
        ) -> Vec<(Instant, Via, Message)> {
            let start = Instant::now();
            loop {
                let log = self.log();
                if done(&log) {
                    return log;
                }
                assert!(start.elapsed() < Duration::from_secs(3), "{log:?}");
                std::thread::sleep(Duration::from_millis(5));
            }
        }

        /// After the server answers again at `back` (10.99.7.50 leased for 40 "seconds" of
        /// 10 ms): broadcast requests until one is acknowledged, then nothing until T1 (200 ms
        /// later), when the renewal is unicast from the leased address.
        fn assert_renewed_at_t1_after(&self, back: Instant) {
            let renewing = |r: &(Instant, Via, Message)| r.0 > back && r.1 == Via::Unicast;
            let log = self.wait_for(|log| log.iter().any(renewing));
            let after: Vec<_> = log.iter().filter(|r| r.0 > back).collect();
            let n = after.len();
            assert!(renewing(after[n - 1]), "{after:?}");
            assert!((2..=4).contains(&n), "{after:?}");
            assert_eq!(after[n - 1].2.ciaddr, Ipv4Addr::new(10, 99, 7, 50));
            for r in &after[..n - 1] {
                assert_eq!(r.1, Via::Broadcast, "{after:?}");
            }
            let wait = after[n - 1].0 - after[n - 2].0;
            assert!(wait >= Duration::from_millis(195), "{wait:?}");
        }
    }

    impl Drop for FakeServer {
        fn drop(&mut self) {
            self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
            for t in self.threads.drain(..) {
                let _ = t.join();
            }
        }
    }

    /// The server's answer of `kind` to `req`, for 10.99.7.50/24 from 127.0.0.1.
    fn reply(req: &Message, kind: Kind, lease: u32) -> Message {
        let mut m = Message::new(BOOTREPLY, req.xid, req.mac);
        m.yiaddr = Ipv4Addr::new(10, 99, 7, 50);
        m.options = vec![
            (OPT_MESSAGE_TYPE, vec![kind as u8]),
            (OPT_SERVER_ID, vec![127, 0, 0, 1]),
            (OPT_LEASE_TIME, lease.to_be_bytes().to_vec()),
            (OPT_SUBNET_MASK, vec![255, 255, 255, 0]),
            (OPT_ROUTER, vec![10, 99, 7, 1]),
            (OPT_DNS, vec![10, 99, 7, 53, 10, 99, 7, 54]),
        ];
        if kind == Kind::Nak {
            m.yiaddr = Ipv4Addr::UNSPECIFIED;
            m.options.truncate(2);
            m.options.push((OPT_MESSAGE, b"address in use".to_vec()));
        }
        m
    }

    fn fast() -> Timing {
        Timing {
            first_retry: Duration::from_millis(40),
            max_retry: Duration::from_millis(160),
            give_up: Duration::from_secs(3),
            renew_min: Duration::from_millis(20),
            second: Duration::from_millis(10),
        }
    }

    #[test]
    fn acquiring_retransmits_starts_over_after_a_nak_and_takes_the_ack() {
        // The first DISCOVER is lost, the first REQUEST refused; another client's OFFER (other
        // xid) and a stray ACK for another MAC come in between and must be ignored.
        let mut discovers = 0;
        let mut requests = 0;
        let server = FakeServer::start(move |_, m| match m.kind() {
            Some(Kind::Discover) => {
                discovers += 1;
                if discovers == 1 {
                    return vec![];
                }
                let mut other = reply(m, Kind::Offer, 120);
                other.xid ^= 1;
                other.yiaddr = Ipv4Addr::new(10, 99, 7, 99);
                vec![other, reply(m, Kind::Offer, 120)]
            }
            Some(Kind::Request) => {
                requests += 1;
                let mut stray = reply(m, Kind::Ack, 120);
                stray.mac[5] ^= 1;
                stray.yiaddr = Ipv4Addr::new(10, 99, 7, 98);
                let kind = if requests == 1 { Kind::Nak } else { Kind::Ack };
                vec![stray, reply(m, kind, 120)]
            }
            _ => vec![],
        });
        let mut t = server.client();
        let before = Instant::now();
        let (b, since) = acquire(&mut t, MAC, "eth0 (MAC x)", &fast()).unwrap();
        assert!(since >= before);
        assert_eq!(b.address, Ipv4Addr::new(10, 99, 7, 50));
        assert_eq!(
            (b.prefix, b.lease_secs, b.t1_secs, b.t2_secs),
            (24, 120, 60, 105)
        );
        assert_eq!(b.routers, [Ipv4Addr::new(10, 99, 7, 1)]);
        assert_eq!(b.dns.len(), 2);
        assert_eq!(b.server, Ipv4Addr::LOCALHOST);
        let log = server.log();
        let kinds: Vec<Kind> = log.iter().map(|(_, _, m)| m.kind().unwrap()).collect();
        use Kind::*;
        assert_eq!(kinds, [Discover, Discover, Request, Discover, Request]);
        assert!(log.iter().all(|(_, via, m)| *via == Via::Broadcast
            && m.broadcast
            && m.ciaddr.is_unspecified()
            && m.option(OPT_CLIENT_ID) == Some(&[1, 2, 0x42, 10, 0x63, 7, 0x32][..])));
        // The retransmission of the lost DISCOVER, after about `first_retry`.
        let gap = log[1].0 - log[0].0;
        assert!(gap >= Duration::from_millis(34), "{gap:?}");
        assert_eq!(log[0].2.xid, log[1].2.xid);
        // The REQUEST names the offer and its server, with the DISCOVER's xid.
        let req = &log[2].2;
        assert_eq!(req.xid, log[1].2.xid);
        assert_eq!(req.option(OPT_REQUESTED_IP), Some(&[10, 99, 7, 50][..]));
        assert_eq!(req.option(OPT_SERVER_ID), Some(&[127, 0, 0, 1][..]));
        // After the NAK, a new transaction.
        assert_ne!(log[3].2.xid, req.xid);
        assert_eq!(log[4].2.xid, log[3].2.xid);
    }

    #[test]
    fn acquiring_gives_up_with_the_interface_in_the_error() {
        let server = FakeServer::start(|_, _| vec![]);
        let mut t = server.client();
        let timing = Timing {
            give_up: Duration::from_millis(300),
            ..fast()
        };
        let start = Instant::now();
        let e = acquire(&mut t, MAC, "eth0 (MAC 02:42:0a:63:07:32)", &timing).unwrap_err();
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_millis(600),
            "{took:?}"
        );
        assert!(
            e.starts_with("no DHCP server answered on eth0 (MAC 02:42:0a:63:07:32) within 0.3 s"),
            "{e}"
        );
        // 0, 40, 120, 280 ms (±10 %): the delay doubles up to its maximum.
        let sends = server.log().len();
        assert!((3..=5).contains(&sends), "{sends} DISCOVERs");

        // A server that offers but never acknowledges; one whose offers are unusable.
        let server = FakeServer::start(|_, m| match m.kind() {
            Some(Kind::Discover) => vec![reply(m, Kind::Offer, 120)],
            _ => vec![],
        });
        let e = acquire(&mut server.client(), MAC, "eth1", &timing).unwrap_err();
        assert!(
            e.starts_with("the DHCP server 127.0.0.1 offered 10.99.7.50 on eth1 but did not acknowledge it within 0.3 s"),
            "{e}"
        );
        let server = FakeServer::start(|_, m| {
            let mut o = reply(m, Kind::Offer, 120);
            o.options.retain(|(c, _)| *c != OPT_LEASE_TIME);
            vec![o]
        });
        let e = acquire(&mut server.client(), MAC, "eth1", &timing).unwrap_err();
        assert!(
            e.contains("no usable DHCP offer came on eth1 within 0.3 s")
                && e.contains(
                    "an offer of 10.99.7.50 from 127.0.0.1 was ignored: it has no lease time"
                ),
            "{e}"
        );
        let server = FakeServer::start(|_, m| match m.kind() {
            Some(Kind::Discover) => vec![reply(m, Kind::Offer, 120)],
            _ => vec![reply(m, Kind::Nak, 0)],
        });
        let e = acquire(&mut server.client(), MAC, "eth1", &timing).unwrap_err();
        assert!(
            e.contains("refused (DHCPNAK: address in use) the address 10.99.7.50"),
            "{e}"
        );
    }

    #[test]
    fn a_kept_lease_is_renewed_rebound_and_reclaimed_without_spinning() {
        // Lease of 40 "seconds" of 10 ms: T1 at 200 ms, T2 at 350 ms, the end at 400 ms.
        let silent = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let quiet = silent.clone();
        let server = FakeServer::start(move |_, m| match m.kind() {
            _ if quiet.load(std::sync::atomic::Ordering::Relaxed) => vec![],
            Some(Kind::Discover) => vec![reply(m, Kind::Offer, 40)],
            _ => vec![reply(m, Kind::Ack, 40)],
        });
        let mut t = server.client();
        let timing = fast();
        let (b, since) = acquire(&mut t, MAC, "eth0", &timing).unwrap();
        let base = server.log().len();
        let keeper = keep(t, MAC, "eth0".into(), b, since, timing);
        // Renewed at about 200 and 400 ms after the lease started, by unicast, from the
        // leased address, each ACK starting the lease anew.
        let log = server.wait_for(|log| log.len() >= base + 2).split_off(base);
        assert_eq!(log.len(), 2, "{log:?}");
        for (at, via, m) in &log {
            assert_eq!(*via, Via::Unicast);
            assert_eq!(m.kind(), Some(Kind::Request));
            assert_eq!(m.ciaddr, Ipv4Addr::new(10, 99, 7, 50));
            assert!(!m.broadcast);
            assert_eq!(m.option(OPT_REQUESTED_IP), None);
            assert_eq!(m.option(OPT_SERVER_ID), None);
            let after = *at - since;
            assert!(after >= Duration::from_millis(195), "{after:?}");
        }
        assert!(log[1].0 - log[0].0 >= Duration::from_millis(195));

        // Now the server is gone: renewing until T2, rebinding until the end, then asking for
        // the address again every `renew_min`.
        silent.store(true, std::sync::atomic::Ordering::Relaxed);
        let quiet_from = log[1].0;
        std::thread::sleep(Duration::from_millis(700));
        let log: Vec<_> = server
            .log()
            .into_iter()
            .filter(|(at, _, _)| *at > quiet_from)
            .collect();
        let stage = |(_, via, m): &(Instant, Via, Message)| match (via, m.ciaddr.is_unspecified()) {
            (Via::Unicast, false) => Stage::Renewing,
            (Via::Broadcast, false) => Stage::Rebinding,
            (Via::Broadcast, true) => {
                assert_eq!(m.option(OPT_REQUESTED_IP), Some(&[10, 99, 7, 50][..]));
                Stage::Reclaiming
            }
            other => panic!("{other:?}"),
        };
        let stages: Vec<Stage> = log.iter().map(stage).collect();
        let first = |s| stages.iter().position(|x| *x == s).unwrap();
        assert!(first(Stage::Renewing) < first(Stage::Rebinding));
        assert!(first(Stage::Rebinding) < first(Stage::Reclaiming));
        assert!(
            stages.windows(2).all(|w| w[0] as u8 <= w[1] as u8),
            "{stages:?}"
        );
        // No spinning: renewing and rebinding wait half the time left to the next stage (at
        // least 20 ms, at most up to that stage): 4 and 3 attempts here; reclaiming every 20 ms.
        let count = |s| stages.iter().filter(|x| **x == s).count();
        assert!(count(Stage::Renewing) <= 5, "{stages:?}");
        assert!(count(Stage::Rebinding) <= 4, "{stages:?}");
        assert!(log.len() <= 40, "{} requests in 700 ms", log.len());
        let reclaiming: Vec<Instant> = log
            .iter()
            .filter(|r| stage(r) == Stage::Reclaiming)
            .map(|r| r.0)
            .collect();
        assert!(reclaiming.len() >= 5, "{stages:?}");
        let gaps = reclaiming.windows(2).map(|w| w[1] - w[0]);
        assert!(gaps.min().unwrap() >= Duration::from_millis(15));

        // The server is back: the address is leased again and renewed as before.
        let back = Instant::now();
        silent.store(false, std::sync::atomic::Ordering::Relaxed);
        server.assert_renewed_at_t1_after(back);
        let t = Instant::now();
        drop(keeper);
        assert!(t.elapsed() < Duration::from_millis(300));
    }

    #[test]
    fn a_refused_renewal_keeps_the_address_and_asks_for_it_again() {
        // Lease of 40 "seconds" of 10 ms (T1 200 ms). Renewals are refused (NAK) until
        // `refuse` is cleared.
        let refuse = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let r = refuse.clone();
        let server = FakeServer::start(move |_, m| match m.kind() {
            Some(Kind::Discover) => vec![reply(m, Kind::Offer, 40)],
            // The REQUEST of the acquisition names the server; renewals do not.
            _ if m.option(OPT_SERVER_ID).is_some() => vec![reply(m, Kind::Ack, 40)],
            _ if r.load(std::sync::atomic::Ordering::Relaxed) => vec![reply(m, Kind::Nak, 0)],
            _ => vec![reply(m, Kind::Ack, 40)],
        });
        let mut t = server.client();
        let (b, since) = acquire(&mut t, MAC, "eth0", &fast()).unwrap();
        let base = server.log().len();
        let keeper = keep(t, MAC, "eth0".into(), b, since, fast());
        std::thread::sleep(Duration::from_millis(450));
        let log = server.log().split_off(base);
        // One refused renewal at T1, then requests for the same address every 20 ms.
        assert_eq!(log[0].1, Via::Unicast);
        assert!(log[0].0 - since >= Duration::from_millis(195));
        let rest = &log[1..];
        assert!((4..=14).contains(&rest.len()), "{} requests", rest.len());
        for (_, via, m) in rest {
            assert_eq!(*via, Via::Broadcast);
            assert!(m.ciaddr.is_unspecified() && m.broadcast);
            assert_eq!(m.option(OPT_REQUESTED_IP), Some(&[10, 99, 7, 50][..]));
        }
        for w in log.windows(2) {
            assert!(w[1].0 - w[0].0 >= Duration::from_millis(15), "spinning");
        }
        // Acknowledged again: back to renewing at T1 of the new lease.
        let back = Instant::now();
        refuse.store(false, std::sync::atomic::Ordering::Relaxed);
        server.assert_renewed_at_t1_after(back);
        drop(keeper);
    }

    /// A transport that records what it sends and answers from a queue.
    struct Scripted {
        sent: Vec<Message>,
        answers: VecDeque<Vec<u8>>,
    }

    impl Transport for Scripted {
        fn broadcast(&mut self, msg: &[u8]) -> io::Result<()> {
            self.sent.push(Message::decode(msg).unwrap());
            Ok(())
        }
        fn unicast(&mut self, _: &[u8], _: Ipv4Addr) -> io::Result<()> {
            Err(io::Error::other("unicast in a test of acquiring"))
        }
        fn recv(&mut self, deadline: Instant) -> io::Result<Option<Vec<u8>>> {
            let Some(mut d) = self.answers.pop_front() else {
                std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
                return Ok(None);
            };
            // Answer the last message sent.
            if d.len() >= 8 {
                let xid = self.sent.last().unwrap().xid.to_be_bytes();
                d[4..8].copy_from_slice(&xid);
            }
            Ok(Some(d))
        }
    }

    #[test]
    fn garbage_and_other_replies_are_skipped() {
        let req = client_message(Kind::Request, 0, MAC);
        let mut as_request = reply(&req, Kind::Offer, 60);
        as_request.op = BOOTREQUEST; // another client's DISCOVER echoed by a relay
        let mut t = Scripted {
            sent: vec![],
            answers: VecDeque::from([
                vec![1, 2, 3],
                as_request.encode(),
                reply(&req, Kind::Ack, 60).encode(), // an ACK while selecting
                reply(&req, Kind::Offer, 60).encode(),
                reply(&req, Kind::Offer, 60).encode(), // a second offer while requesting
                reply(&req, Kind::Ack, 60).encode(),
            ]),
        };
        let (b, _) = acquire(&mut t, MAC, "eth0", &fast()).unwrap();
        assert_eq!(b.address, Ipv4Addr::new(10, 99, 7, 50));
        let kinds: Vec<_> = t.sent.iter().map(|m| m.kind().unwrap()).collect();
        assert_eq!(kinds, [Kind::Discover, Kind::Request]);
    }
}
