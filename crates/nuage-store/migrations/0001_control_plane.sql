-- Control plane core: tenants, identities, credentials, authorization and the
-- audit log. Portable SQL: it must run unchanged on SQLite, PostgreSQL and
-- PostgreSQL-compatible distributed engines (no sequences, no advisory
-- locks in queries, no engine-specific types).

CREATE TABLE orgs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL,
    mfa_required_roles TEXT NOT NULL,
    max_projects BIGINT NOT NULL,
    policy_generation BIGINT NOT NULL,
    generation BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE projects (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs (id),
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    labels TEXT NOT NULL,
    generation BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (org_id, name)
);

-- Users, service accounts and operators. Operators have org_id = ''.
CREATE TABLE principals (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    display_name TEXT NOT NULL,
    email TEXT NOT NULL,
    description TEXT NOT NULL,
    password_hash TEXT,
    totp_secret TEXT,
    totp_pending TEXT,
    failed_logins BIGINT NOT NULL,
    locked_until BIGINT,
    generation BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (org_id, kind, name)
);

CREATE TABLE principal_groups (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs (id),
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    generation BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (org_id, name)
);

CREATE TABLE group_members (
    group_id TEXT NOT NULL,
    principal_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (group_id, principal_id)
);
CREATE INDEX group_members_by_principal ON group_members (principal_id);

-- Only a SHA-256 of each token's secret is kept.
CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    principal_id TEXT NOT NULL,
    org_id TEXT NOT NULL,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    secret_hash TEXT NOT NULL UNIQUE,
    mfa BIGINT NOT NULL,
    expires_at BIGINT,
    revoked_at BIGINT,
    last_used_at BIGINT,
    created_at BIGINT NOT NULL
);
CREATE INDEX tokens_by_principal ON tokens (principal_id);

-- project_id = '' for organization-wide bindings.
CREATE TABLE role_bindings (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    project_id TEXT NOT NULL,
    subject_id TEXT NOT NULL,
    subject_kind TEXT NOT NULL,
    role TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (org_id, project_id, subject_id, role)
);
CREATE INDEX role_bindings_by_subject ON role_bindings (subject_id);

CREATE TABLE policies (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs (id),
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    body TEXT NOT NULL,
    generation BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (org_id, name)
);

CREATE TABLE idempotency_keys (
    principal_id TEXT NOT NULL,
    idem_key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    status BIGINT NOT NULL,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (principal_id, idem_key)
);

-- One Merkle log per organization (log_id = org id) and one for the
-- operator realm (log_id = 'platform').
CREATE TABLE audit_heads (
    log_id TEXT PRIMARY KEY,
    size BIGINT NOT NULL,
    frontier TEXT NOT NULL
);

CREATE TABLE audit_entries (
    log_id TEXT NOT NULL,
    idx BIGINT NOT NULL,
    leaf_hash TEXT NOT NULL,
    body TEXT,
    time BIGINT NOT NULL,
    principal TEXT NOT NULL,
    action TEXT NOT NULL,
    decision TEXT NOT NULL,
    PRIMARY KEY (log_id, idx)
);
CREATE INDEX audit_entries_by_time ON audit_entries (log_id, time);

-- Perfect subtree hashes of level >= 1, so proofs need no full rescan.
CREATE TABLE audit_nodes (
    log_id TEXT NOT NULL,
    level BIGINT NOT NULL,
    idx BIGINT NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (log_id, level, idx)
);

CREATE TABLE audit_checkpoints (
    log_id TEXT NOT NULL,
    size BIGINT NOT NULL,
    root TEXT NOT NULL,
    note TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (log_id, size)
);
