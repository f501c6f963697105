//! The container's files over the wire: archives out and in (`docker cp`, `export`, `commit`),
//! listings (`docker diff`), stats (`docker cp`'s HEAD).
//!
//! The tar work (`kic-archive`) is blocking; it runs on a blocking thread and talks to the
//! stream through bounded channels, so a slow host slows the archiver down instead of the
//! archive piling up in memory (and a fast host cannot push more than a few chunks ahead of
//! the extractor).

use kic_archive::RootDir;
use kic_proto::{
    chunk, frame, ArchiveSpec, ArchiveStart, FileEntry, ListBatch, PathStat, PutSpec, Response,
};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// What the handlers talk over (a mux stream; a pipe in tests).
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}
use tokio::sync::mpsc;

/// Bytes handed from the archiver to the stream in one piece.
const PIECE: usize = 256 << 10;
/// Pieces in flight between the blocking thread and the stream, each way.
const IN_FLIGHT: usize = 4;
/// Most entries in one listing frame.
pub const LIST_BATCH: usize = 1000;

/// The container's root as the tether sees it: `/`, since it runs chrooted into it once the
/// container's disk is mounted (`Start` or `Mount`). Tests use a directory of their own.
pub const CONTAINER_ROOT: &str = "/";

fn open_root(root: &Path) -> kic_archive::Result<RootDir> {
    RootDir::open(root)
}

/// `docker cp`'s stat of one path.
pub async fn stat(root: PathBuf, path: String, follow: bool) -> Response {
    let r = tokio::task::spawn_blocking(move || {
        let root = open_root(&root)?;
        kic_archive::stat(&root, &path, follow)
    })
    .await;
    match r {
        Ok(Ok(stat)) => Response::Stat { stat },
        Ok(Err(e)) => refusal(e),
        Err(e) => crate::session::error(format!("stat failed: {e}")),
    }
}

/// The answer for a failed file operation: the caller's mistake or the guest's failure.
pub fn refusal(e: kic_archive::Error) -> Response {
    if e.is_refusal() {
        Response::Refused {
            not_found: matches!(e, kic_archive::Error::NotFound(_)),
            message: e.to_string(),
        }
    } else {
        crate::session::error(e.to_string())
    }
}

/// A `Write` that hands full pieces to the stream task; fails once the stream is gone.
struct ToStream {
    tx: mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
}

impl ToStream {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = std::mem::replace(&mut self.buf, Vec::with_capacity(PIECE));
        self.tx.blocking_send(piece).map_err(|_| {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the host stopped reading the archive",
            )
        })
    }
}

impl Write for ToStream {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(PIECE - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == PIECE {
            self.send()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// A `Read` over the pieces the stream task receives; an error piece ends it failed, a closed
/// channel ends it (the host's end chunk said complete).
struct FromStream {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for FromStream {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Err(e)) => return Err(e),
                Some(Ok(piece)) => {
                    self.cur = piece;
                    self.pos = 0;
                }
            }
        }
        let n = out.len().min(self.cur.len() - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// `StreamHeader::ArchiveGet`: an [`ArchiveStart`], then the tar as chunks and an end chunk.
pub async fn archive_get<S: Stream>(
    st: &mut S,
    root: PathBuf,
    spec: ArchiveSpec,
) -> io::Result<()> {
    // The first source decides the answer's stat and whether there is an archive at all.
    let first = spec.sources.first().cloned();
    let root2 = root.clone();
    let start = tokio::task::spawn_blocking(move || -> kic_archive::Result<Option<PathStat>> {
        let root = open_root(&root2)?;
        match first {
            Some(s) => kic_archive::stat(&root, &s.path, s.follow),
            None => Ok(None),
        }
    })
    .await
    .map_err(io::Error::other)?;
    let start = match (start, spec.sources.first()) {
        (Ok(Some(stat)), _) => ArchiveStart {
            stat: Some(stat),
            ..Default::default()
        },
        (Ok(None), Some(s)) => ArchiveStart {
            error: Some(
                kic_archive::Error::NotFound(format!(
                    "Could not find the file {} in container",
                    s.path
                ))
                .to_string(),
            ),
            not_found: true,
            ..Default::default()
        },
        (Ok(None), None) => ArchiveStart::default(),
        (Err(e), _) => ArchiveStart {
            not_found: matches!(e, kic_archive::Error::NotFound(_)),
            error: Some(e.to_string()),
            ..Default::default()
        },
    };
    let failed = start.error.is_some();
    frame::write(st, &start).await?;
    if failed {
        return st.shutdown().await;
    }
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(IN_FLIGHT);
    let job = tokio::task::spawn_blocking(move || {
        let out = ToStream {
            tx,
            buf: Vec::with_capacity(PIECE),
        };
        let root = open_root(&root)?;
        kic_archive::write_archive(&root, &spec, out)
    });
    let mut sent = Ok(());
    while let Some(piece) = rx.recv().await {
        if let Err(e) = chunk::write_data(st, &piece).await {
            // The host is gone: dropping the receiver stops the archiver.
            sent = Err(e);
            break;
        }
    }
    drop(rx);
    let result = job.await.map_err(io::Error::other)?;
    sent?;
    chunk::write_end(st, result.map_err(|e| e.to_string())).await?;
    st.shutdown().await
}

/// `StreamHeader::ArchivePut`: chunks into the extractor, then one [`Response`].
pub async fn archive_put<S: Stream>(st: &mut S, root: PathBuf, spec: PutSpec) -> io::Result<()> {
    let (tx, rx) = mpsc::channel::<io::Result<Vec<u8>>>(IN_FLIGHT);
    let mut job = tokio::task::spawn_blocking(move || {
        let input = FromStream {
            rx,
            cur: Vec::new(),
            pos: 0,
        };
        let root = open_root(&root)?;
        let stats = kic_archive::put_archive(&root, &spec, input)?;
        // On the disks before the host hears "done": a maintenance VM may be ended (or its
        // host process die) right after, and `docker cp` said the files are there.
        // SAFETY: sync(2) takes no arguments and cannot fail.
        unsafe { libc::sync() };
        Ok(stats)
    });
    // Feed the extractor until the host's end chunk, or until the extractor stops (done or
    // failed): then it has an answer, whatever is still on the way.
    let mut tx = Some(tx);
    let result = loop {
        let Some(sender) = tx.as_ref() else {
            break (&mut job).await;
        };
        tokio::select! {
            r = &mut job => break r,
            c = chunk::read(st) => {
                let piece = match c {
                    Ok(chunk::Chunk::Data(d)) => Ok(d),
                    Ok(chunk::Chunk::End(Ok(()))) => {
                        // Closing the channel is the end of the archive for the extractor.
                        tx = None;
                        continue;
                    }
                    Ok(chunk::Chunk::End(Err(m))) => Err(io::Error::other(format!(
                        "the host failed to send the whole archive: {m}"
                    ))),
                    Err(e) => Err(io::Error::new(
                        e.kind(),
                        format!("the archive stream from the host was lost: {e}"),
                    )),
                };
                let failed = piece.is_err();
                if sender.send(piece).await.is_err() || failed {
                    tx = None;
                }
            }
        }
    };
    let resp = match result {
        Ok(Ok(_stats)) => Response::Ok,
        Ok(Err(e)) => refusal(e),
        Err(e) => crate::session::error(format!("extraction failed: {e}")),
    };
    frame::write(st, &resp).await?;
    st.shutdown().await
}

/// `StreamHeader::List`: [`ListBatch`] frames of at most [`LIST_BATCH`] entries, the last
/// one `done`.
pub async fn list<S: Stream>(
    st: &mut S,
    root: PathBuf,
    path: String,
    one_fs: bool,
) -> io::Result<()> {
    let (tx, mut rx) = mpsc::channel::<Vec<FileEntry>>(IN_FLIGHT);
    let job = tokio::task::spawn_blocking(move || {
        let root = open_root(&root)?;
        let mut batch = Vec::with_capacity(LIST_BATCH);
        let gone = || {
            kic_archive::Error::io(
                "send listing",
                "<stream>",
                io::Error::new(io::ErrorKind::BrokenPipe, "the host stopped reading"),
            )
        };
        kic_archive::list(&root, &path, one_fs, &mut |e| {
            batch.push(e);
            if batch.len() == LIST_BATCH {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(LIST_BATCH));
                tx.blocking_send(full).map_err(|_| gone())?;
            }
            Ok(())
        })?;
        if !batch.is_empty() {
            tx.blocking_send(batch).map_err(|_| gone())?;
        }
        Ok(())
    });
    let mut sent = Ok(());
    while let Some(entries) = rx.recv().await {
        let b = ListBatch {
            entries,
            done: false,
            error: None,
            not_found: false,
        };
        if let Err(e) = frame::write(st, &b).await {
            sent = Err(e);
            break;
        }
    }
    drop(rx);
    let result: kic_archive::Result<()> = job.await.map_err(io::Error::other)?;
    sent?;
    let last = match result {
        Ok(()) => ListBatch {
            done: true,
            ..Default::default()
        },
        Err(e) => ListBatch {
            done: true,
            not_found: matches!(e, kic_archive::Error::NotFound(_)),
            error: Some(e.to_string()),
            ..Default::default()
        },
    };
    frame::write(st, &last).await?;
    st.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use kic_proto::ArchiveSource;
    use std::fs;
    use tokio::io::DuplexStream;

    fn tree() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("d/sub")).unwrap();
        fs::write(t.path().join("d/f"), b"hello").unwrap();
        // Big enough to need many chunks and to fill the channels.
        let big: Vec<u8> = (0..6_000_000u32).map(|i| (i % 251) as u8).collect();
        fs::write(t.path().join("d/sub/big"), &big).unwrap();
        t
    }

    fn get_spec(paths: &[&str]) -> ArchiveSpec {
        ArchiveSpec {
            sources: paths
                .iter()
                .map(|p| ArchiveSource {
                    path: p.to_string(),
                    name: p.trim_start_matches('/').to_string(),
                    recursive: true,
                    follow: false,
                })
                .collect(),
            ..Default::default()
        }
    }

    /// The guest end of one stream, run on its own task; the test holds the host end.
    fn pipe() -> (DuplexStream, DuplexStream) {
        tokio::io::duplex(64 << 10)
    }

    async fn read_all_chunks(host: &mut DuplexStream) -> (Vec<u8>, Result<(), String>) {
        let mut data = Vec::new();
        loop {
            match chunk::read(host).await.unwrap() {
                chunk::Chunk::Data(d) => data.extend_from_slice(&d),
                chunk::Chunk::End(r) => return (data, r),
            }
        }
    }

    fn names(tar: &[u8]) -> Vec<String> {
        let mut a = tar::Archive::new(tar);
        a.entries()
            .unwrap()
            .map(|e| String::from_utf8(e.unwrap().path_bytes().into_owned()).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn archive_get_streams_a_tar_and_says_how_it_ended() {
        let t = tree();
        let (mut host, mut guest) = pipe();
        let root = t.path().to_path_buf();
        let g = tokio::spawn(async move { archive_get(&mut guest, root, get_spec(&["/d"])).await });
        let start: ArchiveStart = frame::read_required(&mut host).await.unwrap();
        let stat = start.stat.unwrap();
        assert_eq!(
            (stat.name.as_str(), stat.mode & libc::S_IFMT),
            ("d", libc::S_IFDIR)
        );
        let (data, end) = read_all_chunks(&mut host).await;
        assert_eq!(end, Ok(()));
        assert_eq!(names(&data), vec!["d/", "d/f", "d/sub/", "d/sub/big"]);
        g.await.unwrap().unwrap();

        // A later source missing: the archive ends failed, with the reason.
        let (mut host, mut guest) = pipe();
        let root = t.path().to_path_buf();
        let g = tokio::spawn(async move {
            archive_get(&mut guest, root, get_spec(&["/d/f", "/nope"])).await
        });
        let start: ArchiveStart = frame::read_required(&mut host).await.unwrap();
        assert!(start.error.is_none());
        let (_, end) = read_all_chunks(&mut host).await;
        assert_eq!(
            end,
            Err("Could not find the file /nope in container".to_string())
        );
        g.await.unwrap().unwrap();

        // The first source missing: no archive at all.
        let (mut host, mut guest) = pipe();
        let root = t.path().to_path_buf();
        let g =
            tokio::spawn(async move { archive_get(&mut guest, root, get_spec(&["/nope"])).await });
        let start: ArchiveStart = frame::read_required(&mut host).await.unwrap();
        assert!(start.not_found && start.stat.is_none(), "{start:?}");
        assert!(start.error.unwrap().contains("/nope"));
        g.await.unwrap().unwrap();
        assert_eq!(
            chunk::read(&mut host).await.unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }

    #[tokio::test]
    async fn archive_get_stops_when_the_host_goes_away() {
        let t = tree();
        let (mut host, mut guest) = pipe();
        let root = t.path().to_path_buf();
        let g = tokio::spawn(async move { archive_get(&mut guest, root, get_spec(&["/d"])).await });
        let _: ArchiveStart = frame::read_required(&mut host).await.unwrap();
        let _ = chunk::read(&mut host).await.unwrap();
        drop(host);
        let r = tokio::time::timeout(std::time::Duration::from_secs(10), g)
            .await
            .expect("the archiver stops")
            .unwrap();
        assert!(r.is_err());
    }

    async fn put(root: PathBuf, spec: PutSpec, tar: Vec<u8>, end: Result<(), String>) -> Response {
        let (mut host, mut guest) = pipe();
        let g = tokio::spawn(async move { archive_put(&mut guest, root, spec).await });
        // Written while the answer may come early: the writer must not block the reader.
        let (mut rd, mut wr) = tokio::io::split(&mut host);
        let send = async {
            for part in tar.chunks(100_000) {
                chunk::write_data(&mut wr, part).await?;
            }
            chunk::write_end(&mut wr, end).await
        };
        let recv = async { frame::read_required::<_, Response>(&mut rd).await };
        let (_, resp) = tokio::join!(send, recv);
        g.await.unwrap().unwrap();
        resp.unwrap()
    }

    fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn put_spec(path: &str) -> PutSpec {
        PutSpec {
            path: path.into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn archive_put_unpacks_and_answers() {
        let t = tree();
        let root = t.path().to_path_buf();
        let big = vec![9u8; 3_000_000];
        let tar = tar_of(&[("new", b"1"), ("deep/big", &big)]);
        let r = put(root.clone(), put_spec("/d/sub"), tar.clone(), Ok(())).await;
        assert_eq!(r, Response::Ok);
        assert_eq!(fs::read(t.path().join("d/sub/deep/big")).unwrap(), big);

        let r = put(root.clone(), put_spec("/missing"), tar.clone(), Ok(())).await;
        assert!(
            matches!(&r, Response::Refused { not_found: true, message } if message.contains("/missing")),
            "{r:?}"
        );
        let r = put(root.clone(), put_spec("/d/f"), tar, Ok(())).await;
        assert!(
            matches!(&r, Response::Refused { not_found: false, message } if message.contains("not a directory")),
            "{r:?}"
        );
        let r = put(
            root.clone(),
            put_spec("/d"),
            tar_of(&[("../escape", b"x")]),
            Ok(()),
        )
        .await;
        assert!(
            matches!(&r, Response::Refused { not_found: false, message } if message.contains("../escape")),
            "{r:?}"
        );
        assert!(!t.path().join("escape").exists());
        // The host failing mid-way is not a success, even if what came was a whole tar.
        let r = put(
            root,
            put_spec("/d"),
            tar_of(&[("x", &[5u8; 200_000])])[..150_000].to_vec(),
            Err("disk read error".into()),
        )
        .await;
        assert!(
            matches!(&r, Response::Refused { message, .. } | Response::Error { message, .. } if message.contains("disk read error")),
            "{r:?}"
        );
    }

    #[tokio::test]
    async fn list_comes_in_batches() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir(t.path().join("many")).unwrap();
        for i in 0..2500 {
            fs::write(t.path().join(format!("many/{i:05}")), b"").unwrap();
        }
        let (mut host, mut guest) = pipe();
        let root = t.path().to_path_buf();
        let g = tokio::spawn(async move { list(&mut guest, root, "/".into(), true).await });
        let mut sizes = Vec::new();
        let mut all = Vec::new();
        loop {
            let b: ListBatch = frame::read_required(&mut host).await.unwrap();
            sizes.push(b.entries.len());
            all.extend(b.entries);
            if b.done {
                assert!(b.error.is_none());
                break;
            }
        }
        g.await.unwrap().unwrap();
        assert!(sizes.iter().all(|n| *n <= LIST_BATCH), "{sizes:?}");
        assert_eq!(all.len(), 2502);
        assert_eq!(all[0].path, "/");
        assert_eq!(all[2501].path, "/many/02499");

        let (mut host, mut guest) = pipe();
        let root = t.path().to_path_buf();
        let g = tokio::spawn(async move { list(&mut guest, root, "/nope".into(), true).await });
        let b: ListBatch = frame::read_required(&mut host).await.unwrap();
        assert!(b.done && b.not_found && b.entries.is_empty(), "{b:?}");
        g.await.unwrap().unwrap();
    }
}
