//! The host ↔ tether protocol, shared by both ends.
//!
//! **Owns:** the message types, the resync handshake and the stream multiplexer set-up.
//! **Must not:** touch libvirt, the datastore or processes; it only moves bytes and messages.
//! **Callers:** `kic-tether` (guest, multiplexer server side) and `kic-portlayer` (host, client side).
//!
//! ## Wire model
//!
//! One virtio-serial port carries everything. Because the host side can go away at any time (the
//! endpoint is killed and restarted), every connection begins with a handshake that throws away
//! whatever stale bytes an earlier connection left in the pipes:
//!
//! 1. the guest, while it has no session, writes `READY` lines ([`handshake`]) every 100 ms;
//! 2. the host, on the first `READY`, writes one `SYNC:<nonce>` line;
//! 3. the guest answers `ACK:<nonce>` and starts a yamux session as server; the host discards all
//!    bytes up to that `ACK` line and starts yamux as client.
//!
//! Inside the session the host opens every stream. The first frame of a stream is a
//! [`StreamHeader`] (length-delimited JSON, see [`frame`]), which says what the stream is for:
//!
//! * [`StreamHeader::Request`]: one [`Request`] and its [`Response`], then the stream closes;
//! * [`StreamHeader::Events`]: the guest pushes [`Event`]s (first a snapshot of every process);
//! * [`StreamHeader::Stdin`]: raw bytes for a process's stdin. A stream ending is *not* end of
//!   input (it may be a lost connection): the host sends [`Request::CloseStdin`] explicitly;
//! * [`StreamHeader::Output`]: the guest answers with [`OutputStart`] and then sends the output
//!   from that offset as chunks, each a big-endian `u32` length and that many bytes; an empty
//!   chunk means the output is complete (a stream that just ends is a lost connection). The host
//!   writes back big-endian `u64` acknowledged offsets, and the guest frees buffered output only
//!   when it is acknowledged.
//!
//! * [`StreamHeader::ArchiveGet`]: the guest answers with [`ArchiveStart`] and then the tar
//!   stream as [`chunk`]s, ended by an end chunk that says whether it is complete;
//! * [`StreamHeader::ArchivePut`]: the host sends a tar stream as [`chunk`]s ended by an end
//!   chunk; the guest answers one [`Response`] frame (`Ok` or `Error`), possibly before it has
//!   read everything (it stops reading on the first error);
//! * [`StreamHeader::List`]: the guest sends [`ListBatch`] frames until one says `done`.
//!
//! Back-pressure is end to end: the guest stops reading a process's pipe while its unacknowledged
//! buffer is full, and yamux's per-stream window stops the host writing stdin faster than the
//! process reads it.

pub mod chunk;
pub mod frame;
pub mod handshake;
pub mod mux;

use serde::{Deserialize, Serialize};

/// Protocol version; both ends refuse a session with a different major version.
pub const PROTOCOL_VERSION: u32 = 1;

/// Name of the virtio-serial port the tether talks on (the libvirt channel target name).
pub const CHANNEL_NAME: &str = "org.kic.tether.0";

/// Process id of a container's main process.
pub const MAIN_ID: &str = "main";

/// What a process runs: argv, environment, working directory, identity and stdio shape.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessSpec {
    /// argv; `args[0]` is looked up in `PATH` inside the container when it has no `/`.
    pub args: Vec<String>,
    /// `KEY=value` pairs, already merged (image then request).
    pub env: Vec<String>,
    /// Working directory inside the container; empty means `/`.
    pub cwd: String,
    /// Docker's `--user`: empty, `name`, `uid`, `name:group`, `uid:gid`.
    pub user: String,
    /// Allocate a terminal; output then comes as one stream (fd 1).
    pub tty: bool,
    /// Keep stdin open for the host; otherwise the process gets `/dev/null`.
    pub stdin: bool,
    /// Initial terminal size (rows, cols) when `tty`.
    pub size: Option<(u16, u16)>,
}

/// Everything the tether needs to turn the VM into the container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerSpec {
    pub id: String,
    pub hostname: String,
    /// Full contents for the container's `/etc/hosts`.
    pub hosts: String,
    /// Full contents for `/etc/resolv.conf`; `None` keeps the image's file, unless the first
    /// interface uses DHCP and its lease names DNS servers: then they make the file.
    pub resolv_conf: Option<String>,
    /// Guest device holding the container's root filesystem (ext4), e.g. `/dev/vda`.
    pub root_device: String,
    pub main: ProcessSpec,
    /// Volumes: extra disks (ext4) mounted into the container before its main process starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<VolumeMount>,
    /// Network interfaces, configured before the main process starts; the first is `eth0`.
    /// Loopback is always up.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<NetInterface>,
}

/// One virtio-net device of the VM and the address the container has on it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetInterface {
    /// The device's MAC address (`02:42:ac:10:00:02`): how the tether finds it.
    pub mac: String,
    /// The name the container sees (`eth0`, `eth1`, ...).
    pub name: String,
    /// IPv4 address with its prefix length: `172.16.0.2/16`.
    pub address: String,
    /// Default route through this gateway (set on at most one interface).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Ask a DHCP server on the segment instead: `address` and `gateway` are then empty. The
    /// first interface's lease also gives the default route (its router). The tether renews
    /// the lease for as long as the VM runs.
    #[serde(default, skip_serializing_if = "is_false")]
    pub dhcp: bool,
}

fn is_false(v: &bool) -> bool {
    !*v
}

/// What an interface got from a DHCP server (answer to `Start`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lease {
    /// The interface's MAC address.
    pub mac: String,
    /// IPv4 address with its prefix length: `10.99.7.50/24`.
    pub address: String,
    /// The router option, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// The DNS servers option.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
    /// The server that gave it.
    pub server: String,
    /// Lease time in seconds.
    pub lease_secs: u32,
}

/// One volume disk to mount inside the container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeMount {
    /// The disk's serial number (`/sys/block/vd*/serial` in the guest).
    pub serial: String,
    /// Absolute path inside the container.
    pub target: String,
    pub read_only: bool,
    /// Copy what the image has at `target` into the volume when the volume is empty.
    pub copy_up: bool,
}

/// How a stream is used; the first frame the host writes on every stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum StreamHeader {
    Request,
    Events,
    Stdin {
        id: String,
    },
    Output {
        id: String,
        fd: u8,
        offset: u64,
    },
    /// A tar stream of files in the container (`docker cp` out, `export`, `commit`).
    ArchiveGet {
        spec: ArchiveSpec,
    },
    /// A tar stream to unpack into a directory of the container (`docker cp` in).
    ArchivePut {
        spec: PutSpec,
    },
    /// Every file under a path, as `lstat` sees it (`docker diff`, `commit`).
    List {
        path: String,
        one_fs: bool,
    },
}

/// What an [`StreamHeader::ArchiveGet`] puts in the tar, in this order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveSpec {
    pub sources: Vec<ArchiveSource>,
    /// Do not descend into directories on another filesystem than their source's (export and
    /// commit leave out `/proc`, `/sys`, `/dev` and volumes; `docker cp` crosses into volumes).
    #[serde(default)]
    pub one_fs: bool,
    /// Absolute paths recorded as deleted: each becomes a whiteout entry `dir/.wh.name`
    /// (commit's layer), after the sources.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub whiteouts: Vec<String>,
}

/// One file or tree to archive.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveSource {
    /// Absolute path in the container. Symlinks in its parent directories are followed
    /// (never out of the container's root).
    pub path: String,
    /// Name of its entry in the tar; what is below it is named `name/...`. Empty means the
    /// source's contents are at the top of the tar (`export` of `/`).
    pub name: String,
    /// Include what is below a directory.
    pub recursive: bool,
    /// Follow a symlink at `path` itself (`docker cp -L`, or a path ending in `/`).
    #[serde(default)]
    pub follow: bool,
}

/// Where and how an [`StreamHeader::ArchivePut`] unpacks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutSpec {
    /// Absolute path of an existing directory in the container (symlinks followed, never out
    /// of the container's root). Entries are confined to it whatever the archive says.
    pub path: String,
    /// Refuse to replace a directory with a non-directory or the reverse (Docker's
    /// `noOverwriteDirNonDir`).
    #[serde(default)]
    pub no_overwrite_dir_non_dir: bool,
    /// Owner (uid, gid) of every entry written; `None` keeps the archive's numeric owners.
    #[serde(default)]
    pub owner: Option<(u32, u32)>,
}

/// The guest's first frame on an archive stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveStart {
    /// What the first source is (its `lstat`, or `stat` when followed).
    pub stat: Option<PathStat>,
    /// Set when the archive cannot be made; no chunks follow.
    pub error: Option<String>,
    /// The error is that the first source does not exist.
    #[serde(default)]
    pub not_found: bool,
}

/// What `docker cp` needs to know about a path (the `X-Docker-Container-Path-Stat` header).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathStat {
    /// Last element of the requested path.
    pub name: String,
    pub size: u64,
    /// `st_mode`: file type and permission bits.
    pub mode: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
    /// For a symlink: the absolute path it resolves to inside the container.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub link_target: String,
}

/// What `lstat` says about one file (listings for `docker diff` and `commit`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Absolute path in the container (`/etc/passwd`); the root is `/`.
    pub path: String,
    /// `st_mode`: file type and permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: u32,
    /// Device number of a device node.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rdev: u64,
    /// Target of a symlink.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub link: String,
    /// The `security.capability` xattr in hex, if the file has one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub capability: String,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// One frame of a [`StreamHeader::List`] answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListBatch {
    pub entries: Vec<FileEntry>,
    /// The last frame.
    pub done: bool,
    /// The listing failed (on the last frame).
    #[serde(default)]
    pub error: Option<String>,
    /// The error is that the path does not exist.
    #[serde(default)]
    pub not_found: bool,
}

/// The guest's first frame on an output stream: where the bytes that follow start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputStart {
    /// Offset of the first byte that follows. Larger than requested only if the host asked for
    /// bytes it had already acknowledged (and the guest freed).
    pub offset: u64,
    /// Set when there is no such process or stream.
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Request {
    /// First request of a session: who are you, what runs.
    Hello {
        version: u32,
    },
    /// Set up the container and start its main process (once per boot).
    Start {
        spec: Box<ContainerSpec>,
    },
    /// Start a further process in the running container.
    Exec {
        id: String,
        spec: ProcessSpec,
    },
    Signal {
        id: String,
        signal: i32,
    },
    Resize {
        id: String,
        rows: u16,
        cols: u16,
    },
    /// End of input for a process's stdin.
    CloseStdin {
        id: String,
    },
    /// The host has stored this exit; the guest may forget the process. For the main process
    /// this also syncs the disks and powers the VM off.
    AckExit {
        id: String,
    },
    /// List the processes and their state.
    State,
    /// Read a file from the container's filesystem (small files: `/etc/passwd` and friends).
    ReadFile {
        path: String,
    },
    /// Process list as `ps -ef` would show it (for `docker top`).
    Top,
    /// Maintenance of a stopped container (`docker cp`, `diff`, `commit`, `export`): mount its
    /// root disk and volumes as `Start` would, without network, hostname files or any process.
    /// A VM that got `Mount` refuses `Start`.
    Mount {
        spec: Box<ContainerSpec>,
    },
    /// End a maintenance VM: sync the disks and power off (after answering `Ok`). Refused
    /// while a container process runs.
    PowerOff,
    /// `lstat` of a path (`stat` when `follow`), for `docker cp`'s HEAD.
    Stat {
        path: String,
        #[serde(default)]
        follow: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Response {
    Hello {
        version: u32,
        boot_id: String,
        started: bool,
        processes: Vec<ProcessState>,
    },
    Ok,
    Started {
        pid: i32,
        /// For `Start`: the leases of the interfaces configured by DHCP.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        leases: Vec<Lease>,
    },
    State {
        processes: Vec<ProcessState>,
    },
    File {
        data: Vec<u8>,
    },
    Top {
        titles: Vec<String>,
        processes: Vec<Vec<String>>,
    },
    /// Answer to `Stat`; `None` when the path does not exist.
    Stat {
        stat: Option<PathStat>,
    },
    /// The request cannot be done on this container's files as asked (a missing path, a
    /// destination that is not a directory, an archive entry that would leave its target):
    /// the caller's mistake, not the guest's failure. `not_found` when a path does not exist.
    Refused {
        message: String,
        not_found: bool,
    },
    /// The request failed. `exit_code` is set when a process could not be started and carries
    /// the code a shell would report (126 not executable, 127 not found).
    Error {
        message: String,
        exit_code: Option<i32>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessState {
    pub id: String,
    pub pid: i32,
    /// Exit code once it ended (128+signal when killed by a signal).
    pub exit_code: Option<i32>,
    pub tty: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Event {
    /// Sent first on every events stream: every process the guest still knows.
    Snapshot {
        processes: Vec<ProcessState>,
    },
    Started {
        id: String,
        pid: i32,
    },
    Exited {
        id: String,
        exit_code: i32,
    },
}

/// Output stream numbers, as in Docker's multiplexed stream format.
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_reject_unknown_fields() {
        let r = Request::Exec {
            id: "e1".into(),
            spec: ProcessSpec {
                args: vec!["sh".into()],
                tty: true,
                ..Default::default()
            },
        };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), r);
        let bad = r#"{"signal":{"id":"main","signal":9,"extra":1}}"#;
        assert!(serde_json::from_str::<Request>(bad).is_err());
    }
}
