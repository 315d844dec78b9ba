//! TLS to Redis (`rediss://`): what to trust and who to be, for both paths
//! to the server: redis-rs's command connection and the blocking reader.
//!
//! redis-rs builds its own rustls config from PEM bytes and cannot take one
//! from outside, so both paths are built from the same files and flag: the
//! server is verified against the system's roots unless a CA file replaces
//! them (as redis-rs does), a client certificate and key make it mutual TLS,
//! and verification is skipped only when explicitly asked, with a warning.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context as _};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// `[backend.tls]`: how to speak TLS to a `rediss://` URL. Every field is
/// optional: by default the server's certificate is verified against the
/// system's roots and no client certificate is sent.
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsFiles {
    /// PEM file of the CA(s) that signed the server's certificate; replaces
    /// the system's roots (a private CA, as managed services hand out).
    pub ca_file: Option<PathBuf>,
    /// PEM file of this client's certificate, for servers that require one
    /// (mutual TLS; `tls-auth-clients yes`). Needs `key_file`.
    pub cert_file: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    pub key_file: Option<PathBuf>,
    /// Accept any server certificate. Anyone on the path can then read and
    /// change the traffic: for a test server only; every start warns.
    pub insecure_skip_verify: bool,
}

/// The PEM material of [`TlsFiles`], read once.
#[derive(Clone, Debug)]
pub(super) struct TlsMaterial {
    ca: Option<Vec<u8>>,
    client: Option<(Vec<u8>, Vec<u8>)>,
    pub(super) insecure: bool,
}

fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| anyhow!("TLS {what} {}: cannot read: {e}", path.display()))
}

impl TlsMaterial {
    pub(super) fn load(files: &TlsFiles) -> anyhow::Result<TlsMaterial> {
        let client = match (&files.cert_file, &files.key_file) {
            (Some(cert), Some(key)) => {
                Some((read(cert, "client certificate")?, read(key, "client key")?))
            }
            (None, None) => None,
            _ => bail!("TLS: cert_file and key_file go together"),
        };
        Ok(TlsMaterial {
            ca: files
                .ca_file
                .as_deref()
                .map(|f| read(f, "CA file"))
                .transpose()?,
            client,
            insecure: files.insecure_skip_verify,
        })
    }

    /// What redis-rs's client is built with.
    pub(super) fn redis_certificates(&self) -> redis::TlsCertificates {
        redis::TlsCertificates {
            client_tls: self.client.clone().map(|(client_cert, client_key)| {
                redis::ClientTlsConfig {
                    client_cert,
                    client_key,
                }
            }),
            root_cert: self.ca.clone(),
        }
    }

    /// The blocking reader's connector: the same trust and identity as the
    /// command connection's. Built once, so a bad file fails at start.
    pub(super) fn connector(&self) -> anyhow::Result<tokio_rustls::TlsConnector> {
        let provider = rustls::crypto::ring::default_provider();
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca {
            Some(pem) => {
                for cert in CertificateDer::pem_slice_iter(pem) {
                    roots
                        .add(cert.context("TLS CA file: not a PEM certificate")?)
                        .context("TLS CA file")?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                if found.certs.is_empty() {
                    if let Some(e) = found.errors.first() {
                        bail!("TLS: no system CA certificates: {e}");
                    }
                }
                roots.add_parsable_certificates(found.certs);
            }
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(provider.clone()))
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_root_certificates(roots);
        let mut config = match &self.client {
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    CertificateDer::pem_slice_iter(cert)
                        .collect::<Result<Vec<_>, _>>()
                        .context("TLS client certificate: not PEM")?,
                    PrivateKeyDer::from_pem_slice(key).context("TLS client key: not PEM")?,
                )
                .context("TLS client certificate and key")?,
            None => builder.with_no_client_auth(),
        };
        if self.insecure {
            config.enable_sni = false;
            config
                .dangerous()
                .set_certificate_verifier(Arc::new(AcceptAny(
                    provider.signature_verification_algorithms,
                )));
        }
        Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
    }
}

/// The process-wide crypto provider redis-rs's TLS needs (its insecure mode
/// asks for the default one). Installed once; a second call is a no-op.
pub(super) fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The name the reader checks the server's certificate against.
pub(super) fn server_name(host: &str) -> anyhow::Result<ServerName<'static>> {
    ServerName::try_from(host.to_string()).map_err(|e| anyhow!("TLS server name {host:?}: {e}"))
}

/// Verifies the handshake's signatures but trusts any certificate:
/// `insecure_skip_verify`.
#[derive(Debug)]
struct AcceptAny(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}
