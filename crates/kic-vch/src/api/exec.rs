//! `docker exec`: exec instances are created, then started on a hijacked connection (or
//! detached), then inspected for their exit code. They live in the endpoint's memory, as in
//! dockerd; the processes themselves live in the container VM.

use super::containers::{tokio_stream_of, ResizeQuery};
use super::stream::{self, DetachScanner, Input};
use super::{ApiError, ApiResult, AppState};
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use kic_proto::ProcessSpec;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::io::AsyncWriteExt;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/containers/{id}/exec", post(create))
        .route("/exec/{id}/start", post(start))
        .route("/exec/{id}/json", get(inspect))
        .route("/exec/{id}/resize", post(resize))
}

/// One exec instance.
pub struct Exec {
    pub id: String,
    pub container: String,
    pub spec: ProcessSpec,
    pub attach_stdin: bool,
    pub attach_stdout: bool,
    pub attach_stderr: bool,
    pub detach_keys: Vec<u8>,
    pub state: Mutex<ExecState>,
}

#[derive(Default, Clone)]
pub struct ExecState {
    pub started: bool,
    pub running: bool,
    pub exit_code: Option<i32>,
    /// The port layer's id of the process, for resize.
    pub process: Option<String>,
}

pub type Execs = Arc<Mutex<BTreeMap<String, Arc<Exec>>>>;

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct CreateBody {
    attach_stdin: bool,
    attach_stdout: bool,
    attach_stderr: bool,
    detach_keys: String,
    tty: bool,
    env: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    user: String,
    working_dir: String,
    console_size: Option<Vec<u16>>,
}

async fn create(
    State(s): State<AppState>,
    Path(cid): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let b: CreateBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid exec configuration: {e}")))?;
    let v = s.pl.inspect(&cid)?;
    if !v.state.running() {
        return Err(ApiError::conflict(format!(
            "container {} is not running",
            v.config.id
        )));
    }
    let args = b.cmd.unwrap_or_default();
    if args.is_empty() {
        return Err(ApiError::bad_request("No exec command specified"));
    }
    let keys = match b.detach_keys.as_str() {
        "" => vec![16, 17],
        k => stream::parse_detach_keys(k).map_err(ApiError::bad_request)?,
    };
    let main = &v.config.spec.main;
    let mut env = main.env.clone();
    for kv in b.env.unwrap_or_default() {
        let key = kv.split('=').next().unwrap_or(&kv).to_string();
        env.retain(|e| e.split('=').next() != Some(key.as_str()));
        env.push(kv);
    }
    let spec = ProcessSpec {
        args,
        env,
        cwd: if b.working_dir.is_empty() {
            main.cwd.clone()
        } else {
            b.working_dir
        },
        user: if b.user.is_empty() {
            main.user.clone()
        } else {
            b.user
        },
        tty: b.tty,
        stdin: b.attach_stdin,
        size: b
            .console_size
            .filter(|c| c.len() == 2 && c[0] > 0 && c[1] > 0)
            .map(|c| (c[0], c[1])),
    };
    let id = {
        use rand::RngCore;
        let mut r = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut r);
        hex::encode(r)
    };
    let e = Arc::new(Exec {
        id: id.clone(),
        container: v.config.id.clone(),
        spec,
        attach_stdin: b.attach_stdin,
        attach_stdout: b.attach_stdout,
        attach_stderr: b.attach_stderr,
        detach_keys: keys,
        state: Mutex::new(ExecState::default()),
    });
    s.execs
        .lock()
        .expect("execs lock")
        .insert(id.clone(), e.clone());
    let mut a = BTreeMap::new();
    a.insert("execID".into(), id.clone());
    a.insert("exec".into(), e.spec.args.join(" "));
    s.events.container(&v, "exec_create", a);
    Ok((StatusCode::CREATED, Json(json!({"Id": id}))).into_response())
}

fn find(s: &AppState, id: &str) -> ApiResult<Arc<Exec>> {
    s.execs
        .lock()
        .expect("execs lock")
        .get(id)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("No such exec instance: {id}")))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct StartBody {
    detach: bool,
    tty: bool,
    console_size: Option<Vec<u16>>,
}

async fn start(
    State(s): State<AppState>,
    Path(id): Path<String>,
    mut req: Request,
) -> ApiResult<Response> {
    let e = find(&s, &id)?;
    let body = axum::body::to_bytes(std::mem::take(req.body_mut()), 1 << 20)
        .await
        .map_err(|e| ApiError::bad_request(format!("cannot read the body: {e}")))?;
    let b: StartBody = if body.is_empty() {
        StartBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid exec start body: {e}")))?
    };
    {
        let mut st = e.state.lock().expect("exec lock");
        if st.started {
            return Err(ApiError::conflict(format!(
                "Error: Exec command {id} has already run"
            )));
        }
        st.started = true;
        st.running = true;
    }
    let v = s.pl.inspect(&e.container)?;
    let mut spec = e.spec.clone();
    spec.tty = spec.tty || b.tty;
    if let Some(c) = b
        .console_size
        .filter(|c| c.len() == 2 && c[0] > 0 && c[1] > 0)
    {
        spec.size = Some((c[0], c[1]));
    }
    let tty = spec.tty;
    let mut a = BTreeMap::new();
    a.insert("execID".into(), id.clone());
    a.insert("exec".into(), spec.args.join(" "));
    let proc = match s.pl.exec(&e.container, spec).await {
        Ok(p) => p,
        Err(err) => {
            let code = err.exit_code.unwrap_or(126);
            {
                let mut st = e.state.lock().expect("exec lock");
                st.running = false;
                st.exit_code = Some(code);
            }
            if b.detach || !stream::wants_upgrade(&req) {
                return Err(ApiError::from(err));
            }
            // dockerd reports a start failure inside the hijacked stream.
            let msg = format!("OCI runtime exec failed: exec failed: unable to start container process: {}: unknown\r\n", err.message);
            return Ok(stream::hijack(&mut req, tty, move |conn| async move {
                let (_, mut wr) = tokio::io::split(conn);
                let _ = stream::write_out(&mut wr, tty, 1, msg.as_bytes()).await;
                let _ = wr.shutdown().await;
            }));
        }
    };
    e.state.lock().expect("exec lock").process = Some(proc.id.clone());
    s.events.container(&v, "exec_start", a.clone());
    let finish = {
        let (s, v, e) = (s.clone(), v.clone(), e.clone());
        move |code: i32| {
            {
                let mut st = e.state.lock().expect("exec lock");
                st.running = false;
                st.exit_code = Some(code);
            }
            let mut a = a;
            a.insert("exitCode".into(), code.to_string());
            s.events.container(&v, "exec_die", a);
        }
    };
    if b.detach {
        tokio::spawn(async move {
            let (_, _, code) = proc.collect().await;
            finish(code);
        });
        return Ok(StatusCode::OK.into_response());
    }
    if !stream::wants_upgrade(&req) {
        // Output in the body, no input.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
        let mut proc = proc;
        tokio::spawn(async move {
            while let Some((fd, d)) = proc.output.recv().await {
                let _ = tx.send(Ok(Bytes::from(stream::encode(tty, fd, &d)))).await;
            }
            finish(proc.wait().await);
        });
        return Ok(Response::builder()
            .header(
                axum::http::header::CONTENT_TYPE,
                if tty {
                    stream::RAW
                } else {
                    stream::MULTIPLEXED
                },
            )
            .body(axum::body::Body::from_stream(tokio_stream_of(rx)))
            .expect("valid response"));
    }
    let (want_out, want_err) = (e.attach_stdout, e.attach_stderr);
    let keys = e.detach_keys.clone();
    Ok(stream::hijack(&mut req, tty, move |conn| async move {
        let (mut rd, mut wr) = tokio::io::split(conn);
        let mut proc = proc;
        let stdin = proc.stdin.take();
        let (detach_tx, mut detach_rx) = tokio::sync::oneshot::channel::<()>();
        let mut detach_live = stdin.is_some();
        let input = stdin.map(|mut w| {
            tokio::spawn(async move {
                let mut scanner = DetachScanner::new(keys);
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    match scanner.next(&mut rd, &mut buf).await {
                        Input::Data(d) => {
                            if w.write(&d).await.is_err() {
                                return;
                            }
                        }
                        Input::Detached(d) => {
                            if !d.is_empty() {
                                let _ = w.write(&d).await;
                            }
                            let _ = detach_tx.send(());
                            return;
                        }
                        Input::End => {
                            let _ = w.close().await;
                            return;
                        }
                    }
                }
            })
        });
        let mut detached = false;
        loop {
            tokio::select! {
                o = proc.output.recv() => match o {
                    Some((fd, d)) => {
                        let ok = if fd == 2 { want_err } else { want_out };
                        if ok && stream::write_out(&mut wr, tty, fd, &d).await.is_err() {
                            break;
                        }
                    }
                    None => break,
                },
                r = &mut detach_rx, if detach_live => {
                    if r.is_ok() {
                        detached = true;
                        break;
                    }
                    detach_live = false;
                }
            }
        }
        if let Some(h) = input {
            h.abort();
        }
        if detached {
            let _ = wr.shutdown().await;
            tokio::spawn(async move {
                let (_, _, code) = proc.collect().await;
                finish(code);
            });
            return;
        }
        // The exit code is known before the connection closes: the CLI inspects it next.
        finish(proc.wait().await);
        let _ = wr.shutdown().await;
    }))
}

async fn inspect(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let e = find(&s, &id)?;
    let st = e.state.lock().expect("exec lock").clone();
    let (ep, args) = e
        .spec
        .args
        .split_first()
        .map(|(a, b)| (a.clone(), b.to_vec()))
        .unwrap_or_default();
    Ok(Json(json!({
        "ID": e.id,
        "Running": st.running,
        "ExitCode": st.exit_code,
        "ProcessConfig": {
            "tty": e.spec.tty,
            "entrypoint": ep,
            "arguments": args,
            "privileged": false,
            "user": e.spec.user,
        },
        "OpenStdin": e.attach_stdin,
        "OpenStderr": e.attach_stderr,
        "OpenStdout": e.attach_stdout,
        "CanRemove": !st.running && st.started,
        "ContainerID": e.container,
        "DetachKeys": "",
        "Pid": 0,
    })))
}

async fn resize(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<ResizeQuery>,
) -> ApiResult<Response> {
    let e = find(&s, &id)?;
    let process = e.state.lock().expect("exec lock").process.clone();
    let Some(p) = process else {
        return Err(ApiError::conflict(format!("exec {id} is not running")));
    };
    s.pl.resize(&e.container, Some(&p), q.h.unwrap_or(24), q.w.unwrap_or(80))
        .await?;
    Ok(StatusCode::OK.into_response())
}
