//! Sockets inside a VCH's network namespace.
//!
//! A socket belongs to the network namespace of the thread that created it, for its whole life;
//! after that it can be used from any thread. [`Netns`] therefore keeps one dedicated OS thread
//! that has joined the namespace (`setns(CLONE_NEWNET)`) and creates sockets there on request;
//! the sockets are handed back and used (connected, read, written) from ordinary tokio tasks.
//! The tokio worker threads never change namespace.
//!
//! The thread ends when the last clone of the [`Netns`] is dropped.

use std::fmt;
use std::fs::File;
use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use nix::sched::{setns, CloneFlags};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::sync::oneshot;

/// How long [`Netns::tcp_connect`] waits for the connection before giving up.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

type Job = Box<dyn FnOnce() + Send + 'static>;

/// A handle on a network namespace: sockets made through it live in that namespace.
/// Cheap to clone; all clones share the one thread.
#[derive(Clone)]
pub struct Netns {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// Jobs for the namespace thread; the thread ends when this is dropped.
    jobs: mpsc::Sender<Job>,
}

impl fmt::Debug for Netns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Netns")
            .field("path", &self.inner.path)
            .finish()
    }
}

impl Netns {
    /// Opens the network namespace at `path` (e.g. `/run/netns/kic-myvch`, as made by
    /// `ip netns add kic-myvch`) and starts the thread that lives in it.
    ///
    /// Blocks for as long as it takes to start a thread and join the namespace (microseconds).
    pub fn open(path: impl AsRef<Path>) -> io::Result<Netns> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot open network namespace {}: {e} (does it exist? `ip netns list` \
                     shows the namespaces under /run/netns)",
                    path.display()
                ),
            )
        })?;
        let (job_tx, job_rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel::<io::Result<()>>();
        let thread_name = format!(
            "netns-{}",
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        );
        let shown = path.display().to_string();
        std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || {
                let joined = setns(file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|errno| {
                    let e = io::Error::from(errno);
                    let hint = if errno == nix::errno::Errno::EINVAL {
                        " (the file is not a network namespace)"
                    } else {
                        ""
                    };
                    io::Error::new(
                        e.kind(),
                        format!("cannot enter network namespace {shown}: {e}{hint}"),
                    )
                });
                drop(file);
                let ok = joined.is_ok();
                let _ = ready_tx.send(joined);
                if !ok {
                    return;
                }
                while let Ok(job) = job_rx.recv() {
                    job();
                }
            })
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "cannot start the thread for network namespace {}: {e}",
                        path.display()
                    ),
                )
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Netns {
                inner: Arc::new(Inner { path, jobs: job_tx }),
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(io::Error::other(format!(
                "the thread for network namespace {} ended before joining it",
                path.display()
            ))),
        }
    }

    /// The path this namespace was opened from.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` on the thread inside the namespace and returns its result. Use it for
    /// anything whose namespace is fixed at creation (sockets) and that does not block long:
    /// all jobs of one namespace run one after another on the one thread.
    pub async fn run<T, F>(&self, f: F) -> io::Result<T>
    where
        F: FnOnce() -> io::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        if self.inner.jobs.send(job).is_err() {
            return Err(self.thread_gone());
        }
        rx.await.map_err(|_| self.thread_gone())?
    }

    fn thread_gone(&self) -> io::Error {
        io::Error::other(format!(
            "the thread for network namespace {} has ended",
            self.inner.path.display()
        ))
    }

    /// Connects to `addr` from inside the namespace, giving up after
    /// [`DEFAULT_CONNECT_TIMEOUT`].
    pub async fn tcp_connect(&self, addr: SocketAddrV4) -> io::Result<TcpStream> {
        self.tcp_connect_timeout(addr, DEFAULT_CONNECT_TIMEOUT)
            .await
    }

    /// Connects to `addr` from inside the namespace, giving up after `timeout`.
    /// Only the socket is made on the namespace thread; the connect runs in the caller's task.
    pub async fn tcp_connect_timeout(
        &self,
        addr: SocketAddrV4,
        timeout: Duration,
    ) -> io::Result<TcpStream> {
        let socket = self.run(TcpSocket::new_v4).await.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot create a TCP socket in network namespace {}: {e}",
                    self.inner.path.display()
                ),
            )
        })?;
        match tokio::time::timeout(timeout, socket.connect(addr.into())).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(io::Error::new(
                e.kind(),
                format!(
                    "connect to {addr} in network namespace {}: {e}",
                    self.inner.path.display()
                ),
            )),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "connect to {addr} in network namespace {}: no answer within {}s",
                    self.inner.path.display(),
                    timeout.as_secs_f32()
                ),
            )),
        }
    }

    /// Binds a UDP socket to `addr` inside the namespace (port 0 picks a free port).
    pub async fn udp_bind(&self, addr: SocketAddr) -> io::Result<UdpSocket> {
        let std_socket = self
            .run(move || {
                let s = std::net::UdpSocket::bind(addr)?;
                s.set_nonblocking(true)?;
                Ok(s)
            })
            .await
            .map_err(|e| self.bind_error("udp", addr, e))?;
        UdpSocket::from_std(std_socket)
    }

    /// Listens for TCP connections on `addr` inside the namespace (port 0 picks a free port).
    pub async fn tcp_listen(&self, addr: SocketAddr) -> io::Result<TcpListener> {
        let std_listener = self
            .run(move || {
                // std sets SO_REUSEADDR before binding, so a restart is not blocked by
                // connections of the previous listener in TIME_WAIT.
                let l = std::net::TcpListener::bind(addr)?;
                l.set_nonblocking(true)?;
                Ok(l)
            })
            .await
            .map_err(|e| self.bind_error("tcp", addr, e))?;
        TcpListener::from_std(std_listener)
    }

    fn bind_error(&self, proto: &str, addr: SocketAddr, e: io::Error) -> io::Error {
        io::Error::new(
            e.kind(),
            format!(
                "cannot bind {proto} {addr} in network namespace {}: {e}",
                self.inner.path.display()
            ),
        )
    }
}

#[cfg(test)]
pub(crate) mod testns {
    //! A throwaway network namespace for tests (needs root).

    use std::path::PathBuf;
    use std::process::Command;

    /// `ip netns add NAME` with `lo` up; `ip netns delete NAME` when dropped (also when the
    /// test panics).
    pub struct TestNetns {
        pub name: String,
    }

    impl TestNetns {
        pub fn new(tag: &str) -> TestNetns {
            let name = format!("kicproxy-test-{}-{tag}", std::process::id());
            // Left over from an earlier run with the same pid: ignore failures.
            let _ = Command::new("ip")
                .args(["netns", "delete", &name])
                .stderr(std::process::Stdio::null())
                .status();
            run(&["netns", "add", &name]);
            let guard = TestNetns { name };
            run(&["-n", &guard.name, "link", "set", "lo", "up"]);
            guard
        }

        pub fn path(&self) -> PathBuf {
            PathBuf::from("/run/netns").join(&self.name)
        }
    }

    fn run(args: &[&str]) {
        let st = Command::new("ip")
            .args(args)
            .status()
            .unwrap_or_else(|e| panic!("ip {args:?}: {e}"));
        assert!(st.success(), "ip {args:?} failed: {st}");
    }

    impl Drop for TestNetns {
        fn drop(&mut self) {
            let _ = Command::new("ip")
                .args(["netns", "delete", &self.name])
                .status();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testns::TestNetns;
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn inode(path: &Path) -> u64 {
        std::fs::metadata(path).unwrap().ino()
    }

    #[tokio::test]
    async fn thread_is_in_the_namespace_and_workers_are_not() {
        let ns_guard = TestNetns::new("where");
        let ns = Netns::open(ns_guard.path()).unwrap();
        let inside = ns
            .run(|| Ok(std::fs::metadata("/proc/thread-self/ns/net")?.ino()))
            .await
            .unwrap();
        assert_eq!(inside, inode(&ns_guard.path()));
        let here = inode(Path::new("/proc/thread-self/ns/net"));
        assert_ne!(here, inside, "the calling thread must not have moved");
        assert_eq!(here, inode(Path::new("/proc/self/ns/net")));
    }

    #[test]
    fn open_names_the_path_on_failure() {
        let err = Netns::open("/run/netns/kicproxy-test-does-not-exist").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(
            err.to_string()
                .contains("/run/netns/kicproxy-test-does-not-exist"),
            "{err}"
        );
        // A file that is not a namespace: setns refuses it.
        let err = Netns::open("/proc/self/status").unwrap_err();
        assert!(err.to_string().contains("/proc/self/status"), "{err}");
        assert!(err.to_string().contains("not a network namespace"), "{err}");
    }

    #[tokio::test]
    async fn sockets_live_in_the_namespace() {
        let ns_guard = TestNetns::new("sockets");
        let ns = Netns::open(ns_guard.path()).unwrap();
        let listener = ns.tcp_listen("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let SocketAddr::V4(addr) = listener.local_addr().unwrap() else {
            panic!("v4 expected")
        };
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(&buf).await.unwrap();
        });
        let mut c = ns.tcp_connect(addr).await.unwrap();
        c.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        server.await.unwrap();

        // UDP: two sockets made in the namespace reach each other on its loopback.
        let a = ns.udp_bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let b = ns.udp_bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        a.send_to(b"ping", b.local_addr().unwrap()).await.unwrap();
        let mut ubuf = [0u8; 16];
        let (n, from) = b.recv_from(&mut ubuf).await.unwrap();
        assert_eq!((&ubuf[..n], from), (&b"ping"[..], a.local_addr().unwrap()));

        // Nothing listens there any more (listener dropped): refused, quickly, and the error
        // names address and namespace.
        let err = ns
            .tcp_connect_timeout(addr, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
        assert!(err.to_string().contains(&ns_guard.name), "{err}");
    }
}
