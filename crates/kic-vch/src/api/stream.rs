//! Hijacked connections (attach, exec start): the 101 upgrade, dockerd's 8-byte multiplexed
//! frames (or a raw stream with a TTY), and detach keys.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use hyper_util::rt::TokioIo;
use std::future::Future;
use tokio::io::AsyncWriteExt;

pub type Upgraded = TokioIo<hyper::upgrade::Upgraded>;

pub const RAW: &str = "application/vnd.docker.raw-stream";
pub const MULTIPLEXED: &str = "application/vnd.docker.multiplexed-stream";

/// Answer `101 UPGRADED` and run `f` on the raw connection once hyper hands it over.
pub fn hijack<F, Fut>(req: &mut Request, tty: bool, f: F) -> Response
where
    F: FnOnce(Upgraded) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let on = hyper::upgrade::on(&mut *req);
    tokio::spawn(async move {
        match on.await {
            Ok(up) => f(TokioIo::new(up)).await,
            Err(e) => tracing::debug!("hijack failed: {e}"),
        }
    });
    let mut res = Response::new(Body::empty());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("tcp"));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(if tty { RAW } else { MULTIPLEXED }),
    );
    res
}

/// Does the client ask to take the connection over (`Upgrade: tcp`)?
pub fn wants_upgrade(req: &Request) -> bool {
    req.headers().contains_key(header::UPGRADE)
}

/// One frame of dockerd's multiplexed stream: `[fd, 0, 0, 0, len BE32] ++ data`.
pub fn frame(fd: u8, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + data.len());
    v.push(fd);
    v.extend_from_slice(&[0, 0, 0]);
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
    v
}

/// Encode output for the client: frames without a TTY, bytes as they are with one.
pub fn encode(tty: bool, fd: u8, data: &[u8]) -> Vec<u8> {
    if tty {
        data.to_vec()
    } else {
        frame(fd, data)
    }
}

pub async fn write_out<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    tty: bool,
    fd: u8,
    data: &[u8],
) -> std::io::Result<()> {
    w.write_all(&encode(tty, fd, data)).await?;
    w.flush().await
}

/// Parse Docker's detach key list (`ctrl-p,ctrl-q`, `a`, `ctrl-@`, `ctrl-[`...).
pub fn parse_detach_keys(s: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    for k in s.split(',') {
        let k = k.trim();
        if let Some(c) = k.strip_prefix("ctrl-") {
            let b = match c {
                "@" => 0,
                "[" => 27,
                "\\" => 28,
                "]" => 29,
                "^" => 30,
                "_" => 31,
                c if c.len() == 1 && c.as_bytes()[0].is_ascii_lowercase() => {
                    c.as_bytes()[0] - b'a' + 1
                }
                _ => return Err(format!("Unknown character: '{k}'")),
            };
            out.push(b);
        } else if k.len() == 1 && k.is_ascii() {
            out.push(k.as_bytes()[0]);
        } else {
            return Err(format!("Unknown character: '{k}'"));
        }
    }
    if out.is_empty() {
        return Err("empty detach keys".into());
    }
    Ok(out)
}

/// Finds the detach sequence in a stream of input, holding back a partial match.
pub struct DetachScanner {
    keys: Vec<u8>,
    matched: usize,
}

impl DetachScanner {
    pub fn new(keys: Vec<u8>) -> Self {
        DetachScanner { keys, matched: 0 }
    }

    /// Feed input: the bytes to pass on, and whether the full sequence was typed.
    pub fn feed(&mut self, input: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(input.len());
        for &b in input {
            if self.keys.is_empty() {
                out.push(b);
                continue;
            }
            if b == self.keys[self.matched] {
                self.matched += 1;
                if self.matched == self.keys.len() {
                    return (out, true);
                }
            } else {
                out.extend_from_slice(&self.keys[..self.matched]);
                self.matched = 0;
                if b == self.keys[0] {
                    self.matched = 1;
                    if self.keys.len() == 1 {
                        return (out, true);
                    }
                } else {
                    out.push(b);
                }
            }
        }
        (out, false)
    }
}

/// What the client typed next.
pub enum Input {
    /// Bytes for the process (never empty).
    Data(Vec<u8>),
    /// The detach keys, after the bytes that came before them (maybe empty).
    Detached(Vec<u8>),
    /// The client's input ended (half-close, or the connection is gone).
    End,
}

impl DetachScanner {
    /// Read the client's next input through the scanner.
    pub async fn next<R: tokio::io::AsyncRead + Unpin>(
        &mut self,
        rd: &mut R,
        buf: &mut [u8],
    ) -> Input {
        use tokio::io::AsyncReadExt;
        loop {
            let n = rd.read(buf).await.unwrap_or(0);
            if n == 0 {
                return Input::End;
            }
            match self.feed(&buf[..n]) {
                (data, true) => return Input::Detached(data),
                (data, false) if !data.is_empty() => return Input::Data(data),
                _ => {} // a partial detach sequence is held back
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_dockers_header() {
        assert_eq!(frame(2, b"ab"), vec![2, 0, 0, 0, 0, 0, 0, 2, b'a', b'b']);
        assert_eq!(encode(true, 1, b"x"), b"x".to_vec());
    }

    #[test]
    fn detach_keys_parse() {
        assert_eq!(parse_detach_keys("ctrl-p,ctrl-q").unwrap(), vec![16, 17]);
        assert_eq!(parse_detach_keys("ctrl-x").unwrap(), vec![24]);
        assert_eq!(parse_detach_keys("a,ctrl-@").unwrap(), vec![b'a', 0]);
        assert!(parse_detach_keys("ctrl-1").is_err());
        assert!(parse_detach_keys("abc").is_err());
    }

    #[test]
    fn scanner_holds_partial_matches_and_detaches() {
        let mut s = DetachScanner::new(vec![16, 17]);
        assert_eq!(s.feed(b"ab\x10"), (b"ab".to_vec(), false));
        // A partial match that does not complete is passed on.
        assert_eq!(s.feed(b"c"), (b"\x10c".to_vec(), false));
        assert_eq!(s.feed(b"x\x10\x10\x11rest"), (b"x\x10".to_vec(), true));
    }

    #[tokio::test]
    async fn input_ends_or_detaches() {
        let mut buf = [0u8; 4];
        let mut rd: &[u8] = b"hello\x10\x11tail";
        let mut sc = DetachScanner::new(vec![16, 17]);
        let mut got = Vec::new();
        loop {
            match sc.next(&mut rd, &mut buf).await {
                Input::Data(d) => got.extend(d),
                Input::Detached(d) => {
                    got.extend(d);
                    break;
                }
                Input::End => panic!("the detach keys were typed"),
            }
        }
        assert_eq!(got, b"hello");
        let mut rd: &[u8] = b"ab";
        let mut sc = DetachScanner::new(vec![16, 17]);
        assert!(matches!(sc.next(&mut rd, &mut buf).await, Input::Data(d) if d == b"ab"));
        assert!(matches!(sc.next(&mut rd, &mut buf).await, Input::End));
    }
}
