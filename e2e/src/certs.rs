//! Test certificates: a CA and a server certificate for 127.0.0.1, made with the `openssl`
//! CLI (TLS servers in the harness, fault and engine suites).

use std::path::Path;

use crate::servers::TlsFiles;

/// A CA and a certificate for 127.0.0.1 signed by it, made with the `openssl` CLI, in `dir`:
/// `ca.pem`, `server.pem`, `server.key`. `None` when openssl is not usable.
pub fn make_certs(dir: &Path) -> Option<TlsFiles> {
    let run = |args: &[&str]| {
        std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    std::fs::create_dir_all(dir).ok()?;
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .ok()?;
    let steps: [&[&str]; 3] = [
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=mongoferry-test-ca",
        ],
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ],
    ];
    for step in steps {
        if !run(step) {
            return None;
        }
    }
    Some(TlsFiles {
        cert_file: dir.join("server.pem"),
        key_file: dir.join("server.key"),
        ca_file: Some(dir.join("ca.pem")),
        client_pem: None,
    })
}
