//! Harbor-compatible REST API under `/api/v2.0`, for what this registry has.
//!
//! Conventions kept from Harbor: `page`/`page_size` with `X-Total-Count` and `Link` headers,
//! `q=` filters (`k=v`, `k=~fuzzy`, `k=[min~max]`, `k={a b c}`), `sort=[-]field`, `201 Created`
//! with `Location`, errors as `{"errors":[{"code","message"}]}`, and repository names with
//! slashes double-URL-encoded in paths (`a%252Fb`).

mod artifacts;
mod projects;
mod robots;
mod system;
mod users;

use std::collections::HashMap;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use percent_encoding::percent_decode_str;
use serde_json::Value;

use crate::auth::Caller;
use crate::errors::ApiError;
use crate::state::St;

pub type ApiResult = Result<Response, ApiError>;

/// All `/api/v2.0` routes.
pub fn router() -> Router<St> {
    Router::new()
        .route("/ping", get(system::ping))
        .route("/health", get(system::health))
        .route("/systeminfo", get(system::systeminfo))
        .route("/statistics", get(system::statistics))
        .route(
            "/system/gc/schedule",
            post(system::run_gc).get(system::gc_schedule),
        )
        .route("/system/gc", get(system::gc_history))
        .route("/audit-logs", get(system::audit_logs))
        .route("/users", get(users::list).post(users::create))
        .route("/users/current", get(users::current))
        .route("/users/search", get(users::search))
        .route(
            "/users/{id}",
            get(users::get_one).put(users::update).delete(users::delete),
        )
        .route("/users/{id}/password", put(users::password))
        .route("/users/{id}/sysadmin", put(users::sysadmin))
        .route(
            "/projects",
            get(projects::list)
                .post(projects::create)
                .head(projects::head),
        )
        .route(
            "/projects/{p}",
            get(projects::get_one)
                .put(projects::update)
                .delete(projects::delete),
        )
        .route("/projects/{p}/summary", get(projects::summary))
        .route(
            "/projects/{p}/members",
            get(projects::members).post(projects::add_member),
        )
        .route(
            "/projects/{p}/members/{m}",
            get(projects::member)
                .put(projects::update_member)
                .delete(projects::delete_member),
        )
        .route("/projects/{p}/logs", get(projects::logs))
        .route("/projects/{p}/repositories", get(artifacts::repositories))
        .route(
            "/projects/{p}/repositories/{r}",
            get(artifacts::repository)
                .put(artifacts::update_repository)
                .delete(artifacts::delete_repository),
        )
        .route(
            "/projects/{p}/repositories/{r}/artifacts",
            get(artifacts::list).post(artifacts::copy),
        )
        .route(
            "/projects/{p}/repositories/{r}/artifacts/{a}",
            get(artifacts::get_one).delete(artifacts::delete),
        )
        .route(
            "/projects/{p}/repositories/{r}/artifacts/{a}/tags",
            get(artifacts::tags).post(artifacts::add_tag),
        )
        .route(
            "/projects/{p}/repositories/{r}/artifacts/{a}/tags/{t}",
            axum::routing::delete(artifacts::delete_tag),
        )
        .route("/repositories", get(artifacts::all_repositories))
        .route("/robots", get(robots::list).post(robots::create))
        .route(
            "/robots/{id}",
            get(robots::get_one)
                .put(robots::update)
                .delete(robots::delete)
                .patch(robots::refresh),
        )
        .fallback(|| async { ApiError::not_found("no such API endpoint") })
}

/// Splits a raw query string into decoded pairs (repeated keys kept).
pub fn query_pairs(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let dec = |s: &str| {
                percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .to_string()
            };
            (dec(k), dec(v))
        })
        .collect()
}

/// Query parameters as a map (last value wins).
pub fn query_map(raw: Option<&str>) -> HashMap<String, String> {
    query_pairs(raw.unwrap_or("")).into_iter().collect()
}

/// Harbor times: RFC 3339 with milliseconds, UTC.
pub fn time(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Decodes the second URL-encoding layer of a Harbor repository name path parameter.
pub fn repo_param(r: &str) -> String {
    percent_decode_str(r).decode_utf8_lossy().to_string()
}

/// Fails with 401 for anonymous callers.
pub fn require_login(c: &Caller) -> Result<(), ApiError> {
    if c.anonymous() {
        Err(ApiError::unauthorized())
    } else {
        Ok(())
    }
}

pub fn require_sysadmin(c: &Caller) -> Result<(), ApiError> {
    require_login(c)?;
    if c.principal.is_sysadmin() {
        Ok(())
    } else {
        Err(ApiError::forbidden())
    }
}

/// One term of a `q=` query.
enum Term {
    Exact(String),
    Fuzzy(String),
    Range(Option<String>, Option<String>),
    AnyOf(Vec<String>),
}

fn parse_q(q: &str) -> Vec<(String, Term)> {
    let mut out = vec![];
    for part in split_q(q) {
        let Some((k, v)) = part.split_once('=') else {
            continue;
        };
        let k = k.trim().to_string();
        let v = v.trim();
        let term = if let Some(f) = v.strip_prefix('~') {
            Term::Fuzzy(f.to_string())
        } else if let Some(r) = v.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            let (a, b) = r.split_once('~').unwrap_or((r, ""));
            let o =
                |s: &str| (!s.trim().is_empty() && s.trim() != "*").then(|| s.trim().to_string());
            Term::Range(o(a), o(b))
        } else if let Some(l) = v
            .strip_prefix('{')
            .and_then(|r| r.strip_suffix('}'))
            .or_else(|| v.strip_prefix('(').and_then(|r| r.strip_suffix(')')))
        {
            Term::AnyOf(l.split_whitespace().map(String::from).collect())
        } else {
            Term::Exact(v.to_string())
        };
        out.push((k, term));
    }
    out
}

/// Splits on commas that are not inside brackets.
fn split_q(q: &str) -> Vec<String> {
    let (mut out, mut cur, mut depth) = (vec![], String::new(), 0);
    for ch in q.chars() {
        match ch {
            '[' | '{' | '(' => depth += 1,
            ']' | '}' | ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(ch);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn field<'a>(item: &'a Value, key: &str) -> Option<&'a Value> {
    let snake: String = key
        .chars()
        .enumerate()
        .flat_map(|(i, c)| {
            if c.is_ascii_uppercase() && i > 0 {
                vec!['_', c.to_ascii_lowercase()]
            } else {
                vec![c.to_ascii_lowercase()]
            }
        })
        .collect();
    item.get(key)
        .or_else(|| item.get(&snake))
        .or_else(|| item.get(key.to_ascii_lowercase()))
        .or_else(|| match key {
            "ProjectID" | "project_id" => item.get("permissions").and(item.get("project_id")),
            "public" => item.get("metadata").and_then(|m| m.get("public")),
            "tags" => item.get("tags"),
            _ => None,
        })
}

fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Comparable form: epoch seconds for times, numbers as numbers, else text.
fn sortable(s: &str) -> (f64, String) {
    if let Ok(n) = s.parse::<f64>() {
        return (n, String::new());
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return (t.timestamp() as f64, String::new());
    }
    if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S") {
        return (t.and_utc().timestamp() as f64, String::new());
    }
    (f64::NAN, s.to_string())
}

fn cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let (x, y) = (sortable(a), sortable(b));
    if !x.0.is_nan() && !y.0.is_nan() {
        x.0.partial_cmp(&y.0).unwrap_or(std::cmp::Ordering::Equal)
    } else {
        a.cmp(b)
    }
}

fn matches(item: &Value, key: &str, term: &Term) -> bool {
    let Some(v) = field(item, key) else {
        return false;
    };
    let values: Vec<String> = match v {
        Value::Array(a) => a
            .iter()
            .map(|x| x.get("name").map(as_text).unwrap_or_else(|| as_text(x)))
            .collect(),
        other => vec![as_text(other)],
    };
    values.iter().any(|s| match term {
        Term::Exact(e) => s.eq_ignore_ascii_case(e),
        Term::Fuzzy(f) => s.to_lowercase().contains(&f.to_lowercase()),
        Term::Range(a, b) => {
            a.as_ref()
                .is_none_or(|a| cmp(s, a) != std::cmp::Ordering::Less)
                && b.as_ref()
                    .is_none_or(|b| cmp(s, b) != std::cmp::Ordering::Greater)
        }
        Term::AnyOf(l) => l.iter().any(|e| s.eq_ignore_ascii_case(e)),
    })
}

/// Filters, sorts and pages `items` per Harbor's list conventions.
pub fn paged(mut items: Vec<Value>, q: &HashMap<String, String>, path: &str) -> ApiResult {
    if let Some(query) = q.get("q") {
        for (k, t) in parse_q(query) {
            items.retain(|i| matches(i, &k, &t));
        }
    }
    if let Some(s) = q.get("sort") {
        for key in s.split(',').rev() {
            let (desc, key) = key
                .strip_prefix('-')
                .map(|k| (true, k))
                .unwrap_or((false, key));
            items.sort_by(|a, b| {
                let o = cmp(
                    &field(a, key).map(as_text).unwrap_or_default(),
                    &field(b, key).map(as_text).unwrap_or_default(),
                );
                if desc {
                    o.reverse()
                } else {
                    o
                }
            });
        }
    }
    let (page, size) = page_params(q)?;
    let total = items.len();
    let size = size.unwrap_or(total.max(1));
    let page_items: Vec<Value> = items
        .into_iter()
        .skip((page - 1) * size)
        .take(size)
        .collect();
    page_response(page_items, total, page, size, q, path)
}

/// `page` (from 1) and `page_size` (at most 100; `None` for 0, meaning all).
pub fn page_params(q: &HashMap<String, String>) -> Result<(usize, Option<usize>), ApiError> {
    let page: usize = q
        .get("page")
        .and_then(|p| p.parse().ok())
        .filter(|p| *p >= 1)
        .unwrap_or(1);
    let size: usize = q
        .get("page_size")
        .and_then(|p| p.parse().ok())
        .unwrap_or(10);
    if size > 100 {
        return Err(ApiError::bad("page_size must be at most 100"));
    }
    Ok((page, (size > 0).then_some(size)))
}

/// A page of results with `X-Total-Count` and `Link` (`prev`/`next`) headers.
pub fn page_response(
    page_items: Vec<Value>,
    total: usize,
    page: usize,
    size: usize,
    q: &HashMap<String, String>,
    path: &str,
) -> ApiResult {
    let mut links = vec![];
    let other: String = q
        .iter()
        .filter(|(k, _)| k.as_str() != "page" && k.as_str() != "page_size")
        .map(|(k, v)| {
            format!(
                "&{k}={}",
                percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC)
            )
        })
        .collect();
    if page > 1 {
        links.push(format!(
            "<{path}?page={}&page_size={size}{other}>; rel=\"prev\"",
            page - 1
        ));
    }
    if page * size < total {
        links.push(format!(
            "<{path}?page={}&page_size={size}{other}>; rel=\"next\"",
            page + 1
        ));
    }
    let mut resp = axum::Json(page_items).into_response();
    resp.headers_mut().insert("X-Total-Count", total.into());
    if !links.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&links.join(" , ")) {
            resp.headers_mut().insert(header::LINK, v);
        }
    }
    Ok(resp)
}

/// Translates a `q=` query into database conditions over `columns` (query key → column; the
/// `time` column takes ranges of `YYYY-MM-DD HH:MM:SS` or RFC 3339 times). Unknown keys are a
/// bad request.
pub fn q_conditions(
    q: Option<&String>,
    columns: &[(&str, &'static str)],
    time_column: &str,
) -> Result<Vec<(&'static str, crate::db::Cond)>, ApiError> {
    use crate::db::Cond;
    let mut out = vec![];
    let Some(q) = q else { return Ok(out) };
    for (k, t) in parse_q(q) {
        let col = columns
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(&k))
            .map(|(_, c)| *c)
            .ok_or_else(|| ApiError::bad(format!("unsupported query key {k:?}")))?;
        let secs = |s: &str| {
            let v = sortable(s.trim_matches(['"', '\'']));
            (!v.0.is_nan())
                .then_some(v.0 as i64)
                .ok_or_else(|| ApiError::bad(format!("invalid time {s:?}")))
        };
        let cond = match t {
            Term::Exact(v) if col == time_column => Cond::Between(Some(secs(&v)?), Some(secs(&v)?)),
            Term::Exact(v) => Cond::Eq(v),
            Term::Fuzzy(v) => Cond::Contains(v),
            Term::AnyOf(vs) => Cond::AnyOf(vs),
            Term::Range(a, b) if col == time_column => Cond::Between(
                a.map(|a| secs(&a)).transpose()?,
                b.map(|b| secs(&b)).transpose()?,
            ),
            Term::Range(..) => return Err(ApiError::bad(format!("{k} does not take a range"))),
        };
        out.push((col, cond));
    }
    Ok(out)
}

/// `201 Created` with `Location`.
pub fn created(location: String) -> Response {
    let mut r = StatusCode::CREATED.into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

pub fn ok() -> Response {
    StatusCode::OK.into_response()
}

/// Reads a JSON body leniently (unknown fields ignored, as Harbor does).
pub fn body<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(b).map_err(|e| ApiError::bad(format!("invalid request body: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn q_filters() {
        let items = vec![
            json!({"name": "alpha", "public": true, "op_time": "2024-01-02T00:00:00.000Z"}),
            json!({"name": "beta", "public": false, "op_time": "2024-03-01T00:00:00.000Z"}),
        ];
        let run = |q: &str| {
            let mut m = HashMap::new();
            m.insert("q".to_string(), q.to_string());
            let mut it = items.clone();
            for (k, t) in parse_q(q) {
                it.retain(|i| matches(i, &k, &t));
            }
            let _ = m;
            it.into_iter()
                .map(|i| i["name"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(run("name=~lph"), vec!["alpha"]);
        assert_eq!(run("public=false"), vec!["beta"]);
        assert_eq!(run("name={alpha beta}"), vec!["alpha", "beta"]);
        assert_eq!(
            run("op_time=[2024-02-01 00:00:00~2024-04-01 00:00:00]"),
            vec!["beta"]
        );
        assert_eq!(run("name=~a,public=true"), vec!["alpha"]);
    }

    #[test]
    fn query_pairs_decode() {
        assert_eq!(
            query_pairs("scope=repository%3Aa%2Fb%3Apull&scope=x"),
            vec![
                ("scope".to_string(), "repository:a/b:pull".to_string()),
                ("scope".to_string(), "x".to_string())
            ]
        );
    }
}
