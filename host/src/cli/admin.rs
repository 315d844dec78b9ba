//! `runnel plugins`: requests to a running host's admin API.

use std::process::ExitCode;

use anyhow::Context as _;

use super::{Output, PluginsCommand};

/// `runnel plugins ...`: one request to a running host's admin API.
pub(super) async fn cmd_plugins(
    admin: String,
    token_env: String,
    output: Output,
    command: PluginsCommand,
) -> anyhow::Result<ExitCode> {
    let listing = matches!(command, PluginsCommand::List);
    let (method, path) = match &command {
        PluginsCommand::List => ("GET", "/plugins".to_string()),
        PluginsCommand::Reload { name } => ("POST", format!("/plugins/{name}/reload")),
        PluginsCommand::Promote { name } => ("POST", format!("/plugins/{name}/promote")),
        PluginsCommand::ReloadConfig => ("POST", "/config/reload".to_string()),
    };
    let token = std::env::var(&token_env).ok();
    let url = format!("{}{path}", admin.trim_end_matches('/'));
    let (ok, body) = tokio::task::spawn_blocking(move || call_admin(method, &url, token))
        .await
        .context("the admin client thread failed")??;
    match (
        ok && listing && output == Output::Table,
        serde_json::from_str(&body),
    ) {
        (true, Ok(plugins)) => print!("{}", plugins_table(&plugins)),
        _ => println!("{body}"),
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `GET /plugins` as a table: name, short version, state, handled /
/// failed / dead-lettered, reloads, last error.
fn plugins_table(plugins: &serde_json::Value) -> String {
    let rows: Vec<[String; 6]> = plugins
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|p| {
            let text = |v: &serde_json::Value| match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Null => String::new(),
                other => other.to_string(),
            };
            let c = &p["counters"];
            let version = text(&p["version"]);
            [
                text(&p["name"]),
                version.chars().take(12).collect(),
                text(&p["state"]),
                format!(
                    "{} / {} / {}",
                    text(&c["handled"]),
                    text(&c["failed"]),
                    text(&c["dead_lettered"])
                ),
                text(&p["reloads"]),
                text(&p["last_error"])
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string(),
            ]
        })
        .collect();
    let head = [
        "PLUGIN",
        "VERSION",
        "STATE",
        "HANDLED / FAILED / DEAD",
        "RELOADS",
        "LAST ERROR",
    ];
    let mut widths = head.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 6]| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            match i {
                5 => out.push_str(cell),
                _ => out.push_str(&format!("{cell:<w$}  ")),
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(head);
    for row in &rows {
        out.push_str(&line(row.each_ref().map(String::as_str)));
    }
    out
}

/// One request to the admin API; returns whether it succeeded and the body.
fn call_admin(method: &str, url: &str, token: Option<String>) -> anyhow::Result<(bool, String)> {
    let mut request = ureq::request(method, url).timeout(std::time::Duration::from_secs(120));
    if let Some(token) = token {
        request = request.set("Authorization", &format!("Bearer {token}"));
    }
    let response = match request.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => return Err(anyhow::anyhow!("{url}: {e}")),
    };
    let ok = response.status() < 300;
    Ok((ok, response.into_string().context("reading the answer")?))
}
