//! The container log: the main process's output as it arrived, with stream and time.
//!
//! A file of frames, each `[stream: u8][len: u32 BE][time: i64 BE unix nanos][len bytes]`.
//! Frames are appended with one `write` each; a frame cut short by a crash is dropped when the
//! writer reopens the file. The byte count of each stream equals the tether's output offset, so
//! a restarted host asks the tether for exactly what it does not have yet.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

pub const HEADER: usize = 13;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// 1 stdout, 2 stderr.
    pub stream: u8,
    pub time_nanos: i64,
    pub data: Vec<u8>,
}

fn now_nanos() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
}

/// Appends frames; knows how many bytes of each stream the file holds.
pub struct LogWriter {
    file: File,
    offsets: [u64; 3],
}

impl LogWriter {
    pub fn open(path: &Path) -> io::Result<LogWriter> {
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)?;
        let mut offsets = [0u64; 3];
        let mut reader = LogReader {
            file: file.try_clone()?,
            pos: 0,
        };
        reader.file.seek(SeekFrom::Start(0))?;
        while let Some(r) = reader.next_record()? {
            offsets[(r.stream as usize).min(2)] += r.data.len() as u64;
        }
        let good = reader.pos;
        if file.metadata()?.len() > good {
            file.set_len(good)?;
        }
        file.seek(SeekFrom::End(0))?;
        Ok(LogWriter { file, offsets })
    }

    /// Bytes of `stream` held so far.
    pub fn offset(&self, stream: u8) -> u64 {
        self.offsets[(stream as usize).min(2)]
    }

    pub fn append(&mut self, stream: u8, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let mut frame = Vec::with_capacity(HEADER + data.len());
        frame.push(stream);
        frame.extend_from_slice(&(data.len() as u32).to_be_bytes());
        frame.extend_from_slice(&now_nanos().to_be_bytes());
        frame.extend_from_slice(data);
        self.file.write_all(&frame)?;
        self.offsets[(stream as usize).min(2)] += data.len() as u64;
        Ok(())
    }
}

/// Reads frames from a position; `next` returns `None` at the end of what is complete, and can
/// be called again later to pick up what was appended since (following).
pub struct LogReader {
    file: File,
    pos: u64,
}

impl LogReader {
    pub fn open(path: &Path) -> io::Result<LogReader> {
        Ok(LogReader {
            file: File::open(path)?,
            pos: 0,
        })
    }

    pub fn next_record(&mut self) -> io::Result<Option<LogRecord>> {
        self.file.seek(SeekFrom::Start(self.pos))?;
        let mut h = [0u8; HEADER];
        if !read_full(&mut self.file, &mut h)? {
            return Ok(None);
        }
        let len = u32::from_be_bytes(h[1..5].try_into().expect("4 bytes")) as usize;
        let time_nanos = i64::from_be_bytes(h[5..13].try_into().expect("8 bytes"));
        let mut data = vec![0u8; len];
        if !read_full(&mut self.file, &mut data)? {
            return Ok(None);
        }
        self.pos += (HEADER + len) as u64;
        Ok(Some(LogRecord {
            stream: h[0],
            time_nanos,
            data,
        }))
    }
}

/// Fill `buf` completely; false if the file ends first (nothing consumed counts then).
fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<bool> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => return Ok(false),
            k => n += k,
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torn_tail_is_dropped_and_offsets_survive_reopen() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("log");
        let mut w = LogWriter::open(&p).unwrap();
        w.append(1, b"hello\n").unwrap();
        w.append(2, b"oops\n").unwrap();
        w.append(1, b"world\n").unwrap();
        drop(w);
        // A crash mid-frame leaves a partial frame behind.
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(&[1, 0, 0, 0, 50, 0, 0]).unwrap();
        drop(f);
        let w = LogWriter::open(&p).unwrap();
        assert_eq!((w.offset(1), w.offset(2)), (12, 5));
        let mut r = LogReader::open(&p).unwrap();
        let mut out = Vec::new();
        while let Some(rec) = r.next_record().unwrap() {
            out.push((rec.stream, rec.data));
        }
        assert_eq!(
            out,
            vec![
                (1, b"hello\n".to_vec()),
                (2, b"oops\n".to_vec()),
                (1, b"world\n".to_vec())
            ]
        );
        assert!(r.next_record().unwrap().is_none());
    }
}
