//! `nuage bench api`: measures the control plane under load, against a bare
//! axum handler returning the same JSON, in the same run and process, so the
//! figures compare like with like on whatever machine runs it.
//!
//! Scenarios: authenticated + authorized + audited `GET` of a project,
//! `POST` creating projects, both with `--clients` concurrent clients; and
//! listing `--projects` projects page by page.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::get;
use nuage_api::ServerConfig;
use nuage_core::model::Project;
use nuage_store::{Store, StoreOptions};
use serde_json::json;

use super::percentile;

#[derive(Debug, clap::Args)]
pub struct ApiArgs {
    /// Seconds each throughput scenario runs.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Projects to list page by page.
    #[arg(long, default_value_t = 100_000)]
    projects: usize,
    /// Page size of the listing scenario.
    #[arg(long, default_value_t = 100)]
    page_size: usize,
    /// SQLite durability of the server under test (`full` is the default of `nuage server`).
    #[arg(long, default_value = "full", value_parser = ["full", "normal"])]
    sqlite_sync: String,
    /// Also measure parts of the pipeline (probe, authentication + audit).
    #[arg(long)]
    breakdown: bool,
}

struct Figures {
    name: &'static str,
    requests: usize,
    errors: usize,
    rps: f64,
    p50: Duration,
    p99: Duration,
}

/// Runs `clients` loops of `call` for `seconds` and collects latencies.
async fn load<F, Fut>(name: &'static str, clients: usize, seconds: u64, call: F) -> Figures
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let call = Arc::new(call);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0;
            let mut i = 0;
            while Instant::now() < deadline {
                let t = Instant::now();
                if !call(c, i).await {
                    errors += 1;
                }
                lat.push(t.elapsed());
                i += 1;
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((l, e)) = t.await {
            all.extend(l);
            errors += e;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    Figures {
        name,
        requests: all.len(),
        errors,
        rps: all.len() as f64 / elapsed,
        p50: percentile(&all, 0.50),
        p99: percentile(&all, 0.99),
    }
}

/// True when the answer has the expected status and its body arrived whole.
async fn ok_body(r: reqwest::Result<reqwest::Response>, status: u16) -> bool {
    match r {
        Ok(r) if r.status().as_u16() == status => r.bytes().await.is_ok(),
        _ => false,
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

async fn bare_server(body: String) -> std::io::Result<SocketAddr> {
    let app = axum::Router::new().route(
        "/project",
        get(move || {
            let body = body.clone();
            async move { ([(http::header::CONTENT_TYPE, "application/json")], body) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(addr)
}

async fn seed(data_dir: &std::path::Path, org_id: &str, n: usize) -> Result<Duration, String> {
    let url = format!("sqlite://{}?mode=rwc", data_dir.join("nuage.db").display());
    let store = Store::open(
        &url,
        &StoreOptions {
            sqlite_sync_full: false,
            ..StoreOptions::default()
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let now = nuage_core::time::now_ms();
    for i in 0..n {
        let p = Project {
            id: nuage_core::id::new_id(nuage_core::id::Kind::Project),
            org_id: org_id.to_string(),
            name: format!("seed-{i:07}"),
            description: String::new(),
            labels: Default::default(),
            generation: 1,
            created_at: now,
            updated_at: now,
        };
        store
            .project_create(&p, i64::MAX)
            .await
            .map_err(|e| e.detail)?;
    }
    store.close().await;
    Ok(started.elapsed())
}

pub async fn run(a: ApiArgs) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let data_dir = dir.path().join("data");
    let start = |data_dir: std::path::PathBuf, sync_full: bool| async move {
        let mut cfg = ServerConfig::new(data_dir);
        cfg.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        cfg.admin_listen = SocketAddr::from(([127, 0, 0, 1], 0));
        cfg.s3_listen = SocketAddr::from(([127, 0, 0, 1], 0));
        cfg.sqlite_sync_full = sync_full;
        nuage_api::start(cfg).await.map_err(|e| e.to_string())
    };
    let sync_full = a.sqlite_sync == "full";
    println!(
        "nuage bench api: {} clients, {} s per scenario, SQLite synchronous={}",
        a.clients, a.seconds, a.sqlite_sync
    );
    println!(
        "machine: {} CPUs; client and server share them",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );

    let server = start(data_dir.clone(), sync_full).await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(a.clients)
        .build()
        .map_err(|e| e.to_string())?;
    let bootstrap = server.bootstrap_token.clone().ok_or("no bootstrap token")?;
    let admin = format!("http://{}", server.admin_addr);
    let tenant = format!("http://{}", server.tenant_addr);
    let created: serde_json::Value = http
        .post(format!("{admin}/admin/v1/orgs"))
        .bearer_auth(&bootstrap)
        .json(&json!({"name": "bench", "max_projects": 1_000_000, "owner": {"name": "owner"}}))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    let token = created["owner_token"]["secret"]
        .as_str()
        .ok_or_else(|| format!("organization not created: {created}"))?
        .to_string();
    let org_id = created["org"]["id"]
        .as_str()
        .ok_or("no org id")?
        .to_string();
    let project: serde_json::Value = http
        .post(format!("{tenant}/v1/orgs/bench/projects"))
        .bearer_auth(&token)
        .json(&json!({"name": "web", "description": "benchmark project"}))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    let bare = bare_server(project.to_string())
        .await
        .map_err(|e| e.to_string())?;

    let mut results = Vec::new();
    {
        let (h, url) = (http.clone(), format!("http://{bare}/project"));
        results.push(
            load(
                "bare axum GET (baseline)",
                a.clients,
                a.seconds,
                move |_, _| {
                    let (h, url) = (h.clone(), url.clone());
                    async move { ok_body(h.get(url).send().await, 200).await }
                },
            )
            .await,
        );
    }
    {
        let (h, url, t) = (
            http.clone(),
            format!("{tenant}/v1/orgs/bench/projects/web"),
            token.clone(),
        );
        results.push(
            load("audited GET project", a.clients, a.seconds, move |_, _| {
                let (h, url, t) = (h.clone(), url.clone(), t.clone());
                async move { ok_body(h.get(url).bearer_auth(t).send().await, 200).await }
            })
            .await,
        );
    }
    {
        let (h, url, t) = (
            http.clone(),
            format!("{tenant}/v1/orgs/bench/projects"),
            token.clone(),
        );
        results.push(
            load("audited POST project", a.clients, a.seconds, move |c, i| {
                let (h, url, t) = (h.clone(), url.clone(), t.clone());
                async move {
                    let body = json!({"name": format!("c{c}-{i}")});
                    ok_body(h.post(url).bearer_auth(t).json(&body).send().await, 201).await
                }
            })
            .await,
        );
    }
    if a.breakdown {
        // Diagnostics: the same pipeline with fewer parts, to see what costs.
        let (h, url) = (http.clone(), format!("{tenant}/healthz"));
        results.push(
            load(
                "  /healthz (no auth, no audit)",
                a.clients,
                a.seconds,
                move |_, _| {
                    let (h, url) = (h.clone(), url.clone());
                    async move { ok_body(h.get(url).send().await, 200).await }
                },
            )
            .await,
        );
        let (h, url, t) = (http.clone(), format!("{tenant}/v1/me"), token.clone());
        results.push(
            load(
                "  /v1/me (auth + audit)",
                a.clients,
                a.seconds,
                move |_, _| {
                    let (h, url, t) = (h.clone(), url.clone(), t.clone());
                    async move { ok_body(h.get(url).bearer_auth(t).send().await, 200).await }
                },
            )
            .await,
        );
    }
    server.shutdown().await;

    println!();
    println!(
        "{:<28} {:>10} {:>8} {:>12} {:>10} {:>10}",
        "scenario", "requests", "errors", "req/s", "p50", "p99"
    );
    for f in &results {
        println!(
            "{:<28} {:>10} {:>8} {:>12.0} {:>10} {:>10}",
            f.name,
            f.requests,
            f.errors,
            f.rps,
            ms(f.p50),
            ms(f.p99)
        );
    }
    let (bare_rps, get, post) = (results[0].rps, &results[1], &results[2]);
    let ratio = get.rps / bare_rps * 100.0;
    println!();
    println!(
        "audited GET reaches {ratio:.1} % of the bare handler's throughput (goal ≥ 30 %): {}",
        if ratio >= 30.0 { "met" } else { "NOT met" }
    );
    println!(
        "audited GET p99 {} (goal < 10 ms): {}",
        ms(get.p99),
        if get.p99 < Duration::from_millis(10) {
            "met"
        } else {
            "NOT met"
        }
    );
    println!(
        "audited POST {:.0}/s (goal ≥ 2000/s): {}",
        post.rps,
        if post.rps >= 2000.0 { "met" } else { "NOT met" }
    );

    // Listing many projects, page by page.
    println!();
    println!("seeding {} projects …", a.projects);
    let took = seed(&data_dir, &org_id, a.projects).await?;
    println!("seeded in {:.1} s", took.as_secs_f64());
    let server = start(data_dir.clone(), sync_full).await?;
    let tenant = format!("http://{}", server.tenant_addr);
    let mut lat = Vec::new();
    let mut seen = 0usize;
    let mut url = format!("{tenant}/v1/orgs/bench/projects?limit={}", a.page_size);
    loop {
        let t = Instant::now();
        let page: serde_json::Value = http
            .get(&url)
            .bearer_auth(&token)
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        lat.push(t.elapsed());
        seen += page["items"].as_array().map(|v| v.len()).unwrap_or(0);
        match page["next_page_token"].as_str() {
            Some(tok) => {
                url = format!(
                    "{tenant}/v1/orgs/bench/projects?limit={}&page_token={tok}",
                    a.page_size
                )
            }
            None => break,
        }
    }
    server.shutdown().await;
    lat.sort();
    let p99 = percentile(&lat, 0.99);
    println!(
        "listed {seen} projects in {} pages of {}: p50 {}, p99 {}, max {} (goal p99 < 50 ms): {}",
        lat.len(),
        a.page_size,
        ms(percentile(&lat, 0.5)),
        ms(p99),
        ms(lat.last().copied().unwrap_or_default()),
        if p99 < Duration::from_millis(50) {
            "met"
        } else {
            "NOT met"
        }
    );
    Ok(())
}
