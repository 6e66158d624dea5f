//! HTTPS: rustls with the ring provider, TLS 1.2 and 1.3 only, HTTP/2 and HTTP/1.1 offered by
//! ALPN. The certificate chain and key come from PEM files that are watched: a renewed pair is
//! served to new connections without a restart (a pair that fails to load is logged and the
//! old one kept). `dev_certificates` makes a local CA and a certificate it signed, for trying
//! HTTPS on one machine.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum_server::tls_rustls::RustlsConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// How often the certificate files are checked for a change.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// A PEM certificate chain (leaf first) and its private key.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// A rustls server configuration from the files as they are now.
    pub fn server_config(&self) -> io::Result<Arc<rustls::ServerConfig>> {
        let invalid = |what: &str, path: &PathBuf, e: &dyn std::fmt::Display| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{what} {}: {e}", path.display()),
            )
        };
        let chain = CertificateDer::pem_file_iter(&self.cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| invalid("cannot read the certificate chain", &self.cert, &e))?;
        if chain.is_empty() {
            return Err(invalid("no certificate in", &self.cert, &"(empty)"));
        }
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|e| invalid("cannot read the private key", &self.key, &e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| invalid("TLS setup for", &self.cert, &e))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| invalid("the key does not suit the certificate", &self.cert, &e))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// Modification times of both files: a change in either means a new pair.
    fn stamp(&self) -> Option<(SystemTime, SystemTime)> {
        let modified = |path: &PathBuf| std::fs::metadata(path).and_then(|m| m.modified()).ok();
        Some((modified(&self.cert)?, modified(&self.key)?))
    }

    /// Loads the files and keeps reloading them into the returned configuration whenever they
    /// change, for as long as the runtime runs.
    pub fn serve_and_watch(&self) -> io::Result<RustlsConfig> {
        let config = RustlsConfig::from_config(self.server_config()?);
        let (files, watched) = (self.clone(), config.clone());
        tokio::spawn(async move {
            let mut last = files.stamp();
            loop {
                tokio::time::sleep(WATCH_INTERVAL).await;
                let now = files.stamp();
                if now == last {
                    continue;
                }
                match files.server_config() {
                    Ok(new) => {
                        watched.reload_from_config(new);
                        tracing::info!(cert = %files.cert.display(), "reloaded the TLS certificate");
                        last = now;
                    }
                    // Perhaps half-written: tried again at the next tick.
                    Err(e) => tracing::warn!("keeping the current TLS certificate: {e}"),
                }
            }
        });
        Ok(config)
    }
}

/// A development CA and a server certificate it signed, all PEM.
pub struct DevCertificates {
    /// What clients trust (`SSL_CERT_FILE`, `httpx.Client(verify=...)`, `curl --cacert`).
    pub ca: String,
    /// The server's chain: its certificate, then the CA's.
    pub chain: String,
    /// The server's private key.
    pub key: String,
}

/// A CA and a certificate for `hosts` (DNS names or IP addresses) valid for `days` days from
/// now; `days` may be negative, for an expired certificate.
pub fn dev_certificates(hosts: &[String], days: i64) -> Result<DevCertificates, rcgen::Error> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    let now = SystemTime::now();
    let (start, end) = if days >= 0 {
        (
            now - Duration::from_secs(3600),
            now + Duration::from_secs(86_400 * days as u64),
        )
    } else {
        let ended = now - Duration::from_secs(86_400 * days.unsigned_abs());
        (ended - Duration::from_secs(86_400), ended)
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "aiaas development CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    (ca_params.not_before, ca_params.not_after) = (start.into(), end.into());
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let mut params = CertificateParams::new(hosts.to_vec())?;
    params.distinguished_name.push(
        DnType::CommonName,
        hosts.first().map_or("aiaas", String::as_str),
    );
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    (params.not_before, params.not_after) = (start.into(), end.into());
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca)?;
    Ok(DevCertificates {
        ca: ca.pem(),
        chain: format!("{}{}", cert.pem(), ca.pem()),
        key: key.serialize_pem(),
    })
}
