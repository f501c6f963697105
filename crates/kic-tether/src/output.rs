//! Output kept until the host has acknowledged it, so a host that reconnects loses nothing.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use tokio::io::unix::AsyncFd;
use tokio::sync::{watch, Notify};

/// Most unacknowledged bytes kept per stream; past this the process blocks on its write.
pub const CAPACITY: usize = 4 << 20;
const CHUNK: usize = 64 << 10;

#[derive(Default)]
struct State {
    /// Offset of `data[0]` in the stream.
    base: u64,
    data: VecDeque<u8>,
    eof: bool,
}

/// One output stream of one process (stdout, stderr, or a terminal).
#[derive(Default)]
pub struct OutputBuf {
    st: Mutex<State>,
    changed: Notify,
}

/// What a reader at some offset gets.
pub enum Chunk {
    /// Bytes starting at `offset`.
    Data { offset: u64, bytes: Vec<u8> },
    /// Everything up to the end of the stream was handed out.
    Eof,
    /// Nothing new yet.
    Wait,
}

impl OutputBuf {
    fn push(&self, bytes: &[u8]) {
        self.st.lock().expect("output lock").data.extend(bytes);
        self.changed.notify_waiters();
    }

    fn finish(&self) {
        self.st.lock().expect("output lock").eof = true;
        self.changed.notify_waiters();
    }

    /// The first available offset at or after `pos`.
    pub fn start_at(&self, pos: u64) -> u64 {
        pos.max(self.st.lock().expect("output lock").base)
    }

    pub fn read_from(&self, pos: u64) -> Chunk {
        let st = self.st.lock().expect("output lock");
        let pos = pos.max(st.base);
        let end = st.base + st.data.len() as u64;
        if pos < end {
            let skip = (pos - st.base) as usize;
            let n = (end - pos).min(CHUNK as u64) as usize;
            let bytes: Vec<u8> = st.data.range(skip..skip + n).copied().collect();
            Chunk::Data { offset: pos, bytes }
        } else if st.eof {
            Chunk::Eof
        } else {
            Chunk::Wait
        }
    }

    /// The host has stored everything before `upto`.
    pub fn ack(&self, upto: u64) {
        {
            let mut st = self.st.lock().expect("output lock");
            let end = st.base + st.data.len() as u64;
            let upto = upto.min(end);
            if upto > st.base {
                let n = (upto - st.base) as usize;
                st.data.drain(..n);
                st.base = upto;
            }
        }
        self.changed.notify_waiters();
    }

    /// Wait until `ready` holds for the state.
    async fn wait_for(&self, ready: impl Fn(&State) -> bool) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if ready(&self.st.lock().expect("output lock")) {
                return;
            }
            notified.await;
        }
    }

    /// Wait until a reader at `pos` has something (data or end).
    pub async fn wait_data(&self, pos: u64) {
        self.wait_for(|st| st.eof || st.base + st.data.len() as u64 > pos)
            .await
    }

    async fn wait_room(&self) {
        self.wait_for(|st| st.data.len() < CAPACITY).await
    }
}

fn read_fd(fd: &OwnedFd, buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: `buf` is valid for `buf.len()` bytes and `fd` is open.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Copy a pipe or terminal into `out` until it ends. Once `exited` turns true the stream ends as
/// soon as nothing more is immediately readable (children that kept the pipe open do not hold up
/// the exit). A terminal's `EIO` (no more slaves) is its end.
pub async fn pump(
    fd: Arc<AsyncFd<OwnedFd>>,
    out: Arc<OutputBuf>,
    mut exited: watch::Receiver<bool>,
) {
    let mut chunk = vec![0u8; CHUNK];
    loop {
        out.wait_room().await;
        let done = *exited.borrow();
        if done {
            // Drain what is there without waiting for more.
            match read_fd(fd.get_ref(), &mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    out.push(&chunk[..n]);
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        let mut guard = tokio::select! {
            g = fd.readable() => match g { Ok(g) => g, Err(_) => break },
            _ = exited.changed() => continue,
        };
        match guard.try_io(|inner| read_fd(inner.get_ref(), &mut chunk)) {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => out.push(&chunk[..n]),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Ok(Err(_)) => break,
            Err(_would_block) => {}
        }
    }
    out.finish();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_frees_and_reads_resume_at_offsets() {
        let b = OutputBuf::default();
        b.push(b"hello ");
        b.push(b"world");
        match b.read_from(3) {
            Chunk::Data { offset, bytes } => {
                assert_eq!(offset, 3);
                assert_eq!(bytes, b"lo world");
            }
            _ => panic!("expected data"),
        }
        b.ack(6);
        assert_eq!(b.start_at(0), 6);
        match b.read_from(0) {
            Chunk::Data { offset, bytes } => {
                assert_eq!((offset, bytes.as_slice()), (6, &b"world"[..]))
            }
            _ => panic!("expected data"),
        }
        assert!(matches!(b.read_from(11), Chunk::Wait));
        b.finish();
        assert!(matches!(b.read_from(11), Chunk::Eof));
        b.ack(100);
        assert_eq!(b.start_at(0), 11);
    }
}
