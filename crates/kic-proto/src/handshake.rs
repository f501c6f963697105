//! The resync handshake that starts every session (see the crate docs for the sequence).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

const READY: &[u8] = b"\nKIC-READY\n";
const SYNC: &[u8] = b"\nKIC-SYNC:";
const ACK: &[u8] = b"\nKIC-ACK:";
const NONCE_LEN: usize = 32;
/// How often the guest repeats `READY` while it waits for a host.
pub const READY_INTERVAL: Duration = Duration::from_millis(100);

/// An I/O object with bytes already read from it put back in front.
pub struct Rewind<T> {
    prefix: Vec<u8>,
    pos: usize,
    inner: T,
}

impl<T> Rewind<T> {
    pub fn new(prefix: Vec<u8>, inner: T) -> Self {
        Rewind {
            prefix,
            pos: 0,
            inner,
        }
    }
    pub fn into_inner(self) -> T {
        self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = buf.remaining().min(self.prefix.len() - self.pos);
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Keep only a tail long enough to hold a marker split across reads.
fn trim(buf: &mut Vec<u8>) {
    const KEEP: usize = 64;
    if buf.len() > 4096 {
        let cut = buf.len() - KEEP;
        buf.drain(..cut);
    }
}

async fn read_more<T: AsyncRead + Unpin>(io: &mut T, buf: &mut Vec<u8>) -> io::Result<()> {
    let mut chunk = [0u8; 4096];
    let n = io.read(&mut chunk).await?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::NotConnected,
            "peer closed the channel during the handshake",
        ));
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

/// Host side: wait for the guest's `READY`, send `SYNC`, discard everything up to the `ACK`.
pub async fn host<T: AsyncRead + AsyncWrite + Unpin>(mut io: T) -> io::Result<Rewind<T>> {
    let mut buf = Vec::new();
    loop {
        if let Some(p) = find(&buf, READY) {
            buf.drain(..p + READY.len());
            break;
        }
        trim(&mut buf);
        read_more(&mut io, &mut buf).await?;
    }
    let nonce: String = {
        use rand::Rng;
        let mut rng = rand::thread_rng();
        (0..NONCE_LEN)
            .map(|_| char::from(b"0123456789abcdef"[rng.gen_range(0..16)]))
            .collect()
    };
    let mut sync = SYNC.to_vec();
    sync.extend_from_slice(nonce.as_bytes());
    sync.push(b'\n');
    io.write_all(&sync).await?;
    io.flush().await?;
    let mut ack = ACK.to_vec();
    ack.extend_from_slice(nonce.as_bytes());
    ack.push(b'\n');
    loop {
        if let Some(p) = find(&buf, &ack) {
            let rest = buf.split_off(p + ack.len());
            return Ok(Rewind::new(rest, io));
        }
        trim(&mut buf);
        read_more(&mut io, &mut buf).await?;
    }
}

/// Guest side: announce `READY` until a `SYNC` arrives, answer `ACK`.
///
/// Fails with `NotConnected` when the host end closes (the caller waits for a new host).
pub async fn guest<T: AsyncRead + AsyncWrite + Unpin>(mut io: T) -> io::Result<Rewind<T>> {
    let mut buf = Vec::new();
    loop {
        io.write_all(READY).await?;
        io.flush().await?;
        let deadline = tokio::time::Instant::now() + READY_INTERVAL;
        loop {
            if let Some(p) = find(&buf, SYNC) {
                let start = p + SYNC.len();
                if buf.len() > start + NONCE_LEN {
                    let nonce = buf[start..start + NONCE_LEN].to_vec();
                    let rest = buf.split_off(start + NONCE_LEN + 1);
                    let mut ack = ACK.to_vec();
                    ack.extend_from_slice(&nonce);
                    ack.push(b'\n');
                    io.write_all(&ack).await?;
                    io.flush().await?;
                    return Ok(Rewind::new(rest, io));
                }
            } else {
                trim(&mut buf);
            }
            match tokio::time::timeout_at(deadline, read_more(&mut io, &mut buf)).await {
                Ok(r) => r?,
                Err(_) => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn handshake_discards_stale_bytes_both_ways() {
        let (mut h, mut g) = tokio::io::duplex(1 << 16);
        // Stale bytes from an earlier session in both directions.
        h.write_all(b"garbage from an old host session")
            .await
            .unwrap();
        g.write_all(b"old guest output \x00\x01\x02").await.unwrap();
        let guest = tokio::spawn(async move {
            let mut s = guest(g).await.unwrap();
            s.write_all(b"after-handshake").await.unwrap();
            let mut b = [0u8; 5];
            s.read_exact(&mut b).await.unwrap();
            b
        });
        let mut s = host(h).await.unwrap();
        let mut b = [0u8; 15];
        s.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"after-handshake");
        s.write_all(b"hello").await.unwrap();
        assert_eq!(&guest.await.unwrap(), b"hello");
    }

    #[tokio::test]
    async fn guest_reports_host_gone() {
        let (h, g) = tokio::io::duplex(1 << 16);
        drop(h);
        let e = guest(g).await.err().unwrap();
        assert!(matches!(
            e.kind(),
            io::ErrorKind::NotConnected | io::ErrorKind::BrokenPipe
        ));
    }
}
