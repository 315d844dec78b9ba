//! `runnel bench --plugins N`: a host process with N no-op plugins, each on
//! a stream of its own, beside a host with one plugin, the same events
//! spread evenly over their streams: how soon the host is ready, how fast it
//! drains, and its resident memory. Each host is this binary's `runnel run`
//! in a process of its own, so that its start and its memory are a real
//! host's, not this process's.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::{progress, BenchArgs};
use crate::broker::redis::RedisBroker;
use crate::broker::Broker;

/// How long a host may take to be ready or to drain before the bench gives
/// up on it.
const PATIENCE: Duration = Duration::from_secs(300);

/// One host's run.
#[derive(Clone, Copy, Debug)]
struct HostRun {
    /// From spawning the process to `/readyz` answering 200, on empty
    /// streams.
    ready: Duration,
    /// Events per second on filled streams: from spawning the process to
    /// every stream drained, less the time to ready.
    rate: f64,
    /// CPU time of the host process per event, in µs (its start included).
    host_us: f64,
    /// Peak and final resident memory of the host process, in MiB.
    peak_mib: f64,
    end_mib: f64,
}

/// Measures a host with one plugin and one with `plugins`, in turns, over
/// `args.rounds` rounds; the medians, as a table.
pub async fn report(args: &BenchArgs, url: &str, plugins: usize) -> anyhow::Result<String> {
    let wasm = std::fs::canonicalize(&args.plugin)
        .with_context(|| format!("{}: cannot read", args.plugin.display()))?;
    let exe = std::env::current_exe().context("finding this program to start hosts")?;
    let dir = std::env::temp_dir().join(format!(
        "runnel-bench-scale-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir)?;
    // A first run fills the artifact cache, so that every measured start
    // finds it warm, as a restarted service does.
    progress::progress().say("many plugins: warming the artifact cache".into());
    run_host(&exe, &dir, &wasm, url, 1, 100).await?;
    let sizes = [1, plugins];
    let mut runs: Vec<Vec<HostRun>> = vec![Vec::new(); sizes.len()];
    for _ in 0..args.rounds.max(1) {
        for (i, &n) in sizes.iter().enumerate() {
            progress::progress().say(format!(
                "many plugins: a host with {n}, {} events",
                args.events
            ));
            runs[i].push(run_host(&exe, &dir, &wasm, url, n, args.events).await?);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let mut out = format!(
        "\nMany plugins on Redis at {url}: a `runnel run` process with N no-op plugins, each on its own stream,\n\
         {} events spread evenly, the artifact cache warm; median of {} rounds\n\
         (ready: process start to /readyz 200 on empty streams; events/s: filled streams, process start to every one drained\n\
         less the time to ready; CPU (start included) and memory: the host process while draining)\n\n\
         {:<12} {:>9} {:>12} {:>12} {:>11} {:>9} {:>9}\n",
        args.events,
        args.rounds.max(1),
        "plugins",
        "ready ms",
        "events/s",
        "vs 1 plugin",
        "host µs/ev",
        "peak MiB",
        "end MiB"
    );
    let one = median(&runs[0]);
    for (&n, runs) in sizes.iter().zip(&runs) {
        let m = median(runs);
        out.push_str(&format!(
            "{n:<12} {:>9.0} {:>12.0} {:>12.2} {:>11.2} {:>9.0} {:>9.0}\n",
            m.ready.as_secs_f64() * 1e3,
            m.rate,
            m.rate / one.rate,
            m.host_us,
            m.peak_mib,
            m.end_mib
        ));
    }
    Ok(out)
}

/// The median of each figure on its own.
fn median(runs: &[HostRun]) -> HostRun {
    let of = |figure: &dyn Fn(&HostRun) -> f64| {
        let mut values: Vec<f64> = runs.iter().map(figure).collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    HostRun {
        ready: Duration::from_secs_f64(of(&|r| r.ready.as_secs_f64())),
        rate: of(&|r| r.rate),
        host_us: of(&|r| r.host_us),
        peak_mib: of(&|r| r.peak_mib),
        end_mib: of(&|r| r.end_mib),
    }
}

/// Starts a host with a plugin per stream on empty streams and times it to
/// ready; then fills the streams with `events` in all, starts it again and
/// times it to drained. (Timing the start on filled streams would measure
/// `/readyz` answering from a runtime busy draining: 100 plugins had
/// drained most of 200 000 events before it said ready.)
async fn run_host(
    exe: &Path,
    dir: &Path,
    wasm: &Path,
    url: &str,
    plugins: usize,
    events: usize,
) -> anyhow::Result<HostRun> {
    let prefix = format!("runnel-bench-scale-{}", uuid::Uuid::new_v4().simple());
    let streams: Vec<String> = (0..plugins).map(|i| format!("{prefix}-{i}")).collect();
    let broker = RedisBroker::connect(url, super::drain::room_for(events)).await?;
    let config = dir.join(format!("{prefix}.toml"));
    std::fs::write(&config, config_text(url, wasm, &streams))?;

    let mut idle = Host::start(exe, &config, &dir.join(format!("{prefix}-idle.log")))?;
    idle.wait_ready().await?;
    let ready = idle.started.elapsed();
    drop(idle);

    super::drain::fill(broker.as_ref(), &streams, events, super::ORDER, 1).await?;
    let mut host = Host::start(exe, &config, &dir.join(format!("{prefix}.log")))?;
    for (i, stream) in streams.iter().enumerate() {
        while broker.backlog(stream, &format!("noop-{i}")).await? > 0 {
            host.check_alive()?;
            anyhow::ensure!(
                host.started.elapsed() < PATIENCE,
                "the host did not drain {stream}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let drained = host.started.elapsed();
    let pid = host.child.id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let cpu = super::cpu::of_process(&pid.to_string());
    drop(host);
    let mut redis = broker.commands();
    for stream in &streams {
        let _: () = redis::cmd("DEL")
            .arg(stream)
            .query_async(&mut redis)
            .await?;
    }
    Ok(HostRun {
        ready,
        rate: events as f64 / drained.saturating_sub(ready).as_secs_f64(),
        host_us: super::cpu::micros_each(cpu, events),
        peak_mib: super::rss::field_kib(&status, "VmHWM:") as f64 / 1024.0,
        end_mib: super::rss::field_kib(&status, "VmRSS:") as f64 / 1024.0,
    })
}

/// A host process, killed when the measurement ends however it ends.
struct Host {
    child: Child,
    started: Instant,
    admin: u16,
    log: PathBuf,
}

impl Host {
    /// `runnel run --config <config>`, its admin API on a free port, its
    /// log in `log`.
    fn start(exe: &Path, config: &Path, log: &Path) -> anyhow::Result<Host> {
        let admin = free_port()?;
        let started = Instant::now();
        let child = Command::new(exe)
            .args(["run", "--config"])
            .arg(config)
            .args(["--admin", &format!("127.0.0.1:{admin}")])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log)?)
            .spawn()
            .context("starting a host")?;
        Ok(Host {
            child,
            started,
            admin,
            log: log.to_path_buf(),
        })
    }

    /// Fails if the host has exited.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait()? {
            Some(status) => anyhow::bail!(
                "the host exited ({status}); see its log in {}",
                self.log.display()
            ),
            None => Ok(()),
        }
    }

    /// Polls `/readyz` until it answers 200.
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let url = format!("http://127.0.0.1:{}/readyz", self.admin);
        loop {
            self.check_alive()?;
            let probe = url.clone();
            let ready = tokio::task::spawn_blocking(move || {
                ureq::get(&probe)
                    .timeout(Duration::from_secs(1))
                    .call()
                    .is_ok()
            })
            .await?;
            if ready {
                return Ok(());
            }
            anyhow::ensure!(
                self.started.elapsed() < PATIENCE,
                "the host was not ready in {PATIENCE:?}"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A host's config: one plugin `noop-<i>` per stream, each in its own group
/// (the default: its name) from the start of its stream, everything else
/// as a config that leaves it unsaid has it (concurrency 4, the instance
/// pool sized to fit).
fn config_text(url: &str, wasm: &Path, streams: &[String]) -> String {
    let mut text = format!("[backend]\nkind = \"redis\"\nurl = {url:?}\n");
    for (i, stream) in streams.iter().enumerate() {
        text.push_str(&format!(
            "\n[[plugin]]\nname = \"noop-{i}\"\npath = {:?}\nstreams = [{stream:?}]\nstart = \"beginning\"\n",
            wasm.display().to_string()
        ));
    }
    text
}

/// A loopback port free now (a race with other programs is possible but
/// harmless here: the host then fails to bind, and the bench says so).
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
