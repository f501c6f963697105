//! The host end of a tether session: connect to the VM's channel socket, resync, multiplex.
//!
//! Besides processes, a session reaches the container's files (`docker cp`, `diff`, `commit`,
//! `export`): [`Session::stat`], [`Session::archive_get`], [`Session::archive_put`] and
//! [`Session::list`]; a stopped container's VM is booted for that with [`Session::mount`] and
//! ended with [`Session::power_off`].

use kic_proto::{
    chunk, frame, handshake, mux, ArchiveSpec, ArchiveStart, ContainerSpec, FileEntry, ListBatch,
    OutputStart, PathStat, PutSpec, Request, Response, StreamHeader, PROTOCOL_VERSION,
};
use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::UnixStream;

/// A live session with one VM's tether.
pub struct Session {
    opener: mux::Opener,
    pub boot_id: String,
    pub started: bool,
    pub processes: Vec<kic_proto::ProcessState>,
    driver: tokio::task::JoinHandle<io::Result<()>>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Connect to the channel socket QEMU listens on, retrying while `alive` says the VM runs.
async fn connect_socket(
    sock: &Path,
    alive: &(dyn Fn() -> futures::future::BoxFuture<'static, bool> + Send + Sync),
) -> io::Result<UnixStream> {
    let mut tries = 0u32;
    loop {
        match UnixStream::connect(sock).await {
            Ok(s) => return Ok(s),
            Err(e) => {
                tries += 1;
                if tries % 50 == 0 && !alive().await {
                    return Err(io::Error::new(
                        io::ErrorKind::NotConnected,
                        format!("the VM is not running ({e})"),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

impl Session {
    /// Connect, resync and say hello. `alive` is asked now and then so a VM that died is noticed.
    pub async fn connect(
        sock: &Path,
        alive: &(dyn Fn() -> futures::future::BoxFuture<'static, bool> + Send + Sync),
    ) -> io::Result<Session> {
        let stream = connect_socket(sock, alive).await?;
        tracing::debug!("channel socket {} connected", sock.display());
        let hs = handshake::host(stream);
        tokio::pin!(hs);
        let s = loop {
            tokio::select! {
                r = &mut hs => break r?,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {
                    if !alive().await {
                        return Err(io::Error::new(io::ErrorKind::NotConnected, "the VM stopped before its tether answered"));
                    }
                }
            }
        };
        Session::start(s).await
    }

    /// Start the multiplexer over a resynced channel and say hello.
    async fn start<T>(s: T) -> io::Result<Session>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (opener, _inbound, driver) = mux::start(s, mux::Mode::Client);
        let driver = tokio::spawn(driver);
        let mut session = Session {
            opener,
            boot_id: String::new(),
            started: false,
            processes: Vec::new(),
            driver,
        };
        match session
            .request(Request::Hello {
                version: PROTOCOL_VERSION,
            })
            .await?
        {
            Response::Hello {
                boot_id,
                started,
                processes,
                ..
            } => {
                session.boot_id = boot_id;
                session.started = started;
                session.processes = processes;
                Ok(session)
            }
            Response::Error { message, .. } => Err(io::Error::other(format!(
                "tether refused the session: {message}"
            ))),
            other => Err(io::Error::other(format!(
                "unexpected hello answer: {other:?}"
            ))),
        }
    }

    pub fn is_closed(&self) -> bool {
        self.opener.is_closed() || self.driver.is_finished()
    }

    async fn open(&self, header: &StreamHeader) -> io::Result<mux::MuxStream> {
        let mut s = self.opener.open().await?;
        frame::write(&mut s, header).await?;
        Ok(s)
    }

    pub async fn request(&self, req: Request) -> io::Result<Response> {
        let mut s = self.open(&StreamHeader::Request).await?;
        frame::write(&mut s, &req).await?;
        let r = frame::read_required(&mut s).await?;
        let _ = s.shutdown().await;
        Ok(r)
    }

    /// A request that must answer `Ok`.
    pub async fn request_ok(&self, req: Request) -> io::Result<()> {
        match self.request(req).await? {
            Response::Ok => Ok(()),
            other => Err(answer_error(other)),
        }
    }

    pub async fn events(&self) -> io::Result<mux::MuxStream> {
        self.open(&StreamHeader::Events).await
    }

    pub async fn stdin(&self, id: &str) -> io::Result<mux::MuxStream> {
        self.open(&StreamHeader::Stdin { id: id.into() }).await
    }

    /// Open an output stream from `offset`; the guest says where it really starts.
    pub async fn output(&self, id: &str, fd: u8, offset: u64) -> io::Result<(u64, mux::MuxStream)> {
        let mut s = self
            .open(&StreamHeader::Output {
                id: id.into(),
                fd,
                offset,
            })
            .await?;
        let start: OutputStart = frame::read_required(&mut s).await?;
        if let Some(e) = start.error {
            return Err(io::Error::new(io::ErrorKind::NotFound, e));
        }
        Ok((start.offset, s))
    }

    /// `lstat` (`stat` when `follow`) of a path in the container; `None` when it does not
    /// exist.
    pub async fn stat(&self, path: &str, follow: bool) -> io::Result<Option<PathStat>> {
        match self
            .request(Request::Stat {
                path: path.into(),
                follow,
            })
            .await?
        {
            Response::Stat { stat } => Ok(stat),
            other => Err(answer_error(other)),
        }
    }

    /// A tar of files of the container, as `spec` says; with the stat of the first source.
    /// A missing first source is an error of kind `NotFound` (the guest's message, Docker's
    /// wording without the container's name). The reader fails, rather than ends, when the
    /// guest could not finish the archive or the stream is lost.
    pub async fn archive_get(
        &self,
        spec: ArchiveSpec,
    ) -> io::Result<(Option<PathStat>, ArchiveReader)> {
        let mut s = self.open(&StreamHeader::ArchiveGet { spec }).await?;
        let start: ArchiveStart = frame::read_required(&mut s).await?;
        if let Some(message) = start.error {
            let kind = if start.not_found {
                io::ErrorKind::NotFound
            } else {
                io::ErrorKind::Other
            };
            return Err(io::Error::new(kind, message));
        }
        Ok((start.stat, ArchiveReader::new(s)))
    }

    /// Unpack the tar `tar` into the directory `spec.path` of the container. The guest's
    /// refusals (a missing destination: `NotFound`; not a directory, an unsafe or corrupt
    /// archive: `InvalidInput`) carry its message; its failures are `Other`. The guest may
    /// answer before it has read everything (it stops on the first error); then the rest of
    /// `tar` is not read.
    pub async fn archive_put(
        &self,
        spec: PutSpec,
        mut tar: impl AsyncRead + Unpin + Send,
    ) -> io::Result<()> {
        let s = self.open(&StreamHeader::ArchivePut { spec }).await?;
        let (mut rd, mut wr) = tokio::io::split(s);
        // Sending and waiting for the answer at once, in this one task (a yamux stream wakes
        // one waiting task only).
        let send = async {
            let mut buf = vec![0u8; 256 << 10];
            loop {
                let n = match tar.read(&mut buf).await {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = chunk::write_end(&mut wr, Err(format!("reading the archive: {e}")))
                            .await;
                        return Err(Sent::Input(e));
                    }
                };
                if n == 0 {
                    break;
                }
                chunk::write_data(&mut wr, &buf[..n])
                    .await
                    .map_err(Sent::Stream)?;
            }
            chunk::write_end(&mut wr, Ok(()))
                .await
                .map_err(Sent::Stream)
        };
        let answer = frame::read_required::<_, Response>(&mut rd);
        tokio::pin!(send, answer);
        let resp = tokio::select! {
            r = &mut answer => r?,
            sent = &mut send => match sent {
                Ok(()) => answer.await?,
                // The local archive failed: that is the error, whatever the guest says.
                Err(Sent::Input(e)) => return Err(e),
                // The stream broke while sending: the guest may have answered (and closed).
                Err(Sent::Stream(e)) => match answer.await {
                    Ok(r) => r,
                    Err(_) => return Err(e),
                },
            },
        };
        match resp {
            Response::Ok => Ok(()),
            other => Err(answer_error(other)),
        }
    }

    /// Every file at and below `path` in the container, as `lstat` sees it (parents first).
    /// A missing `path` is an error of kind `NotFound`.
    pub async fn list(&self, path: &str, one_fs: bool) -> io::Result<Vec<FileEntry>> {
        let mut s = self
            .open(&StreamHeader::List {
                path: path.into(),
                one_fs,
            })
            .await?;
        let mut all = Vec::new();
        loop {
            let b: ListBatch = frame::read_required(&mut s).await.map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("listing {path} in the container failed: {e}"),
                )
            })?;
            all.extend(b.entries);
            if b.done {
                if let Some(message) = b.error {
                    let kind = if b.not_found {
                        io::ErrorKind::NotFound
                    } else {
                        io::ErrorKind::Other
                    };
                    return Err(io::Error::new(kind, message));
                }
                return Ok(all);
            }
        }
    }

    /// Mount a stopped container's disks in this (fresh) VM without starting anything: its
    /// files can then be read and written; the VM cannot start the container afterwards.
    pub async fn mount(&self, spec: ContainerSpec) -> io::Result<()> {
        self.request_ok(Request::Mount {
            spec: Box::new(spec),
        })
        .await
    }

    /// Sync the disks and end the VM (refused while a container process runs).
    pub async fn power_off(&self) -> io::Result<()> {
        self.request_ok(Request::PowerOff).await
    }
}

/// How sending an archive failed.
enum Sent {
    /// Reading the caller's archive failed.
    Input(io::Error),
    /// Writing to the guest failed.
    Stream(io::Error),
}

/// The io error for an answer that is not the one expected: the guest's refusals are the
/// caller's mistakes (`NotFound` for a missing path, else `InvalidInput`), its errors `Other`.
fn answer_error(r: Response) -> io::Error {
    match r {
        Response::Refused { message, not_found } => io::Error::new(
            if not_found {
                io::ErrorKind::NotFound
            } else {
                io::ErrorKind::InvalidInput
            },
            message,
        ),
        Response::Error { message, .. } => io::Error::other(message),
        other => io::Error::other(format!("unexpected answer from the tether: {other:?}")),
    }
}

type NextChunk = Pin<Box<dyn Future<Output = (mux::MuxStream, io::Result<chunk::Chunk>)> + Send>>;

/// The tar bytes of an archive stream. Ends only when the guest said the archive is complete;
/// fails with the guest's message when it could not finish it, and when the stream is lost.
pub struct ArchiveReader {
    next: Option<NextChunk>,
    data: Vec<u8>,
    pos: usize,
    /// How it ended: `Ok` complete, `Err` failed (kept: every later read fails the same way).
    end: Option<Result<(), (io::ErrorKind, String)>>,
}

fn read_chunk(mut s: mux::MuxStream) -> NextChunk {
    Box::pin(async move {
        let r = chunk::read(&mut s).await;
        (s, r)
    })
}

impl ArchiveReader {
    fn new(s: mux::MuxStream) -> Self {
        ArchiveReader {
            next: Some(read_chunk(s)),
            data: Vec::new(),
            pos: 0,
            end: None,
        }
    }
}

impl AsyncRead for ArchiveReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.pos < this.data.len() {
                let n = buf.remaining().min(this.data.len() - this.pos);
                buf.put_slice(&this.data[this.pos..this.pos + n]);
                this.pos += n;
                return Poll::Ready(Ok(()));
            }
            match &this.end {
                Some(Ok(())) => return Poll::Ready(Ok(())),
                Some(Err((kind, message))) => {
                    return Poll::Ready(Err(io::Error::new(*kind, message.clone())))
                }
                None => {}
            }
            let Some(next) = this.next.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            let (s, r) = match next.as_mut().poll(cx) {
                Poll::Ready(v) => v,
                Poll::Pending => return Poll::Pending,
            };
            this.next = None;
            match r {
                Ok(chunk::Chunk::Data(d)) => {
                    this.data = d;
                    this.pos = 0;
                    this.next = Some(read_chunk(s));
                }
                Ok(chunk::Chunk::End(Ok(()))) => this.end = Some(Ok(())),
                Ok(chunk::Chunk::End(Err(m))) => {
                    this.end = Some(Err((
                        io::ErrorKind::Other,
                        format!("the container could not finish the archive: {m}"),
                    )))
                }
                Err(e) => {
                    this.end = Some(Err((
                        e.kind(),
                        format!("the archive stream from the container was lost: {e}"),
                    )))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The client against a scripted guest over a real handshake and multiplexer: the guest's
    //! side is played by hand so that its failure modes (a failed end, a lost stream, an early
    //! answer) can be produced at will. The real guest's handlers are tested in `kic-tether`.
    use super::*;
    use kic_proto::ProcessState;

    async fn guest_stream(mut st: mux::MuxStream) {
        let header: StreamHeader = frame::read_required(&mut st).await.unwrap();
        match header {
            StreamHeader::Request => {
                let req: Request = frame::read_required(&mut st).await.unwrap();
                let resp = match req {
                    Request::Hello { version } => Response::Hello {
                        version,
                        boot_id: "b".into(),
                        started: false,
                        processes: Vec::<ProcessState>::new(),
                    },
                    Request::Stat { path, .. } if path == "/nope" => Response::Stat { stat: None },
                    Request::Stat { path, follow } => Response::Stat {
                        stat: Some(PathStat {
                            name: path.trim_start_matches('/').into(),
                            mode: if follow { 0o40755 } else { 0o120777 },
                            ..Default::default()
                        }),
                    },
                    Request::PowerOff => Response::Refused {
                        message: "cannot power off: the container's processes are running (main)"
                            .into(),
                        not_found: false,
                    },
                    other => panic!("unexpected {other:?}"),
                };
                frame::write(&mut st, &resp).await.unwrap();
            }
            StreamHeader::ArchiveGet { spec } => {
                let path = spec.sources[0].path.clone();
                if path == "/missing" {
                    let start = ArchiveStart {
                        error: Some("Could not find the file /missing in container".into()),
                        not_found: true,
                        ..Default::default()
                    };
                    frame::write(&mut st, &start).await.unwrap();
                    return;
                }
                let start = ArchiveStart {
                    stat: Some(PathStat {
                        name: "x".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                frame::write(&mut st, &start).await.unwrap();
                chunk::write_data(&mut st, b"abc").await.unwrap();
                chunk::write_data(&mut st, b"def").await.unwrap();
                match path.as_str() {
                    "/ok" => chunk::write_end(&mut st, Ok(())).await.unwrap(),
                    "/fail" => chunk::write_end(&mut st, Err("disk gone".into()))
                        .await
                        .unwrap(),
                    // "/lost": the stream just ends.
                    _ => st.flush().await.unwrap(),
                }
                st.shutdown().await.unwrap();
            }
            StreamHeader::ArchivePut { spec } => {
                if spec.path == "/refuse" {
                    // Answer at once, without reading what the host sends.
                    let r = Response::Refused {
                        message: "Could not find the file /refuse in container".into(),
                        not_found: true,
                    };
                    frame::write(&mut st, &r).await.unwrap();
                    st.shutdown().await.unwrap();
                    return;
                }
                let mut n = 0;
                let end = loop {
                    match chunk::read(&mut st).await.unwrap() {
                        chunk::Chunk::Data(d) => n += d.len(),
                        chunk::Chunk::End(r) => break r,
                    }
                };
                let r = match (end, spec.path.as_str()) {
                    (Ok(()), "/ok") if n == 3_000_000 => Response::Ok,
                    (Ok(()), "/unsafe") => Response::Refused {
                        message: "refusing unsafe archive entry \"../x\"".into(),
                        not_found: false,
                    },
                    (r, _) => Response::Error {
                        message: format!("got {n} bytes, end {r:?}"),
                        exit_code: None,
                    },
                };
                frame::write(&mut st, &r).await.unwrap();
                st.shutdown().await.unwrap();
            }
            StreamHeader::List { path, .. } => {
                if path == "/missing" {
                    let b = ListBatch {
                        done: true,
                        not_found: true,
                        error: Some("Could not find the file /missing in container".into()),
                        ..Default::default()
                    };
                    frame::write(&mut st, &b).await.unwrap();
                    return;
                }
                for i in 0..3 {
                    let b = ListBatch {
                        entries: vec![FileEntry {
                            path: format!("/{i}"),
                            ..Default::default()
                        }],
                        done: i == 2,
                        ..Default::default()
                    };
                    frame::write(&mut st, &b).await.unwrap();
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    async fn session() -> Session {
        let (a, b) = UnixStream::pair().unwrap();
        tokio::spawn(async move {
            let s = handshake::guest(b).await.unwrap();
            let (_op, mut inbound, driver) = mux::start(s, mux::Mode::Server);
            tokio::spawn(driver);
            while let Some(st) = inbound.recv().await {
                tokio::spawn(guest_stream(st));
            }
        });
        let s = handshake::host(a).await.unwrap();
        Session::start(s).await.unwrap()
    }

    fn spec(path: &str) -> ArchiveSpec {
        ArchiveSpec {
            sources: vec![kic_proto::ArchiveSource {
                path: path.into(),
                name: "x".into(),
                recursive: true,
                follow: false,
            }],
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn archive_get_never_truncates_silently() {
        let s = session().await;
        let (stat, mut r) = s.archive_get(spec("/ok")).await.unwrap();
        assert_eq!(stat.unwrap().name, "x");
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"abcdef");

        for (path, want) in [
            ("/fail", "could not finish the archive: disk gone"),
            ("/lost", "stream from the container was lost"),
        ] {
            let (_, mut r) = s.archive_get(spec(path)).await.unwrap();
            let mut out = Vec::new();
            let e = r.read_to_end(&mut out).await.unwrap_err();
            assert!(e.to_string().contains(want), "{path}: {e}");
            assert_eq!(out, b"abcdef", "{path}: the bytes before the failure");
            // It stays failed.
            assert!(r.read(&mut [0u8; 4]).await.is_err());
        }
        let e = s.archive_get(spec("/missing")).await.err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(e.to_string().contains("/missing"), "{e}");
    }

    #[tokio::test]
    async fn archive_put_maps_answers_and_stops_on_an_early_one() {
        let s = session().await;
        let put = |path: &str| PutSpec {
            path: path.into(),
            ..Default::default()
        };
        let data = vec![1u8; 3_000_000];
        s.archive_put(put("/ok"), &data[..]).await.unwrap();
        let e = s.archive_put(put("/unsafe"), &data[..]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("../x"), "{e}");
        let e = s.archive_put(put("/other"), &data[..]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Other);
        // The guest answers without reading: the host must not wait to send an endless input.
        let endless = tokio::io::repeat(7);
        let e = tokio::time::timeout(
            Duration::from_secs(10),
            s.archive_put(put("/refuse"), endless),
        )
        .await
        .expect("an early answer ends the put")
        .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        // A local input failure is the error reported.
        struct Failing;
        impl AsyncRead for Failing {
            fn poll_read(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
                _: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "client went quiet",
                )))
            }
        }
        let e = s.archive_put(put("/ok"), Failing).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn stat_list_and_power_off() {
        let s = session().await;
        assert!(s.stat("/nope", false).await.unwrap().is_none());
        assert_eq!(s.stat("/l", true).await.unwrap().unwrap().mode, 0o40755);
        let all = s.list("/", true).await.unwrap();
        assert_eq!(
            all.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(),
            vec!["/0", "/1", "/2"]
        );
        let e = s.list("/missing", true).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        let e = s.power_off().await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("running"), "{e}");
    }
}
