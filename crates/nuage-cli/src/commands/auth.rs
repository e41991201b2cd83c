//! Signing in and out, and the caller's own account (second factor,
//! password), for tenants and operators alike: the two APIs differ only in
//! path prefix and login body.

use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};
use clap::{Args, Subcommand};
use nuage_core::model::{
    ChangePassword, Login, OidcFinish, OidcStart, OperatorLogin, Session, TotpCode, TotpEnrollment,
};
use serde_json::{json, Value};

use crate::client::{display_url, Api, ApiProblem, Query};
use crate::context::{Ctx, Realm};
use crate::output::{self, Field};
use crate::{exit, secret};

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Log in to the operator API (admin listener) instead of the tenant API.
    #[arg(long)]
    admin: bool,
    /// Server address, e.g. https://nuage.example.com:8443 (saved; default:
    /// the saved one, else http://127.0.0.1:8443, or :8444 with --admin).
    #[arg(long)]
    url: Option<String>,
    /// Organization to log in to (saved as the default for later commands).
    #[arg(long, env = "NUAGE_ORG")]
    org: Option<String>,
    /// User name (operator name with --admin); asked when absent.
    #[arg(long)]
    user: Option<String>,
    /// An API token to use instead of a password; it is checked, then saved.
    #[arg(long, conflicts_with_all = ["user", "totp", "password_stdin"])]
    token: Option<String>,
    /// Current TOTP code, for an account with a second factor (asked when
    /// needed and a terminal is available).
    #[arg(long)]
    totp: Option<String>,
    /// Read the password from the first line of stdin instead of asking.
    #[arg(long)]
    password_stdin: bool,
    /// PEM file of a private CA that signed the server's certificate (saved).
    #[arg(long)]
    ca_cert: Option<PathBuf>,
    /// Log in through the organization's identity provider (OpenID Connect,
    /// authorization code with PKCE): prints an address to open in a browser
    /// and waits for the provider to send it back to this machine.
    #[arg(long, conflicts_with_all = ["admin", "token", "user", "totp", "password_stdin"])]
    oidc: bool,
}

#[derive(Debug, Args)]
pub struct LogoutArgs {
    /// Forget the operator token instead of the tenant one.
    #[arg(long)]
    admin: bool,
}

#[derive(Debug, Args)]
pub struct WhoamiArgs {
    /// Ask the operator API instead of the tenant API.
    #[arg(long)]
    admin: bool,
}

#[derive(Debug, Args)]
pub struct MfaArgs {
    #[command(subcommand)]
    pub cmd: MfaCmd,
}

#[derive(Debug, Subcommand)]
pub enum MfaCmd {
    /// Start enrolling a TOTP second factor: prints the secret to add to an
    /// authenticator app.
    Enroll,
    /// Finish the enrolment with a current code from the app.
    Confirm {
        /// Six-digit code shown by the authenticator app.
        code: String,
    },
}

#[derive(Debug, Args)]
pub struct PasswordArgs {
    #[command(subcommand)]
    cmd: PasswordCmd,
}

#[derive(Debug, Subcommand)]
enum PasswordCmd {
    /// Change your password (the current one is required).
    Change {
        /// Read two lines from stdin: the current password, then the new one.
        #[arg(long)]
        stdin: bool,
    },
}

const WHOAMI: &[Field] = &[
    ("name", "principal.name"),
    ("kind", "principal.kind"),
    ("id", "principal.id"),
    ("organization", "org"),
    ("server", "server"),
    ("second factor enrolled", "principal.mfa_enabled"),
    ("session passed second factor", "mfa"),
    ("token id", "token_id"),
];

fn me_path(realm: Realm) -> Vec<&'static str> {
    let mut path = realm.prefix().to_vec();
    path.push("me");
    path
}

fn is_loopback(url: &reqwest::Url) -> bool {
    let host = url.host_str().unwrap_or_default();
    host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The name of the organization a principal belongs to (paths use names).
async fn org_name_of(api: &Api, org_id: &str) -> Result<Option<String>> {
    let orgs = api.get(&["v1", "orgs"], &Query::new()).await?;
    Ok(orgs
        .get("items")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|o| o.get("id").and_then(Value::as_str) == Some(org_id))
        .and_then(|o| o.get("name").and_then(Value::as_str))
        .map(str::to_string))
}

pub async fn login(ctx: &mut Ctx, args: LoginArgs) -> Result<u8> {
    let realm = Realm::from_admin(args.admin);
    let url = match args.url.clone() {
        Some(u) => u,
        None => ctx.url_or_default(realm),
    };
    let ca_cert = match &args.ca_cert {
        Some(p) => Some(
            std::fs::canonicalize(p)
                .with_context(|| format!("could not find the CA certificate {}", p.display()))?,
        ),
        None => ctx.config.ca_cert.clone(),
    };
    let anonymous = Api::new(&url, None, ca_cert.as_deref(), realm.is_admin())?;

    let (token, whoami) = match &args.token {
        Some(token) => {
            let api = anonymous.with_token(Some(token.clone()));
            let me = api.get(&me_path(realm), &Query::new()).await?;
            (token.clone(), me)
        }
        None if args.oidc => oidc_login(ctx, &anonymous, &args).await?,
        None => password_login(ctx, &anonymous, realm, &args).await?,
    };

    let org = if realm.is_admin() {
        None
    } else if let Some(org) = &args.org {
        Some(org.clone())
    } else {
        let api = anonymous.with_token(Some(token.clone()));
        let org_id = output::text(&whoami, "principal.org_id");
        org_name_of(&api, &org_id)
            .await?
            .or_else(|| ctx.config.org.clone())
    };

    match realm {
        Realm::Tenant => {
            ctx.config.url = Some(url.clone());
            if org.is_some() {
                ctx.config.org = org.clone();
            }
            ctx.creds.token = Some(token);
        }
        Realm::Admin => {
            ctx.config.admin_url = Some(url.clone());
            ctx.creds.admin_token = Some(token);
        }
    }
    if args.ca_cert.is_some() {
        ctx.config.ca_cert = ca_cert;
    }
    ctx.config.save(&ctx.dir)?;
    ctx.creds.save(&ctx.dir)?;

    let shown = display_url(anonymous.base());
    if ctx.json {
        output::json(&json!({
            "server": shown,
            "org": org,
            "principal": whoami.get("principal"),
        }));
    } else {
        let name = output::text(&whoami, "principal.name");
        match &org {
            Some(org) => println!("Logged in to {shown} as {name} (organization {org})."),
            None => println!("Logged in to {shown} as {name}."),
        }
    }
    Ok(exit::OK)
}

/// How long `login --oidc` waits for the browser to come back.
const OIDC_WAIT: std::time::Duration = std::time::Duration::from_secs(300);

/// Turns a login answer (`Session`) into the token and a `WhoAmI`-shaped value.
fn session_of(value: &Value) -> Result<(String, Value)> {
    let session: Session = serde_json::from_value(value.clone())
        .context("the server answered the login with an unexpected body")?;
    let whoami = json!({
        "principal": value.get("principal"),
        "token_id": session.token.token.id,
        "mfa": session.token.token.mfa,
    });
    Ok((session.token.secret, whoami))
}

/// OpenID Connect login: the server starts an authorization-code flow with
/// PKCE whose redirect comes back to a one-shot listener on this machine's
/// loopback (RFC 8252), then exchanges the code itself.
async fn oidc_login(ctx: &Ctx, api: &Api, args: &LoginArgs) -> Result<(String, Value)> {
    let org = ctx
        .org(&args.org)
        .map_err(|_| anyhow!("which organization? pass --org (or set NUAGE_ORG)"))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot listen on 127.0.0.1 for the login callback")?;
    let port = listener.local_addr()?.port();
    let start = OidcStart {
        org,
        redirect_uri: format!("http://127.0.0.1:{port}/callback"),
    };
    let started = api.post(&["v1", "login", "oidc", "start"], &start).await?;
    let url = output::text(&started, "authorization_url");
    let state = output::text(&started, "state");
    eprintln!("Open this address in a browser to log in:\n\n    {url}\n");
    eprintln!(
        "Waiting for the identity provider (up to {} s) …",
        OIDC_WAIT.as_secs()
    );
    let (code, returned_state) = tokio::time::timeout(OIDC_WAIT, oidc_callback(&listener))
        .await
        .map_err(|_| {
            anyhow!("no answer from the identity provider in time; run the login again")
        })??;
    if returned_state != state {
        return Err(anyhow!(
            "the login answer does not belong to this login (state mismatch)"
        ));
    }
    let answer = api
        .post(
            &["v1", "login", "oidc", "finish"],
            &OidcFinish { state, code },
        )
        .await?;
    session_of(&answer)
}

/// Serves the loopback redirect: waits for `GET /callback?code=…&state=…`,
/// answers the browser with a short page, and returns the code and state.
async fn oidc_callback(listener: &tokio::net::TcpListener) -> Result<(String, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let (mut sock, _) = listener.accept().await?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 2048];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
            let n = sock.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let head = String::from_utf8_lossy(&buf);
        let target = head
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("GET "))
            .and_then(|l| l.split(' ').next())
            .unwrap_or_default()
            .to_string();
        let reply = |text: &str| {
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\nconnection: close\r\n\r\n\
                 <!doctype html><title>nuage</title><p>{text}</p>"
            )
        };
        if !target.starts_with("/callback") {
            let _ = sock
                .write_all(b"HTTP/1.1 404 Not Found\r\nconnection: close\r\n\r\n")
                .await;
            continue;
        }
        let url = reqwest::Url::parse(&format!("http://127.0.0.1{target}"))?;
        let param = |name: &str| {
            url.query_pairs()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.to_string())
        };
        if let Some(err) = param("error") {
            let _ = sock
                .write_all(reply("The login failed; see the terminal.").as_bytes())
                .await;
            let why = param("error_description").unwrap_or_default();
            return Err(anyhow!(
                "the identity provider refused the login: {err} {why}"
            ));
        }
        let (Some(code), Some(state)) = (param("code"), param("state")) else {
            let _ = sock
                .write_all(reply("This is not a login answer.").as_bytes())
                .await;
            continue;
        };
        let _ = sock
            .write_all(reply("Logged in to nuage. You can close this window.").as_bytes())
            .await;
        return Ok((code, state));
    }
}

/// Exchanges a password (and a TOTP code) for a session token; returns the
/// token and a `WhoAmI`-shaped description of the caller.
async fn password_login(
    ctx: &Ctx,
    api: &Api,
    realm: Realm,
    args: &LoginArgs,
) -> Result<(String, Value)> {
    let org = match realm {
        Realm::Tenant => Some(ctx.org(&args.org).map_err(|_| {
            anyhow!("which organization? pass --org (or set NUAGE_ORG) to log in with a password")
        })?),
        Realm::Admin => None,
    };
    let user = match &args.user {
        Some(u) => u.clone(),
        None if args.password_stdin => {
            return Err(anyhow!("--password-stdin needs --user"));
        }
        None => secret::ask(if realm.is_admin() { "Operator" } else { "User" })?,
    };
    if api.base().scheme() == "http" && !is_loopback(api.base()) {
        eprintln!(
            "warning: sending a password over plain HTTP to {}",
            display_url(api.base())
        );
    }
    let password = secret::obtain(args.password_stdin, "Password", false)?;
    let mut totp = args.totp.clone();
    let mut path = realm.prefix().to_vec();
    path.push("login");
    loop {
        let answer = match (realm, &org) {
            (Realm::Tenant, Some(org)) => {
                let body = Login {
                    org: org.clone(),
                    user: user.clone(),
                    password: password.clone(),
                    totp: totp.clone(),
                };
                api.post(&path, &body).await
            }
            _ => {
                let body = OperatorLogin {
                    name: user.clone(),
                    password: password.clone(),
                    totp: totp.clone(),
                };
                api.post(&path, &body).await
            }
        };
        match answer {
            Ok(value) => return session_of(&value),
            Err(err) => {
                let needs_code = err
                    .downcast_ref::<ApiProblem>()
                    .is_some_and(|p| p.code == "mfa_required");
                if needs_code && totp.is_none() {
                    if let Ok(code) = secret::prompt("TOTP code") {
                        totp = Some(code);
                        continue;
                    }
                }
                return Err(err);
            }
        }
    }
}

pub async fn logout(ctx: &mut Ctx, args: LogoutArgs) -> Result<u8> {
    let realm = Realm::from_admin(args.admin);
    let saved = match realm {
        Realm::Tenant => ctx.creds.token.take(),
        Realm::Admin => ctx.creds.admin_token.take(),
    };
    let Some(token) = saved else {
        output::done(ctx.json, "Not logged in.");
        return Ok(exit::OK);
    };
    if let Err(e) = end_session(ctx, realm, token).await {
        eprintln!(
            "note: the session could not be ended on the server ({e:#}); it expires on its own"
        );
    }
    ctx.creds.save(&ctx.dir)?;
    let env = if realm.is_admin() {
        "NUAGE_ADMIN_TOKEN"
    } else {
        "NUAGE_TOKEN"
    };
    if std::env::var_os(env).is_some() {
        eprintln!("note: {env} is still set in the environment and will still be used");
    }
    output::done(ctx.json, "Logged out.");
    Ok(exit::OK)
}

/// Revokes the saved token when it is a session from a password login; API
/// tokens given with `--token` stay valid, since they may be used elsewhere.
async fn end_session(ctx: &Ctx, realm: Realm, token: String) -> Result<()> {
    let api = Api::new(
        &ctx.url_or_default(realm),
        Some(token),
        ctx.config.ca_cert.as_deref(),
        realm.is_admin(),
    )?;
    let me = api.get(&me_path(realm), &Query::new()).await?;
    let token_id = output::text(&me, "token_id");
    let org: String;
    let token_path: Vec<&str> = match realm {
        Realm::Tenant => {
            org = org_name_of(&api, &output::text(&me, "principal.org_id"))
                .await?
                .ok_or_else(|| anyhow!("the token's organization is not visible"))?;
            vec!["v1", "orgs", &org, "tokens", &token_id]
        }
        Realm::Admin => vec!["admin", "v1", "tokens", &token_id],
    };
    let kind = match realm {
        Realm::Tenant => output::text(&api.get(&token_path, &Query::new()).await?, "kind"),
        Realm::Admin => {
            let mut q = Query::new();
            q.set("limit", 1000);
            let list = api.get(&["admin", "v1", "tokens"], &q).await?;
            list.get("items")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|t| t.get("id").and_then(Value::as_str) == Some(token_id.as_str()))
                .map(|t| output::text(t, "kind"))
                .unwrap_or_default()
        }
    };
    if kind == "session" {
        api.delete(&token_path, None).await?;
    }
    Ok(())
}

pub async fn whoami(ctx: &mut Ctx, args: WhoamiArgs) -> Result<u8> {
    let realm = Realm::from_admin(args.admin);
    let api = ctx.api(realm)?;
    let me = api.get(&me_path(realm), &Query::new()).await?;
    if ctx.json {
        output::json(&me);
        return Ok(exit::OK);
    }
    let mut shown = me.clone();
    if let Value::Object(map) = &mut shown {
        map.insert("server".into(), json!(display_url(api.base())));
        if !realm.is_admin() {
            map.insert("org".into(), json!(ctx.config.org.clone()));
        }
    }
    let fields: Vec<Field> = WHOAMI
        .iter()
        .copied()
        .filter(|(label, _)| !(realm.is_admin() && *label == "organization"))
        .collect();
    output::show(false, &shown, &fields);
    Ok(exit::OK)
}

pub async fn mfa(ctx: &mut Ctx, realm: Realm, cmd: MfaCmd) -> Result<u8> {
    let api = ctx.api(realm)?;
    let mut path = me_path(realm);
    path.push("mfa");
    match cmd {
        MfaCmd::Enroll => {
            let answer = api.post_empty(&path).await?;
            if ctx.json {
                output::json(&answer);
                return Ok(exit::OK);
            }
            let enrolment: TotpEnrollment = serde_json::from_value(answer)
                .context("the server answered the enrolment with an unexpected body")?;
            let confirm = if realm.is_admin() {
                "nuage admin mfa confirm <CODE>"
            } else {
                "nuage mfa confirm <CODE>"
            };
            println!("secret:      {}", enrolment.secret);
            println!("otpauth URL: {}", enrolment.otpauth_url);
            eprintln!(
                "Add the secret (or the URL, as a QR code) to an authenticator app, then run `{confirm}`.\n\
                 The secret is shown only this once."
            );
        }
        MfaCmd::Confirm { code } => {
            path.push("confirm");
            api.post(&path, &TotpCode { code }).await?;
            output::done(
                ctx.json,
                "Second factor enabled. Log in again with --totp to get a session that passed it.",
            );
        }
    }
    Ok(exit::OK)
}

pub async fn password(ctx: &mut Ctx, realm: Realm, args: PasswordArgs) -> Result<u8> {
    let PasswordCmd::Change { stdin } = args.cmd;
    let api = ctx.api(realm)?;
    let (current_password, password) = if stdin {
        let mut lines = secret::stdin_lines(2)?;
        let new = lines.remove(1);
        (lines.remove(0), new)
    } else {
        (
            secret::prompt("Current password")?,
            secret::prompt_new("New password")?,
        )
    };
    let mut path = me_path(realm);
    path.push("password");
    api.put(
        &path,
        &ChangePassword {
            current_password,
            password,
        },
    )
    .await?;
    output::done(ctx.json, "Password changed.");
    Ok(exit::OK)
}
