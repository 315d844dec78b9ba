//! Helpers for the end-to-end tests: where the compiled plugins are, a
//! recording wrapper around a handler, and a runtime built from TOML.

pub mod certs;
pub mod chaos;
pub mod contract;
pub mod http_server;
pub mod otlp;
pub mod redis_cluster;
pub mod redis_server;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use runnel::config::Config;
use runnel::event::Event;
use runnel::handler::{ErrorHandled, Failure, Handled, Handler};
use runnel::runtime::Runtime;
use tokio_util::sync::CancellationToken;

/// The compiled `.wasm` of a plugin in `plugins/rust` (crate name with `_`).
pub fn plugin(name: &str) -> PathBuf {
    // From the same checkout as `repo_root`, which `tests/build.rs` built
    // them in: a path baked in by a build script could name another
    // checkout that shares the target directory.
    repo_root()
        .join("plugins/target/wasm32-wasip2/release")
        .join(format!("{name}.wasm"))
}

/// The repository's root, for examples.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// One call a [`Recorder`] saw.
#[derive(Clone, Debug)]
pub enum Call {
    Handle {
        event: Event,
        result: Handled,
    },
    HandleError {
        failure: Failure,
        event: Option<Event>,
        result: ErrorHandled,
    },
}

/// Wraps a handler and records every call and its result.
pub struct Recorder {
    inner: Arc<dyn Handler>,
    pub calls: Mutex<Vec<Call>>,
}

impl Recorder {
    pub fn new(inner: Arc<dyn Handler>) -> Arc<Self> {
        Arc::new(Recorder {
            inner,
            calls: Mutex::new(Vec::new()),
        })
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
}

#[async_trait]
impl Handler for Recorder {
    async fn handle(&self, event: &Event) -> Handled {
        let result = self.inner.handle(event).await;
        self.calls.lock().unwrap().push(Call::Handle {
            event: event.clone(),
            result: result.clone(),
        });
        result
    }

    async fn handle_error(&self, failure: &Failure, event: Option<&Event>) -> ErrorHandled {
        let result = self.inner.handle_error(failure, event).await;
        self.calls.lock().unwrap().push(Call::HandleError {
            failure: failure.clone(),
            event: event.cloned(),
            result: result.clone(),
        });
        result
    }
}

/// A started runtime whose plugins are wrapped in recorders.
pub struct Running {
    pub runtime: Runtime,
    pub recorders: Vec<Arc<Recorder>>,
    pub shutdown: CancellationToken,
    tasks: tokio::task::JoinSet<anyhow::Result<()>>,
}

/// Loads a config from TOML text (plugin paths `@name` are replaced by the
/// compiled plugin's path) and starts it.
pub async fn start(toml: &str) -> anyhow::Result<Running> {
    let text = expand_plugins(toml);
    let config = Config::parse(&text, std::path::Path::new("test.toml"))?;
    let mut runtime = Runtime::from_config(config).await?;
    let mut recorders = Vec::new();
    for p in &mut runtime.plugins {
        let recorder = Recorder::new(p.handler.clone());
        p.handler = recorder.clone();
        recorders.push(recorder);
    }
    let shutdown = CancellationToken::new();
    let tasks = runtime.start(&shutdown).await?;
    Ok(Running {
        runtime,
        recorders,
        shutdown,
        tasks,
    })
}

/// Replaces `@name` in `path = "@name"` with the compiled plugin's path.
pub fn expand_plugins(toml: &str) -> String {
    let mut out = String::new();
    for line in toml.lines() {
        match line.trim().strip_prefix("path = \"@") {
            Some(rest) => {
                let name = rest.trim_end_matches('"');
                out.push_str(&format!(
                    "path = {:?}\n",
                    plugin(name).display().to_string()
                ));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

impl Running {
    /// Emits events to a stream, bypassing routes.
    pub async fn inject(&self, stream: &str, events: Vec<Event>) -> anyhow::Result<()> {
        let routed: Vec<_> = events
            .into_iter()
            .map(|event| runnel::handler::Routed {
                stream: stream.to_string(),
                event,
            })
            .collect();
        self.runtime.publisher.publish(&routed).await
    }

    /// Waits until everything is handled, failing after `limit`.
    pub async fn idle_within(&self, limit: Duration) -> anyhow::Result<()> {
        tokio::time::timeout(limit, self.runtime.wait_idle())
            .await
            .map_err(|_| anyhow::anyhow!("not idle after {limit:?}"))?
    }

    /// Stops the subscribers and waits for them to drain.
    pub async fn stop(mut self) -> anyhow::Result<Runtime> {
        self.shutdown.cancel();
        while let Some(done) = self.tasks.join_next().await {
            done??;
        }
        Ok(self.runtime)
    }

    /// The entries of a stream, decoded as events.
    pub async fn events_on(&self, stream: &str) -> Vec<Event> {
        self.runtime
            .broker
            .range(stream, None, None, usize::MAX)
            .await
            .unwrap()
            .iter()
            .map(|e| Event::from_json(&e.fields[0].1).unwrap())
            .collect()
    }
}

/// A name no other test (or earlier run) uses, for streams and groups on the
/// shared Redis server.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// The Redis every test uses (the machine's own), overridable for other setups.
pub fn redis_url() -> String {
    std::env::var("RUNNEL_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A Redis broker for `url`, as a test talks to it.
pub async fn broker(url: &str) -> Arc<runnel::broker::redis::RedisBroker> {
    runnel::broker::redis::RedisBroker::connect(url, runnel::broker::redis::Trimming::default())
        .await
        .unwrap()
}

/// A broker on the cluster the tests share ([`redis_cluster::shared`]).
pub async fn cluster_broker() -> Arc<runnel::broker::redis::RedisBroker> {
    let seeds = redis_cluster::shared().seeds();
    runnel::broker::redis::RedisBroker::open(
        &runnel::broker::redis::Endpoint::Cluster(seeds),
        runnel::broker::redis::Trimming::default(),
        &Default::default(),
    )
    .await
    .unwrap()
}

/// A connection for talking to Redis directly, as another program would.
pub async fn redis_conn() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("Redis must answer on 127.0.0.1:6379 (scripts/setup.sh starts it)")
}

/// The log lines of a handle-error call result.
pub fn logs(result: &ErrorHandled) -> Vec<String> {
    result
        .as_ref()
        .map(|logs| logs.iter().map(|line| line.text.clone()).collect())
        .unwrap_or_default()
}

/// A `runnel` process under test, its stderr read line by line.
pub struct Process {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    /// Every stderr line seen so far, for failure messages.
    pub seen: Vec<String>,
}

impl Process {
    /// Starts `runnel run --config <config>` with the given log filter.
    pub fn run(bin: &std::path::Path, config: &std::path::Path, log: &str) -> Process {
        Process::run_with(bin, config, log, &[])
    }

    /// Like [`Process::run`], with environment variables set.
    pub fn run_with(
        bin: &std::path::Path,
        config: &std::path::Path,
        log: &str,
        env: &[(&str, &str)],
    ) -> Process {
        let mut command = std::process::Command::new(bin);
        command
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("RUNNEL_LOG", log)
            .envs(env.iter().copied());
        Process::spawn(command)
    }

    /// Starts `command` (a `runnel` invocation of any shape), its stdout and
    /// stderr piped.
    pub fn spawn(mut command: std::process::Command) -> Process {
        use std::io::BufRead;
        let mut child = command
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("starting runnel");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Process {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a stderr line containing `needle` and returns it; panics
    /// after `limit`.
    pub fn wait_for(&mut self, needle: &str, limit: Duration) -> String {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(needle);
                    self.seen.push(line.clone());
                    if found {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line with {needle:?} within {limit:?}; saw:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit on its own; returns whether it
    /// succeeded and every stderr line it wrote. Panics after `limit`.
    pub fn exit_within(mut self, limit: Duration) -> (bool, Vec<String>) {
        let deadline = std::time::Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "still running after {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        // The reader thread ends with the pipe; take every line it read.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        (status.success(), std::mem::take(&mut self.seen))
    }

    /// SIGKILL: no draining, no acks.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then waits for exit; returns (success, stdout).
    pub fn terminate(mut self) -> (bool, String) {
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let mut stdout = String::new();
        use std::io::Read;
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        let status = self.child.wait().unwrap();
        if !status.success() {
            // What it said before dying explains the failure.
            self.seen.extend(self.lines.try_iter());
            eprintln!("{status}; its stderr:\n{}", self.seen.join("\n"));
        }
        (status.success(), stdout)
    }
}

/// A test that fails half-way must not leave its hosts running: they would
/// go on consuming the shared Redis, and hold whatever the test runner's
/// children inherited (a build lock, for one).
impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The `handled` column of a summary table row.
pub fn handled_in_summary(summary: &str, plugin: &str) -> u64 {
    summary
        .lines()
        .find(|l| l.split_whitespace().next() == Some(plugin))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no row for {plugin} in:\n{summary}"))
}

/// Entries of `streams` that `group` has not finished, summed; a stream
/// whose backlog cannot be told now (its master failing over, Redis
/// restarting) counts as unfinished.
pub async fn total_backlog(
    broker: &runnel::broker::redis::RedisBroker,
    streams: &[String],
    group: &str,
) -> u64 {
    use runnel::broker::Broker as _;
    let mut total = 0;
    for s in streams {
        total += broker.backlog(s, group).await.unwrap_or(u64::MAX / 64);
    }
    total
}

/// The payloads of the `worked` events on `stream` (the worker plugin
/// emits the handled event's id): one per handling, duplicates included;
/// empty while Redis cannot be reached.
pub async fn worked_ids(broker: &runnel::broker::redis::RedisBroker, stream: &str) -> Vec<String> {
    use runnel::broker::Broker as _;
    broker
        .range(stream, None, None, usize::MAX)
        .await
        .unwrap_or_default()
        .iter()
        .map(|e| String::from_utf8(Event::from_json(&e.fields[0].1).unwrap().payload).unwrap())
        .collect()
}

/// Stops two `runnel` processes that shared `plugin`'s group (SIGTERM,
/// each must exit 0) and checks from their summaries that together they
/// handled `total` events, none twice, and that both took a share.
/// Returns what each handled.
pub fn shared_exactly_once(a: Process, b: Process, plugin: &str, total: u64) -> (u64, u64) {
    let (ok_a, out_a) = a.terminate();
    let (ok_b, out_b) = b.terminate();
    assert!(ok_a && ok_b, "both exit 0 on SIGTERM");
    let (handled_a, handled_b) = (
        handled_in_summary(&out_a, plugin),
        handled_in_summary(&out_b, plugin),
    );
    assert_eq!(
        handled_a + handled_b,
        total,
        "every event once, none twice:\n{out_a}\n{out_b}"
    );
    assert!(
        handled_a > 0 && handled_b > 0,
        "the work is split: a={handled_a} b={handled_b}"
    );
    (handled_a, handled_b)
}

/// (status, body) of one HTTP request; `token` goes in as a bearer token.
/// Blocking: call it from a blocking thread in async tests.
pub fn call(method: &str, url: &str, token: Option<&str>, body: Option<&str>) -> (u16, String) {
    let mut request = ureq::request(method, url).timeout(Duration::from_secs(30));
    if let Some(token) = token {
        request = request.set("Authorization", &format!("Bearer {token}"));
    }
    let result = match body {
        Some(body) => request.send_string(body),
        None => request.call(),
    };
    match result {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
        Err(e) => panic!("{url}: {e}"),
    }
}

/// Polls until `done` holds, failing after `limit`.
pub async fn until<F, Fut>(limit: Duration, what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + limit;
    while !done().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
