//! Setting up a broker: URLs, TLS material and the connections to one
//! server or a cluster, none of which is connected yet (the first command
//! connects, and connects again after Redis restarts).

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, ConnectionAddr, IntoConnectionInfo as _};

use super::slots::Node;
use super::tls::{self, TlsMaterial};
use super::{Endpoint, RedisBroker, Target, TlsFiles, Trimming, CONNECT_TIMEOUT, RESPONSE_TIMEOUT};

impl RedisBroker {
    /// A broker for `url` (`redis://[user:pass@]host:port[/db]`, or
    /// `rediss://` for TLS, verified against the system's roots). Only a
    /// malformed URL fails here: the connection is made by the first command
    /// and made again after Redis restarts or drops it, so that a service can
    /// start while Redis is down and consume once it answers.
    pub async fn connect(url: &str, trimming: Trimming) -> anyhow::Result<Arc<Self>> {
        RedisBroker::open(
            &Endpoint::Server(url.to_string()),
            trimming,
            &TlsFiles::default(),
        )
        .await
    }

    /// [`RedisBroker::connect`] for one server or a cluster, with the TLS
    /// settings of `rediss://` URLs (a CA, a client certificate, or no
    /// verification). Fails at once on a malformed URL, on a file that
    /// cannot be read or used, and on TLS settings for URLs that are not
    /// `rediss://`. A cluster is connected in the background, like a
    /// server: its seeds need not answer yet.
    pub async fn open(
        endpoint: &Endpoint,
        trimming: Trimming,
        tls: &TlsFiles,
    ) -> anyhow::Result<Arc<Self>> {
        let urls = endpoint.urls();
        let address = match endpoint {
            Endpoint::Server(url) => redact(url),
            Endpoint::Cluster(seeds) => format!(
                "cluster {}",
                seeds
                    .iter()
                    .map(|s| redact(s))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        };
        anyhow::ensure!(
            !urls.is_empty(),
            "a Redis Cluster needs at least one seed node"
        );
        let mut infos = Vec::with_capacity(urls.len());
        for url in urls {
            infos.push(
                url.as_str()
                    .into_connection_info()
                    .map_err(|e| anyhow!("redis URL {}: {e}", redact(url)))?,
            );
        }
        let tls_urls = infos
            .iter()
            .filter(|i| matches!(i.addr(), ConnectionAddr::TcpTls { .. }))
            .count();
        anyhow::ensure!(
            tls_urls == 0 || tls_urls == infos.len(),
            "redis at {address}: either every seed is rediss:// or none"
        );
        let material = match tls_urls {
            0 if *tls != TlsFiles::default() => anyhow::bail!(
                "redis at {address}: TLS settings are given, but the URL is not rediss://"
            ),
            0 => None,
            _ => {
                tls::install_crypto_provider();
                let mut material = TlsMaterial::load(tls)?;
                // `rediss://...#insecure` asks the same as the config.
                material.insecure |= infos
                    .iter()
                    .any(|i| matches!(i.addr(), ConnectionAddr::TcpTls { insecure: true, .. }));
                if material.insecure {
                    tracing::warn!("TLS to redis at {address} does not verify the server's certificate (insecure_skip_verify): anyone on the path can read and change the traffic");
                }
                Some(material)
            }
        };
        let reader_tls = material.as_ref().map(|m| m.connector()).transpose()?;
        let target = match endpoint {
            Endpoint::Server(_) => {
                let info = infos.remove(0);
                let client = match (&material, info.addr().clone()) {
                    (Some(material), ConnectionAddr::TcpTls { host, port, .. }) => {
                        let info = info.set_addr(ConnectionAddr::TcpTls {
                            host,
                            port,
                            insecure: material.insecure,
                            tls_params: None,
                        });
                        Client::build_with_tls(info, material.redis_certificates())
                            .map_err(|e| anyhow!("redis at {address}: TLS: {e}"))?
                    }
                    _ => Client::open(info).map_err(|e| anyhow!("redis URL {address}: {e}"))?,
                };
                let commands = manager(&client).map_err(|e| anyhow!("redis at {address}: {e}"))?;
                Target::Server {
                    client,
                    commands: arc_swap::ArcSwap::from_pointee(commands),
                }
            }
            Endpoint::Cluster(_) => {
                let seed = infos[0].clone();
                let mut builder = redis::cluster::ClusterClientBuilder::new(infos)
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(RESPONSE_TIMEOUT)
                    .retries(4);
                if let Some(material) = &material {
                    builder = builder
                        .certs(material.redis_certificates())
                        .danger_accept_invalid_hostnames(material.insecure);
                }
                let client = builder
                    .build()
                    .map_err(|e| anyhow!("redis at {address}: {e}"))?;
                let config = redis::cluster::ClusterConfig::new()
                    .set_connection_timeout(CONNECT_TIMEOUT)
                    .set_response_timeout(RESPONSE_TIMEOUT);
                Target::Cluster {
                    commands: client.get_pending_async_connection_with_config(config),
                    seed,
                    slots: Default::default(),
                    stale: std::sync::atomic::AtomicBool::new(true),
                }
            }
        };
        Ok(Arc::new(RedisBroker {
            target,
            reader_tls,
            address,
            readers: Default::default(),
            reader_ids: Default::default(),
            deferred: Default::default(),
            trimming,
            reconnects: AtomicU64::new(0),
        }))
    }
}

/// `redis://[user:password@]host:port` for `info`, at `node` instead of its
/// own address when given.
pub(super) fn url_of(info: &redis::ConnectionInfo, node: Option<&Node>) -> String {
    let (host, port) = match (node, info.addr()) {
        (Some(n), _) => (n.host.clone(), n.port),
        (
            None,
            ConnectionAddr::Tcp(h, p)
            | ConnectionAddr::TcpTls {
                host: h, port: p, ..
            },
        ) => (h.clone(), *p),
        (None, _) => ("127.0.0.1".to_string(), 6379),
    };
    let settings = info.redis_settings();
    let auth = match (settings.username(), settings.password()) {
        (Some(user), Some(password)) => format!("{user}:{password}@"),
        (None, Some(password)) => format!(":{password}@"),
        _ => String::new(),
    };
    let scheme = match info.addr() {
        ConnectionAddr::TcpTls { .. } => "rediss",
        _ => "redis",
    };
    format!("{scheme}://{auth}{host}:{port}")
}

/// The command connection of `client`, connected by its first command.
pub(super) fn manager(client: &Client) -> redis::RedisResult<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(2));
    ConnectionManager::new_lazy_with_config(client.clone(), config)
}

/// `redis://user:secret@host` → `redis://user:***@host`.
pub(super) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let auth = &url[scheme + 3..at];
            match auth.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact("redis://u:secret@h:6379/0"),
            "redis://u:***@h:6379/0"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
