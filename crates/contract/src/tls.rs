//! Test TLS material and a TLS terminator, for the tests that handshake with real servers: a CA the
//! test makes, server certificates it signs (SAN `127.0.0.1` and `localhost`), and stunnel in front of
//! a server that speaks no TLS itself (tansu, CongoDB).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// A CA and one server certificate it signed, as PEM files in `dir`.
#[derive(Debug)]
pub struct TestCa {
    pub dir: PathBuf,
    /// The CA's certificate (what clients trust).
    pub ca_file: PathBuf,
    /// The server's certificate and key, and both in one file (MongoDB's format).
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub bundle_file: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    /// A fresh CA in `dir` and a server certificate for `127.0.0.1` and `localhost`.
    pub fn new(dir: &Path) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "Ridehail test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = params.self_signed(&key).unwrap();
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        let mut ca = Self {
            dir: dir.to_path_buf(),
            ca_file,
            cert_file: dir.join("server.crt"),
            key_file: dir.join("server.key"),
            bundle_file: dir.join("server-bundle.pem"),
            issuer: Issuer::new(params, key),
        };
        ca.issue_server("Ridehail test server");
        ca
    }

    /// (Re)writes the server certificate and key, under `common_name`: a new certificate, as a
    /// renewal would bring.
    pub fn issue_server(&mut self, common_name: &str) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, common_name);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        std::fs::write(&self.key_file, key.serialize_pem()).unwrap();
        std::fs::write(&self.cert_file, cert.pem()).unwrap();
        std::fs::write(&self.bundle_file, format!("{}{}", cert.pem(), key.serialize_pem())).unwrap();
    }
}

/// Whether `binary` runs here. When it does not: a failure under `RIDEHAIL_TEST_REQUIRE_SERVICES=1`
/// (the README's test command installs it), else a visible `SKIPPED` line.
pub fn have_binary(binary: &str) -> bool {
    if Command::new(binary).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok() {
        return true;
    }
    if std::env::var("RIDEHAIL_TEST_REQUIRE_SERVICES").as_deref() == Ok("1") {
        panic!("{binary} is not installed but RIDEHAIL_TEST_REQUIRE_SERVICES=1: run scripts/test-services install");
    }
    eprintln!("SKIPPED ({binary} is not installed: run the suite with scripts/test)");
    false
}

/// A free port on 127.0.0.1 (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits until something listens on `port`.
pub fn wait_for_port(port: u16) {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listens on 127.0.0.1:{port}");
}

/// A child process stopped (by its PID) when dropped.
#[derive(Debug)]
pub struct Process(Child);

impl Process {
    pub fn spawn(command: &mut Command) -> Self {
        Self(command.stdout(Stdio::null()).stderr(Stdio::inherit()).spawn().expect("the process starts"))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// stunnel terminating TLS on `accept` (with the CA's server certificate) and forwarding in plain
/// text to `connect`, on loopback. The binary is `RIDEHAIL_TEST_STUNNEL` (set by
/// `scripts/test-services`), else `stunnel4` on the PATH.
pub fn stunnel(ca: &TestCa, accept: u16, connect: u16) -> Process {
    let config = ca.dir.join(format!("stunnel-{accept}.conf"));
    let text = format!(
        "foreground = yes\npid =\nsyslog = no\ndebug = 3\n[tls]\naccept = 127.0.0.1:{accept}\nconnect = 127.0.0.1:{connect}\n\
         cert = {}\nkey = {}\n",
        ca.cert_file.display(),
        ca.key_file.display()
    );
    std::fs::write(&config, text).unwrap();
    let binary = std::env::var("RIDEHAIL_TEST_STUNNEL").unwrap_or_else(|_| "stunnel4".to_owned());
    let process = Process::spawn(Command::new(binary).arg(&config));
    wait_for_port(accept);
    process
}
