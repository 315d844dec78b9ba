//! The `runnel` command line, in the library so that tests can run the very
//! same binary logic (see `tests/src/bin`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use crate::broker::redis::{Endpoint, RedisBroker, TlsFiles, Trimming};
use crate::service::{Service, ServiceOptions};
use crate::stats::summary_table;

mod admin;
mod authoring;
mod operate;

/// `runnel --version`: the release and the plugin contracts it serves
/// (a literal, as clap wants; a test checks it against
/// [`plugin::CONTRACT`]).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (plugin contract runnel:plugin@0.2.0; also serves runnel:plugin@0.1.0)"
);

/// What `runnel --version` prints after the name.
pub fn version() -> &'static str {
    VERSION
}

/// Runs sandboxed WebAssembly event handlers over pub/sub streams.
#[derive(Parser)]
#[command(name = "runnel", version = VERSION)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Worker threads of the async runtime. Default: one per core, one
    /// fewer when `run` or `bench` uses a Redis server on this machine
    /// (loopback or Unix socket), which then keeps a core to itself.
    #[arg(long, global = true, env = "RUNNEL_THREADS")]
    threads: Option<std::num::NonZeroUsize>,
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
    Run(RunArgs),
    /// Talks to a running host's admin API: list, reload or promote plugins,
    /// reload its config.
    Plugins {
        /// The admin API's base URL (before or after the subcommand).
        #[arg(long, global = true, default_value = "http://127.0.0.1:9464")]
        admin: String,
        /// Environment variable holding the admin token, if one is set.
        #[arg(long, global = true, default_value = "RUNNEL_ADMIN_TOKEN")]
        token_env: String,
        /// `table` for people, `json` for machines (the API's answer).
        #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
        output: Output,
        #[command(subcommand)]
        command: PluginsCommand,
    },
    /// Checks that a component implements the handler world, and shows what
    /// it imports and exports.
    Check {
        plugin: PathBuf,
        /// Also show which of its capabilities this config grants the
        /// plugins that load the file.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Prints a shell completion script: `runnel completions bash >
    /// /etc/bash_completion.d/runnel`, or `source <(runnel completions
    /// bash)` in a shell.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Prints the man page (roff): `runnel man > runnel.1; man ./runnel.1`.
    Man,
    /// Makes a new plugin project: handler, SDK, WIT contract, build
    /// script, sample events and config.
    New {
        #[arg(long, value_enum)]
        lang: crate::commands::scaffold::Lang,
        /// The plugin's name (lowercase letters, digits, '-').
        name: String,
        /// Where to create the project's directory.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Runs a plugin over events from a file, in process (no backend), and
    /// prints each attempt's verdict, logs and emitted events.
    Test(TestArgs),
    /// Measures events/s through the dispatcher: native Rust, wasm with warm
    /// instances, wasm with a fresh instance per event.
    #[cfg(feature = "bench")]
    Bench(crate::bench::BenchArgs),
    /// Publishes events to Redis: one from --name/--payload, or NDJSON on stdin.
    Emit(EmitArgs),
    /// Inspects and replays dead letters.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Runs a plugin over a range of a stream in dry-run mode: prints each
    /// event's verdict, what it would emit and its logs. Publishes and acks
    /// nothing.
    Replay {
        #[command(flatten)]
        redis: RedisArgs,
        #[arg(long)]
        stream: String,
        /// First entry id (inclusive); default the oldest.
        #[arg(long)]
        from: Option<String>,
        /// Last entry id (inclusive); default the newest.
        #[arg(long)]
        to: Option<String>,
        #[arg(long, default_value_t = 100)]
        count: usize,
        plugin: PathBuf,
    },
}

/// `runnel run`'s flags.
#[derive(clap::Args)]
struct RunArgs {
    #[arg(long, default_value = "runnel.toml")]
    config: PathBuf,
    /// NDJSON events to inject (`-` for stdin): envelopes or
    /// {"name", "payload"[, "stream"]} lines.
    #[arg(long)]
    input: Option<String>,
    /// Exit once every event is handled, printing a summary per plugin.
    #[arg(long)]
    exit_when_idle: bool,
    /// Serve the admin API on this address (e.g. 127.0.0.1:9464; port 0
    /// picks a free one), overriding the config's `[admin] listen`.
    #[arg(long)]
    admin: Option<std::net::SocketAddr>,
    /// Exit with an error if the backend does not answer at start (for
    /// batch jobs); by default a service waits for it, not ready meanwhile.
    #[arg(long)]
    fail_fast: bool,
}

/// `runnel test`'s flags.
#[derive(clap::Args)]
struct TestArgs {
    plugin: PathBuf,
    /// NDJSON events, as `run --input` reads them. Shorthand lines get
    /// the id `event-N` and a fixed time, so that reports are the same
    /// from run to run.
    #[arg(long)]
    events: PathBuf,
    /// Compare the report with this file; exit 1 on a difference.
    /// (Write it first with `runnel test ... > FILE`.)
    #[arg(long)]
    expect: Option<PathBuf>,
    /// Run the plugin as this config runs it: its grants, limits, config
    /// values and secrets, `max_attempts` and `timeout_ms` (the flags below
    /// add to or override them). The plugin is the `[[plugin]]` that loads
    /// the file, or the one `--plugin` names.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Which `[[plugin]]` of `--config` to take the settings of.
    #[arg(long = "plugin", value_name = "NAME", requires = "config")]
    plugin_name: Option<String>,
    /// Attempts per event (default 1, or the config's); failures are
    /// retried at once.
    #[arg(long)]
    max_attempts: Option<u32>,
    /// Time limit of a call (default 5000, or the config's).
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Let the plugin's stdout/stderr through to the log.
    #[arg(long)]
    grant_stdio: bool,
    /// Grant a key-value bucket (repeatable), as `kv = [...]` would.
    #[arg(long, value_name = "BUCKET")]
    grant_kv: Vec<String>,
    /// Key-value state to start from: a JSON object of buckets, each an
    /// object of keys to string values (`{"counts": {"count:a": "41"}}`).
    #[arg(long, value_name = "FILE")]
    kv: Option<PathBuf>,
    /// Commit each successful call's key-value writes, so that later
    /// events see them. Off by default: like a dry run, the report shows
    /// the writes and nothing is kept.
    #[arg(long)]
    kv_commit: bool,
    /// Allow HTTP requests to this scheme://host[:port] (repeatable), as
    /// `http = [...]` would.
    #[arg(long, value_name = "URL")]
    grant_http: Vec<String>,
    /// Answer the plugin's HTTP requests from this JSON file instead of the
    /// network: `[{"request": "GET http://prices.local/sku/1", "status": 200,
    /// "json": {"price": 12}}]`. Requests still need --grant-http.
    #[arg(long, value_name = "FILE")]
    http: Option<PathBuf>,
}

/// `runnel emit`'s flags.
#[derive(clap::Args)]
struct EmitArgs {
    #[command(flatten)]
    redis: RedisArgs,
    /// Stream to append to (lines of NDJSON may name their own).
    #[arg(long)]
    stream: Option<String>,
    /// Event name; without it, events are read as NDJSON from stdin.
    #[arg(long)]
    name: Option<String>,
    /// JSON payload.
    #[arg(long, conflicts_with = "payload_file")]
    payload: Option<String>,
    /// File whose bytes are the payload.
    #[arg(long)]
    payload_file: Option<PathBuf>,
    #[arg(long, default_value = "")]
    correlation_id: String,
    #[arg(long)]
    dry_run: bool,
}

/// Which Redis a tool talks to; shared by every command that does.
#[derive(clap::Args)]
struct RedisArgs {
    /// `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS.
    #[arg(
        long = "redis",
        env = "RUNNEL_REDIS",
        default_value = "redis://127.0.0.1:6379"
    )]
    url: String,
    /// A Redis Cluster instead, named by seed nodes: comma-separated URLs
    /// (`redis://10.0.0.1:7000,redis://10.0.0.2:7000`).
    #[arg(
        long = "redis-cluster",
        env = "RUNNEL_REDIS_CLUSTER",
        value_delimiter = ',',
        conflicts_with = "url"
    )]
    cluster: Vec<String>,
    /// TLS: the CA that signed the server's certificate (PEM), instead of
    /// the system's roots.
    #[arg(long, env = "RUNNEL_REDIS_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// TLS: this client's certificate (PEM), for mutual TLS.
    #[arg(long, env = "RUNNEL_REDIS_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS: the client certificate's key (PEM).
    #[arg(long, env = "RUNNEL_REDIS_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// TLS: accept any server certificate (a test server only).
    #[arg(long)]
    tls_insecure: bool,
}

impl RedisArgs {
    async fn connect(&self) -> anyhow::Result<Arc<RedisBroker>> {
        let tls = TlsFiles {
            ca_file: self.tls_ca.clone(),
            cert_file: self.tls_cert.clone(),
            key_file: self.tls_key.clone(),
            insecure_skip_verify: self.tls_insecure,
        };
        let endpoint = match self.cluster.is_empty() {
            true => Endpoint::Server(self.url.clone()),
            false => Endpoint::Cluster(self.cluster.clone()),
        };
        RedisBroker::open(&endpoint, Trimming::default(), &tls).await
    }
}

/// How a listing prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    /// Aligned columns, for people.
    Table,
    /// JSON, for machines.
    Json,
}

#[derive(Subcommand)]
enum PluginsCommand {
    /// Shows each plugin's version, counters, reloads and last error.
    List,
    /// Reloads a plugin from its file now.
    Reload { name: String },
    /// Makes a shadow's version the live one.
    Promote { name: String },
    /// Re-reads the host's config file and applies plugin settings.
    ReloadConfig,
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Lists the entries of a dead-letter stream.
    List {
        #[command(flatten)]
        redis: RedisArgs,
        /// The dead-letter stream (by default `<stream>.dead`).
        #[arg(long)]
        stream: String,
        #[arg(long, default_value_t = 100)]
        count: usize,
        /// `table` for people, `json` for machines (an array of letters).
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Hands dead letters back to the consumer group that failed each (its
    /// replay stream; no other group sees them) and removes them here.
    Replay {
        #[command(flatten)]
        redis: RedisArgs,
        #[arg(long)]
        stream: String,
        /// Entry ids to replay; all of them when none is given.
        #[arg(long = "id")]
        ids: Vec<String>,
        /// The group for dead letters that do not name theirs (written by
        /// an older runnel).
        #[arg(long)]
        group: Option<String>,
    },
}

/// Parses the process arguments and runs the command; errors are printed as
/// one line and give a non-zero exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Traces go through the log's subscriber, so they are set up with it,
    // before the async runtime. A config that does not load is reported by
    // `run` itself.
    let config = match &cli.command {
        Command::Run(args) => crate::config::Config::load(&args.config).ok(),
        _ => None,
    };
    let exporting = match &config {
        Some(config) => match crate::telemetry::start(&config.telemetry) {
            Ok(started) => started,
            Err(e) => return fail(e),
        },
        None => None,
    };
    let (export, exporting) = exporting.unzip();
    init_logging(cli.log_format, export);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(match cli.threads {
        Some(threads) => threads.get(),
        None => default_workers(&cli.command, config.as_ref()),
    });
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(anyhow::anyhow!("starting the async runtime: {e}")),
    };
    let outcome = runtime.block_on(dispatch(cli.command));
    if let Some(exporting) = exporting {
        exporting.shutdown();
    }
    match outcome {
        Ok(code) => code,
        Err(e) => fail(e),
    }
}

/// Worker threads when `--threads` is not given: see [`crate::workers`].
/// `run` takes its Redis servers from the config, `bench` from its flags.
fn default_workers(command: &Command, config: Option<&crate::config::Config>) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let urls: Vec<&str> = match (command, config) {
        (Command::Run(_), Some(config)) => match &config.backend {
            crate::config::Backend::Redis(redis) => redis
                .url
                .iter()
                .chain(&redis.cluster)
                .map(String::as_str)
                .collect(),
            crate::config::Backend::Memory { .. } => Vec::new(),
        },
        #[cfg(feature = "bench")]
        (Command::Bench(args), _) => args
            .redis
            .iter()
            .chain(&args.redis_cluster)
            .map(String::as_str)
            .collect(),
        _ => Vec::new(),
    };
    let workers = crate::workers::default_workers(cores, urls);
    if let Some(why) = crate::workers::explain(cores, workers) {
        tracing::info!("{why}");
    }
    workers
}

fn fail(e: anyhow::Error) -> ExitCode {
    eprintln!("error: {}", crate::errors::one_line(&e));
    ExitCode::FAILURE
}

fn init_logging(format: LogFormat, export: Option<crate::telemetry::ExportLayer>) {
    use std::io::IsTerminal as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUNNEL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
        // The trace spans are for the exporter, not the log.
        .add_directive(
            format!("{}=off", crate::telemetry::TARGET)
                .parse()
                .expect("a valid directive"),
        );
    // NO_COLOR (https://no-color.org): set to anything, no colours.
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let log = tracing_subscriber::fmt::layer()
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    let log = match format {
        LogFormat::Text => log.boxed(),
        LogFormat::Json => log.json().boxed(),
    };
    tracing_subscriber::registry()
        .with(export)
        .with(log.with_filter(filter))
        .init();
}

async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run(args) => cmd_run(args).await,
        Command::Plugins {
            admin,
            token_env,
            output,
            command,
        } => admin::cmd_plugins(admin, token_env, output, command).await,
        Command::Check { plugin, config } => authoring::check(plugin, config),
        Command::Completions { shell } => {
            use clap::CommandFactory as _;
            let mut command = Cli::command();
            clap_complete::generate(shell, &mut command, "runnel", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => {
            use clap::CommandFactory as _;
            clap_mangen::Man::new(Cli::command())
                .render(&mut std::io::stdout())
                .context("writing the man page")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::New { lang, name, dir } => authoring::cmd_new(lang, name, dir),
        Command::Test(args) => authoring::cmd_test(args).await,
        #[cfg(feature = "bench")]
        Command::Bench(args) => {
            print!("{}", crate::bench::run(args).await?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Emit(args) => operate::cmd_emit(args).await,
        Command::Dlq { command } => operate::cmd_dlq(command).await,
        Command::Replay {
            redis,
            stream,
            from,
            to,
            count,
            plugin,
        } => {
            let broker = redis.connect().await?;
            let report = crate::commands::tools::replay(
                &*broker,
                &stream,
                from.as_deref(),
                to.as_deref(),
                count,
                &plugin,
            )
            .await?;
            print!("{report}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `runnel run`: the service until SIGINT/SIGTERM (or idle, if asked), then
/// its summary.
async fn cmd_run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let signalled = CancellationToken::new();
    install_signal_handlers(signalled.clone())?;
    let options = ServiceOptions {
        input: args.input,
        exit_when_idle: args.exit_when_idle,
        admin: args.admin,
        fail_fast: args.fail_fast,
    };
    let service = Service::start(args.config, options).await?;
    let runtime = service.runtime().clone();
    let report = service.run(signalled.cancelled_owned()).await?;
    print!("{}", summary_table(&report.summary));
    if args.exit_when_idle {
        print!("{}", Service::dead_letters(&runtime).await?);
        print!("{}", Service::key_values(&runtime).await?);
    }
    Ok(ExitCode::SUCCESS)
}

/// Listens for SIGINT and SIGTERM. The handlers are installed here, before
/// the service starts, so that a signal arriving early is never the default
/// "terminate at once".
fn install_signal_handlers(shutdown: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    tokio::spawn(async move {
        // First signal: stop taking events and drain. Second: exit now.
        for round in 0..2 {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            if round == 0 {
                tracing::info!(
                    "shutting down: finishing in-flight events (signal again to exit now)"
                );
                shutdown.cancel();
            } else {
                tracing::warn!("second signal: exiting without draining");
                std::process::exit(130);
            }
        }
    });
    Ok(())
}
