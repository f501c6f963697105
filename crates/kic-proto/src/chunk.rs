//! Byte streams inside a mux stream (tar archives): chunks of a big-endian `u32` length and
//! that many bytes. A length of 0 ends the stream complete; [`FAILED`] ends it failed and is
//! followed by one [`frame`](crate::frame) holding the error message. A stream that just stops is
//! a lost connection, never a complete archive.

use std::io;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest data chunk either end writes or accepts.
pub const MAX_CHUNK: usize = 1 << 20;

/// Length marking a failed end; an error frame follows.
pub const FAILED: u32 = u32::MAX;

/// One chunk as read.
#[derive(Debug, PartialEq, Eq)]
pub enum Chunk {
    Data(Vec<u8>),
    /// The end: `Ok` when the sender finished, `Err(message)` when it failed.
    End(Result<(), String>),
}

/// Write `data` as one or more data chunks (empty data writes nothing).
pub async fn write_data<W: AsyncWrite + Unpin>(w: &mut W, data: &[u8]) -> io::Result<()> {
    for part in data.chunks(MAX_CHUNK) {
        let mut buf = Vec::with_capacity(4 + part.len());
        buf.extend_from_slice(&(part.len() as u32).to_be_bytes());
        buf.extend_from_slice(part);
        w.write_all(&buf).await?;
    }
    Ok(())
}

/// Write the end of the stream: complete, or failed with a message.
pub async fn write_end<W: AsyncWrite + Unpin>(
    w: &mut W,
    result: Result<(), String>,
) -> io::Result<()> {
    match result {
        Ok(()) => w.write_all(&0u32.to_be_bytes()).await?,
        Err(message) => {
            w.write_all(&FAILED.to_be_bytes()).await?;
            crate::frame::write(w, &message).await?;
        }
    }
    w.flush().await
}

/// Read the next chunk. A stream that ends without an end chunk is `UnexpectedEof`.
pub async fn read<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Chunk> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    match u32::from_be_bytes(len) {
        0 => Ok(Chunk::End(Ok(()))),
        FAILED => {
            let message: String = crate::frame::read_required(r).await?;
            Ok(Chunk::End(Err(message)))
        }
        n if n as usize > MAX_CHUNK => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("chunk of {n} bytes is over the limit"),
        )),
        n => {
            let mut data = vec![0u8; n as usize];
            r.read_exact(&mut data).await?;
            Ok(Chunk::Data(data))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn chunks_round_trip_with_both_ends() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let big = vec![7u8; MAX_CHUNK + 10];
        let writer = tokio::spawn(async move {
            write_data(&mut a, b"hello").await.unwrap();
            write_data(&mut a, &big).await.unwrap();
            write_end(&mut a, Ok(())).await.unwrap();
            write_end(&mut a, Err("disk full".into())).await.unwrap();
        });
        assert_eq!(read(&mut b).await.unwrap(), Chunk::Data(b"hello".to_vec()));
        let mut n = 0;
        loop {
            match read(&mut b).await.unwrap() {
                Chunk::Data(d) => n += d.len(),
                Chunk::End(r) => {
                    assert_eq!(r, Ok(()));
                    break;
                }
            }
        }
        assert_eq!(n, MAX_CHUNK + 10);
        assert_eq!(
            read(&mut b).await.unwrap(),
            Chunk::End(Err("disk full".into()))
        );
        writer.await.unwrap();
        let e = read(&mut b).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn oversized_chunk_is_refused() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&((MAX_CHUNK as u32) + 1).to_be_bytes())
            .await
            .unwrap();
        assert_eq!(
            read(&mut b).await.unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }
}
