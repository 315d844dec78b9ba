//! The `runnel` command line, in the library so that tests can run the very
//! same binary logic (see `tests/src/bin`).

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, EngineConfig};
use crate::dead_letter::DeadLetterRecord;
use crate::plugin::{self, PluginEngine};
use crate::runtime::{summary_table, Runtime};

/// Runs sandboxed WebAssembly event handlers over pub/sub streams.
#[derive(Parser)]
#[command(name = "runnel", version)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the host as a service until SIGINT or SIGTERM.
    Run {
        #[arg(long, default_value = "runnel.toml")]
        config: PathBuf,
        /// NDJSON events to inject (`-` for stdin): envelopes or
        /// {"name", "payload"[, "stream"]} lines.
        #[arg(long)]
        input: Option<String>,
        /// Exit once every event is handled, printing a summary per plugin.
        #[arg(long)]
        exit_when_idle: bool,
    },
    /// Checks that a component implements the handler world, and shows what
    /// it imports and exports.
    Check { plugin: PathBuf },
    /// Measures events/s through the dispatcher: native Rust, wasm with warm
    /// instances, wasm with a fresh instance per event.
    Bench(crate::bench::BenchArgs),
}

/// Parses the process arguments and runs the command; errors are printed as
/// one line and give a non-zero exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(anyhow::anyhow!("starting the async runtime: {e}")),
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => fail(e),
    }
}

fn fail(e: anyhow::Error) -> ExitCode {
    eprintln!("error: {e:#}");
    ExitCode::FAILURE
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUNNEL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run {
            config,
            input,
            exit_when_idle,
        } => run(config, input, exit_when_idle).await,
        Command::Check { plugin } => check(plugin),
        Command::Bench(args) => {
            print!("{}", crate::bench::run(args).await?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn run(
    config_path: PathBuf,
    input: Option<String>,
    exit_when_idle: bool,
) -> anyhow::Result<ExitCode> {
    let config = Config::load(&config_path)?;
    let runtime = Runtime::from_config(config).await?;
    let shutdown = CancellationToken::new();
    let mut tasks = runtime.start(&shutdown).await?;
    tokio::spawn(stop_on_signals(shutdown.clone()));

    if let Some(input) = input {
        let text = if input == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading events from stdin")?;
            text
        } else {
            std::fs::read_to_string(&input).with_context(|| format!("{input}: cannot read"))?
        };
        let events = crate::input::parse(&text).with_context(|| input.clone())?;
        let count = events.len();
        for (i, e) in events.into_iter().enumerate() {
            let stream = match e.stream {
                Some(s) => s,
                None => runtime
                    .config
                    .routes
                    .require(&e.event.name)
                    .map_err(|m| anyhow::anyhow!("{input}: event {}: {m}", i + 1))?
                    .to_string(),
            };
            runtime.publisher.publish(&[(stream, e.event)]).await?;
        }
        tracing::info!("injected {count} events from {input}");
    }
    if exit_when_idle {
        tokio::select! {
            r = runtime.wait_idle() => r?,
            _ = shutdown.cancelled() => {}
        }
        shutdown.cancel();
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    print!("{}", summary_table(&runtime.summary()));
    if exit_when_idle {
        print_dead_letters(&runtime).await?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Lists what was dead-lettered on the plugins' streams: with the in-memory
/// backend, the last chance to see it.
async fn print_dead_letters(runtime: &Runtime) -> anyhow::Result<()> {
    let mut streams: Vec<String> = runtime
        .plugins
        .iter()
        .flat_map(|p| p.config.streams.iter())
        .map(|s| runtime.config.dead_letter_stream(s))
        .collect();
    streams.sort();
    streams.dedup();
    for stream in streams {
        let entries = runtime.broker.range(&stream, None, None, 100).await?;
        if entries.is_empty() {
            continue;
        }
        println!("\ndead letters on {stream}:");
        for entry in &entries {
            let r = DeadLetterRecord::from_entry(entry);
            println!(
                "  {} plugin={} kind={} attempts={}: {}",
                r.id, r.plugin, r.kind, r.attempts, r.reason
            );
        }
    }
    Ok(())
}

/// First SIGINT/SIGTERM: stop taking events and drain. Second: exit now.
async fn stop_on_signals(shutdown: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot listen for SIGTERM: {e}");
            return;
        }
    };
    for round in 0..2 {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        if round == 0 {
            tracing::info!("shutting down: finishing in-flight events (signal again to exit now)");
            shutdown.cancel();
        } else {
            tracing::warn!("second signal: exiting without draining");
            std::process::exit(130);
        }
    }
}

fn check(path: PathBuf) -> anyhow::Result<ExitCode> {
    let engine = PluginEngine::new(&EngineConfig {
        max_instances: 4,
        ..EngineConfig::default()
    })?;
    let interface = plugin::check(&engine, &path)?;
    println!("{}: ok, implements runnel:plugin/handler", path.display());
    println!("  exports: {}", interface.exports.join(", "));
    println!("  imports: {}", interface.imports.join(", "));
    Ok(ExitCode::SUCCESS)
}
