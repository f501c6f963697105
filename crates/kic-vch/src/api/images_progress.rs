//! dockerd's JSON progress messages (`jsonmessage.JSONMessage`): one JSON object a line, with
//! the server-rendered bar text the docker CLI falls back to.

use serde_json::{json, Value};

/// Go's `%.4g`: four significant digits, trailing zeros dropped.
fn g4(x: f64) -> String {
    if x == 0.0 {
        return "0".into();
    }
    let e = format!("{x:.3e}");
    let exp: i32 = e
        .split_once('e')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(0);
    if !(-4..4).contains(&exp) {
        return e;
    }
    let s = format!("{:.*}", (3 - exp).max(0) as usize, x);
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// `units.HumanSize`: decimal units, four significant digits (`513kB`, `48.9MB`).
pub fn human_size(bytes: f64) -> String {
    const UNITS: [&str; 9] = ["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"];
    let mut s = bytes;
    let mut i = 0;
    while s >= 1000.0 && i < UNITS.len() - 1 {
        s /= 1000.0;
        i += 1;
    }
    format!("{}{}", g4(s), UNITS[i])
}

/// `JSONProgress.String()` at dockerd's default width (200 columns): bar and counts.
pub fn bar(current: u64, total: u64) -> String {
    if total == 0 {
        if current == 0 {
            return String::new();
        }
        return format!("{:>8}", human_size(current as f64));
    }
    let pct = (((current as f64 / total as f64) * 100.0) as i64 / 2).clamp(0, 50) as usize;
    let bar = format!("[{}>{}] ", "=".repeat(pct), " ".repeat(50 - pct));
    let cur = human_size(current as f64);
    if current > total {
        format!("{bar}{cur:>8}")
    } else {
        format!("{bar}{cur:>8}/{}", human_size(total as f64))
    }
}

/// A status line without progress (`{"status":..}` or with an `id`).
pub fn status(status: &str, id: Option<&str>) -> Value {
    match id {
        Some(id) => json!({ "status": status, "id": id }),
        None => json!({ "status": status }),
    }
}

/// A per-layer line; `Downloading`/`Extracting` carry `progressDetail` and the bar text.
pub fn layer(status: &str, id: &str, current: u64, total: Option<u64>) -> Value {
    match total {
        Some(t) if current > 0 || t > 0 => json!({
            "status": status,
            "progressDetail": { "current": current, "total": t },
            "progress": bar(current, t),
            "id": id,
        }),
        _ => json!({ "status": status, "progressDetail": {}, "id": id }),
    }
}

/// An error after the stream began: the client prints it and exits non-zero.
pub fn error(message: &str) -> Value {
    json!({ "errorDetail": { "message": message }, "error": message })
}

/// `{"stream": ...}` lines (load, build).
pub fn stream(text: &str) -> Value {
    json!({ "stream": text })
}

/// One line of the response body.
pub fn line(v: &Value) -> bytes::Bytes {
    let mut b = serde_json::to_vec(v).expect("serialisable");
    b.push(b'\n');
    b.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_go_units() {
        assert_eq!(human_size(513024.0), "513kB");
        assert_eq!(human_size(48896921.0), "48.9MB");
        assert_eq!(human_size(13031424.0), "13.03MB");
        assert_eq!(human_size(2457600.0), "2.458MB");
        assert_eq!(human_size(491520.0), "491.5kB");
        assert_eq!(human_size(999.0), "999B");
        assert_eq!(human_size(0.0), "0B");
        assert_eq!(human_size(1_000_000.0), "1MB");
    }

    #[test]
    fn bars_match_dockerd() {
        // Captured from dockerd 20.10 pulling a 48.9 MB layer.
        assert_eq!(
            bar(513024, 48896921),
            "[>                                                  ]    513kB/48.9MB"
        );
        assert_eq!(
            bar(13031424, 48896921),
            "[=============>                                     ]  13.03MB/48.9MB"
        );
        assert_eq!(
            bar(48590848, 48896921),
            "[=================================================> ]  48.59MB/48.9MB"
        );
        assert_eq!(bar(0, 0), "");
    }

    #[test]
    fn message_shapes() {
        assert_eq!(
            serde_json::to_string(&layer(
                "Downloading",
                "0c7a25ae1ba8",
                513024,
                Some(48896921)
            ))
            .unwrap(),
            r#"{"id":"0c7a25ae1ba8","progress":"[>                                                  ]    513kB/48.9MB","progressDetail":{"current":513024,"total":48896921},"status":"Downloading"}"#
        );
        assert_eq!(
            layer("Pull complete", "abc", 0, None),
            json!({"status":"Pull complete","progressDetail":{},"id":"abc"})
        );
        assert_eq!(
            error("boom"),
            json!({"errorDetail":{"message":"boom"},"error":"boom"})
        );
        assert_eq!(&line(&status("x", None))[..], b"{\"status\":\"x\"}\n");
    }
}
