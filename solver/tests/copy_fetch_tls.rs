//! ADD of an `https://` URL from a TLS server on loopback whose test CA is
//! trusted only through `SSL_CERT_FILE` (needs root: the copy chowns).
//!
//! The environment is process-wide, so the download runs in a child process
//! (this same test binary, re-run with the test's name) that gets its own
//! `SSL_CERT_FILE`; the server runs in the parent.

mod copy_common;

use std::process::Command;

use copy_common::*;
use solver::ops::copy::CopyError;

const TEST: &str = "https_download_trusts_only_the_ssl_cert_file_roots";
const CHILD: &str = "BUILDER_COPY_TLS_CHILD";
const URL: &str = "BUILDER_COPY_TLS_URL";

#[test]
fn https_download_trusts_only_the_ssl_cert_file_roots() {
    if let Some(expect) = std::env::var_os(CHILD) {
        child(expect.to_str().unwrap());
        return;
    }
    if !require_root() {
        return;
    }
    let pki = test_pki();
    let stranger = test_pki();
    let base = serve_tls(
        vec![("/secure.txt", Route::ok("over tls"))],
        pki.server_config.clone(),
    );
    let dir = tmp();
    let ca = dir.path().join("ca.pem");
    let other = dir.path().join("other-ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    std::fs::write(&other, &stranger.ca_pem).unwrap();
    let run = |expect: &str, cert_file: Option<&std::path::Path>| {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", TEST, "--nocapture", "--test-threads=1"])
            .env(CHILD, expect)
            .env(URL, &base)
            .env_remove("SSL_CERT_DIR");
        match cert_file {
            Some(path) => cmd.env("SSL_CERT_FILE", path),
            None => cmd.env_remove("SSL_CERT_FILE"),
        };
        let out = cmd.output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "child ({expect}) failed:\n{text}");
        // The child really ran the test rather than filtering it out.
        assert!(text.contains("1 passed"), "{text}");
    };
    run("ok", Some(&ca));
    run("fail", Some(&other));
    run("fail", None);
}

fn child(expect: &str) {
    let base = std::env::var(URL).unwrap();
    let (ctx, dest) = (tmp(), tmp());
    let result = Env::context(ctx.path(), dest.path()).run(&format!("ADD {base}/secure.txt /s"));
    match expect {
        "ok" => {
            result.unwrap();
            assert_eq!(read(dest.path(), "s"), "over tls");
        }
        _ => {
            let err = result.unwrap_err();
            assert!(matches!(err, CopyError::Download { .. }), "{err:?}");
            let mut chain = String::new();
            let mut cur: Option<&dyn std::error::Error> = Some(&err);
            while let Some(e) = cur {
                chain.push_str(&e.to_string());
                chain.push('\n');
                cur = e.source();
            }
            assert!(
                chain.to_lowercase().contains("certificate"),
                "not a certificate error: {chain}"
            );
            assert!(!exists(dest.path(), "s"));
        }
    }
}
