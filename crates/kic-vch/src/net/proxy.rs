//! Published container ports: a userland proxy in the manner of Docker's `docker-proxy`.
//!
//! kic-vch listens on the host side and, for each TCP connection or UDP client, opens a socket
//! inside the VCH's network namespace (through [`Netns`]) to the container's address.
//!
//! Publishing is two steps so that a port clash fails a container start before anything boots:
//! [`bind`] takes every host-side socket (all or none), then [`Bound::serve`] starts forwarding
//! once the container's address is known. [`Published`] stops everything when dropped or
//! [closed](Published::close).

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::task::{AbortHandle, JoinSet};
use tracing::{debug, warn};

use super::netns::Netns;

/// Transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// One port to publish: `host_ip:host_port` on the host forwards to `container_port` of the
/// container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortSpec {
    pub proto: Proto,
    /// Where to listen on the host; `0.0.0.0` (Docker's default) for all IPv4 addresses.
    pub host_ip: IpAddr,
    /// 0 lets the kernel pick a free port; [`Bound::ports`] tells which.
    pub host_port: u16,
    pub container_port: u16,
}

impl PortSpec {
    /// `0.0.0.0:host_port` → `container_port`.
    pub fn new(proto: Proto, host_port: u16, container_port: u16) -> PortSpec {
        PortSpec {
            proto,
            host_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            host_port,
            container_port,
        }
    }

    fn host_addr(&self) -> SocketAddr {
        SocketAddr::new(self.host_ip, self.host_port)
    }

    /// Go's network name for the host side, as in Docker's messages: `tcp4`, `udp6`, ...
    fn network(&self) -> String {
        let family = if self.host_ip.is_ipv4() { 4 } else { 6 };
        format!("{}{family}", self.proto)
    }
}

/// A published port with the host address actually bound (the picked port when the spec
/// asked for 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoundPort {
    pub spec: PortSpec,
    pub host: SocketAddr,
}

impl BoundPort {
    pub fn host_port(&self) -> u16 {
        self.host.port()
    }
}

/// A host-side socket could not be bound.
///
/// `Display` gives Docker's wording for a failed userland proxy, e.g.
/// `Error starting userland proxy: listen tcp4 0.0.0.0:8080: bind: address already in use`.
/// When the port is held by one of the VCH's own containers, Docker instead says
/// `Bind for 0.0.0.0:8080 failed: port is already allocated`; that is the caller's to decide
/// ([`BindError::is_addr_in_use`], [`BindError::spec`]).
#[derive(Debug)]
pub struct BindError {
    spec: PortSpec,
    source: io::Error,
}

impl BindError {
    /// The spec that could not be bound.
    pub fn spec(&self) -> &PortSpec {
        &self.spec
    }

    /// The operating system's error.
    pub fn io_error(&self) -> &io::Error {
        &self.source
    }

    pub fn is_addr_in_use(&self) -> bool {
        self.source.kind() == io::ErrorKind::AddrInUse
    }

    /// `listen tcp4 0.0.0.0:8080: bind: address already in use` (Go's error text, which
    /// Docker passes on).
    pub fn listen_message(&self) -> String {
        let reason = match self.source.raw_os_error() {
            Some(code) => go_errno_text(code),
            None => self.source.to_string(),
        };
        format!(
            "listen {} {}: bind: {reason}",
            self.spec.network(),
            self.spec.host_addr()
        )
    }
}

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Error starting userland proxy: {}",
            self.listen_message()
        )
    }
}

impl std::error::Error for BindError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// The C library's text for an errno with a lower-case first letter, which is how Go
/// spells them ("address already in use", "permission denied").
fn go_errno_text(code: i32) -> String {
    let desc = nix::errno::Errno::from_raw(code).desc();
    let mut chars = desc.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => format!("errno {code}"),
    }
}

/// Tuning of the forwarding.
#[derive(Debug, Clone, Copy)]
pub struct ProxyOptions {
    /// How long a TCP connection to the container may take before the client is dropped.
    pub connect_timeout: Duration,
    /// A UDP client's session (its socket in the namespace) ends after this long without
    /// traffic either way.
    pub udp_idle_timeout: Duration,
    /// At most this many UDP sessions per published port; a new client beyond it replaces the
    /// longest-idle session.
    pub udp_max_sessions: usize,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            connect_timeout: Duration::from_secs(10),
            udp_idle_timeout: Duration::from_secs(60),
            udp_max_sessions: 1024,
        }
    }
}

enum Listener {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

/// Host-side sockets bound by [`bind`], not forwarding yet. Dropping it releases the ports.
pub struct Bound {
    ports: Vec<BoundPort>,
    listeners: Vec<Listener>,
}

impl fmt::Debug for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bound").field("ports", &self.ports).finish()
    }
}

/// Binds the host side of every spec, in order. All or nothing: on the first failure the
/// sockets already bound are released and the failing spec is reported.
pub async fn bind(specs: &[PortSpec]) -> Result<Bound, BindError> {
    let mut ports = Vec::with_capacity(specs.len());
    let mut listeners = Vec::with_capacity(specs.len());
    for spec in specs {
        let addr = spec.host_addr();
        let bound = match spec.proto {
            Proto::Tcp => bind_tcp(addr).map(Listener::Tcp),
            Proto::Udp => bind_udp(addr).map(Listener::Udp),
        };
        let listener = bound.map_err(|source| BindError {
            spec: *spec,
            source,
        })?;
        let host = match &listener {
            Listener::Tcp(l) => l.local_addr(),
            Listener::Udp(u) => u.local_addr(),
        }
        .map_err(|source| BindError {
            spec: *spec,
            source,
        })?;
        ports.push(BoundPort { spec: *spec, host });
        listeners.push(listener);
    }
    Ok(Bound { ports, listeners })
}

/// IPv6 host sockets are IPv6-only, as Go's `tcp6`/`udp6` listeners are, so `0.0.0.0:P` and
/// `[::]:P` can be published side by side.
fn set_v6only(fd: &impl AsRawFd) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: fd is an open socket owned by the caller; the option value is a c_int that
    // lives across the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => {
            let s = TcpSocket::new_v6()?;
            set_v6only(&s)?;
            s
        }
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let std_socket = match addr {
        SocketAddr::V4(_) => std::net::UdpSocket::bind(addr)?,
        SocketAddr::V6(v6) => bind_udp_v6only(v6)?,
    };
    std_socket.set_nonblocking(true)?;
    UdpSocket::from_std(std_socket)
}

fn bind_udp_v6only(addr: std::net::SocketAddrV6) -> io::Result<std::net::UdpSocket> {
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: plain socket(2); the result is checked and owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET6, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    set_v6only(&fd)?;
    // SAFETY: sockaddr_in6 is plain data; all-zero is a valid value to fill in.
    let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    sa.sin6_port = addr.port().to_be();
    sa.sin6_addr.s6_addr = addr.ip().octets();
    sa.sin6_flowinfo = addr.flowinfo();
    sa.sin6_scope_id = addr.scope_id();
    // SAFETY: sa is a valid sockaddr_in6 of the given length for the duration of the call.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_in6).cast(),
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(std::net::UdpSocket::from(fd))
}

impl Bound {
    /// The bound host addresses, one per spec given to [`bind`], in the same order.
    pub fn ports(&self) -> &[BoundPort] {
        &self.ports
    }

    /// Starts forwarding to `target` (the container's address inside `ns`) with the default
    /// [`ProxyOptions`]. Must be called within a tokio runtime.
    pub fn serve(self, ns: Netns, target: Ipv4Addr) -> Published {
        self.serve_with(ns, target, ProxyOptions::default())
    }

    /// [`Bound::serve`] with explicit options.
    pub fn serve_with(self, ns: Netns, target: Ipv4Addr, opts: ProxyOptions) -> Published {
        let mut tasks = JoinSet::new();
        for (port, listener) in self.ports.iter().zip(self.listeners) {
            let to = SocketAddrV4::new(target, port.spec.container_port);
            match listener {
                Listener::Tcp(l) => {
                    tasks.spawn(serve_tcp(l, *port, ns.clone(), to, opts));
                }
                Listener::Udp(u) => {
                    tasks.spawn(serve_udp(Arc::new(u), *port, ns.clone(), to, opts));
                }
            }
        }
        Published {
            ports: self.ports,
            tasks,
        }
    }
}

/// Ports being forwarded. Dropping it stops the listeners and cuts the live connections and
/// UDP sessions (asynchronously, within a scheduler tick); [`Published::close`] does the same
/// and waits until the host ports are released.
pub struct Published {
    ports: Vec<BoundPort>,
    /// One task per host socket; each owns its connections and sessions, so aborting it ends
    /// them all.
    tasks: JoinSet<()>,
}

impl fmt::Debug for Published {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Published")
            .field("ports", &self.ports)
            .finish()
    }
}

impl Published {
    /// The published host addresses, in the order of the specs.
    pub fn ports(&self) -> &[BoundPort] {
        &self.ports
    }

    /// Stops forwarding; returns once the host sockets are closed.
    pub async fn close(mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}

async fn serve_tcp(
    listener: TcpListener,
    port: BoundPort,
    ns: Netns,
    target: SocketAddrV4,
    opts: ProxyOptions,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, peer)) => {
                    conns.spawn(forward_tcp(client, peer, ns.clone(), target, opts.connect_timeout));
                }
                Err(e) => {
                    // Out of descriptors and the like: back off rather than spin.
                    warn!(host = %port.host, "accepting a connection for published port failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn forward_tcp(
    mut client: TcpStream,
    peer: SocketAddr,
    ns: Netns,
    target: SocketAddrV4,
    timeout: Duration,
) {
    let mut upstream = match ns.tcp_connect_timeout(target, timeout).await {
        Ok(s) => s,
        Err(e) => {
            // As docker-proxy does, the client's connection is simply closed.
            warn!(%peer, "published port: {e}");
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    // Copies both ways; an EOF on one side is passed on as a shutdown of the other side's
    // write half, so half-closed connections keep working in the other direction.
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((up, down)) => debug!(%peer, %target, up, down, "published connection done"),
        Err(e) => debug!(%peer, %target, "published connection ended: {e}"),
    }
}

struct UdpSession {
    socket: Arc<UdpSocket>,
    /// Milliseconds since the port's start at the last datagram either way.
    last: Arc<AtomicU64>,
    replies: AbortHandle,
}

async fn serve_udp(
    host: Arc<UdpSocket>,
    port: BoundPort,
    ns: Netns,
    target: SocketAddrV4,
    opts: ProxyOptions,
) {
    let start = Instant::now();
    let now_ms = move || start.elapsed().as_millis() as u64;
    let idle_ms = opts.udp_idle_timeout.as_millis() as u64;
    let max_sessions = opts.udp_max_sessions.max(1);
    let mut sessions: HashMap<SocketAddr, UdpSession> = HashMap::new();
    // Reply readers; dropped (so aborted) with this task.
    let mut readers = JoinSet::new();
    let mut sweep =
        tokio::time::interval((opts.udp_idle_timeout / 4).max(Duration::from_millis(50)));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = vec![0u8; 65535];
    loop {
        tokio::select! {
            received = host.recv_from(&mut buf) => {
                let (n, client) = match received {
                    Ok(r) => r,
                    Err(e) => {
                        debug!(host = %port.host, "published udp port: receive: {e}");
                        continue;
                    }
                };
                let live = sessions.get(&client).is_some_and(|s| !s.replies.is_finished());
                if !live {
                    sessions.remove(&client);
                    if sessions.len() >= max_sessions {
                        let oldest = sessions
                            .iter()
                            .min_by_key(|(_, s)| s.last.load(Ordering::Relaxed))
                            .map(|(a, _)| *a);
                        if let Some(s) = oldest.and_then(|a| sessions.remove(&a)) {
                            s.replies.abort();
                        }
                    }
                    match new_udp_session(&ns, target, &host, client, &mut readers, start).await {
                        Ok(s) => {
                            sessions.insert(client, s);
                        }
                        Err(e) => {
                            warn!(%client, "published udp port {}: {e}", port.host);
                            continue;
                        }
                    }
                }
                if let Some(s) = sessions.get(&client) {
                    s.last.store(now_ms(), Ordering::Relaxed);
                    if let Err(e) = s.socket.send(&buf[..n]).await {
                        // ECONNREFUSED from an earlier ICMP port unreachable and the like.
                        debug!(%client, %target, "published udp port: send: {e}");
                    }
                }
            }
            _ = sweep.tick() => {
                let now = now_ms();
                sessions.retain(|_, s| {
                    let keep = now.saturating_sub(s.last.load(Ordering::Relaxed)) < idle_ms
                        && !s.replies.is_finished();
                    if !keep {
                        s.replies.abort();
                    }
                    keep
                });
            }
            Some(_) = readers.join_next(), if !readers.is_empty() => {}
        }
    }
}

async fn new_udp_session(
    ns: &Netns,
    target: SocketAddrV4,
    host: &Arc<UdpSocket>,
    client: SocketAddr,
    readers: &mut JoinSet<()>,
    start: Instant,
) -> io::Result<UdpSession> {
    let socket = ns
        .udp_bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))
        .await?;
    socket.connect(target).await.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "connect udp socket to {target} in {}: {e}",
                ns.path().display()
            ),
        )
    })?;
    let socket = Arc::new(socket);
    let last = Arc::new(AtomicU64::new(start.elapsed().as_millis() as u64));
    let replies = readers.spawn({
        let socket = socket.clone();
        let host = host.clone();
        let last = last.clone();
        async move {
            let mut buf = vec![0u8; 65535];
            loop {
                match socket.recv(&mut buf).await {
                    Ok(n) => {
                        last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
                        if let Err(e) = host.send_to(&buf[..n], client).await {
                            debug!(%client, "published udp port: reply: {e}");
                        }
                    }
                    // An ICMP port unreachable from the container: nothing listens (yet).
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
                    Err(e) => {
                        debug!(%client, %target, "published udp session ends: {e}");
                        return;
                    }
                }
            }
        }
    });
    Ok(UdpSession {
        socket,
        last,
        replies,
    })
}

#[cfg(test)]
mod tests {
    use super::super::netns::testns::TestNetns;
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
    const T: Duration = Duration::from_secs(5);

    fn spec(proto: Proto, host_port: u16, container_port: u16) -> PortSpec {
        PortSpec {
            proto,
            host_ip: LOCAL,
            host_port,
            container_port,
        }
    }

    /// TCP echo server inside the namespace: echoes until EOF, then sends `<eof>` and closes.
    async fn tcp_echo(ns: &Netns) -> u16 {
        let l = ns.tcp_listen("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    loop {
                        let n = s.read(&mut buf).await.unwrap();
                        if n == 0 {
                            break;
                        }
                        s.write_all(&buf[..n]).await.unwrap();
                    }
                    s.write_all(b"<eof>").await.unwrap();
                    s.shutdown().await.unwrap();
                });
            }
        });
        port
    }

    /// UDP echo server inside the namespace: replies `data|sender-address`.
    async fn udp_echo(ns: &Netns) -> u16 {
        let u = ns.udp_bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let port = u.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            loop {
                let (n, from) = u.recv_from(&mut buf).await.unwrap();
                let mut reply = buf[..n].to_vec();
                reply.extend_from_slice(format!("|{from}").as_bytes());
                u.send_to(&reply, from).await.unwrap();
            }
        });
        port
    }

    /// Sends `msg` to the published port and returns (echoed data, sender seen by the
    /// container).
    async fn udp_roundtrip(client: &UdpSocket, to: SocketAddr, msg: &str) -> (String, String) {
        client.send_to(msg.as_bytes(), to).await.unwrap();
        let mut buf = [0u8; 2048];
        let (n, from) = tokio::time::timeout(T, client.recv_from(&mut buf))
            .await
            .expect("no UDP reply through the proxy")
            .unwrap();
        assert_eq!(from, to, "the reply must come from the published address");
        let text = String::from_utf8(buf[..n].to_vec()).unwrap();
        let (data, sender) = text.split_once('|').unwrap();
        (data.to_string(), sender.to_string())
    }

    async fn refused(addr: SocketAddr) -> bool {
        matches!(TcpStream::connect(addr).await, Err(e) if e.kind() == io::ErrorKind::ConnectionRefused)
    }

    #[tokio::test]
    async fn tcp_and_udp_forwarding_then_close() {
        let guard = TestNetns::new("fwd");
        let ns = Netns::open(guard.path()).unwrap();
        let tcp_port = tcp_echo(&ns).await;
        let udp_port = udp_echo(&ns).await;
        let bound = bind(&[spec(Proto::Tcp, 0, tcp_port), spec(Proto::Udp, 0, udp_port)])
            .await
            .unwrap();
        let ports = bound.ports().to_vec();
        assert_eq!(ports.len(), 2);
        assert_eq!(ports[0].spec.container_port, tcp_port);
        assert_ne!(ports[0].host_port(), 0, "a port must be picked");
        assert_ne!(ports[1].host_port(), 0, "a port must be picked");
        assert_eq!(ports[0].host.ip(), LOCAL);
        let published = bound.serve(ns.clone(), Ipv4Addr::LOCALHOST);
        assert_eq!(published.ports(), &ports[..]);
        let tcp_host = ports[0].host;
        let udp_host = ports[1].host;

        // TCP: echo both ways, several exchanges on one connection.
        let mut c = TcpStream::connect(tcp_host).await.unwrap();
        for msg in [&b"hello"[..], b"second message", &[7u8; 3000][..]] {
            c.write_all(msg).await.unwrap();
            let mut back = vec![0u8; msg.len()];
            tokio::time::timeout(T, c.read_exact(&mut back))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(back, msg);
        }
        // Half-close: our EOF reaches the server, whose later data still reaches us.
        c.write_all(b"last").await.unwrap();
        c.shutdown().await.unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(T, c.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rest, b"last<eof>");

        // UDP: two clients get their own sessions; a client keeps its session.
        let a = UdpSocket::bind((LOCAL, 0)).await.unwrap();
        let b = UdpSocket::bind((LOCAL, 0)).await.unwrap();
        let (data, a_sender) = udp_roundtrip(&a, udp_host, "ping-a").await;
        assert_eq!(data, "ping-a");
        let (data, b_sender) = udp_roundtrip(&b, udp_host, "ping-b").await;
        assert_eq!(data, "ping-b");
        assert_ne!(a_sender, b_sender);
        let (_, a_again) = udp_roundtrip(&a, udp_host, "ping-a2").await;
        assert_eq!(a_again, a_sender);

        // A live connection is cut by close(), and the port is released.
        let mut live = TcpStream::connect(tcp_host).await.unwrap();
        live.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        live.read_exact(&mut one).await.unwrap();
        published.close().await;
        assert!(
            refused(tcp_host).await,
            "host port still accepts after close"
        );
        let mut rest = Vec::new();
        let end = tokio::time::timeout(T, live.read_to_end(&mut rest))
            .await
            .expect("the live connection was not cut");
        // Cut by the proxy: EOF or reset, and nothing from the server's orderly end.
        assert!(
            end.is_err() || rest.is_empty(),
            "the connection must be cut by the proxy: {rest:?}"
        );
        // The UDP port is free again.
        UdpSocket::bind(udp_host).await.unwrap();
    }

    #[tokio::test]
    async fn dropping_published_releases_the_port() {
        let guard = TestNetns::new("drop");
        let ns = Netns::open(guard.path()).unwrap();
        let tcp_port = tcp_echo(&ns).await;
        let published = bind(&[spec(Proto::Tcp, 0, tcp_port)])
            .await
            .unwrap()
            .serve(ns, Ipv4Addr::LOCALHOST);
        let host = published.ports()[0].host;
        let mut c = TcpStream::connect(host).await.unwrap();
        c.write_all(b"hi").await.unwrap();
        let mut back = [0u8; 2];
        c.read_exact(&mut back).await.unwrap();
        drop(published);
        let deadline = Instant::now() + T;
        while !refused(host).await {
            assert!(
                Instant::now() < deadline,
                "host port still accepts after drop"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn nothing_listening_in_the_container_closes_the_client() {
        let guard = TestNetns::new("closed");
        let ns = Netns::open(guard.path()).unwrap();
        // A port with nothing behind it inside the namespace.
        let free = ns
            .tcp_listen("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let published = bind(&[spec(Proto::Tcp, 0, free)])
            .await
            .unwrap()
            .serve(ns, Ipv4Addr::LOCALHOST);
        let mut c = TcpStream::connect(published.ports()[0].host).await.unwrap();
        let mut buf = Vec::new();
        let n = tokio::time::timeout(T, c.read_to_end(&mut buf))
            .await
            .expect("client not closed")
            .unwrap_or(0);
        assert_eq!(n, 0);
        published.close().await;
    }

    #[tokio::test]
    async fn udp_sessions_expire_and_are_bounded() {
        let guard = TestNetns::new("udp");
        let ns = Netns::open(guard.path()).unwrap();
        let udp_port = udp_echo(&ns).await;
        let opts = ProxyOptions {
            udp_idle_timeout: Duration::from_millis(300),
            udp_max_sessions: 1,
            ..ProxyOptions::default()
        };
        let published = bind(&[spec(Proto::Udp, 0, udp_port)])
            .await
            .unwrap()
            .serve_with(ns, Ipv4Addr::LOCALHOST, opts);
        let host = published.ports()[0].host;
        let a = UdpSocket::bind((LOCAL, 0)).await.unwrap();
        let b = UdpSocket::bind((LOCAL, 0)).await.unwrap();

        let (_, first) = udp_roundtrip(&a, host, "1").await;
        let (_, again) = udp_roundtrip(&a, host, "2").await;
        assert_eq!(first, again, "an active client keeps its session");
        // Idle past the timeout: a new session (new socket, so a new source port).
        tokio::time::sleep(Duration::from_millis(900)).await;
        let (_, after_idle) = udp_roundtrip(&a, host, "3").await;
        assert_ne!(after_idle, first, "the idle session was not expired");
        // Only one session: b's replaces a's, and a gets a fresh one after.
        let (data, _) = udp_roundtrip(&b, host, "b").await;
        assert_eq!(data, "b");
        let (_, a_next) = udp_roundtrip(&a, host, "4").await;
        assert_ne!(a_next, after_idle, "the session limit was not applied");
        published.close().await;
    }

    #[tokio::test]
    async fn clash_fails_with_dockers_message_and_releases_the_rest() {
        // Held by someone else on the host.
        let taken_tcp = std::net::TcpListener::bind((LOCAL, 0)).unwrap();
        let tp = taken_tcp.local_addr().unwrap().port();
        let taken_udp = std::net::UdpSocket::bind((LOCAL, 0)).unwrap();
        let up = taken_udp.local_addr().unwrap().port();
        // A free port to bind first, which must be released when the second spec fails.
        let free = std::net::TcpListener::bind((LOCAL, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();

        let err = bind(&[spec(Proto::Tcp, free, 80), spec(Proto::Tcp, tp, 80)])
            .await
            .unwrap_err();
        assert!(err.is_addr_in_use());
        assert_eq!(err.spec().host_port, tp);
        assert_eq!(
            err.to_string(),
            format!(
                "Error starting userland proxy: listen tcp4 127.0.0.1:{tp}: bind: address already in use"
            )
        );
        std::net::TcpListener::bind((LOCAL, free)).expect("the first port was not released");

        let err = bind(&[spec(Proto::Udp, up, 53)]).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "Error starting userland proxy: listen udp4 127.0.0.1:{up}: bind: address already in use"
            )
        );
        // The same port number in the other protocol is no clash.
        bind(&[spec(Proto::Udp, tp, 53)]).await.unwrap();

        // IPv6 listeners are v6-only, so they do not clash with IPv4 ones on the same port.
        let v6 = PortSpec {
            host_ip: IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            ..spec(Proto::Tcp, tp, 80)
        };
        match bind(&[v6]).await {
            Ok(b) => assert_eq!(b.ports()[0].host, SocketAddr::new(v6.host_ip, tp)),
            // No IPv6 on this machine's loopback: the message still names tcp6.
            Err(e) => assert!(
                e.to_string().starts_with(&format!(
                    "Error starting userland proxy: listen tcp6 [::1]:{tp}: bind: "
                )),
                "{e}"
            ),
        }
        drop((taken_tcp, taken_udp));
    }
}
