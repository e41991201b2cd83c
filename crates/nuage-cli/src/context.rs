//! What a command runs with: the saved configuration and credentials, with
//! the environment taking precedence, resolved only when a command needs it
//! (so `login` can save files without persisting environment overrides).

use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::client::{Api, NotLoggedIn};
use crate::config::{config_dir, Config, Credentials};

/// Where the server listens when nothing else is configured (its defaults).
pub const DEFAULT_URL: &str = "http://127.0.0.1:8443";
pub const DEFAULT_ADMIN_URL: &str = "http://127.0.0.1:8444";

/// The two listeners: tenants' and operators'.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Realm {
    Tenant,
    Admin,
}

impl Realm {
    pub fn from_admin(admin: bool) -> Self {
        if admin {
            Realm::Admin
        } else {
            Realm::Tenant
        }
    }

    pub fn is_admin(self) -> bool {
        self == Realm::Admin
    }

    /// The path prefix of this realm's API.
    pub fn prefix(self) -> &'static [&'static str] {
        match self {
            Realm::Tenant => &["v1"],
            Realm::Admin => &["admin", "v1"],
        }
    }
}

pub struct Ctx {
    pub dir: PathBuf,
    pub config: Config,
    pub creds: Credentials,
    pub json: bool,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl Ctx {
    pub fn load(json: bool) -> Result<Self> {
        let dir = config_dir()?;
        Ok(Ctx {
            config: Config::load(&dir)?,
            creds: Credentials::load(&dir)?,
            dir,
            json,
        })
    }

    pub fn url(&self, realm: Realm) -> Option<String> {
        match realm {
            Realm::Tenant => env("NUAGE_URL").or_else(|| self.config.url.clone()),
            Realm::Admin => env("NUAGE_ADMIN_URL").or_else(|| self.config.admin_url.clone()),
        }
    }

    pub fn url_or_default(&self, realm: Realm) -> String {
        self.url(realm).unwrap_or_else(|| {
            match realm {
                Realm::Tenant => DEFAULT_URL,
                Realm::Admin => DEFAULT_ADMIN_URL,
            }
            .to_string()
        })
    }

    pub fn token(&self, realm: Realm) -> Option<String> {
        match realm {
            Realm::Tenant => env("NUAGE_TOKEN").or_else(|| self.creds.token.clone()),
            Realm::Admin => env("NUAGE_ADMIN_TOKEN").or_else(|| self.creds.admin_token.clone()),
        }
    }

    /// A client for `realm` with the known token; fails when there is none.
    pub fn api(&self, realm: Realm) -> Result<Api> {
        let Some(token) = self.token(realm) else {
            return Err(NotLoggedIn {
                admin: realm.is_admin(),
            }
            .into());
        };
        Api::new(
            &self.url_or_default(realm),
            Some(token),
            self.config.ca_cert.as_deref(),
            realm.is_admin(),
        )
    }

    /// The organization a command works on: `--org` (or `NUAGE_ORG`, which
    /// clap folds into the flag), else the one saved at login.
    pub fn org(&self, flag: &Option<String>) -> Result<String> {
        if let Some(org) = flag.as_ref().filter(|o| !o.is_empty()) {
            return Ok(org.clone());
        }
        match &self.config.org {
            Some(org) => Ok(org.clone()),
            None => bail!(
                "no organization: pass --org, set NUAGE_ORG, or run `nuage login --org <ORG>`"
            ),
        }
    }
}
