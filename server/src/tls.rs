//! TLS settings: certificates from PEM files, or a fresh self-signed one for
//! development.

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};

use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no PEM private key")]
    NoKey { path: PathBuf },
    #[error("invalid certificate or key: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// A rustls server configuration with rustls's defaults (TLS 1.2 and 1.3)
/// and the ring provider.
pub fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Loads a certificate chain and its key from PEM files, read again by
/// [`reload_files`] (on SIGHUP): each new handshake gets the certificate
/// read last, and the sessions already open keep theirs.
pub fn load_pem(cert_path: &Path, key_path: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let files = Arc::new(CertFiles {
        cert_path: cert_path.to_owned(),
        key_path: key_path.to_owned(),
        current: RwLock::new(Arc::new(certified_key(cert_path, key_path)?)),
    });
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(files.clone());
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    lock(&LOADED).push(Arc::downgrade(&files));
    Ok(Arc::new(config))
}

/// Whether the first certificate in `cert_path` is a CA certificate
/// (basicConstraints CA:TRUE), as plain `openssl req -x509` makes: TLS
/// clients built on webpki (rustls, so client-cli and fake-device) refuse
/// one as a server's certificate, even when told to trust it. Asked of
/// rustls's own verifier, so the answer is the clients'.
pub fn is_ca_certificate(cert_path: &Path) -> bool {
    use rustls::client::danger::ServerCertVerifier as _;
    let Ok(pem) = fs::read(cert_path) else {
        return false;
    };
    let Some(Ok(cert)) = rustls_pemfile::certs(&mut pem.as_slice()).next() else {
        return false;
    };
    let mut roots = rustls::RootCertStore::empty();
    if roots.add(cert.clone()).is_err() {
        return false;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let Ok(verifier) =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
    else {
        return false;
    };
    let Ok(name) = rustls::pki_types::ServerName::try_from("check.invalid") else {
        return false;
    };
    let now = rustls::pki_types::UnixTime::now();
    match verifier.verify_server_cert(&cert, &[], &name, &[], now) {
        // webpki has no public way to name this error but its Debug form.
        Err(e) => format!("{e:?}").contains("CaUsedAsEndEntity"),
        Ok(_) => false,
    }
}

/// What to tell someone about to serve `cert_path`, if it will be refused.
pub fn ca_certificate_warning(cert_path: &Path) -> Option<String> {
    is_ca_certificate(cert_path).then(|| {
        format!(
            "{} is a CA certificate (basicConstraints CA:TRUE), which TLS clients such as \
             client-cli and fake-device refuse as a server's even with --ca-cert; make it with \
             openssl req -x509 ... -addext basicConstraints=critical,CA:FALSE \
             -addext subjectAltName=IP:127.0.0.1, or use --tls-self-signed",
            cert_path.display()
        )
    })
}

/// A certificate and key from files, which a reload may replace.
#[derive(Debug)]
pub struct CertFiles {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for CertFiles {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

impl CertFiles {
    /// Reads both files again; on any failure the certificate in use
    /// stays.
    fn reload(&self) -> Result<(), TlsError> {
        let fresh = certified_key(&self.cert_path, &self.key_path)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh);
        Ok(())
    }
}

/// Every certificate this process loaded from files, as long as a server
/// uses it.
static LOADED: Mutex<Vec<Weak<CertFiles>>> = Mutex::new(Vec::new());

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// What [`reload_files`] did with one certificate.
#[derive(Debug)]
pub struct Reloaded {
    pub cert_path: PathBuf,
    /// `Err`: the files could not be read or do not match; the one in use
    /// stays.
    pub result: Result<(), TlsError>,
}

/// Reads every certificate loaded from files again.
pub fn reload_files() -> Vec<Reloaded> {
    let mut loaded = lock(&LOADED);
    loaded.retain(|files| files.strong_count() > 0);
    let live: Vec<Arc<CertFiles>> = loaded.iter().filter_map(Weak::upgrade).collect();
    drop(loaded);
    live.iter()
        .map(|files| Reloaded {
            cert_path: files.cert_path.clone(),
            result: files.reload(),
        })
        .collect()
}

/// A chain and its key from PEM files, checked to belong together.
fn certified_key(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, TlsError> {
    let (certs, key) = read_pem(cert_path, key_path)?;
    let provider = rustls::crypto::ring::default_provider();
    Ok(CertifiedKey::from_der(certs, key, &provider)?)
}

/// The certificate chain and the key of two PEM files.
fn read_pem(
    cert_path: &Path,
    key_path: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let read = |path: &Path| {
        fs::read(path).map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let cert_pem = read(cert_path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|source| TlsError::Read {
            path: cert_path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_path.to_owned(),
        });
    }
    let key_pem = read(key_path)?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|source| TlsError::Read {
            path: key_path.to_owned(),
            source,
        })?
        .ok_or_else(|| TlsError::NoKey {
            path: key_path.to_owned(),
        })?;
    Ok((certs, key))
}

/// A self-signed certificate written to disk for development.
#[derive(Debug)]
pub struct SelfSigned {
    pub config: Arc<ServerConfig>,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// SHA-256 of the certificate, as colon-separated hex.
    pub fingerprint: String,
}

/// Makes a certificate for `localhost`, 127.0.0.1, ::1 and `listen_ip`, and
/// writes `cert.pem` and `key.pem` (mode 0600) into `dir`.
pub fn self_signed(dir: &Path, listen_ip: IpAddr) -> Result<SelfSigned, TlsError> {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if !listen_ip.is_unspecified() && !listen_ip.is_loopback() {
        names.push(listen_ip.to_string());
    }
    let certified = rcgen::generate_simple_self_signed(names)?;
    let cert_pem = certified.cert.pem();
    let key_pem = certified.signing_key.serialize_pem();
    let fingerprint = ring::digest::digest(&ring::digest::SHA256, certified.cert.der())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":");

    let write_err = |path: &Path| {
        let path = path.to_owned();
        move |source| TlsError::Write { path, source }
    };
    fs::create_dir_all(dir).map_err(write_err(dir))?;
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    fs::write(&cert_path, &cert_pem).map_err(write_err(&cert_path))?;
    write_private(&key_path, key_pem.as_bytes()).map_err(write_err(&key_path))?;

    let key = PrivateKeyDer::try_from(certified.signing_key.serialize_der())
        .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_owned())))?;
    let config = server_config(vec![certified.cert.der().clone()], key)?;
    Ok(SelfSigned {
        config,
        cert_path,
        key_path,
        fingerprint,
    })
}

fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents)
}
