//! Black-box tests that boot real container VMs under libvirt (TCG here, KVM where it works).
//!
//! They need what `make test` prepares: the static tether (`KIC_TETHER`), the test images
//! (`KIC_TEST_IMAGES`, OCI layouts built by `kic-mkimage`), libvirtd, and Debian's
//! `docker-registry` and `skopeo`. So they are `#[ignore]`d for a bare `cargo test`, and
//! `make test` runs them with `--include-ignored` inside a network namespace it creates.

use kic_portlayer::{Config, CreateRequest, MountRequest, PortLayer, Status, VolumeCreate};
use kic_proto::ProcessSpec;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

struct Setup {
    datastore: PathBuf,
    busybox: String,
    debian: Option<String>,
}

static SETUP: OnceLock<Setup> = OnceLock::new();

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn env_path(name: &str) -> PathBuf {
    PathBuf::from(
        std::env::var(name)
            .unwrap_or_else(|_| panic!("{name} is not set: run the VM tests through `make test`")),
    )
}

fn config(datastore: &Path, vch: &str) -> Config {
    Config::new(datastore, vch, env_path("KIC_TETHER"))
}

/// Push the test images into a real registry and pull them through the image store once.
fn setup() -> &'static Setup {
    SETUP.get_or_init(|| {
        let images = env_path("KIC_TEST_IMAGES");
        let datastore = PathBuf::from(format!("/var/tmp/kic-vmtest-{}", std::process::id()));
        std::fs::create_dir_all(&datastore).unwrap();
        let port = free_port();
        let regdir = datastore.join("registry");
        std::fs::create_dir_all(&regdir).unwrap();
        let cfg = regdir.join("config.yml");
        std::fs::write(
            &cfg,
            format!(
                "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\nlog:\n  level: error\n",
                regdir.join("data").display()
            ),
        )
        .unwrap();
        let mut registry = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (Debian package docker-registry)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "registry did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut pushed = Vec::new();
        for name in ["busybox", "debian"] {
            let layout = images.join(name);
            if !layout.join("index.json").exists() {
                assert_ne!(name, "busybox", "no busybox image in {}", images.display());
                continue;
            }
            let dest = format!("127.0.0.1:{port}/kic/{name}:latest");
            let st = Command::new("skopeo")
                .args(["copy", "--quiet", "--dest-tls-verify=false"])
                .arg(format!("oci:{}:latest", layout.display()))
                .arg(format!("docker://{dest}"))
                .status()
                .expect("skopeo");
            assert!(st.success(), "skopeo copy {name}");
            pushed.push(dest);
        }
        // Tests run inside their own runtimes: pull on a thread of its own.
        let (ds, refs) = (datastore.clone(), pushed.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async {
                let pl = PortLayer::open(config(&ds, "vmtest-setup")).await.expect("port layer");
                for r in &refs {
                    let rec = pl.images().pull(r, &Default::default(), &|_| {}).await.expect("pull");
                    assert!(rec.disk.exists());
                }
            });
        })
        .join()
        .expect("pulling the test images");
        let _ = registry.kill();
        let _ = registry.wait();
        Setup {
            datastore,
            busybox: pushed[0].clone(),
            debian: pushed.get(1).cloned(),
        }
    })
}

async fn port_layer(vch: &str) -> PortLayer {
    let s = setup();
    PortLayer::open(config(&s.datastore, vch))
        .await
        .expect("port layer")
}

/// A VM test: ignored by a bare `cargo test`, run by `make test`, bounded in time.
macro_rules! vm_tests {
    ($($name:ident => $body:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread")]
        #[ignore = "boots VMs: run through make test"]
        async fn $name() {
            bounded($body()).await
        }
    )*};
}

vm_tests! {
    stdout_and_stderr_arrive_separately_and_in_full => stdout_and_stderr_arrive_separately_and_in_full_body,
    env_workdir_and_user_are_honoured => env_workdir_and_user_are_honoured_body,
    exec_tty_kill_and_no_image_copy => exec_tty_kill_and_no_image_copy_body,
    main_process_with_a_terminal_and_stdin => main_process_with_a_terminal_and_stdin_body,
    debian_image_runs => debian_image_runs_body,
    host_process_killed_mid_run_loses_nothing => host_process_killed_mid_run_loses_nothing_body,
    volumes_outlive_containers_and_copy_up_image_content => volumes_body,
}

/// No test may hang the suite: each gets four minutes.
async fn bounded(f: impl std::future::Future<Output = ()>) {
    tokio::time::timeout(Duration::from_secs(240), f)
        .await
        .expect("the test did not finish within 240 s")
}

fn sh(script: &str) -> Option<Vec<String>> {
    Some(vec!["sh".into(), "-c".into(), script.into()])
}

/// Collect the whole log of a stopped container as (stdout, stderr).
async fn output(pl: &PortLayer, id: &str) -> (Vec<u8>, Vec<u8>) {
    let mut rx = pl.logs(id, false, false).unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    while let Some(r) = rx.recv().await {
        if r.stream == 2 {
            err.extend(r.data)
        } else {
            out.extend(r.data)
        }
    }
    (out, err)
}

async fn run(pl: &PortLayer, req: CreateRequest) -> (Vec<u8>, Vec<u8>, i32) {
    let v = pl.create(req).await.expect("create");
    let id = v.config.id;
    pl.start(&id).await.expect("start");
    let code = pl.wait(&id).await.unwrap();
    let (o, e) = output(pl, &id).await;
    pl.remove(&id, false).await.expect("remove");
    (o, e, code)
}

async fn stdout_and_stderr_arrive_separately_and_in_full_body() {
    let pl = port_layer("vmtest-output").await;
    let req = CreateRequest {
        image: setup().busybox.clone(),
        cmd: sh("head -c 1048576 /dev/zero | tr '\\0' a; echo to-stderr >&2; echo done; exit 3"),
        ..Default::default()
    };
    let (out, err, code) = run(&pl, req).await;
    assert_eq!(code, 3);
    assert_eq!(out.len(), 1048576 + 5, "all of stdout");
    assert!(out[..1048576].iter().all(|&b| b == b'a'));
    assert!(out.ends_with(b"done\n"));
    assert_eq!(err, b"to-stderr\n");
}

async fn env_workdir_and_user_are_honoured_body() {
    let pl = port_layer("vmtest-identity").await;
    let req = CreateRequest {
        image: setup().busybox.clone(),
        cmd: sh("echo $FOO; pwd; id -u; id -g; echo $HOME; echo $HOSTNAME; hostname"),
        env: vec!["FOO=bar baz".into()],
        workdir: Some("/tmp/work".into()),
        user: Some("1000:1000".into()),
        hostname: Some("box1".into()),
        ..Default::default()
    };
    let (out, err, code) = run(&pl, req).await;
    assert_eq!(String::from_utf8_lossy(&err), "");
    assert_eq!(code, 0);
    assert_eq!(
        String::from_utf8_lossy(&out),
        "bar baz\n/tmp/work\n1000\n1000\n/home/user\nbox1\nbox1\n"
    );
    // By name, and an unknown name fails the start as Docker says.
    let req = CreateRequest {
        image: setup().busybox.clone(),
        cmd: sh("id -un; echo $HOME"),
        user: Some("user".into()),
        ..Default::default()
    };
    let (out, _, code) = run(&pl, req).await;
    assert_eq!(
        (String::from_utf8_lossy(&out).as_ref(), code),
        ("user\n/home/user\n", 0)
    );
    let v = pl
        .create(CreateRequest {
            image: setup().busybox.clone(),
            cmd: sh("true"),
            user: Some("nobody-here".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let e = pl.start(&v.config.id).await.unwrap_err();
    assert!(e.message.contains("unable to find user nobody-here"), "{e}");
    pl.remove(&v.config.id, true).await.unwrap();
}

async fn exec_tty_kill_and_no_image_copy_body() {
    let s = setup();
    let pl = port_layer("vmtest-exec").await;
    let v = pl
        .create(CreateRequest {
            image: s.busybox.clone(),
            cmd: sh("echo started; exec sleep 600"),
            ..Default::default()
        })
        .await
        .unwrap();
    let id = v.config.id.clone();
    pl.start(&id).await.unwrap();
    assert_eq!(pl.inspect(&id).unwrap().state.status, Status::Running);

    let exec = |args: &[&str], tty: bool| ProcessSpec {
        args: args.iter().map(|s| s.to_string()).collect(),
        tty,
        env: vec!["PATH=/bin:/usr/bin".into()],
        ..Default::default()
    };
    for code in [0, 1, 3] {
        let p = pl
            .exec(
                &id,
                exec(
                    &[
                        "sh",
                        "-c",
                        &format!("echo out{code}; echo err{code} >&2; exit {code}"),
                    ],
                    false,
                ),
            )
            .await
            .unwrap();
        let (o, e, c) = p.collect().await;
        assert_eq!(
            (o, e, c),
            (
                format!("out{code}\n").into_bytes(),
                format!("err{code}\n").into_bytes(),
                code
            )
        );
    }
    // A terminal: the process sees one, and its output comes as one stream.
    let p = pl
        .exec(
            &id,
            exec(
                &["sh", "-c", "tty; test -t 0 && test -t 1 && echo is-a-tty"],
                true,
            ),
        )
        .await
        .unwrap();
    let (o, _, c) = p.collect().await;
    let o = String::from_utf8_lossy(&o);
    assert!(o.contains("/dev/pts/") && o.contains("is-a-tty"), "{o}");
    assert_eq!(c, 0);
    // Resizing the terminal reaches the process.
    let p = pl
        .exec(&id, exec(&["sh", "-c", "sleep 1; stty size"], true))
        .await
        .unwrap();
    pl.resize(&id, Some(&p.id), 40, 100).await.unwrap();
    let (o, _, c) = p.collect().await;
    assert_eq!((String::from_utf8_lossy(&o).trim(), c), ("40 100", 0));
    // As in Docker, the main process is PID 1 of the container's PID namespace (its `/proc`
    // shows that namespace), and orphans of exec'd processes become its children.
    let p = pl
        .exec(
            &id,
            exec(
                &[
                    "sh",
                    "-c",
                    "(sleep 5 &); sleep 0.3; cat /proc/1/cmdline | tr '\\0' ' '; echo; \
                     for f in /proc/[0-9]*/stat; do read -r _ comm _ ppid _ < $f; \
                     [ \"$comm $ppid\" = \"(sleep) 1\" ] && echo adopted; done | wc -l",
                ],
                false,
            ),
        )
        .await
        .unwrap();
    let (o, _, c) = p.collect().await;
    let o = String::from_utf8_lossy(&o);
    let lines: Vec<&str> = o.lines().collect();
    assert_eq!(c, 0);
    assert_eq!(lines.first().map(|l| l.trim()), Some("sleep 600"), "{o}");
    assert_eq!(
        lines.get(1).map(|l| l.trim()),
        Some("1"),
        "orphan not adopted by PID 1: {o}"
    );
    // stdin, explicitly closed.
    let mut p = pl
        .exec(
            &id,
            ProcessSpec {
                stdin: true,
                ..exec(&["sh", "-c", "wc -c; cat"], false)
            },
        )
        .await
        .unwrap();
    let mut w = p.stdin.take().unwrap();
    w.write(b"hello stdin\n").await.unwrap();
    w.close().await.unwrap();
    let (o, _, c) = p.collect().await;
    assert_eq!((String::from_utf8_lossy(&o).trim(), c), ("12", 0));
    // A missing program: Docker's wording and 127.
    let e = pl
        .exec(&id, exec(&["no-such-program"], false))
        .await
        .err()
        .unwrap();
    assert_eq!(e.exit_code, Some(127));
    assert!(
        e.message.contains("executable file not found in $PATH"),
        "{e}"
    );
    // top sees the main process.
    let (titles, rows) = pl.top(&id).await.unwrap();
    assert_eq!(titles[1], "PID");
    assert!(
        rows.iter()
            .any(|r| r.last().is_some_and(|c| c.contains("sleep 600"))),
        "{rows:?}"
    );

    // A second container of the same image copies none of it.
    let image_disk = v.config.image_disk.clone();
    let before = du(&s.datastore);
    let v2 = pl
        .create(CreateRequest {
            image: s.busybox.clone(),
            cmd: sh("true"),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(v2.config.image_disk, image_disk);
    let added = du(&s.datastore).saturating_sub(before);
    assert!(added < 2 << 20, "a second container added {added} bytes");
    let backing = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(
            s.datastore
                .join("containers")
                .join(&v2.config.id)
                .join("disk.qcow2"),
        )
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&backing.stdout).unwrap();
    assert_eq!(
        info["full-backing-filename"].as_str().map(PathBuf::from),
        Some(image_disk)
    );
    pl.remove(&v2.config.id, false).await.unwrap();

    // Killed: 137, and the output before it is kept.
    pl.kill(&id, 9).await.unwrap();
    assert_eq!(pl.wait(&id).await.unwrap(), 137);
    assert_eq!(output(&pl, &id).await.0, b"started\n");
    let e = pl.kill(&id, 9).await.unwrap_err();
    assert_eq!(e.message, format!("Container {id} is not running"));
    pl.remove(&id, false).await.unwrap();
    assert!(pl.inspect(&id).is_err());
}

fn du(p: &Path) -> u64 {
    // Allocated bytes, not apparent: sparse image disks count only what they use.
    let o = Command::new("du")
        .args(["-s", "--block-size=1"])
        .arg(p)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

async fn main_process_with_a_terminal_and_stdin_body() {
    let pl = port_layer("vmtest-tty").await;
    let req = CreateRequest {
        image: setup().busybox.clone(),
        cmd: sh("tty; test -t 1 && echo is-a-tty; echo TERM=$TERM"),
        tty: true,
        ..Default::default()
    };
    let (out, err, code) = run(&pl, req).await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.contains("/dev/pts/0"), "{out}");
    assert!(
        out.contains("is-a-tty") && out.contains("TERM=xterm"),
        "{out}"
    );
    assert!(err.is_empty());
    assert_eq!(code, 0);
    // stdin to the main process.
    let v = pl
        .create(CreateRequest {
            image: setup().busybox.clone(),
            cmd: sh("read line; echo got:$line"),
            open_stdin: true,
            ..Default::default()
        })
        .await
        .unwrap();
    pl.start(&v.config.id).await.unwrap();
    let mut w = pl.attach_stdin(&v.config.id).await.unwrap();
    w.write(b"abc\n").await.unwrap();
    w.close().await.unwrap();
    assert_eq!(pl.wait(&v.config.id).await.unwrap(), 0);
    assert_eq!(output(&pl, &v.config.id).await.0, b"got:abc\n");
    pl.remove(&v.config.id, false).await.unwrap();
    // stop: the stop signal first; a process that ignores it is killed after the timeout.
    let v = pl
        .create(CreateRequest {
            image: setup().busybox.clone(),
            cmd: sh("trap 'echo got-term' TERM; echo ready; while true; do sleep 0.1; done"),
            stop_timeout: Some(1),
            ..Default::default()
        })
        .await
        .unwrap();
    pl.start(&v.config.id).await.unwrap();
    // Stop only once the trap is set (a TERM before it would end the shell, as with Docker).
    let mut logs = pl.logs(&v.config.id, true, false).unwrap();
    assert_eq!(logs.recv().await.unwrap().data, b"ready\n");
    let t0 = Instant::now();
    pl.stop(&v.config.id, None).await.unwrap();
    assert!(t0.elapsed() < Duration::from_secs(20));
    assert_eq!(pl.wait(&v.config.id).await.unwrap(), 137);
    assert!(String::from_utf8_lossy(&output(&pl, &v.config.id).await.0).contains("got-term"));
    let e = pl.remove(&v.config.id, false).await;
    assert!(e.is_ok(), "{e:?}");
}

async fn debian_image_runs_body() {
    let Some(debian) = setup().debian.clone() else {
        panic!("the debian test image was not built (make test builds it)");
    };
    let pl = port_layer("vmtest-debian").await;
    let req = CreateRequest {
        image: debian,
        cmd: sh("cat /etc/debian_version; dpkg-query -W -f='${Package}\\n' base-files"),
        ..Default::default()
    };
    let (out, err, code) = run(&pl, req).await;
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&err));
    let out = String::from_utf8_lossy(&out);
    assert!(
        out.lines().next().is_some_and(|l| l.starts_with("12")),
        "{out}"
    );
    assert!(out.contains("base-files"));
}

/// `kill -9` of the host process while a container prints: a new host process gets the rest of
/// the output and the exit code, with nothing lost or repeated.
async fn host_process_killed_mid_run_loses_nothing_body() {
    let s = setup();
    let kicctl = env!("CARGO_BIN_EXE_kicctl");
    let name = format!("survivor{}", std::process::id());
    let base = |c: &mut Command| {
        c.env("KIC_DATASTORE", &s.datastore)
            .env("KIC_VCH", "vmtest-survive")
            .env("KIC_TETHER", env_path("KIC_TETHER"));
    };
    let mut run = Command::new(kicctl);
    base(&mut run);
    run.args([
        "run",
        "--name",
        &name,
        &s.busybox,
        "sh",
        "-c",
        "for i in $(seq 1 40); do echo line$i; sleep 0.1; done; exit 7",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    let mut child = run.spawn().unwrap();
    // Wait for the first lines, then kill the host process hard.
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains("line3\n") {
        use std::io::Read;
        let n = stdout.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "kicctl run ended early: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = child.wait();
    // The container keeps running without a host.
    let ps = Command::new(kicctl)
        .args(["ps"])
        .env("KIC_DATASTORE", &s.datastore)
        .env("KIC_VCH", "vmtest-survive")
        .env("KIC_TETHER", env_path("KIC_TETHER"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&ps.stdout).contains("running"),
        "{}",
        String::from_utf8_lossy(&ps.stdout)
    );
    // A new host process follows the log to the end.
    let mut logs = Command::new(kicctl);
    base(&mut logs);
    let out = logs.args(["logs", "-f", &name]).output().unwrap();
    let expected: String = (1..=40).map(|i| format!("line{i}\n")).collect();
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected);
    let mut wait = Command::new(kicctl);
    base(&mut wait);
    let w = wait.args(["wait", &name]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&w.stdout).trim(), "7");
    let mut rm = Command::new(kicctl);
    base(&mut rm);
    assert!(rm.args(["rm", &name]).status().unwrap().success());
}

fn mount(volume: &str, target: &str, read_only: bool) -> Vec<MountRequest> {
    vec![MountRequest {
        volume: volume.into(),
        target: target.into(),
        read_only,
        no_copy: false,
    }]
}

async fn volumes_body() {
    let s = setup();
    let mut cfg = config(&s.datastore, "vmtest-volumes");
    let store = s.datastore.join("volume-store");
    cfg.volume_stores.insert("default".into(), store.clone());
    let pl = PortLayer::open(cfg).await.expect("port layer");
    let mut vc = VolumeCreate {
        name: "data".into(),
        ..Default::default()
    };
    vc.options.insert("Capacity".into(), "16MB".into());
    let v = pl.volume_create(vc.clone()).await.expect("volume create");
    assert_eq!(v.disk(), store.join("volumes/data/disk.raw"));
    assert!(pl
        .volume_create(vc)
        .await
        .unwrap_err()
        .message
        .contains("already exists"));
    let req = |script: &str, mounts: Vec<MountRequest>| CreateRequest {
        image: s.busybox.clone(),
        cmd: sh(script),
        mounts,
        ..Default::default()
    };

    // Written by one container, read by the next after the first is gone; a new volume is
    // an empty directory (mkfs's lost+found is not shown).
    let (out, err, code) = run(
        &pl,
        req(
            "ls -A /data; echo hi > /data/f; df -Pk /data | tail -1",
            mount("data", "/data", false),
        ),
    )
    .await;
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&err));
    let out = String::from_utf8_lossy(&out).to_string();
    assert!(!out.contains("lost+found"), "{out}");
    let size_k: u64 = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(
        (10_000..=16_384).contains(&size_k),
        "a 16 MB filesystem: {out}"
    );
    let (out, _, code) = run(&pl, req("cat /data/f", mount("data", "/data", false))).await;
    assert_eq!((code, out.as_slice()), (0, b"hi\n".as_slice()));

    // Read-only: reads work, writes fail.
    let (out, _, code) = run(
        &pl,
        req(
            "cat /data/f; touch /data/g 2>/dev/null && echo wrote",
            mount("data", "/data", true),
        ),
    )
    .await;
    assert_eq!((code, out.as_slice()), (1, b"hi\n".as_slice()));

    // A forced remove of a running container keeps what it wrote (the guest syncs first).
    let w = pl
        .create(req(
            "echo kept > /data/g; echo written; sleep 300",
            mount("data", "/data", false),
        ))
        .await
        .unwrap()
        .config
        .id;
    pl.start(&w).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while output(&pl, &w).await.0 != b"written\n" {
        assert!(
            std::time::Instant::now() < deadline,
            "the writer did not write"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    pl.remove(&w, true).await.unwrap();
    let (out, _, _) = run(&pl, req("cat /data/g", mount("data", "/data", false))).await;
    assert_eq!(out, b"kept\n");

    // A volume in use cannot be removed; two running containers cannot both write it.
    let a = pl
        .create(req("sleep 60", mount("data", "/data", false)))
        .await
        .unwrap()
        .config
        .id;
    let e = pl.volume_remove("data", false).await.unwrap_err();
    assert_eq!(e.message, format!("remove data: volume is in use - [{a}]"));
    pl.start(&a).await.unwrap();
    let b = pl
        .create(req("true", mount("data", "/data", false)))
        .await
        .unwrap()
        .config
        .id;
    let e = pl.start(&b).await.unwrap_err();
    assert!(
        e.message
            .contains(&format!("volume data is in use by running container {a}")),
        "{e}"
    );
    pl.remove(&a, true).await.unwrap();
    pl.remove(&b, true).await.unwrap();
    pl.volume_remove("data", false)
        .await
        .expect("volume remove");
    assert!(!store.join("volumes/data").exists());

    // Copy-up: an empty volume over /etc starts with the image's /etc, and keeps it.
    pl.volume_create(VolumeCreate {
        name: "etc".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let (out, _, code) = run(
        &pl,
        req(
            "grep ^root: /etc/passwd && echo x > /etc/added",
            mount("etc", "/etc", false),
        ),
    )
    .await;
    assert_eq!(code, 0);
    assert!(String::from_utf8_lossy(&out).starts_with("root:x:0:0:"));
    let (out, _, code) = run(
        &pl,
        req(
            "cat /etc/added; ls /etc/passwd",
            mount("etc", "/etc", false),
        ),
    )
    .await;
    assert_eq!((code, out.as_slice()), (0, b"x\n/etc/passwd\n".as_slice()));
    pl.volume_remove("etc", false).await.unwrap();
}
