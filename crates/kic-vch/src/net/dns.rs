//! The embedded DNS responder of a container network: KIC's counterpart of Docker's
//! 127.0.0.11 resolver.
//!
//! kic-vch runs one responder per network, on UDP port 53 of the network's gateway address
//! inside the VCH's network namespace. Containers on the network resolve each other's names
//! (and aliases) through it; every other name is forwarded to the nameservers of the host's
//! `/etc/resolv.conf`, through sockets made by a caller-supplied factory because those
//! nameservers are reachable only from the host's namespace.
//!
//! Behaviour, modelled on Docker:
//! - `A` for a name the [`Resolver`] knows: NOERROR with its addresses, TTL 600, in random
//!   order (Docker's round robin over containers sharing an alias).
//! - `AAAA` (and any other type) for a known name: NOERROR without answers, so resolvers do
//!   not fall back to search domains or upstream.
//! - `PTR` for `d.c.b.a.in-addr.arpa` of a known address: the container's name.
//! - Everything else is forwarded; with no upstream the answer is NXDOMAIN, and when no
//!   upstream answers in time it is SERVFAIL.
//! - Malformed datagrams and responses are dropped; replies larger than the client can take
//!   over UDP (512 bytes, or its EDNS buffer size) keep the answers that fit and carry TC.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Header, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, PTR};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use rand::seq::SliceRandom;
use tokio::net::UdpSocket;
use tokio::task::JoinSet;

/// What the containers of one network can resolve.
pub trait Resolver: Send + Sync + 'static {
    /// IPv4 addresses for `name` (lower-cased, no trailing dot) as seen by the container whose
    /// address is `client`; `None` when it is not a container name here (it is forwarded).
    /// `Some(vec![])` claims the name without addresses (NOERROR, no answers).
    fn lookup(&self, client: Ipv4Addr, name: &str) -> Option<Vec<Ipv4Addr>>;
    /// The name of the container whose address is `addr`, seen from `client` (answers PTR
    /// queries for `d.c.b.a.in-addr.arpa`); `None` forwards the query.
    fn reverse(&self, client: Ipv4Addr, addr: Ipv4Addr) -> Option<String>;
}

/// The outcome of [`answer`] for one query datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Send these bytes back to the client.
    Reply(Vec<u8>),
    /// Not one of ours: ask the upstream nameservers.
    Forward,
    /// Not a DNS query we can parse (or a response): say nothing.
    Drop,
}

/// Makes a UDP socket, in the host's network namespace, able to reach the given upstream
/// nameserver. [`bind_for`] does the binding; the caller wraps it in its namespace switch.
pub type SocketFactory = Arc<dyn Fn(SocketAddr) -> io::Result<std::net::UdpSocket> + Send + Sync>;

/// TTL of the records we answer, as Docker's resolver uses.
pub const TTL: u32 = 600;
/// How long one upstream nameserver has to answer a forwarded query.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
/// Plain DNS over UDP without EDNS: at most 512 bytes (RFC 1035 4.2.1).
const UDP_MIN_PAYLOAD: u16 = 512;
/// The largest EDNS buffer size we honour, and advertise.
const UDP_MAX_PAYLOAD: u16 = 4096;
/// Forwarded queries in flight at once; more are answered SERVFAIL (Docker allows 100).
const MAX_CONCURRENT_FORWARDS: usize = 100;
/// Like the C library, only the first three nameservers are used.
const MAX_UPSTREAMS: usize = 3;

/// Answers one query datagram from the container at `client`.
pub fn answer(query: &[u8], client: Ipv4Addr, r: &dyn Resolver) -> Answer {
    let Ok(msg) = Message::from_vec(query) else {
        return Answer::Drop;
    };
    if msg.message_type() != MessageType::Query {
        return Answer::Drop;
    }
    if msg.op_code() != OpCode::Query {
        return reply_or_drop(encode_limited(
            error_response(&msg, ResponseCode::NotImp),
            udp_limit(&msg),
        ));
    }
    let [q] = msg.queries() else {
        return reply_or_drop(encode_limited(
            error_response(&msg, ResponseCode::FormErr),
            udp_limit(&msg),
        ));
    };
    if q.query_class() != DNSClass::IN {
        return Answer::Forward;
    }

    let mut resp = response_to(&msg);
    if q.query_type() == RecordType::PTR {
        if let Some(addr) = in_addr_arpa(q.name()) {
            let Some(target) = r.reverse(client, addr) else {
                return Answer::Forward;
            };
            let fqdn = format!("{}.", target.trim_end_matches('.'));
            match Name::from_ascii(&fqdn) {
                Ok(target) => {
                    resp.add_answer(Record::from_rdata(
                        q.name().clone(),
                        TTL,
                        RData::PTR(PTR(target)),
                    ));
                }
                Err(e) => {
                    tracing::warn!(
                        "DNS: container name {target:?} for {addr} is not a valid DNS name: {e}"
                    );
                    resp.set_response_code(ResponseCode::ServFail);
                }
            }
            return reply_or_drop(encode_limited(resp, udp_limit(&msg)));
        }
    }

    let name = q.name().to_lowercase().to_ascii();
    let name = name.strip_suffix('.').unwrap_or(&name);
    let Some(mut addrs) = r.lookup(client, name) else {
        return Answer::Forward;
    };
    if q.query_type() == RecordType::A {
        addrs.shuffle(&mut rand::thread_rng());
        resp.add_answers(
            addrs
                .into_iter()
                .map(|a| Record::from_rdata(q.name().clone(), TTL, RData::A(A(a)))),
        );
    }
    // AAAA and every other type for one of our names: NOERROR, no data.
    reply_or_drop(encode_limited(resp, udp_limit(&msg)))
}

/// Serves DNS on `sock` until receiving fails (the error is returned) or the future is dropped
/// (which also abandons queries being forwarded). Forwards with [`FORWARD_TIMEOUT`].
pub async fn serve(
    sock: UdpSocket,
    r: Arc<dyn Resolver>,
    upstream: Vec<SocketAddr>,
    forward: SocketFactory,
) -> io::Result<()> {
    serve_with_timeout(sock, r, upstream, forward, FORWARD_TIMEOUT).await
}

/// [`serve`] with the per-upstream timeout given.
pub async fn serve_with_timeout(
    sock: UdpSocket,
    r: Arc<dyn Resolver>,
    upstream: Vec<SocketAddr>,
    forward: SocketFactory,
    timeout: Duration,
) -> io::Result<()> {
    let sock = Arc::new(sock);
    let fwd = Arc::new(Forwarder {
        upstream: upstream.into_iter().take(MAX_UPSTREAMS).collect(),
        factory: forward,
        timeout,
    });
    let mut forwards = JoinSet::new();
    let mut buf = vec![0u8; 65535];
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(v) => v,
            Err(e) if is_transient(&e) => continue,
            Err(e) => return Err(e),
        };
        while forwards.try_join_next().is_some() {}
        let client = match from.ip() {
            IpAddr::V4(a) => a,
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(a) => a,
                None => continue,
            },
        };
        let query = &buf[..n];
        let reply = match answer(query, client, r.as_ref()) {
            Answer::Drop => None,
            Answer::Reply(bytes) => Some(bytes),
            Answer::Forward if fwd.upstream.is_empty() => {
                error_reply(query, ResponseCode::NXDomain)
            }
            Answer::Forward if forwards.len() >= MAX_CONCURRENT_FORWARDS => {
                tracing::warn!(
                    "DNS: more than {MAX_CONCURRENT_FORWARDS} queries being forwarded; \
                     answering SERVFAIL to {from}"
                );
                error_reply(query, ResponseCode::ServFail)
            }
            Answer::Forward => {
                let (sock, fwd, query) = (sock.clone(), fwd.clone(), query.to_vec());
                forwards.spawn(async move {
                    if let Some(reply) = fwd.forward(&query).await {
                        send_reply(&sock, &reply, from).await;
                    }
                });
                None
            }
        };
        if let Some(reply) = reply {
            send_reply(&sock, &reply, from).await;
        }
    }
}

/// The nameservers of a resolv.conf text, port 53, in order. Loopback nameservers are kept:
/// forwarding happens from the host's namespace, where they are reachable. Lines that do not
/// parse are skipped.
pub fn upstream_from_resolv_conf(text: &str) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(word) = words.next() else { continue };
        let Some(addr) = parse_nameserver(word) else {
            tracing::debug!("resolv.conf: skipping nameserver {word:?}: not an IP address");
            continue;
        };
        if !out.contains(&addr) {
            out.push(addr);
        }
    }
    out
}

/// Binds an unspecified-address UDP socket of the upstream's family (`0.0.0.0:0` or `[::]:0`)
/// in the calling thread's network namespace: the body of a [`SocketFactory`].
pub fn bind_for(upstream: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let local: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    std::net::UdpSocket::bind(local)
}

fn parse_nameserver(word: &str) -> Option<SocketAddr> {
    if let Ok(ip) = word.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, 53));
    }
    // fe80::1%eth0 or fe80::1%2: a link-local address with its interface.
    let (ip, scope) = word.split_once('%')?;
    let ip: Ipv6Addr = ip.parse().ok()?;
    let scope = match scope.parse::<u32>() {
        Ok(index) => index,
        Err(_) => {
            let name = std::ffi::CString::new(scope).ok()?;
            // SAFETY: `name` is a valid NUL-terminated string that outlives the call.
            let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
            if index == 0 {
                return None;
            }
            index
        }
    };
    Some(SocketAddr::V6(SocketAddrV6::new(ip, 53, 0, scope)))
}

struct Forwarder {
    upstream: Vec<SocketAddr>,
    factory: SocketFactory,
    timeout: Duration,
}

impl Forwarder {
    /// The reply to send to the client for a forwarded query: the first upstream answer that
    /// is not SERVFAIL/REFUSED, else the last such answer, else SERVFAIL.
    async fn forward(&self, query: &[u8]) -> Option<Vec<u8>> {
        let msg = Message::from_vec(query).ok()?;
        let question = msg.queries().first()?.clone();
        let limit = udp_limit(&msg);
        let mut refused = None;
        for &up in &self.upstream {
            match self.exchange(up, query, &question).await {
                Ok(reply) => {
                    let rcode = reply[3] & 0x0f;
                    if rcode == ResponseCode::ServFail.low() || rcode == ResponseCode::Refused.low()
                    {
                        refused = Some(reply);
                        continue;
                    }
                    return fit(reply, limit, &msg);
                }
                Err(e) => tracing::debug!(
                    "DNS: forwarding {} {} to {up} failed: {e}",
                    question.query_type(),
                    question.name()
                ),
            }
        }
        match refused {
            Some(reply) => fit(reply, limit, &msg),
            None => encode_limited(error_response(&msg, ResponseCode::ServFail), limit),
        }
    }

    /// One query to one upstream over a fresh socket (fresh source port) with a fresh ID;
    /// returns the matching response with the client's ID put back.
    async fn exchange(
        &self,
        up: SocketAddr,
        query: &[u8],
        question: &Query,
    ) -> io::Result<Vec<u8>> {
        let factory = self.factory.clone();
        let sock = tokio::task::spawn_blocking(move || factory(up))
            .await
            .map_err(io::Error::other)??;
        sock.set_nonblocking(true)?;
        let sock = UdpSocket::from_std(sock)?;
        // Connected: the kernel drops datagrams from anyone else and reports ICMP errors.
        sock.connect(up).await?;
        let id: u16 = rand::random();
        let mut out = query.to_vec();
        out[..2].copy_from_slice(&id.to_be_bytes());
        sock.send(&out).await?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut buf = vec![0u8; 65535];
        loop {
            let n = tokio::time::timeout_at(deadline, sock.recv(&mut buf))
                .await
                .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no answer within {:?}", self.timeout),
                    )
                })??;
            let reply = &buf[..n];
            if response_matches(reply, id, question) {
                let mut reply = reply.to_vec();
                reply[..2].copy_from_slice(&query[..2]);
                return Ok(reply);
            }
        }
    }
}

/// Whether `reply` is a response with our ID to our question (error responses may omit it).
fn response_matches(reply: &[u8], id: u16, question: &Query) -> bool {
    let mut dec = BinDecoder::new(reply);
    let Ok(header) = Header::read(&mut dec) else {
        return false;
    };
    if header.id() != id || header.message_type() != MessageType::Response {
        return false;
    }
    match header.query_count() {
        0 => header.response_code() != ResponseCode::NoError,
        1 => Query::read(&mut dec).is_ok_and(|q| &q == question),
        _ => false,
    }
}

/// An upstream reply made to fit the client's UDP limit.
fn fit(reply: Vec<u8>, limit: usize, query: &Message) -> Option<Vec<u8>> {
    if reply.len() <= limit {
        return Some(reply);
    }
    match Message::from_vec(&reply) {
        Ok(msg) => encode_limited(msg, limit),
        Err(_) => encode_limited(error_response(query, ResponseCode::ServFail), limit),
    }
}

/// The response skeleton for `query`: same ID, opcode, RD, CD and question; RA set as Docker does.
fn response_to(query: &Message) -> Message {
    let mut resp = Message::new();
    resp.set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .set_checking_disabled(query.checking_disabled())
        .add_queries(query.queries().iter().cloned());
    if query.extensions().is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(UDP_MAX_PAYLOAD);
        resp.set_edns(edns);
    }
    resp
}

fn error_response(query: &Message, code: ResponseCode) -> Message {
    let mut resp = response_to(query);
    resp.set_response_code(code);
    resp
}

/// An error response (`code`) to a query datagram; `None` if it does not parse as a query.
fn error_reply(query: &[u8], code: ResponseCode) -> Option<Vec<u8>> {
    let msg = Message::from_vec(query).ok()?;
    encode_limited(error_response(&msg, code), udp_limit(&msg))
}

/// The largest UDP response the client takes: 512 bytes, or its EDNS buffer size.
fn udp_limit(query: &Message) -> usize {
    query
        .extensions()
        .as_ref()
        .map_or(UDP_MIN_PAYLOAD, |e| {
            e.max_payload().clamp(UDP_MIN_PAYLOAD, UDP_MAX_PAYLOAD)
        })
        .into()
}

/// Encodes `msg` in at most `limit` bytes: when too big, drops the authority and additional
/// sections, then answers from the end until it fits, and sets TC.
fn encode_limited(mut msg: Message, limit: usize) -> Option<Vec<u8>> {
    let bytes = msg.to_vec().ok()?;
    if bytes.len() <= limit {
        return Some(bytes);
    }
    msg.set_truncated(true);
    msg.take_name_servers();
    msg.take_additionals();
    msg.take_signature();
    loop {
        let bytes = msg.to_vec().ok()?;
        if bytes.len() <= limit || msg.answers_mut().pop().is_none() {
            return Some(bytes);
        }
    }
}

fn reply_or_drop(bytes: Option<Vec<u8>>) -> Answer {
    bytes.map_or(Answer::Drop, Answer::Reply)
}

/// The address `a.b.c.d` named by `d.c.b.a.in-addr.arpa`.
fn in_addr_arpa(name: &Name) -> Option<Ipv4Addr> {
    let labels: Vec<&[u8]> = name.iter().collect();
    let [d, c, b, a, in_addr, arpa] = labels[..] else {
        return None;
    };
    if !in_addr.eq_ignore_ascii_case(b"in-addr") || !arpa.eq_ignore_ascii_case(b"arpa") {
        return None;
    }
    let octet = |label: &[u8]| -> Option<u8> {
        let canonical = !label.is_empty()
            && label.len() <= 3
            && label.iter().all(u8::is_ascii_digit)
            && (label.len() == 1 || label[0] != b'0');
        if !canonical {
            return None;
        }
        std::str::from_utf8(label).ok()?.parse().ok()
    };
    Some(Ipv4Addr::new(octet(a)?, octet(b)?, octet(c)?, octet(d)?))
}

async fn send_reply(sock: &UdpSocket, reply: &[u8], to: SocketAddr) {
    if let Err(e) = sock.send_to(reply, to).await {
        tracing::debug!("DNS: sending the reply to {to} failed: {e}");
    }
}

/// Receive errors that concern one peer (ICMP echoes of earlier sends), not the socket.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    ) || matches!(
        e.raw_os_error(),
        Some(libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EMSGSIZE)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use std::collections::{HashMap, HashSet};
    use std::str::FromStr;

    /// Containers of network 10.0.0.0/24 see each other; clients elsewhere see nothing.
    struct TestNet {
        names: HashMap<&'static str, Vec<Ipv4Addr>>,
    }

    impl TestNet {
        fn new() -> Self {
            let ip = |s: &str| Ipv4Addr::from_str(s).unwrap();
            let mut names = HashMap::new();
            names.insert("web", vec![ip("10.0.0.3")]);
            names.insert("web.mynet", vec![ip("10.0.0.3")]);
            names.insert(
                "db",
                vec![
                    ip("10.0.0.4"),
                    ip("10.0.0.5"),
                    ip("10.0.0.6"),
                    ip("10.0.0.7"),
                ],
            );
            names.insert(
                "many",
                (0..100u8).map(|i| Ipv4Addr::new(10, 0, 1, i)).collect(),
            );
            names.insert("empty", vec![]);
            TestNet { names }
        }
    }

    impl Resolver for TestNet {
        fn lookup(&self, client: Ipv4Addr, name: &str) -> Option<Vec<Ipv4Addr>> {
            if client.octets()[..3] != [10, 0, 0] {
                return None;
            }
            self.names.get(name).cloned()
        }
        fn reverse(&self, client: Ipv4Addr, addr: Ipv4Addr) -> Option<String> {
            if client.octets()[..3] != [10, 0, 0] {
                return None;
            }
            match addr.octets() {
                [10, 0, 0, 3] => Some("web.mynet".into()),
                [10, 0, 0, 9] => Some("bad name!.mynet".into()),
                _ => None,
            }
        }
    }

    const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    fn query(name: &str, rtype: RecordType, edns: Option<u16>) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(0x1234)
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(true)
            .add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
        if let Some(size) = edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    fn reply(a: Answer) -> Message {
        match a {
            Answer::Reply(bytes) => {
                let m = Message::from_vec(&bytes).expect("reply parses");
                assert_eq!(m.message_type(), MessageType::Response);
                m
            }
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    fn a_addrs(m: &Message) -> Vec<Ipv4Addr> {
        m.answers()
            .iter()
            .map(|r| match r.data() {
                RData::A(a) => a.0,
                other => panic!("not an A record: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_records_for_our_names() {
        let net = TestNet::new();
        let m = reply(answer(&query("web.", RecordType::A, None), CLIENT, &net));
        assert_eq!(m.id(), 0x1234);
        assert_eq!(m.response_code(), ResponseCode::NoError);
        assert!(m.recursion_desired() && m.recursion_available() && !m.truncated());
        assert_eq!(m.queries().len(), 1);
        assert_eq!(a_addrs(&m), vec![Ipv4Addr::new(10, 0, 0, 3)]);
        assert_eq!(m.answers()[0].ttl(), TTL);
        assert_eq!(m.answers()[0].name(), &Name::from_ascii("web.").unwrap());

        // Case-insensitive, the question's case echoed back (0x20 randomisation).
        let m = reply(answer(
            &query("WeB.MyNet.", RecordType::A, None),
            CLIENT,
            &net,
        ));
        assert_eq!(a_addrs(&m), vec![Ipv4Addr::new(10, 0, 0, 3)]);
        assert!(m.answers()[0]
            .name()
            .eq_case(&Name::from_ascii("WeB.MyNet.").unwrap()));

        // Claimed without addresses: NOERROR, no answers.
        let m = reply(answer(&query("empty.", RecordType::A, None), CLIENT, &net));
        assert_eq!(m.response_code(), ResponseCode::NoError);
        assert!(m.answers().is_empty());
    }

    #[test]
    fn several_addresses_come_in_random_order() {
        let net = TestNet::new();
        let mut orders = HashSet::new();
        for _ in 0..50 {
            let m = reply(answer(&query("db.", RecordType::A, None), CLIENT, &net));
            let got = a_addrs(&m);
            let mut sorted = got.clone();
            sorted.sort();
            assert_eq!(sorted, net.names["db"]);
            orders.insert(got);
        }
        assert!(orders.len() > 1, "50 answers, always in the same order");
    }

    #[test]
    fn other_names_and_clients_are_forwarded() {
        let net = TestNet::new();
        let q = |n, t| answer(&query(n, t, None), CLIENT, &net);
        assert_eq!(q("example.com.", RecordType::A), Answer::Forward);
        // A search-domain suffix makes it another name, unless the resolver knows it.
        assert_eq!(q("web.corp.example.", RecordType::A), Answer::Forward);
        assert_eq!(q("example.com.", RecordType::AAAA), Answer::Forward);
        assert_eq!(q("example.com.", RecordType::MX), Answer::Forward);
        assert_eq!(q("8.8.8.8.in-addr.arpa.", RecordType::PTR), Answer::Forward);
        assert_eq!(q("0.0.10.in-addr.arpa.", RecordType::PTR), Answer::Forward);
        assert_eq!(q(".", RecordType::NS), Answer::Forward);
        // Another network's container does not see these names.
        let other = Ipv4Addr::new(10, 1, 0, 2);
        assert_eq!(
            answer(&query("web.", RecordType::A, None), other, &net),
            Answer::Forward
        );
        assert_eq!(
            answer(
                &query("3.0.0.10.in-addr.arpa.", RecordType::PTR, None),
                other,
                &net
            ),
            Answer::Forward
        );
    }

    #[test]
    fn aaaa_and_other_types_for_our_names_are_empty() {
        let net = TestNet::new();
        for t in [
            RecordType::AAAA,
            RecordType::MX,
            RecordType::TXT,
            RecordType::ANY,
        ] {
            let m = reply(answer(&query("web.", t, None), CLIENT, &net));
            assert_eq!(m.response_code(), ResponseCode::NoError, "{t}");
            assert!(m.answers().is_empty(), "{t}");
            assert_eq!(m.queries()[0].query_type(), t);
        }
    }

    #[test]
    fn ptr_for_our_addresses() {
        let net = TestNet::new();
        let m = reply(answer(
            &query("3.0.0.10.in-addr.arpa.", RecordType::PTR, None),
            CLIENT,
            &net,
        ));
        assert_eq!(m.response_code(), ResponseCode::NoError);
        assert_eq!(m.answers().len(), 1);
        assert_eq!(m.answers()[0].ttl(), TTL);
        match m.answers()[0].data() {
            RData::PTR(p) => assert_eq!(p.0.to_ascii(), "web.mynet."),
            other => panic!("not a PTR: {other:?}"),
        }
        // Non-canonical octets are not an address.
        assert_eq!(
            answer(
                &query("03.0.0.10.in-addr.arpa.", RecordType::PTR, None),
                CLIENT,
                &net
            ),
            Answer::Forward
        );
        // A container name that is no DNS name: SERVFAIL rather than a broken record.
        let m = reply(answer(
            &query("9.0.0.10.in-addr.arpa.", RecordType::PTR, None),
            CLIENT,
            &net,
        ));
        assert_eq!(m.response_code(), ResponseCode::ServFail);
    }

    #[test]
    fn big_answers_are_truncated_for_udp() {
        let net = TestNet::new();
        let bytes = match answer(&query("many.", RecordType::A, None), CLIENT, &net) {
            Answer::Reply(b) => b,
            other => panic!("{other:?}"),
        };
        assert!(bytes.len() <= 512, "{} bytes", bytes.len());
        let m = Message::from_vec(&bytes).unwrap();
        assert!(m.truncated());
        assert!(!m.answers().is_empty() && m.answers().len() < 100);

        // With EDNS and a 4096-byte buffer all 100 fit; the reply carries OPT too.
        let m = reply(answer(
            &query("many.", RecordType::A, Some(4096)),
            CLIENT,
            &net,
        ));
        assert!(!m.truncated());
        assert_eq!(m.answers().len(), 100);
        assert!(m.extensions().is_some());
        // A small EDNS buffer counts as 512.
        let m = reply(answer(
            &query("many.", RecordType::A, Some(100)),
            CLIENT,
            &net,
        ));
        assert!(m.truncated());
        assert!(!m.answers().is_empty());
    }

    #[test]
    fn odd_queries() {
        let net = TestNet::new();
        // A response is never answered (no loops between responders).
        let mut m = Message::from_vec(&query("web.", RecordType::A, None)).unwrap();
        m.set_message_type(MessageType::Response);
        assert_eq!(answer(&m.to_vec().unwrap(), CLIENT, &net), Answer::Drop);
        // Other opcodes: NOTIMP.
        let mut m = Message::from_vec(&query("web.", RecordType::A, None)).unwrap();
        m.set_op_code(OpCode::Status);
        let r = reply(answer(&m.to_vec().unwrap(), CLIENT, &net));
        assert_eq!(r.response_code(), ResponseCode::NotImp);
        // No question, or two: FORMERR.
        let mut m = Message::new();
        m.set_id(7);
        let r = reply(answer(&m.to_vec().unwrap(), CLIENT, &net));
        assert_eq!((r.id(), r.response_code()), (7, ResponseCode::FormErr));
        let mut m = Message::from_vec(&query("web.", RecordType::A, None)).unwrap();
        m.add_query(Query::query(
            Name::from_ascii("db.").unwrap(),
            RecordType::A,
        ));
        let r = reply(answer(&m.to_vec().unwrap(), CLIENT, &net));
        assert_eq!(r.response_code(), ResponseCode::FormErr);
        // Class CHAOS (version.bind and friends) is not ours.
        let mut m = Message::from_vec(&query("web.", RecordType::TXT, None)).unwrap();
        m.queries_mut()[0].set_query_class(DNSClass::CH);
        assert_eq!(answer(&m.to_vec().unwrap(), CLIENT, &net), Answer::Forward);
    }

    #[test]
    fn garbage_is_dropped_and_never_panics() {
        let net = TestNet::new();
        assert_eq!(answer(&[], CLIENT, &net), Answer::Drop);
        assert_eq!(answer(&[0x12, 0x34, 0x01], CLIENT, &net), Answer::Drop);
        let good = query("web.", RecordType::A, None);
        assert_eq!(answer(&good[..good.len() - 1], CLIENT, &net), Answer::Drop);

        let mut rng = rand::rngs::StdRng::seed_from_u64(0x6b6963);
        let seeds = [
            good,
            query("3.0.0.10.in-addr.arpa.", RecordType::PTR, Some(1232)),
            query("many.", RecordType::A, Some(4096)),
        ];
        let (mut replies, mut others) = (0, 0);
        for i in 0..20_000 {
            let bytes: Vec<u8> = if i % 2 == 0 {
                let len = rng.gen_range(0..600);
                (0..len).map(|_| rng.gen()).collect()
            } else {
                let mut b = seeds[i % seeds.len()].clone();
                for _ in 0..rng.gen_range(1..4) {
                    let at = rng.gen_range(0..b.len());
                    b[at] = rng.gen();
                }
                if rng.gen_ratio(1, 4) {
                    b.truncate(rng.gen_range(1..=b.len()));
                }
                b
            };
            if let Answer::Reply(out) = answer(&bytes, CLIENT, &net) {
                assert!(out.len() <= 4096);
                let m = Message::from_vec(&out).expect("our replies parse");
                assert_eq!(m.message_type(), MessageType::Response);
                assert_eq!(&out[..2], &bytes[..2], "reply keeps the query ID");
                replies += 1;
            } else {
                others += 1;
            }
        }
        // The mutations reach the answering code, not only the parser's rejections.
        assert!(
            replies > 500 && others > 500,
            "{replies} replies, {others} drops or forwards"
        );
    }

    #[test]
    fn resolv_conf_nameservers() {
        let text = "# generated\n\
                    search corp.example\n\
                    nameserver 127.0.0.53\n\
                    nameserver   192.0.2.1  # trailing comment\n\
                    nameserver 2001:db8::1\n\
                    nameserver fe80::1%1\n\
                    nameserver fe80::2%no-such-interface0\n\
                    nameserver not-an-address\n\
                    nameserver\n\
                    ;nameserver 192.0.2.9\n\
                    nameserver 192.0.2.1\n\
                    options ndots:0\n";
        let got = upstream_from_resolv_conf(text);
        let want: Vec<SocketAddr> = vec![
            "127.0.0.53:53".parse().unwrap(),
            "192.0.2.1:53".parse().unwrap(),
            "[2001:db8::1]:53".parse().unwrap(),
            SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 53, 0, 1)),
        ];
        assert_eq!(got, want);
        assert!(upstream_from_resolv_conf("").is_empty());
    }

    // ---- serving, with fake upstreams on loopback ----

    /// An upstream that answers every A query with 192.0.2.80 (or `rcode` without data),
    /// counting queries.
    async fn fake_upstream(
        rcode: ResponseCode,
    ) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = count.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                    return;
                };
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let q = Message::from_vec(&buf[..n]).unwrap();
                let mut r = response_to(&q);
                r.set_response_code(rcode);
                if rcode == ResponseCode::NoError {
                    let name = q.queries()[0].name().clone();
                    r.add_answer(Record::from_rdata(
                        name,
                        30,
                        RData::A(A(Ipv4Addr::new(192, 0, 2, 80))),
                    ));
                }
                // A stray datagram with a wrong ID first: must be ignored.
                let mut stray = r.clone();
                stray.set_id(q.id().wrapping_add(1));
                sock.send_to(&stray.to_vec().unwrap(), from).await.unwrap();
                sock.send_to(&r.to_vec().unwrap(), from).await.unwrap();
            }
        });
        (addr, count)
    }

    struct Served {
        addr: SocketAddr,
        task: tokio::task::JoinHandle<io::Result<()>>,
    }

    impl Drop for Served {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn serve_test(upstream: Vec<SocketAddr>, timeout: Duration) -> Served {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        let factory: SocketFactory = Arc::new(bind_for);
        let task = tokio::spawn(serve_with_timeout(
            sock,
            Arc::new(LoopbackNet(TestNet::new())),
            upstream,
            factory,
            timeout,
        ));
        Served { addr, task }
    }

    /// TestNet, with the loopback client seen as 10.0.0.2.
    struct LoopbackNet(TestNet);

    impl Resolver for LoopbackNet {
        fn lookup(&self, client: Ipv4Addr, name: &str) -> Option<Vec<Ipv4Addr>> {
            assert!(client.is_loopback());
            self.0.lookup(CLIENT, name)
        }
        fn reverse(&self, client: Ipv4Addr, addr: Ipv4Addr) -> Option<String> {
            assert!(client.is_loopback());
            self.0.reverse(CLIENT, addr)
        }
    }

    async fn client() -> UdpSocket {
        UdpSocket::bind("127.0.0.1:0").await.unwrap()
    }

    async fn ask(c: &UdpSocket, server: SocketAddr, name: &str, id: u16) {
        let mut q = Message::from_vec(&query(name, RecordType::A, None)).unwrap();
        q.set_id(id);
        c.send_to(&q.to_vec().unwrap(), server).await.unwrap();
    }

    async fn recv(c: &UdpSocket, within: Duration) -> Message {
        let mut buf = vec![0u8; 4096];
        let (n, _) = tokio::time::timeout(within, c.recv_from(&mut buf))
            .await
            .expect("a reply in time")
            .unwrap();
        Message::from_vec(&buf[..n]).unwrap()
    }

    #[tokio::test]
    async fn serves_local_names_and_forwards_the_rest() {
        let (up, count) = fake_upstream(ResponseCode::NoError).await;
        let s = serve_test(vec![up], Duration::from_secs(2)).await;
        let c = client().await;

        ask(&c, s.addr, "web.", 1).await;
        let m = recv(&c, Duration::from_secs(2)).await;
        assert_eq!((m.id(), a_addrs(&m)), (1, vec![Ipv4Addr::new(10, 0, 0, 3)]));
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 0);

        ask(&c, s.addr, "example.com.", 2).await;
        let m = recv(&c, Duration::from_secs(2)).await;
        assert_eq!(m.id(), 2, "the client's ID is restored");
        assert_eq!(m.response_code(), ResponseCode::NoError);
        assert_eq!(a_addrs(&m), vec![Ipv4Addr::new(192, 0, 2, 80)]);
        assert_eq!(m.queries()[0].name().to_ascii(), "example.com.");
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1);

        // Garbage gets no answer, and the server keeps serving.
        c.send_to(b"\x00\x01garbage", s.addr).await.unwrap();
        ask(&c, s.addr, "db.", 3).await;
        let m = recv(&c, Duration::from_secs(2)).await;
        assert_eq!((m.id(), m.answers().len()), (3, 4));
        assert!(!s.task.is_finished());
    }

    #[tokio::test]
    async fn refusing_upstream_falls_through_to_the_next() {
        let (refusing, refused) = fake_upstream(ResponseCode::Refused).await;
        let (good, answered) = fake_upstream(ResponseCode::NoError).await;
        let s = serve_test(vec![refusing, good], Duration::from_secs(2)).await;
        let c = client().await;
        ask(&c, s.addr, "example.org.", 9).await;
        let m = recv(&c, Duration::from_secs(3)).await;
        assert_eq!(m.id(), 9);
        assert_eq!(a_addrs(&m), vec![Ipv4Addr::new(192, 0, 2, 80)]);
        assert_eq!(refused.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(answered.load(std::sync::atomic::Ordering::SeqCst), 1);

        // Only refusals: the client gets the refusal.
        let s = serve_test(vec![refusing], Duration::from_secs(2)).await;
        ask(&c, s.addr, "example.org.", 10).await;
        let m = recv(&c, Duration::from_secs(3)).await;
        assert_eq!((m.id(), m.response_code()), (10, ResponseCode::Refused));
    }

    #[tokio::test]
    async fn silent_upstream_gives_servfail_without_blocking_local_answers() {
        // Bound but never read: queries to it vanish.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let timeout = Duration::from_millis(300);
        let s = serve_test(vec![silent.local_addr().unwrap()], timeout).await;
        let c = client().await;

        let start = std::time::Instant::now();
        ask(&c, s.addr, "example.com.", 5).await;
        ask(&c, s.addr, "web.", 6).await;
        let m = recv(&c, Duration::from_secs(2)).await;
        assert_eq!(m.id(), 6, "the local answer comes first");
        assert!(start.elapsed() < timeout);
        let m = recv(&c, Duration::from_secs(2)).await;
        assert_eq!((m.id(), m.response_code()), (5, ResponseCode::ServFail));
        assert!(start.elapsed() >= timeout);
        drop(silent);
    }

    #[tokio::test]
    async fn closed_upstream_port_gives_servfail_quickly() {
        let closed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let s = serve_test(vec![addr], Duration::from_secs(5)).await;
        let c = client().await;
        let start = std::time::Instant::now();
        ask(&c, s.addr, "example.com.", 11).await;
        let m = recv(&c, Duration::from_secs(2)).await;
        assert_eq!((m.id(), m.response_code()), (11, ResponseCode::ServFail));
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn no_upstream_means_nxdomain() {
        let s = serve_test(vec![], Duration::from_secs(2)).await;
        let c = client().await;
        ask(&c, s.addr, "example.com.", 4).await;
        let m = recv(&c, Duration::from_secs(2)).await;
        assert_eq!((m.id(), m.response_code()), (4, ResponseCode::NXDomain));
        assert!(m.answers().is_empty());
        // And AAAA for our names stays NOERROR/empty, served end to end.
        let mut q = Message::from_vec(&query("web.", RecordType::AAAA, None)).unwrap();
        q.set_id(8);
        c.send_to(&q.to_vec().unwrap(), s.addr).await.unwrap();
        let m = recv(&c, Duration::from_secs(2)).await;
        assert_eq!((m.id(), m.response_code()), (8, ResponseCode::NoError));
        assert!(m.answers().is_empty());
    }
}
