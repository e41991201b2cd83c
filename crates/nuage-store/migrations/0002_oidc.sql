-- OIDC federation: one identity provider per organization, pending
-- authorization-code logins (single use, short-lived), and the link from a
-- user to its subject at the provider.

CREATE TABLE oidc_providers (
    org_id TEXT PRIMARY KEY,
    issuer TEXT NOT NULL,
    client_id TEXT NOT NULL,
    client_secret TEXT NOT NULL,
    username_claim TEXT NOT NULL,
    groups_claim TEXT NOT NULL,
    group_mappings TEXT NOT NULL,
    generation BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE oidc_logins (
    state TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    pkce_verifier TEXT NOT NULL,
    nonce TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

ALTER TABLE principals ADD COLUMN external_id TEXT;
CREATE UNIQUE INDEX principals_by_external_id ON principals (org_id, external_id);
