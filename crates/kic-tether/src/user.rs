//! Resolves Docker's `--user` against the image's own `/etc/passwd` and `/etc/group`.

/// The identity a process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: String,
}

struct Passwd<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd_entries(passwd: &str) -> impl Iterator<Item = Passwd<'_>> {
    passwd.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 7 {
            return None;
        }
        Some(Passwd {
            name: f[0],
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5],
        })
    })
}

fn group_entries(group: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    group.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 4 {
            return None;
        }
        Some((
            f[0],
            f[2].parse().ok()?,
            f[3].split(',').filter(|m| !m.is_empty()).collect(),
        ))
    })
}

/// Resolve `spec` (``, `name`, `uid`, `name:group`, `uid:gid`, ...) as runc does.
pub fn resolve(spec: &str, passwd: &str, group: &str) -> Result<Identity, String> {
    let (user, grp) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user = if user.is_empty() { "0" } else { user };
    let found = match user.parse::<u32>() {
        Ok(uid) => passwd_entries(passwd).find(|p| p.uid == uid),
        Err(_) => Some(
            passwd_entries(passwd)
                .find(|p| p.name == user)
                .ok_or_else(|| {
                    format!("unable to find user {user}: no matching entries in passwd file")
                })?,
        ),
    };
    let uid = match &found {
        Some(p) => p.uid,
        None => user.parse::<u32>().expect("numeric when not found"),
    };
    let mut gid = found.as_ref().map(|p| p.gid).unwrap_or(0);
    let home = found
        .as_ref()
        .map(|p| p.home.to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "/".into());
    let mut groups = Vec::new();
    match grp {
        Some(g) if !g.is_empty() => {
            gid = match g.parse::<u32>() {
                Ok(n) => n,
                Err(_) => group_entries(group)
                    .find(|(n, _, _)| *n == g)
                    .map(|(_, id, _)| id)
                    .ok_or_else(|| {
                        format!("unable to find group {g}: no matching entries in group file")
                    })?,
            };
        }
        _ => {
            // Supplementary groups only when the group was not given, as runc does.
            if let Some(p) = &found {
                for (_, id, members) in group_entries(group) {
                    if members.contains(&p.name) && !groups.contains(&id) {
                        groups.push(id);
                    }
                }
            }
        }
    }
    if !groups.contains(&gid) {
        groups.insert(0, gid);
    }
    Ok(Identity {
        uid,
        gid,
        groups,
        home,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\nwww:x:33:33::/var/www:/bin/false\n";
    const GROUP: &str = "root:x:0:\nuser:x:1000:\nwww-data:x:33:user\nstaff:x:50:user,www\n";

    #[test]
    fn resolves_names_numbers_and_groups() {
        let root = resolve("", PASSWD, GROUP).unwrap();
        assert_eq!((root.uid, root.gid, root.home.as_str()), (0, 0, "/root"));
        let u = resolve("user", PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1000));
        assert_eq!(u.groups, vec![1000, 33, 50]);
        assert_eq!(u.home, "/home/user");
        let n = resolve("1000:1000", PASSWD, GROUP).unwrap();
        assert_eq!((n.uid, n.gid, n.groups.clone()), (1000, 1000, vec![1000]));
        let g = resolve("www:staff", PASSWD, GROUP).unwrap();
        assert_eq!((g.uid, g.gid), (33, 50));
        let unknown = resolve("4242", PASSWD, GROUP).unwrap();
        assert_eq!(
            (unknown.uid, unknown.gid, unknown.home.as_str()),
            (4242, 0, "/")
        );
    }

    #[test]
    fn unknown_names_fail_with_runc_wording() {
        assert_eq!(
            resolve("nobody", PASSWD, GROUP).unwrap_err(),
            "unable to find user nobody: no matching entries in passwd file"
        );
        assert!(resolve("user:nogroup", PASSWD, GROUP)
            .unwrap_err()
            .contains("unable to find group nogroup"));
    }
}
