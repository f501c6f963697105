//! Small pieces the routes share: Docker's filters, human durations, timestamps.

use std::collections::BTreeMap;

/// Docker's `filters` query parameter: `{"key":["v1","v2"]}` or the older
/// `{"key":{"v1":true}}`.
pub fn parse_filters(raw: Option<&str>) -> Result<BTreeMap<String, Vec<String>>, String> {
    let mut out = BTreeMap::new();
    let Some(raw) = raw.filter(|r| !r.is_empty()) else {
        return Ok(out);
    };
    let v: serde_json::Value =
        serde_json::from_str(raw).map_err(|e| format!("invalid filter: {e}"))?;
    let obj = v.as_object().ok_or("invalid filter: not an object")?;
    for (k, vals) in obj {
        let list: Vec<String> = match vals {
            serde_json::Value::Array(a) => a
                .iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect(),
            serde_json::Value::Object(m) => m
                .iter()
                .filter(|(_, on)| on.as_bool().unwrap_or(false))
                .map(|(k, _)| k.clone())
                .collect(),
            _ => return Err(format!("invalid filter '{k}'")),
        };
        out.insert(k.clone(), list);
    }
    Ok(out)
}

/// Refuse filter keys a route does not know, with dockerd's wording.
/// A boolean filter value as dockerd takes it (`true`/`1`, `false`/`0`).
pub fn filter_bool(key: &str, x: &str) -> Result<bool, String> {
    match x {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(format!("invalid filter '{key}={x}'")),
    }
}

pub fn check_filter_keys(
    f: &BTreeMap<String, Vec<String>>,
    allowed: &[&str],
) -> Result<(), String> {
    for k in f.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(format!("invalid filter '{k}'"));
        }
    }
    Ok(())
}

/// `label=key` or `label=key=value` against a label map.
pub fn label_matches(labels: &BTreeMap<String, String>, want: &str) -> bool {
    match want.split_once('=') {
        Some((k, v)) => labels.get(k).map(|x| x == v).unwrap_or(false),
        None => labels.contains_key(want),
    }
}

/// Docker's `units.HumanDuration`.
pub fn human_duration(secs: i64) -> String {
    let s = secs.max(0);
    if s < 1 {
        return "Less than a second".into();
    }
    if s == 1 {
        return "1 second".into();
    }
    if s < 60 {
        return format!("{s} seconds");
    }
    let m = s / 60;
    if m == 1 {
        return "About a minute".into();
    }
    if m < 60 {
        return format!("{m} minutes");
    }
    let h = (s as f64 / 3600.0).round() as i64;
    if h == 1 {
        return "About an hour".into();
    }
    if h < 48 {
        return format!("{h} hours");
    }
    if h < 24 * 7 * 2 {
        return format!("{} days", h / 24);
    }
    if h < 24 * 30 * 2 {
        return format!("{} weeks", h / 24 / 7);
    }
    if h < 24 * 365 * 2 {
        return format!("{} months", h / 24 / 30);
    }
    format!("{} years", h / 24 / 365)
}

/// Parse an RFC 3339 time to Unix seconds (0 when absent or malformed).
pub fn unix_of(t: Option<&str>) -> i64 {
    t.and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|d| d.timestamp())
        .unwrap_or(0)
}

/// Docker's time arguments (`since`, `until`): Unix seconds with optional fraction, RFC 3339,
/// or a duration before now (`10m`, `1h30m`, `5s`). Nanoseconds since the epoch.
pub fn parse_time_arg(s: &str) -> Result<i64, String> {
    if s.is_empty() {
        return Err("empty time".into());
    }
    if let Ok(f) = s.parse::<f64>() {
        let (secs, frac) = match s.split_once('.') {
            Some((a, b)) => {
                let b9 = format!("{b:0<9}");
                (
                    a.parse::<i64>().unwrap_or(f as i64),
                    b9[..9].parse::<i64>().unwrap_or(0),
                )
            }
            None => (f as i64, 0),
        };
        return Ok(secs * 1_000_000_000 + frac);
    }
    if let Ok(d) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(d.timestamp_nanos_opt().unwrap_or(0));
    }
    // A Go duration before now.
    let mut total = 0f64;
    let mut num = String::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i] as char;
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            i += 1;
            continue;
        }
        let mut unit = String::new();
        while i < b.len() && !(b[i] as char).is_ascii_digit() && b[i] != b'.' {
            unit.push(b[i] as char);
            i += 1;
        }
        let n: f64 = num.parse().map_err(|_| format!("invalid time {s:?}"))?;
        num.clear();
        total += n * match unit.as_str() {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(format!("invalid time {s:?}")),
        };
    }
    if !num.is_empty() {
        return Err(format!("invalid time {s:?}: missing unit in duration"));
    }
    let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
    Ok(now - (total * 1e9) as i64)
}

/// A query flag as Docker reads it: `1`, `true`, `True` are on.
pub fn flag(v: &Option<String>) -> bool {
    matches!(
        v.as_deref(),
        Some("1") | Some("true") | Some("True") | Some("yes")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_both_shapes() {
        let f = parse_filters(Some(r#"{"status":["exited"],"label":{"a=b":true}}"#)).unwrap();
        assert_eq!(f["status"], vec!["exited"]);
        assert_eq!(f["label"], vec!["a=b"]);
        assert!(parse_filters(Some("nope")).is_err());
        assert!(check_filter_keys(&f, &["status"]).is_err());
    }

    #[test]
    fn durations_read_like_docker() {
        assert_eq!(human_duration(0), "Less than a second");
        assert_eq!(human_duration(5), "5 seconds");
        assert_eq!(human_duration(70), "About a minute");
        assert_eq!(human_duration(600), "10 minutes");
        assert_eq!(human_duration(3700), "About an hour");
        assert_eq!(human_duration(3 * 86400), "3 days");
    }

    #[test]
    fn time_args() {
        assert_eq!(parse_time_arg("10").unwrap(), 10_000_000_000);
        assert_eq!(parse_time_arg("10.5").unwrap(), 10_500_000_000);
        assert_eq!(
            parse_time_arg("2026-01-01T00:00:00Z").unwrap(),
            1_767_225_600_000_000_000
        );
        let now = chrono::Utc::now().timestamp_nanos_opt().unwrap();
        let t = parse_time_arg("1m30s").unwrap();
        assert!((now - t - 90_000_000_000).abs() < 5_000_000_000);
        assert!(parse_time_arg("5x").is_err());
    }

    #[test]
    fn labels() {
        let mut l = BTreeMap::new();
        l.insert("a".to_string(), "1".to_string());
        assert!(label_matches(&l, "a"));
        assert!(label_matches(&l, "a=1"));
        assert!(!label_matches(&l, "a=2"));
        assert!(!label_matches(&l, "b"));
    }
}
