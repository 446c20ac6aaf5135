//! The HTTP client payrun reaches a provider with, and what it says when that fails.
//!
//! TLS is rustls with the `ring` provider (no OpenSSL, no C toolchain): the platform's root
//! certificates (rustls-native-certs) — or, as OpenSSL does, those in `SSL_CERT_FILE` /
//! `SSL_CERT_DIR` when set —,
//! plus a PEM bundle of private CAs from the manifest (`tls.ca_file`) or `--ca-file`, and a
//! client certificate from the manifest (`tls.client_cert` + `tls.client_key`; Payoneer's PSD2
//! API asks for a QWAC). Proxies come from `HTTPS_PROXY` / `HTTP_PROXY` / `ALL_PROXY` and
//! `NO_PROXY` (or their lower-case forms); this machine (localhost, 127.0.0.0/8, ::1) is never
//! reached through one.
//!
//! `describe` turns a failed request into a sentence a person can act on; `probe` makes one
//! request to a https provider before a run sends anything, so that an untrusted certificate
//! stops the run with nothing sent rather than failing every item.

use crate::manifest::Tls;
use std::error::Error as _;
use std::path::Path;
use std::time::Duration;
use tokio_rustls::rustls;

/// How long one exchange with the provider may take.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// How long `probe` waits for any answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Hosts that are this machine: never sent through a proxy.
const LOOPBACK: &str = "localhost,127.0.0.0/8,::1";

/// The client for a run: TLS from the manifest's `tls:` and `--ca-file`, proxies from the
/// environment. Reads the files it names; an error says which file and what is wrong with it.
pub fn client(tls: &Tls, ca_file: Option<&Path>) -> Result<reqwest::Client, String> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    client_with_env(tls, ca_file, &env)
}

/// `client`, with the environment passed in (tests give their own).
fn client_with_env(
    tls: &Tls,
    ca_file: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<reqwest::Client, String> {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .timeout(TIMEOUT)
        // The environment's proxies are set below, with loopback exempt.
        .no_proxy();
    // rustls-native-certs reads these itself; a name that leads nowhere is said here, not
    // left to a certificate error later.
    if let Some(file) = env("SSL_CERT_FILE") {
        std::fs::metadata(&file)
            .map_err(|e| format!("SSL_CERT_FILE names {file}, which cannot be read: {e}"))?;
    }
    if let Some(dirs) = env("SSL_CERT_DIR") {
        for d in std::env::split_paths(&dirs) {
            if !d.is_dir() {
                return Err(format!(
                    "SSL_CERT_DIR names {}, which is not a folder",
                    d.display()
                ));
            }
        }
    }
    // The platform's roots (or SSL_CERT_FILE / SSL_CERT_DIR's), loaded here rather than by
    // reqwest so that only this client pays for reading them (some 20 ms in a debug build): a
    // plain-http client (the sandbox's notifications, tests) reads none.
    let native = rustls_native_certs::load_native_certs();
    if native.certs.is_empty()
        && let Some(e) = native.errors.first()
    {
        return Err(format!("cannot read the platform's root certificates: {e}"));
    }
    for der in native.certs {
        // A platform root rustls cannot use is skipped, as reqwest's own loader does.
        if usable(&der).is_ok() {
            b = b.add_root_certificate(certificate(&der)?);
        }
    }
    let cas = ca_file
        .map(|p| ("--ca-file", p))
        .into_iter()
        .chain(tls.ca_file.as_deref().map(|p| ("tls.ca_file", p)));
    for (what, path) in cas {
        for cert in ca_bundle(what, path)? {
            b = b.add_root_certificate(cert);
        }
    }
    match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => b = b.identity(identity(cert, key)?),
        (None, None) => {}
        _ => return Err("tls.client_cert and tls.client_key go together".into()),
    }
    for p in proxies(env)? {
        b = b.proxy(p);
    }
    b.build().map_err(|e| {
        let mut chain = Vec::new();
        let mut cur: Option<&dyn std::error::Error> = Some(&e);
        while let Some(x) = cur {
            if let Some(rustls::Error::InconsistentKeys(_)) = x.downcast_ref::<rustls::Error>() {
                return "tls.client_key is not the key of tls.client_cert (they do not match)"
                    .to_string();
            }
            chain.push(x.to_string());
            cur = x.source();
        }
        format!("cannot set up TLS: {}", chain.join(": "))
    })
}

/// Reads a PEM file the manifest or the command line names: a regular file of at most 4 MiB
/// (a FIFO or a device named there must not hang or exhaust a run; see `input_file`).
fn read(what: &str, path: &Path) -> Result<Vec<u8>, String> {
    crate::input_file::read_capped(path, 4 << 20).map_err(|r| match r {
        crate::input_file::Refusal::Io(e) => format!("cannot read {what} {}: {e}", path.display()),
        other => format!("{what} {} {}", path.display(), other.describe()),
    })
}

/// The certificates of a PEM bundle; a file with none is an error, not an empty trust list.
fn ca_bundle(what: &str, path: &Path) -> Result<Vec<reqwest::Certificate>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let pem = read(what, path)?;
    let mut out = Vec::new();
    for der in CertificateDer::pem_slice_iter(&pem) {
        let der = der.map_err(|e| {
            format!(
                "{what} {} is not a readable PEM bundle: {e}",
                path.display()
            )
        })?;
        usable(&der).map_err(|e| {
            format!(
                "{what} {}: certificate {} cannot be used: {e}",
                path.display(),
                out.len() + 1
            )
        })?;
        out.push(certificate(&der)?);
    }
    if out.is_empty() {
        return Err(format!(
            "{what} {} holds no certificate (expected PEM `-----BEGIN CERTIFICATE-----` blocks)",
            path.display()
        ));
    }
    Ok(out)
}

/// Whether rustls can take `der` as a trust anchor (reqwest would fail to build otherwise).
fn usable(der: &rustls::pki_types::CertificateDer<'_>) -> Result<(), rustls::Error> {
    rustls::RootCertStore::empty().add(der.clone().into_owned())
}

fn certificate(der: &[u8]) -> Result<reqwest::Certificate, String> {
    reqwest::Certificate::from_der(der).map_err(|e| format!("cannot take a certificate: {e}"))
}

/// The client certificate (chain) and its private key, each checked on its own so that an
/// error names the file at fault; whether they belong together is checked by rustls.
fn identity(cert: &Path, key: &Path) -> Result<reqwest::Identity, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let cert_pem = read("tls.client_cert", cert)?;
    let key_pem = read("tls.client_key", key)?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("tls.client_cert {} is not PEM: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "tls.client_cert {} holds no certificate",
            cert.display()
        ));
    }
    PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        format!(
            "tls.client_key {} holds no readable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}",
            key.display()
        )
    })?;
    let mut both = cert_pem;
    both.push(b'\n');
    both.extend_from_slice(&key_pem);
    reqwest::Identity::from_pem(&both).map_err(|e| format!("tls.client_cert / tls.client_key: {e}"))
}

/// The proxies the environment names, each skipping NO_PROXY's hosts and this machine.
fn proxies(env: &dyn Fn(&str) -> Option<String>) -> Result<Vec<reqwest::Proxy>, String> {
    let first = |names: &[&'static str]| -> Option<(&'static str, String)> {
        names.iter().find_map(|n| env(n).map(|v| (*n, v)))
    };
    let no_proxy = match first(&["NO_PROXY", "no_proxy"]) {
        Some((_, list)) => format!("{list},{LOOPBACK}"),
        None => LOOPBACK.to_string(),
    };
    let mut out = Vec::new();
    let all = ["ALL_PROXY", "all_proxy"];
    let https = first(&["HTTPS_PROXY", "https_proxy"]).or_else(|| first(&all));
    let http = first(&["HTTP_PROXY", "http_proxy"]).or_else(|| first(&all));
    for (scheme, found) in [("https", https), ("http", http)] {
        let Some((var, url)) = found else { continue };
        let p = if scheme == "https" {
            reqwest::Proxy::https(&url)
        } else {
            reqwest::Proxy::http(&url)
        };
        let p = p.map_err(|e| format!("{var}={url} is not a proxy URL: {e}"))?;
        out.push(p.no_proxy(reqwest::NoProxy::from_string(&no_proxy)));
    }
    Ok(out)
}

/// One request to a https provider before anything is sent: any HTTP answer means TLS and the
/// connection work. Plain http URLs (the sandbox on this machine) are not probed.
pub async fn probe(http: &reqwest::Client, url: &str) -> Result<(), String> {
    if !url.starts_with("https://") {
        return Ok(());
    }
    match http.head(url).timeout(PROBE_TIMEOUT).send().await {
        Ok(_) => Ok(()),
        Err(e) => Err(describe(&e)),
    }
}

/// A failed request in a short sentence: certificate not trusted (and what to do), connection
/// refused, DNS lookup failed, timed out, … found by walking the error's causes.
pub fn describe(err: &reqwest::Error) -> String {
    let url = err.url();
    let host = url
        .and_then(|u| u.host_str())
        .unwrap_or("the provider")
        .to_string();
    let addr = match url.and_then(|u| u.port_or_known_default()) {
        Some(port) => format!("{host}:{port}"),
        None => host.clone(),
    };
    let mut causes = Vec::new();
    let mut cur: Option<&dyn std::error::Error> = err.source();
    while let Some(e) = cur {
        if let Some(words) = words_for(e, &host, &addr) {
            return words;
        }
        let text = e.to_string();
        if text.starts_with("dns error") || text.contains("failed to lookup address") {
            return format!("DNS lookup failed for host {host}");
        }
        causes.push(text);
        cur = e.source();
    }
    if err.is_timeout() {
        return format!("timed out waiting for {addr}");
    }
    let what = if err.is_connect() {
        format!("cannot connect to {addr}")
    } else {
        format!("request to {host} failed")
    };
    match causes.last() {
        Some(c) => format!("{what}: {c}"),
        None => what,
    }
}

/// What one cause in the chain says, if it is one `describe` knows. An io::Error's `source()`
/// skips the error it wraps (and hyper-util wraps rustls's io::Error in another), so wrapped
/// io::Errors are opened here.
fn words_for(e: &(dyn std::error::Error + 'static), host: &str, addr: &str) -> Option<String> {
    if let Some(t) = e.downcast_ref::<rustls::Error>() {
        return Some(tls_words(t, host));
    }
    let io = e.downcast_ref::<std::io::Error>()?;
    if let Some(inner) = io.get_ref()
        && let Some(words) = words_for(inner, host, addr)
    {
        return Some(words);
    }
    use std::io::ErrorKind as K;
    match io.kind() {
        K::ConnectionRefused => Some(format!("connection refused to {addr}")),
        K::ConnectionReset => Some(format!("connection reset by {addr}")),
        K::TimedOut => Some(format!("timed out waiting for {addr}")),
        K::HostUnreachable | K::NetworkUnreachable => {
            Some(format!("{addr} cannot be reached from this machine ({io})"))
        }
        _ => None,
    }
}

fn tls_words(e: &rustls::Error, host: &str) -> String {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    match e {
        E::InvalidCertificate(C::UnknownIssuer) => format!(
            "certificate not trusted for host {host} (UnknownIssuer) — pass the provider's CA with --ca-file or tls.ca_file"
        ),
        E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => format!(
            "the certificate of host {host} is not for that name (NotValidForName) — check the host in the manifest's environment"
        ),
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            format!("the certificate of host {host} has expired (Expired)")
        }
        E::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => format!(
            "the certificate of host {host} is not valid yet (NotValidYet) — check this machine's clock"
        ),
        E::InvalidCertificate(C::Revoked) => {
            format!("the certificate of host {host} is revoked (Revoked)")
        }
        E::InvalidCertificate(other) => {
            format!("the certificate of host {host} was refused: {other}")
        }
        E::AlertReceived(
            a @ (A::CertificateRequired
            | A::BadCertificate
            | A::UnsupportedCertificate
            | A::CertificateUnknown
            | A::CertificateExpired
            | A::CertificateRevoked
            | A::UnknownCA
            | A::AccessDenied),
        ) => format!(
            "host {host} refused payrun's client certificate ({a:?}) — check tls.client_cert and tls.client_key"
        ),
        E::InvalidMessage(_) => format!(
            "TLS handshake with host {host} failed ({e}) — does it serve https on that port?"
        ),
        other => format!("TLS handshake with host {host} failed: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    fn client_for(
        tls: &Tls,
        ca: Option<&Path>,
        vars: &[(&str, &str)],
    ) -> Result<reqwest::Client, String> {
        client_with_env(tls, ca, &env_of(vars))
    }

    /// A sandbox serving https with a fresh self-signed certificate, and that certificate.
    async fn tls_sandbox(dir: &Path) -> (crate::sandbox::Sandbox, std::path::PathBuf) {
        let (cert, path) = crate::sandbox::tls::SelfSigned::load_or_create(dir).unwrap();
        let sb = crate::sandbox::Sandbox::start_tls(
            crate::sandbox::SandboxConfig::default(),
            "127.0.0.1:0".parse().unwrap(),
            &cert,
        )
        .await
        .unwrap();
        (sb, path)
    }

    #[tokio::test]
    async fn connection_refused_names_the_address() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let http = client_for(&Tls::default(), None, &[]).unwrap();
        let e = http
            .get(format!("https://127.0.0.1:{port}/"))
            .send()
            .await
            .unwrap_err();
        assert_eq!(
            describe(&e),
            format!("connection refused to 127.0.0.1:{port}")
        );
    }

    #[tokio::test]
    async fn an_untrusted_certificate_is_said_so_and_the_ca_file_fixes_it() {
        let dir = tempfile::tempdir().unwrap();
        let (sb, ca) = tls_sandbox(dir.path()).await;
        let url = sb.base_url("paysend");
        assert!(url.starts_with("https://127.0.0.1:"), "{url}");

        let plain = client_for(&Tls::default(), None, &[]).unwrap();
        let e = plain.get(&url).send().await.unwrap_err();
        let said = describe(&e);
        assert!(
            said.starts_with("certificate not trusted for host 127.0.0.1 (UnknownIssuer)"),
            "{said}"
        );
        assert!(said.contains("--ca-file"), "{said}");
        assert_eq!(probe(&plain, &url).await, Err(said));

        // The same CA from the CLI or from the manifest.
        let by_cli = client_for(&Tls::default(), Some(&ca), &[]).unwrap();
        assert_eq!(probe(&by_cli, &url).await, Ok(()));
        let tls = Tls {
            ca_file: Some(ca.clone()),
            ..Tls::default()
        };
        let by_manifest = client_for(&tls, None, &[]).unwrap();
        let r = by_manifest
            .get(format!("{url}/../__sandbox/counters"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        // "localhost" is in the certificate too.
        let local = url.replace("127.0.0.1", "localhost");
        assert_eq!(probe(&by_cli, &local).await, Ok(()));
        sb.stop().await;
    }

    #[tokio::test]
    async fn https_to_a_plain_http_port_is_said_so() {
        let sb = crate::sandbox::Sandbox::start(
            crate::sandbox::SandboxConfig::default(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .unwrap();
        let http = client_for(&Tls::default(), None, &[]).unwrap();
        let url = sb.base_url("paysend").replace("http://", "https://");
        let said = probe(&http, &url).await.unwrap_err();
        assert!(
            said.starts_with("TLS handshake with host 127.0.0.1 failed"),
            "{said}"
        );
        assert!(
            said.ends_with("does it serve https on that port?"),
            "{said}"
        );
        sb.stop().await;
    }

    #[tokio::test]
    async fn loopback_never_goes_through_the_environments_proxy() {
        let sb = crate::sandbox::Sandbox::start(
            crate::sandbox::SandboxConfig::default(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .unwrap();
        let dead = "http://127.0.0.1:9";
        let http = client_for(
            &Tls::default(),
            None,
            &[
                ("HTTPS_PROXY", dead),
                ("HTTP_PROXY", dead),
                ("ALL_PROXY", dead),
            ],
        )
        .unwrap();
        let url = format!("http://{}/__sandbox/counters", sb.addr);
        assert_eq!(http.get(&url).send().await.unwrap().status(), 200);
        let url = format!("http://localhost:{}/__sandbox/counters", sb.addr.port());
        assert_eq!(http.get(&url).send().await.unwrap().status(), 200);
        sb.stop().await;
    }

    #[tokio::test]
    async fn https_proxy_is_honoured_and_no_proxy_is_not_proxied() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = format!("http://{}", proxy.local_addr().unwrap());
        let seen = tokio::spawn(async move {
            let (mut s, _) = proxy.accept().await.unwrap();
            let mut buf = vec![0u8; 1024];
            let n = s.read(&mut buf).await.unwrap();
            let _ = s
                .write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
                .await;
            String::from_utf8_lossy(&buf[..n]).to_string()
        });
        let http = client_for(
            &Tls::default(),
            None,
            &[("HTTPS_PROXY", &at), ("NO_PROXY", "direct.invalid")],
        )
        .unwrap();
        let _ = http.get("https://provider.invalid/x").send().await;
        let request = seen.await.unwrap();
        assert!(
            request.starts_with("CONNECT provider.invalid:443"),
            "{request}"
        );
        // NO_PROXY's host goes direct: a DNS failure, not the proxy.
        let e = http
            .get("https://direct.invalid/")
            .send()
            .await
            .unwrap_err();
        assert_eq!(describe(&e), "DNS lookup failed for host direct.invalid");
    }

    #[test]
    fn unusable_tls_files_are_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = client_for(&Tls::default(), Some(&missing), &[]).unwrap_err();
        assert!(e.starts_with("cannot read --ca-file "), "{e}");
        assert!(e.contains("missing.pem"), "{e}");

        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let tls = Tls {
            ca_file: Some(junk),
            ..Tls::default()
        };
        let e = client_for(&tls, None, &[]).unwrap_err();
        assert!(e.contains("holds no certificate"), "{e}");

        let e = client_for(
            &Tls::default(),
            None,
            &[("SSL_CERT_FILE", "/nonexistent/ca.pem")],
        )
        .unwrap_err();
        assert!(
            e.starts_with("SSL_CERT_FILE names /nonexistent/ca.pem"),
            "{e}"
        );

        let e = client_for(&Tls::default(), None, &[("HTTPS_PROXY", "::not a url::")]).unwrap_err();
        assert!(
            e.starts_with("HTTPS_PROXY=::not a url:: is not a proxy URL"),
            "{e}"
        );
    }

    /// A server that asks for a client certificate and accepts only `client`'s: answers 204.
    async fn mtls_server(
        server: &crate::sandbox::tls::SelfSigned,
        client: &rcgen::CertifiedKey,
    ) -> std::net::SocketAddr {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        use std::sync::Arc;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(client.cert.der().clone()).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::clone(&provider),
        )
        .build()
        .unwrap();
        let certs = CertificateDer::pem_slice_iter(server.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes()).unwrap();
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut s) = acceptor.accept(tcp).await {
                        let mut buf = [0u8; 4096];
                        let _ = s.read(&mut buf).await;
                        let _ = s
                            .write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
                            .await;
                        let _ = s.shutdown().await;
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn the_client_certificate_is_presented_and_its_absence_is_said_so() {
        let dir = tempfile::tempdir().unwrap();
        let server = crate::sandbox::tls::SelfSigned::generate().unwrap();
        let client = rcgen::generate_simple_self_signed(vec!["payrun.client".to_string()]).unwrap();
        let ca = dir.path().join("server.pem");
        let cert = dir.path().join("qwac.pem");
        let key = dir.path().join("qwac.key");
        std::fs::write(&ca, &server.cert_pem).unwrap();
        std::fs::write(&cert, client.cert.pem()).unwrap();
        std::fs::write(&key, client.key_pair.serialize_pem()).unwrap();
        let addr = mtls_server(&server, &client).await;
        let url = format!("https://{addr}/");

        let with = Tls {
            ca_file: Some(ca.clone()),
            client_cert: Some(cert),
            client_key: Some(key),
            ..Tls::default()
        };
        assert_eq!(
            probe(&client_for(&with, None, &[]).unwrap(), &url).await,
            Ok(())
        );

        let without = Tls {
            ca_file: Some(ca),
            ..Tls::default()
        };
        let said = probe(&client_for(&without, None, &[]).unwrap(), &url)
            .await
            .unwrap_err();
        assert!(
            said.starts_with("host 127.0.0.1 refused payrun's client certificate"),
            "{said}"
        );
        assert!(said.contains("tls.client_cert"), "{said}");
    }

    #[test]
    fn a_client_certificate_with_another_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = rcgen::generate_simple_self_signed(vec!["payrun.client".to_string()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["payrun.client".to_string()]).unwrap();
        let cert = dir.path().join("client.pem");
        let key = dir.path().join("client.key");
        let other = dir.path().join("other.key");
        std::fs::write(&cert, a.cert.pem()).unwrap();
        std::fs::write(&key, a.key_pair.serialize_pem()).unwrap();
        std::fs::write(&other, b.key_pair.serialize_pem()).unwrap();
        let tls = |k: &Path| Tls {
            client_cert: Some(cert.clone()),
            client_key: Some(k.to_path_buf()),
            ..Tls::default()
        };
        assert!(client_for(&tls(&key), None, &[]).is_ok());
        let e = client_for(&tls(&other), None, &[]).unwrap_err();
        assert_eq!(
            e,
            "tls.client_key is not the key of tls.client_cert (they do not match)"
        );
        // A certificate where the key should be.
        let e = client_for(&tls(&cert), None, &[]).unwrap_err();
        assert!(e.starts_with("tls.client_key "), "{e}");
    }
}
