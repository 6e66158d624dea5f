//! `aiaas tls dev-cert`: a development CA and a server certificate for local HTTPS.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::Context;

use crate::cli::DevCertArgs;

pub fn dev_cert(args: &DevCertArgs) -> anyhow::Result<()> {
    let certificates = aiaas_server::tls::dev_certificates(&args.hosts, args.days)
        .context("generating the certificates")?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    write(&args.out.join("ca.pem"), &certificates.ca, 0o644)?;
    write(&args.out.join("cert.pem"), &certificates.chain, 0o644)?;
    write(&args.out.join("key.pem"), &certificates.key, 0o600)?;
    let out = args.out.display();
    println!("wrote {out}/ca.pem (trust it in clients), {out}/cert.pem and {out}/key.pem");
    println!("  aiaas serve --tls-cert {out}/cert.pem --tls-key {out}/key.pem");
    println!("  curl --cacert {out}/ca.pem https://localhost:PORT/healthz");
    Ok(())
}

/// Writes `text` to `path` with `mode` (a key is never readable by others, even briefly).
fn write(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}
