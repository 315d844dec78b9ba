//! A real Redis Cluster on loopback ports, for the tests that run on one:
//! `redis-server --cluster-enabled yes` per node, joined by `redis-cli
//! --cluster create`. [`shared`] is one three-master cluster for the whole
//! test process (each test names its own streams); a test that kills,
//! fails over or reshards nodes starts a [`RedisCluster`] of its own.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::redis_server::free_port;

/// A cluster's node processes; killed when dropped.
pub struct RedisCluster {
    pub nodes: Vec<Node>,
    /// The nodes' files, removed when the cluster is dropped.
    dir: PathBuf,
}

/// One `redis-server` of a cluster.
pub struct Node {
    pub port: u16,
    child: Option<Child>,
}

impl Node {
    /// Kills the node at once (`kill -9`): its master role, if any, goes to
    /// a replica after the cluster's node timeout.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill9();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// How long a node may be unreachable before the others fail it over (ms).
pub const NODE_TIMEOUT_MS: u64 = 2000;

impl RedisCluster {
    /// Starts `masters` masters with `replicas` replicas each, on free
    /// loopback ports, with their files in a directory of its own, and
    /// waits until every node says the cluster is `ok` and serves every
    /// slot.
    pub fn start(masters: usize, replicas: usize) -> RedisCluster {
        RedisCluster::launch(masters, replicas, false)
    }

    /// `die_with_parent`: the nodes are killed when the thread that
    /// started them ends (`setpriv --pdeathsig KILL`).
    ///
    /// A cluster that fails to form is started again on fresh ports, up to
    /// three times: on a loaded machine `redis-cli --cluster create` has
    /// failed once in many runs (a port taken between [`free_port`] and the
    /// server's bind is one way), and that is the harness, not the code
    /// under test. Each failure is printed.
    fn launch(masters: usize, replicas: usize, die_with_parent: bool) -> RedisCluster {
        const ATTEMPTS: usize = 3;
        for attempt in 1..=ATTEMPTS {
            match RedisCluster::try_launch(masters, replicas, die_with_parent) {
                Ok(cluster) => return cluster,
                Err(why) if attempt < ATTEMPTS => {
                    eprintln!(
                        "a test cluster did not form (attempt {attempt}), starting another: {why}"
                    )
                }
                Err(why) => panic!("a test cluster did not form in {ATTEMPTS} attempts: {why}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// One attempt of [`RedisCluster::launch`]; the nodes of a failed one
    /// are killed as it is dropped.
    fn try_launch(
        masters: usize,
        replicas: usize,
        die_with_parent: bool,
    ) -> Result<RedisCluster, String> {
        let dir = crate::scratch("cluster");
        let mut cluster = RedisCluster {
            nodes: Vec::new(),
            dir: dir.clone(),
        };
        for _ in 0..masters * (1 + replicas) {
            let port = free_port();
            let mut command = match die_with_parent {
                true => {
                    let mut c = Command::new("setpriv");
                    c.args(["--pdeathsig", "KILL", "redis-server"]);
                    c
                }
                false => Command::new("redis-server"),
            };
            let child = command
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
                // The bus port would be port + 10000, which may not exist
                // for a high ephemeral port: pick one explicitly.
                .args(["--cluster-port", &free_port().to_string()])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&dir)
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server must be installed");
            cluster.nodes.push(Node {
                port,
                child: Some(child),
            });
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for node in &mut cluster.nodes {
            while std::net::TcpStream::connect(("127.0.0.1", node.port)).is_err() {
                let exited = node
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten());
                if let Some(status) = exited {
                    return Err(format!("the node on port {} exited: {status}", node.port));
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "the node on port {} did not listen within 10 s",
                        node.port
                    ));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let addresses: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli must be installed");
        if !created.status.success() {
            return Err(format!(
                "redis-cli --cluster create: {}{}",
                String::from_utf8_lossy(&created.stdout),
                String::from_utf8_lossy(&created.stderr)
            ));
        }
        cluster.wait_until_ok(Duration::from_secs(30));
        Ok(cluster)
    }

    /// Waits until every live node reports `cluster_state:ok` and sees all
    /// 16384 slots served, and `redis-cli --cluster check` agrees.
    pub fn wait_until_ok(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let ok = self.nodes.iter().filter(|n| n.child.is_some()).all(|n| {
                let info = cli(n.port, &["cluster", "info"]);
                info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384")
            }) && self.check();
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "the cluster did not become ok");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether `redis-cli --cluster check` finds every slot covered and no
    /// open (migrating or importing) slot.
    pub fn check(&self) -> bool {
        let Some(live) = self.nodes.iter().find(|n| n.child.is_some()) else {
            return false;
        };
        let out = Command::new("redis-cli")
            .args(["--cluster", "check", &format!("127.0.0.1:{}", live.port)])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        out.contains("All 16384 slots covered") && !out.contains("[WARNING]")
    }

    /// The seed URLs of every node.
    pub fn seeds(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    /// `cluster = [...]` for a `[backend]` table.
    pub fn toml_seeds(&self) -> String {
        let seeds: Vec<String> = self.seeds().iter().map(|s| format!("\"{s}\"")).collect();
        format!("[{}]", seeds.join(", "))
    }

    /// The port of the master serving `key`'s slot now.
    pub fn master_of(&self, key: &str) -> u16 {
        let live = self
            .nodes
            .iter()
            .find(|n| n.child.is_some())
            .expect("a live node");
        let slot = cli(live.port, &["cluster", "keyslot", key]);
        self.master_of_slot(
            slot.trim()
                .parse()
                .expect("CLUSTER KEYSLOT answers a number"),
        )
    }

    /// The node id of the node on `port`.
    pub fn id_of(&self, port: u16) -> String {
        cli(port, &["cluster", "myid"]).trim().to_string()
    }

    /// Moves the `count` lowest slots of the master on `from` to the
    /// master on `to`, keys and all, with `redis-cli --cluster reshard`
    /// (which moves a source's slots in ascending order): clients meet
    /// `ASK` while a slot's keys move and `MOVED` after.
    pub fn reshard(&self, from: u16, to: u16, count: usize) {
        let out = Command::new("redis-cli")
            .args(["--cluster", "reshard", &format!("127.0.0.1:{from}")])
            .args(["--cluster-from", &self.id_of(from)])
            .args(["--cluster-to", &self.id_of(to)])
            .args(["--cluster-slots", &count.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli must be installed");
        assert!(
            out.status.success(),
            "redis-cli --cluster reshard: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The lowest slot the master on `port` serves.
    pub fn first_slot_of(&self, port: u16) -> u16 {
        (0..16384u16)
            .find(|&slot| {
                self.ranges()
                    .iter()
                    .any(|(a, b, p)| *p == port && (*a..=*b).contains(&slot))
            })
            .expect("the master serves a slot")
    }

    /// The port of the master serving `slot` now.
    pub fn master_of_slot(&self, slot: u16) -> u16 {
        self.ranges()
            .into_iter()
            .find(|(a, b, _)| (*a..=*b).contains(&slot))
            .map(|(_, _, port)| port)
            .unwrap_or_else(|| panic!("no master serves slot {slot}"))
    }

    /// `(first, last, master port)` of every slot range, as a live node's
    /// `CLUSTER NODES` says.
    fn ranges(&self) -> Vec<(u16, u16, u16)> {
        let live = self
            .nodes
            .iter()
            .find(|n| n.child.is_some())
            .expect("a live node");
        let mut ranges = Vec::new();
        for line in cli(live.port, &["cluster", "nodes"]).lines() {
            let parts: Vec<&str> = line.split_whitespace().collect();
            if parts.len() < 9 || !parts[2].contains("master") || parts[2].contains("fail") {
                continue;
            }
            let port: u16 = parts[1]
                .split(['@', ':'])
                .nth(1)
                .and_then(|p| p.parse().ok())
                .expect("host:port@bus");
            for range in &parts[8..] {
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                if let (Ok(a), Ok(b)) = (a.parse::<u16>(), b.parse::<u16>()) {
                    ranges.push((a, b, port));
                }
            }
        }
        ranges
    }

    /// Ports of the live masters.
    pub fn masters(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .filter(|n| cli(n.port, &["role"]).starts_with("master"))
            .map(|n| n.port)
            .collect()
    }

    /// The node listening on `port`.
    pub fn node(&mut self, port: u16) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node of this cluster")
    }
}

/// `redis-cli -p port args...`, its output.
pub fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli must be installed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The three-master cluster every cluster test of this process shares,
/// started by the first that asks. Its nodes are started from a thread
/// that lives as long as the process, and die with it: `PR_SET_PDEATHSIG`
/// fires when the thread that forked them ends, which a test's own thread
/// does at its end.
pub fn shared() -> &'static RedisCluster {
    static SHARED: OnceLock<RedisCluster> = OnceLock::new();
    SHARED.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            tx.send(RedisCluster::launch(3, 0, true)).unwrap();
            loop {
                std::thread::park();
            }
        });
        rx.recv().expect("the shared cluster started")
    })
}
