//! The stream multiplexer: a yamux session over the channel, driven by one task.

use futures::future::poll_fn;
use std::io;
use std::task::Poll;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};

pub use yamux::Mode;

/// A multiplexed stream usable with tokio's I/O traits.
pub type MuxStream = Compat<yamux::Stream>;

type OpenReply = oneshot::Sender<yamux::Result<yamux::Stream>>;

/// Opens outbound streams on a running session. Cheap to clone.
#[derive(Clone)]
pub struct Opener {
    tx: mpsc::UnboundedSender<OpenReply>,
}

impl Opener {
    /// Open a new stream; fails once the session has ended.
    pub async fn open(&self) -> io::Result<MuxStream> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(tx).map_err(|_| closed())?;
        let s = rx.await.map_err(|_| closed())?.map_err(io::Error::other)?;
        Ok(s.compat())
    }

    /// True once the session has ended.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the tether session has ended")
}

fn config() -> yamux::Config {
    let mut c = yamux::Config::default();
    c.set_max_num_streams(4096);
    c
}

/// Start a session over `io`. Returns the opener, the inbound streams, and the driver future,
/// which must be polled (spawned) for anything to move; it ends with the session.
pub fn start<T>(
    io: T,
    mode: Mode,
) -> (
    Opener,
    mpsc::UnboundedReceiver<MuxStream>,
    impl std::future::Future<Output = io::Result<()>>,
)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (open_tx, mut open_rx) = mpsc::unbounded_channel::<OpenReply>();
    let (in_tx, in_rx) = mpsc::unbounded_channel();
    let mut conn = yamux::Connection::new(io.compat(), config(), mode);
    let driver = async move {
        let mut pending: Option<OpenReply> = None;
        let mut openers_gone = false;
        poll_fn(move |cx| loop {
            let mut progressed = false;
            if pending.is_none() && !openers_gone {
                match open_rx.poll_recv(cx) {
                    Poll::Ready(Some(tx)) => pending = Some(tx),
                    Poll::Ready(None) => openers_gone = true,
                    Poll::Pending => {}
                }
            }
            if pending.is_some() {
                if let Poll::Ready(r) = conn.poll_new_outbound(cx) {
                    let _ = pending.take().expect("pending").send(r);
                    progressed = true;
                }
            }
            match conn.poll_next_inbound(cx) {
                Poll::Ready(Some(Ok(s))) => {
                    let _ = in_tx.send(s.compat());
                    progressed = true;
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(io::Error::other(e))),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => {}
            }
            if !progressed {
                return Poll::Pending;
            }
        })
        .await
    };
    (Opener { tx: open_tx }, in_rx, driver)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn many_streams_over_one_pipe() {
        let (a, b) = tokio::io::duplex(4096);
        let (opener, _in_a, drive_a) = start(a, Mode::Client);
        let (_op_b, mut in_b, drive_b) = start(b, Mode::Server);
        tokio::spawn(drive_a);
        tokio::spawn(drive_b);
        tokio::spawn(async move {
            while let Some(mut s) = in_b.recv().await {
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    s.read_to_end(&mut buf).await.unwrap();
                    s.write_all(&buf).await.unwrap();
                    s.shutdown().await.unwrap();
                });
            }
        });
        let mut tasks = Vec::new();
        for i in 0..20u8 {
            let opener = opener.clone();
            tasks.push(tokio::spawn(async move {
                let mut s = opener.open().await.unwrap();
                let data = vec![i; 300_000];
                s.write_all(&data).await.unwrap();
                s.shutdown().await.unwrap();
                let mut back = Vec::new();
                s.read_to_end(&mut back).await.unwrap();
                assert_eq!(back, data);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }
}
