//! Serving the host over the virtio-serial port, one session per host connection.

use crate::output::Chunk;
use crate::procs::{set_winsize, Stdin, Table};
use crate::sys;
use kic_proto::{
    frame, handshake, mux, Event, OutputStart, Request, Response, StreamHeader, MAIN_ID,
    PROTOCOL_VERSION,
};
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

pub struct Tether {
    pub table: Table,
    pub started: Mutex<bool>,
    /// Booted for maintenance (`Request::Mount`): the container's files are mounted, and it
    /// must not start.
    pub maintenance: Mutex<Maintenance>,
    pub boot_id: String,
    /// Where the container's files are ([`crate::files::CONTAINER_ROOT`]).
    pub files_root: std::path::PathBuf,
}

/// Where a maintenance VM is (`Request::Mount`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Maintenance {
    /// Not asked: an ordinary container VM.
    No,
    Mounting,
    Mounted,
    /// Mounting failed; asking again gives the same answer (the VM is in an unknown state).
    Failed(String),
}

impl Tether {
    /// Why the container's files cannot be reached yet, if they cannot.
    fn files_unavailable(&self) -> Option<String> {
        if *self.started.lock().expect("lock")
            || *self.maintenance.lock().expect("lock") == Maintenance::Mounted
        {
            return None;
        }
        Some("the container's filesystem is not mounted in this VM yet (it needs Start or Mount first)".into())
    }
}

/// The port device as a tokio I/O object. A read of 0 bytes means the host went away.
///
/// Readiness comes from epoll, but a virtio port can miss a wake-up (the out-queue interrupt is
/// suppressed by event-index when buffers are reclaimed late), so while blocked the I/O is also
/// retried on a short timer: a lost wake-up costs milliseconds instead of stalling the session.
struct PortIo {
    fd: AsyncFd<OwnedFd>,
    read_retry: Pin<Box<tokio::time::Sleep>>,
    write_retry: Pin<Box<tokio::time::Sleep>>,
}

const RETRY: Duration = Duration::from_millis(5);

impl PortIo {
    fn new(fd: AsyncFd<OwnedFd>) -> Self {
        let now = tokio::time::Instant::now();
        PortIo {
            fd,
            read_retry: Box::pin(tokio::time::sleep_until(now)),
            write_retry: Box::pin(tokio::time::sleep_until(now)),
        }
    }
}

fn sys_read(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid writable memory of its length.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn sys_write(fd: &OwnedFd, data: &[u8]) -> io::Result<usize> {
    // SAFETY: `data` is valid for its length.
    let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Wait on the retry timer; true when it fired (try the I/O again now).
fn retry_fired(timer: &mut Pin<Box<tokio::time::Sleep>>, cx: &mut Context<'_>) -> bool {
    if timer.is_elapsed() {
        timer.as_mut().reset(tokio::time::Instant::now() + RETRY);
    }
    timer.as_mut().poll(cx).is_ready()
}

impl AsyncRead for PortIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            let r = match this.fd.poll_read_ready(cx) {
                Poll::Ready(g) => {
                    let mut g = g?;
                    match g.try_io(|inner| sys_read(inner.get_ref(), buf.initialize_unfilled())) {
                        Ok(r) => r,
                        Err(_would_block) => continue,
                    }
                }
                Poll::Pending => {
                    if !retry_fired(&mut this.read_retry, cx) {
                        return Poll::Pending;
                    }
                    match sys_read(this.fd.get_ref(), buf.initialize_unfilled()) {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        r => r,
                    }
                }
            };
            return Poll::Ready(r.map(|n| buf.advance(n)));
        }
    }
}

impl AsyncWrite for PortIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        loop {
            match this.fd.poll_write_ready(cx) {
                Poll::Ready(g) => {
                    let mut g = g?;
                    match g.try_io(|inner| sys_write(inner.get_ref(), data)) {
                        Ok(r) => return Poll::Ready(r),
                        Err(_would_block) => continue,
                    }
                }
                Poll::Pending => {
                    if !retry_fired(&mut this.write_retry, cx) {
                        return Poll::Pending;
                    }
                    match sys_write(this.fd.get_ref(), data) {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        r => return Poll::Ready(r),
                    }
                }
            }
        }
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// True while a host has the port open.
fn host_connected(port: &OwnedFd) -> bool {
    let mut p = libc::pollfd {
        fd: port.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents & libc::POLLOUT != 0 && p.revents & libc::POLLHUP == 0
}

/// Serve host sessions forever.
pub async fn serve(t: Arc<Tether>, port: OwnedFd) {
    loop {
        while !host_connected(&port) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        sys::milestone("host connected");
        let io = match port.try_clone().and_then(crate::procs::nonblocking) {
            Ok(fd) => PortIo::new(fd),
            Err(e) => {
                eprintln!("kic-tether: cannot use the channel: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let s = match handshake::guest(io).await {
            Ok(s) => s,
            Err(e) => {
                if e.kind() != io::ErrorKind::NotConnected {
                    eprintln!("kic-tether: handshake failed: {e}");
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        sys::milestone("handshake done");
        let (_opener, mut inbound, driver) = mux::start(s, mux::Mode::Server);
        let d = tokio::spawn(driver);
        while let Some(stream) = inbound.recv().await {
            let t = t.clone();
            tokio::spawn(async move {
                if let Err(e) = handle(t, stream).await {
                    if !matches!(
                        e.kind(),
                        io::ErrorKind::NotConnected
                            | io::ErrorKind::BrokenPipe
                            | io::ErrorKind::UnexpectedEof
                    ) {
                        eprintln!("kic-tether: stream: {e}");
                    }
                }
            });
        }
        let _ = d.await;
    }
}

async fn handle(t: Arc<Tether>, mut st: mux::MuxStream) -> io::Result<()> {
    let header: StreamHeader = frame::read_required(&mut st).await?;
    match header {
        StreamHeader::Request => {
            let req: Request = frame::read_required(&mut st).await?;
            let resp = request(&t, req).await;
            frame::write(&mut st, &resp).await?;
            st.shutdown().await
        }
        StreamHeader::ArchiveGet { spec } => {
            if let Some(e) = t.files_unavailable() {
                let start = kic_proto::ArchiveStart {
                    error: Some(e),
                    ..Default::default()
                };
                frame::write(&mut st, &start).await?;
                return st.shutdown().await;
            }
            crate::files::archive_get(&mut st, t.files_root.clone(), spec).await
        }
        StreamHeader::ArchivePut { spec } => {
            if let Some(e) = t.files_unavailable() {
                frame::write(&mut st, &error(e)).await?;
                return st.shutdown().await;
            }
            crate::files::archive_put(&mut st, t.files_root.clone(), spec).await
        }
        StreamHeader::List { path, one_fs } => {
            if let Some(e) = t.files_unavailable() {
                let last = kic_proto::ListBatch {
                    done: true,
                    error: Some(e),
                    ..Default::default()
                };
                frame::write(&mut st, &last).await?;
                return st.shutdown().await;
            }
            crate::files::list(&mut st, t.files_root.clone(), path, one_fs).await
        }
        StreamHeader::Events => {
            let mut rx = t.table.events.subscribe();
            frame::write(
                &mut st,
                &Event::Snapshot {
                    processes: t.table.states(),
                },
            )
            .await?;
            loop {
                match rx.recv().await {
                    Ok(ev) => frame::write(&mut st, &ev).await?,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        frame::write(
                            &mut st,
                            &Event::Snapshot {
                                processes: t.table.states(),
                            },
                        )
                        .await?
                    }
                    Err(_) => return Ok(()),
                }
            }
        }
        StreamHeader::Stdin { id } => {
            let sink = t
                .table
                .procs
                .lock()
                .expect("proc lock")
                .get(&id)
                .map(|p| p.stdin.clone());
            let Some(sink) = sink else { return Ok(()) };
            let mut buf = vec![0u8; 32 << 10];
            loop {
                let n = st.read(&mut buf).await?;
                if n == 0 {
                    // The stream ended (maybe a lost host): not the end of input, which comes
                    // as an explicit CloseStdin.
                    return Ok(());
                }
                let guard = sink.lock().await;
                match guard.as_ref() {
                    Some(s) => {
                        if s.write_all(&buf[..n]).await.is_err() {
                            return Ok(());
                        }
                    }
                    None => return Ok(()),
                }
            }
        }
        StreamHeader::Output { id, fd, offset } => {
            let buf = t
                .table
                .procs
                .lock()
                .expect("proc lock")
                .get(&id)
                .and_then(|p| p.output(fd));
            let Some(buf) = buf else {
                let start = OutputStart {
                    offset,
                    error: Some(format!("no output {fd} for process {id}")),
                };
                frame::write(&mut st, &start).await?;
                return st.shutdown().await;
            };
            let mut pos = buf.start_at(offset);
            frame::write(
                &mut st,
                &OutputStart {
                    offset: pos,
                    error: None,
                },
            )
            .await?;
            // One task both writes the output and reads the acknowledgements: a yamux stream
            // has a single slot for the task waiting to send, so a second task using the same
            // stream (a reader sending window updates) could take the writer's wake-up and
            // stall the stream for good.
            let mut acks = AckReader::default();
            loop {
                acks.drain(&mut st, &buf)?;
                match buf.read_from(pos) {
                    Chunk::Data { offset, bytes } => {
                        let mut chunk = Vec::with_capacity(4 + bytes.len());
                        chunk.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
                        chunk.extend_from_slice(&bytes);
                        st.write_all(&chunk).await?;
                        pos = offset + bytes.len() as u64;
                    }
                    Chunk::Eof => {
                        // An empty chunk says the output is complete (a bare stream end could be
                        // a lost connection).
                        st.write_all(&0u32.to_be_bytes()).await?;
                        break;
                    }
                    Chunk::Wait => {
                        tokio::select! {
                            _ = buf.wait_data(pos) => {}
                            r = acks.read(&mut st, &buf) => r?,
                        }
                    }
                }
            }
            st.shutdown().await?;
            // Take the last acknowledgements until the host closes its side.
            while acks.read(&mut st, &buf).await.is_ok() {}
            Ok(())
        }
    }
}

/// Reads the host's big-endian `u64` acknowledged offsets off an output stream.
#[derive(Default)]
struct AckReader {
    bytes: [u8; 8],
    have: usize,
}

impl AckReader {
    fn take(&mut self, n: usize, buf: &crate::output::OutputBuf) {
        self.have += n;
        if self.have == 8 {
            buf.ack(u64::from_be_bytes(self.bytes));
            self.have = 0;
        }
    }

    /// Wait for acknowledgement bytes and apply them; an error once the stream has ended.
    async fn read(
        &mut self,
        st: &mut mux::MuxStream,
        buf: &crate::output::OutputBuf,
    ) -> io::Result<()> {
        let n = st.read(&mut self.bytes[self.have..]).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "output stream closed",
            ));
        }
        self.take(n, buf);
        Ok(())
    }

    /// Apply whatever acknowledgements are already there, without waiting.
    fn drain(&mut self, st: &mut mux::MuxStream, buf: &crate::output::OutputBuf) -> io::Result<()> {
        while let Some(r) = poll_once(st.read(&mut self.bytes[self.have..])) {
            match r? {
                0 => return Ok(()),
                n => self.take(n, buf),
            }
        }
        Ok(())
    }
}

/// Poll a future once; `None` if it is not ready. Whatever waker it leaves registered is
/// replaced by this task's own the next time the task waits on the same stream.
fn poll_once<F: Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

pub(crate) fn error(message: impl Into<String>) -> Response {
    Response::Error {
        message: message.into(),
        exit_code: None,
    }
}

async fn request(t: &Arc<Tether>, req: Request) -> Response {
    match req {
        Request::Hello { version } => {
            if version != PROTOCOL_VERSION {
                return error(format!("protocol version {version} is not supported (tether speaks {PROTOCOL_VERSION})"));
            }
            Response::Hello {
                version: PROTOCOL_VERSION,
                boot_id: t.boot_id.clone(),
                started: *t.started.lock().expect("lock"),
                processes: t.table.states(),
            }
        }
        Request::Start { spec } => {
            sys::milestone("start requested");
            if *t.maintenance.lock().expect("lock") != Maintenance::No {
                return error("this VM was booted to reach the container's files while it is stopped (docker cp, diff, commit, export); it cannot start the container: power it off and start the container anew");
            }
            {
                let mut started = t.started.lock().expect("lock");
                if *started {
                    return error("the container was started already in this VM");
                }
                *started = true;
            }
            // Off the runtime's thread: a DHCP server may take seconds to answer, and the host's
            // session (its other requests, the mux) must go on meanwhile.
            let entered = tokio::task::spawn_blocking(move || {
                let r = sys::enter_container(&spec);
                (spec, r)
            })
            .await;
            let (spec, leases) = match entered {
                Ok((spec, Ok(leases))) => (spec, leases),
                Ok((_, Err(e))) => {
                    return Response::Error {
                        message: e,
                        exit_code: Some(126),
                    }
                }
                Err(e) => {
                    return Response::Error {
                        message: format!("preparing the container failed: {e}"),
                        exit_code: Some(126),
                    }
                }
            };
            sys::milestone("container entered");
            match t.table.spawn(MAIN_ID, &spec.main) {
                Ok(pid) => Response::Started { pid, leases },
                Err(e) => Response::Error {
                    message: e.message,
                    exit_code: Some(e.exit_code),
                },
            }
        }
        Request::Exec { id, spec } => {
            if !*t.started.lock().expect("lock") {
                return error("the container is not running");
            }
            match t.table.spawn(&id, &spec) {
                Ok(pid) => Response::Started {
                    pid,
                    leases: vec![],
                },
                Err(e) => Response::Error {
                    message: e.message,
                    exit_code: Some(e.exit_code),
                },
            }
        }
        Request::Signal { id, signal } => match t.table.signal(&id, signal) {
            Ok(()) => Response::Ok,
            Err(e) => error(e),
        },
        Request::Resize { id, rows, cols } => {
            match t
                .table
                .procs
                .lock()
                .expect("proc lock")
                .get(&id)
                .and_then(|p| p.master.clone())
            {
                Some(m) => {
                    set_winsize(m.get_ref(), rows, cols);
                    Response::Ok
                }
                None => error(format!("process {id} has no terminal")),
            }
        }
        Request::CloseStdin { id } => {
            let sink = t
                .table
                .procs
                .lock()
                .expect("proc lock")
                .get(&id)
                .map(|p| p.stdin.clone());
            if let Some(sink) = sink {
                let mut g = sink.lock().await;
                if matches!(g.as_ref(), Some(Stdin::Pipe(_))) {
                    *g = None;
                }
            }
            Response::Ok
        }
        Request::AckExit { id } => {
            if id == MAIN_ID {
                tokio::spawn(async {
                    // Let the answer reach the host, then end the VM.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    sys::power_off();
                });
            } else {
                let mut procs = t.table.procs.lock().expect("proc lock");
                if procs.get(&id).is_some_and(|p| p.exit.is_some()) {
                    procs.remove(&id);
                }
            }
            Response::Ok
        }
        Request::State => Response::State {
            processes: t.table.states(),
        },
        Request::ReadFile { path } => match std::fs::read(&path) {
            Ok(data) => Response::File { data },
            Err(e) => error(format!("read {path}: {e}")),
        },
        Request::Top => crate::top::top(),
        Request::Mount { spec } => {
            sys::milestone("mount requested");
            if *t.started.lock().expect("lock") {
                return error("the container was started in this VM; its files are mounted already and it cannot be switched to maintenance");
            }
            {
                let mut m = t.maintenance.lock().expect("lock");
                match &*m {
                    Maintenance::No => *m = Maintenance::Mounting,
                    // A host that reconnected asks again: the files are there.
                    Maintenance::Mounted => return Response::Ok,
                    Maintenance::Mounting => {
                        return error("the container's disks are being mounted (asked twice)")
                    }
                    Maintenance::Failed(e) => return error(e.clone()),
                }
            }
            let r = tokio::task::spawn_blocking(move || sys::mount_container(&spec))
                .await
                .unwrap_or_else(|e| Err(format!("mounting the container's disks failed: {e}")));
            let mut m = t.maintenance.lock().expect("lock");
            match r {
                Ok(()) => {
                    sys::milestone("container mounted");
                    *m = Maintenance::Mounted;
                    Response::Ok
                }
                Err(e) => {
                    *m = Maintenance::Failed(e.clone());
                    error(e)
                }
            }
        }
        Request::PowerOff => {
            let running: Vec<String> = t
                .table
                .states()
                .into_iter()
                .filter(|p| p.exit_code.is_none())
                .map(|p| p.id)
                .collect();
            if !running.is_empty() {
                return Response::Refused {
                    message: format!(
                        "cannot power off: the container's processes are running ({})",
                        running.join(", ")
                    ),
                    not_found: false,
                };
            }
            tokio::spawn(async {
                // Let the answer reach the host, then sync and end the VM.
                tokio::time::sleep(Duration::from_millis(20)).await;
                sys::power_off();
            });
            Response::Ok
        }
        Request::Stat { path, follow } => {
            if let Some(e) = t.files_unavailable() {
                return error(e);
            }
            crate::files::stat(t.files_root.clone(), path, follow).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kic_proto::ContainerSpec;

    fn tether(started: bool, maintenance: Maintenance, root: &std::path::Path) -> Arc<Tether> {
        Arc::new(Tether {
            table: Table::new(),
            started: Mutex::new(started),
            maintenance: Mutex::new(maintenance),
            boot_id: "test".into(),
            files_root: root.to_path_buf(),
        })
    }

    fn message(r: Response) -> String {
        match r {
            Response::Error { message, .. } | Response::Refused { message, .. } => message,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    // Only the refusals are exercised: the accepted paths mount disks, chroot or power off.
    #[tokio::test]
    async fn maintenance_and_running_exclude_each_other() {
        let tmp = std::env::temp_dir();
        let t = tether(false, Maintenance::Mounted, &tmp);
        let spec = Box::new(ContainerSpec::default());
        let m = message(request(&t, Request::Start { spec: spec.clone() }).await);
        assert!(m.contains("cannot start the container"), "{m}");
        // A host that reconnects and asks again is told the files are there.
        assert_eq!(
            request(&t, Request::Mount { spec: spec.clone() }).await,
            Response::Ok
        );
        let t = tether(true, Maintenance::No, &tmp);
        let m = message(request(&t, Request::Mount { spec: spec.clone() }).await);
        assert!(m.contains("was started"), "{m}");
        let t = tether(false, Maintenance::Failed("no disk /dev/vda".into()), &tmp);
        let m = message(request(&t, Request::Mount { spec }).await);
        assert_eq!(m, "no disk /dev/vda");
    }

    #[tokio::test]
    async fn files_wait_for_the_container_disk() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("f"), b"x").unwrap();
        let stat = Request::Stat {
            path: "/f".into(),
            follow: false,
        };
        let t = tether(false, Maintenance::No, tmp.path());
        let m = message(request(&t, stat.clone()).await);
        assert!(m.contains("not mounted"), "{m}");
        for t in [
            tether(true, Maintenance::No, tmp.path()),
            tether(false, Maintenance::Mounted, tmp.path()),
        ] {
            match request(&t, stat.clone()).await {
                Response::Stat { stat: Some(s) } => assert_eq!((s.name.as_str(), s.size), ("f", 1)),
                other => panic!("{other:?}"),
            }
        }
    }
}
