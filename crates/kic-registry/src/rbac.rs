//! Harbor's roles and permission matrix.
//!
//! Words: a *resource* is a kind of thing inside a project (repository, artifact, member...), an
//! *action* is what one does to it. A role grants a fixed set of (resource, action) pairs; a
//! robot account carries its own explicit list. System admins may do everything everywhere.

use serde::{Deserialize, Serialize};

/// Harbor's project role ids.
pub const PROJECT_ADMIN: i64 = 1;
pub const DEVELOPER: i64 = 2;
pub const GUEST: i64 = 3;
pub const MAINTAINER: i64 = 4;
pub const LIMITED_GUEST: i64 = 5;

/// Harbor's role names, as the member API shows them.
pub fn role_name(role: i64) -> &'static str {
    match role {
        PROJECT_ADMIN => "projectAdmin",
        DEVELOPER => "developer",
        GUEST => "guest",
        MAINTAINER => "maintainer",
        LIMITED_GUEST => "limitedGuest",
        _ => "unknown",
    }
}

pub fn valid_role(role: i64) -> bool {
    (PROJECT_ADMIN..=LIMITED_GUEST).contains(&role)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Res {
    Project,
    Member,
    Log,
    Repository,
    Artifact,
    Tag,
    Robot,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    Read,
    List,
    Create,
    Update,
    Delete,
    Pull,
    Push,
}

impl Res {
    pub fn harbor_name(self) -> &'static str {
        match self {
            Res::Project => "project",
            Res::Member => "member",
            Res::Log => "log",
            Res::Repository => "repository",
            Res::Artifact => "artifact",
            Res::Tag => "tag",
            Res::Robot => "robot",
        }
    }
}

impl Act {
    pub fn harbor_name(self) -> &'static str {
        match self {
            Act::Read => "read",
            Act::List => "list",
            Act::Create => "create",
            Act::Update => "update",
            Act::Delete => "delete",
            Act::Pull => "pull",
            Act::Push => "push",
        }
    }
}

/// The permission matrix: may `role` do `act` on `res`?
///
/// | resource   | limitedGuest | guest | developer | maintainer | projectAdmin |
/// |------------|--------------|-------|-----------|------------|--------------|
/// | project    | read         | read  | read      | read       | all          |
/// | member     | -            | read, list | read, list | read, list | all     |
/// | log        | -            | list  | list      | list       | list         |
/// | repository | read, list, pull | read, list, pull | + push, create, update | + delete | all |
/// | artifact   | read, list   | read, list | + create | + delete | all        |
/// | tag        | list         | list  | list, create | + delete | all           |
/// | robot      | -            | read, list | read, list | read, list | all     |
pub fn role_allows(role: i64, res: Res, act: Act) -> bool {
    use Act::*;
    use Res::*;
    if role == PROJECT_ADMIN {
        return true;
    }
    let read_only = matches!(act, Read | List);
    match (res, role) {
        (Project, _) => act == Read,
        (Member | Robot, GUEST | DEVELOPER | MAINTAINER) => read_only,
        (Log, GUEST | DEVELOPER | MAINTAINER) => act == List,
        (Repository, LIMITED_GUEST | GUEST) => read_only || act == Pull,
        (Repository, DEVELOPER) => read_only || matches!(act, Pull | Push | Create | Update),
        (Repository, MAINTAINER) => true,
        (Artifact, LIMITED_GUEST | GUEST) => read_only,
        (Artifact, DEVELOPER) => read_only || act == Create,
        (Artifact, MAINTAINER) => true,
        (Tag, LIMITED_GUEST | GUEST) => act == List,
        (Tag, DEVELOPER) => matches!(act, List | Create),
        (Tag, MAINTAINER) => true,
        _ => false,
    }
}

/// What anyone (even anonymous) may do in a public project.
pub fn public_allows(res: Res, act: Act) -> bool {
    matches!(
        (res, act),
        (Res::Project, Act::Read)
            | (Res::Repository, Act::Read | Act::List | Act::Pull)
            | (Res::Artifact, Act::Read | Act::List)
            | (Res::Tag, Act::List)
    )
}

/// One entry of a robot account's permission list (Harbor's `RobotPermission`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RobotPermission {
    pub kind: String,
    pub namespace: String,
    #[serde(default)]
    pub access: Vec<Access>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Access {
    pub resource: String,
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<String>,
}

/// Does a robot's permission list allow `act` on `res` in project `project`?
pub fn robot_allows(perms: &[RobotPermission], project: &str, res: Res, act: Act) -> bool {
    perms.iter().filter(|p| p.kind == "project" && (p.namespace == project || p.namespace == "*")).any(|p| {
        p.access.iter().any(|a| {
            a.effect.as_deref() != Some("deny")
                && (a.resource == res.harbor_name() || a.resource == "*")
                && (a.action == act.harbor_name() || a.action == "*"
                    // Reading a project or its repositories comes with any right in it.
                    || (matches!(res, Res::Project) && act == Act::Read)
                    || (a.action == "pull" && res == Res::Repository && matches!(act, Act::Read | Act::List)))
        }) || (res == Res::Project && act == Act::Read && !p.access.is_empty())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix_matches_harbor() {
        assert!(role_allows(DEVELOPER, Res::Repository, Act::Push));
        assert!(!role_allows(GUEST, Res::Repository, Act::Push));
        assert!(role_allows(GUEST, Res::Repository, Act::Pull));
        assert!(role_allows(LIMITED_GUEST, Res::Repository, Act::Pull));
        assert!(!role_allows(LIMITED_GUEST, Res::Member, Act::List));
        assert!(!role_allows(LIMITED_GUEST, Res::Log, Act::List));
        assert!(role_allows(GUEST, Res::Log, Act::List));
        assert!(!role_allows(MAINTAINER, Res::Member, Act::Create));
        assert!(role_allows(PROJECT_ADMIN, Res::Member, Act::Create));
        assert!(!role_allows(DEVELOPER, Res::Artifact, Act::Delete));
        assert!(role_allows(MAINTAINER, Res::Artifact, Act::Delete));
    }

    #[test]
    fn robot_permissions() {
        let perms = vec![RobotPermission {
            kind: "project".into(),
            namespace: "lib".into(),
            access: vec![Access {
                resource: "repository".into(),
                action: "pull".into(),
                effect: None,
            }],
        }];
        assert!(robot_allows(&perms, "lib", Res::Repository, Act::Pull));
        assert!(!robot_allows(&perms, "lib", Res::Repository, Act::Push));
        assert!(!robot_allows(&perms, "other", Res::Repository, Act::Pull));
    }
}
