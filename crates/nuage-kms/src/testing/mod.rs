//! Real external key managers started for tests: PyKMIP's `pykmip-server`
//! and OpenBao's `bao server -dev`, each on 127.0.0.1 with a free port, in a
//! temporary directory, stopped when dropped.
//!
//! The binaries come from the Python virtual environment that
//! `scripts/test` prepares (`target/test-venv`), or from the paths in
//! `NUAGE_TEST_PYKMIP_SERVER` and `NUAGE_TEST_BAO`.

pub mod kmip_server;
pub mod openbao_server;

use std::path::PathBuf;

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// The workspace's `target/test-venv/bin/<name>`, if it exists.
pub fn venv_tool(name: &str) -> Option<PathBuf> {
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    loop {
        let candidate = dir.join("target/test-venv/bin").join(name);
        if candidate.exists() {
            return Some(candidate);
        }
        if !dir.pop() {
            return None;
        }
    }
}

/// An organization (with its owner) and a project in `store`, for tests
/// that use the key service without the API (tests, benchmarks):
/// `(org_id, project_id)`.
pub async fn org_and_project(
    store: &nuage_store::Store,
    name: &str,
) -> Result<(String, String), String> {
    use nuage_core::id::{new_id, Kind};
    use nuage_core::model::{Org, Principal, PrincipalKind, PrincipalRef, Project, RoleBinding};
    let now = nuage_core::time::now_ms();
    let org = Org {
        id: new_id(Kind::Org),
        name: name.to_string(),
        display_name: name.to_string(),
        mfa_required_roles: Vec::new(),
        max_projects: 10,
        generation: 1,
        created_at: now,
        updated_at: now,
    };
    let owner = Principal {
        id: new_id(Kind::User),
        org_id: org.id.clone(),
        kind: PrincipalKind::User,
        name: "owner".into(),
        display_name: String::new(),
        email: String::new(),
        description: String::new(),
        mfa_enabled: false,
        has_password: false,
        locked_until: None,
        generation: 1,
        created_at: now,
        updated_at: now,
    };
    let binding = RoleBinding {
        id: new_id(Kind::RoleBinding),
        org_id: org.id.clone(),
        project_id: None,
        subject: PrincipalRef {
            id: owner.id.clone(),
            kind: "user".into(),
            name: "owner".into(),
        },
        role: "owner".into(),
        created_at: now,
    };
    store
        .org_create(&org, &owner, None, &binding, None)
        .await
        .map_err(|e| format!("organization: {}", e.detail))?;
    let project = Project {
        id: new_id(Kind::Project),
        org_id: org.id.clone(),
        name: "web".into(),
        description: String::new(),
        labels: Default::default(),
        generation: 1,
        created_at: now,
        updated_at: now,
    };
    store
        .project_create(&project, 10)
        .await
        .map_err(|e| format!("project: {}", e.detail))?;
    Ok((org.id, project.id))
}
