//! The command tree, one module per area of the API, and the arguments
//! several commands share.

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::context::Ctx;

pub mod access;
pub mod access_key;
pub mod admin;
pub mod audit;
pub mod auth;
pub mod bucket;
pub mod group;
pub mod image;
pub mod instance_type;
pub mod key;
pub mod node;
pub mod org;
pub mod policy;
pub mod principal;
pub mod project;
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
    /// Manage block volumes (blank, or copies of an image).
    Volume(volume::VolumeArgs),
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
