//! The host end of a tether session: connect to the VM's channel socket, resync, multiplex.

use kic_proto::{
    frame, handshake, mux, OutputStart, Request, Response, StreamHeader, PROTOCOL_VERSION,
};
use std::io;
use std::path::Path;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
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
            Response::Error { message, .. } => Err(io::Error::other(message)),
            other => Err(io::Error::other(format!("unexpected answer: {other:?}"))),
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
}
