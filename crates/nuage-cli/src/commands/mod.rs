//! The command tree, one module per area of the API, and the arguments
//! several commands share.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::client::{Api, Query};
use crate::context::Ctx;

pub mod access;
pub mod access_key;
pub mod admin;
pub mod audit;
pub mod auth;
pub mod bucket;
pub mod group;
pub mod image;
pub mod instance;
pub mod instance_type;
pub mod key;
pub mod node;
pub mod org;
pub mod policy;
pub mod principal;
pub mod project;
pub mod snapshot;
pub mod token;
pub mod volume;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Log in to a nuage server and remember the token.
    ///
    /// With --token, the token is checked and saved. Otherwise the password is
    /// asked on the terminal (or read from stdin with --password-stdin) and
    /// exchanged for a session token. With --admin, logs in to the operator
    /// API instead.
    Login(auth::LoginArgs),
    /// Forget the saved token (a session token is also ended on the server).
    Logout(auth::LogoutArgs),
    /// Show who the saved token belongs to.
    Whoami(auth::WhoamiArgs),
    /// Show or change your organization.
    Org(org::OrgArgs),
    /// Manage projects.
    Project(project::ProjectArgs),
    /// Manage users of the organization.
    User(principal::UserArgs),
    /// Manage service accounts (non-human principals for automation).
    ServiceAccount(principal::ServiceAccountArgs),
    /// Manage groups and their members.
    Group(group::GroupArgs),
    /// Manage API tokens.
    Token(token::TokenArgs),
    /// Manage S3 access keys (for aws-cli, boto3 and other S3 clients).
    AccessKey(access_key::AccessKeyArgs),
    /// Manage buckets (objects go through the S3 endpoint).
    Bucket(bucket::BucketArgs),
    /// Manage disk images (qcow2 or raw files, stored encrypted).
    Image(image::ImageArgs),
    /// Manage block volumes (blank, or copies of an image or snapshot);
    /// attach them to instances, grow them.
    Volume(volume::VolumeArgs),
    /// Manage snapshots of volumes (new volumes can start from them).
    Snapshot(snapshot::SnapshotArgs),
    /// Manage virtual machines: create, start, stop, delete; their consoles.
    Instance(instance::InstanceArgs),
    /// List roles, and grant or revoke them.
    Role(access::RoleArgs),
    /// Manage custom Cedar policies and test access decisions.
    Policy(policy::PolicyArgs),
    /// Enrol a TOTP second factor for yourself.
    Mfa(auth::MfaArgs),
    /// Change your password.
    Password(auth::PasswordArgs),
    /// Manage project keys: create, rotate, disable, destroy; encrypt and decrypt.
    Key(key::KeyArgs),
    /// Register external key managers (KMIP, OpenBao/Vault Transit) that hold keys outside nuage.
    KeyManager(key::KeyManagerArgs),
    /// Read, export and verify the tamper-evident audit log.
    Audit(audit::AuditArgs),
    /// List the instance types (sizes) instances are created with.
    InstanceType(instance_type::InstanceTypeArgs),
    /// Operate the platform through the operator API (organizations, operators).
    Admin(admin::AdminArgs),
}

/// The organization a command works on.
#[derive(Debug, Clone, Args)]
pub struct OrgFlag {
    /// Organization (default: the one saved by `nuage login`).
    #[arg(long, global = true, env = "NUAGE_ORG")]
    pub org: Option<String>,
}

/// Paging of list commands: one page by default.
#[derive(Debug, Clone, Default, Args)]
pub struct PageArgs {
    /// Items per page (1-1000; the server's default otherwise).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: Option<u32>,
    /// Continue a previous listing from this token.
    #[arg(long, conflicts_with = "all")]
    pub page_token: Option<String>,
    /// Fetch every page.
    #[arg(long)]
    pub all: bool,
}

/// `--if-match`: only change the resource if it is still at this generation.
#[derive(Debug, Clone, Args)]
pub struct IfMatch {
    /// Only act if the resource is still at this generation (its ETag).
    #[arg(long, value_name = "GENERATION")]
    pub if_match: Option<i64>,
}

/// `--wait` for changes the server makes in the background.
#[derive(Debug, Clone, Args)]
pub struct WaitArgs {
    /// Wait until it is done (a state line shows while waiting, at a
    /// terminal); a failure exits 1 with the server's reason.
    #[arg(long)]
    pub wait: bool,
    /// Stop waiting after this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 600, requires = "wait")]
    pub timeout: u64,
}

impl WaitArgs {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout)
    }
}

/// The project the project-scoped commands work on.
pub fn project(flag: &Option<String>) -> Result<String> {
    match flag {
        Some(p) if !p.is_empty() => Ok(p.clone()),
        _ => anyhow::bail!("no project: pass --project (or set NUAGE_PROJECT)"),
    }
}

/// Ids to names of everything listed at `path` (images, volumes of a
/// project), for showing names where the API gives ids. Only for display:
/// on any failure the ids are shown.
pub async fn names_by_id(api: &Api, path: &[&str]) -> HashMap<String, String> {
    let all = PageArgs {
        all: true,
        ..PageArgs::default()
    };
    let Ok(listing) = api.list(path, &Query::new(), &all).await else {
        return HashMap::new();
    };
    listing
        .items
        .iter()
        .filter_map(|i| {
            Some((
                i["id"].as_str()?.to_string(),
                i["name"].as_str()?.to_string(),
            ))
        })
        .collect()
}

pub async fn dispatch(cmd: Command, ctx: &mut Ctx) -> Result<u8> {
    match cmd {
        Command::Login(a) => auth::login(ctx, a).await,
        Command::Logout(a) => auth::logout(ctx, a).await,
        Command::Whoami(a) => auth::whoami(ctx, a).await,
        Command::Org(a) => org::run(ctx, a).await,
        Command::Project(a) => project::run(ctx, a).await,
        Command::User(a) => principal::run_users(ctx, a).await,
        Command::ServiceAccount(a) => principal::run_service_accounts(ctx, a).await,
        Command::Group(a) => group::run(ctx, a).await,
        Command::Token(a) => token::run(ctx, a).await,
        Command::AccessKey(a) => access_key::run(ctx, a).await,
        Command::Bucket(a) => bucket::run(ctx, a).await,
        Command::Image(a) => image::run(ctx, a).await,
        Command::Volume(a) => volume::run(ctx, a).await,
        Command::Snapshot(a) => snapshot::run(ctx, a).await,
        Command::Instance(a) => instance::run(ctx, a).await,
        Command::Role(a) => access::run(ctx, a).await,
        Command::Policy(a) => policy::run(ctx, a).await,
        Command::Mfa(a) => auth::mfa(ctx, crate::context::Realm::Tenant, a.cmd).await,
        Command::Password(a) => auth::password(ctx, crate::context::Realm::Tenant, a).await,
        Command::Key(a) => key::run(ctx, a).await,
        Command::KeyManager(a) => key::run_managers(ctx, a).await,
        Command::Audit(a) => audit::run(ctx, a).await,
        Command::InstanceType(a) => instance_type::run(ctx, a).await,
        Command::Admin(a) => admin::run(ctx, a).await,
    }
}
