//! TLS material for the tests, made with the `openssl` CLI: a CA, a server certificate
//! (subjectAltName from the given names: `localhost` → DNS, `127.0.0.1` → IP), client
//! certificates per user (CN = user name), and a second, unrelated CA with its own server
//! certificate for negative tests. ECDSA P-256 keys (fast to make, accepted by PostgreSQL,
//! libpq and rustls).
//!
//! Owns: the files in the directory it is given. Keys are mode 0600; when the server runs as a
//! dedicated user the directory is chown'ed to it (see `pg::give_to_server`).
use std::path::{Path, PathBuf};
use std::process::Command;

use super::set_mode;

/// Paths of the generated files.
#[derive(Debug, Clone)]
pub struct Certs {
    pub dir: PathBuf,
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// A CA unrelated to `ca_cert`.
    pub other_ca_cert: PathBuf,
    pub other_ca_key: PathBuf,
    /// A server certificate (same names) signed by the other CA.
    pub other_server_cert: PathBuf,
    pub other_server_key: PathBuf,
}

fn openssl(args: &[&str], what: &str) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("openssl ({what}): cannot run: {e}"));
    assert!(
        out.status.success(),
        "openssl {what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

fn make_ca(dir: &Path, stem: &str, cn: &str) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{stem}.crt"));
    let key = dir.join(format!("{stem}.key"));
    openssl(
        &[
            "req",
            "-x509",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            p(&key),
            "-out",
            p(&cert),
            "-days",
            "3650",
            "-subj",
            &format!("/CN={cn}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
        &format!("make CA {stem}"),
    );
    set_mode(&key, 0o600);
    (cert, key)
}

/// Makes a leaf certificate signed by (ca_cert, ca_key): `<stem>.crt` / `<stem>.key`.
fn make_leaf(
    dir: &Path,
    stem: &str,
    cn: &str,
    ext: &str,
    ca: &(PathBuf, PathBuf),
) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{stem}.crt"));
    let key = dir.join(format!("{stem}.key"));
    let csr = dir.join(format!("{stem}.csr"));
    let extfile = dir.join(format!("{stem}.ext"));
    std::fs::write(&extfile, ext).expect("write ext file");
    openssl(
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            p(&key),
            "-out",
            p(&csr),
            "-subj",
            &format!("/CN={cn}"),
        ],
        &format!("key + CSR {stem}"),
    );
    set_mode(&key, 0o600);
    let serial = format!(
        "0x{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(1)
    );
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            p(&csr),
            "-CA",
            p(&ca.0),
            "-CAkey",
            p(&ca.1),
            "-set_serial",
            &serial,
            "-days",
            "3650",
            "-sha256",
            "-extfile",
            p(&extfile),
            "-out",
            p(&cert),
        ],
        &format!("sign {stem}"),
    );
    (cert, key)
}

fn san(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| {
            if n.parse::<std::net::IpAddr>().is_ok() {
                format!("IP:{n}")
            } else {
                format!("DNS:{n}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn server_ext(names: &[&str]) -> String {
    format!(
        "basicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\n\
         subjectAltName={}\n",
        san(names)
    )
}

/// Generates everything into `dir` (created if missing). `server_names` defaults to
/// `["localhost", "127.0.0.1"]` when empty.
pub fn generate(dir: &Path, server_names: &[&str]) -> Certs {
    std::fs::create_dir_all(dir).expect("create certs dir");
    set_mode(dir, 0o755);
    let names: Vec<&str> = if server_names.is_empty() {
        vec!["localhost", "127.0.0.1"]
    } else {
        server_names.to_vec()
    };
    let cn = names[0];
    let ca = make_ca(dir, "ca", "walrelay test CA");
    let server = make_leaf(dir, "server", cn, &server_ext(&names), &ca);
    let other = make_ca(dir, "other-ca", "walrelay unrelated test CA");
    let other_server = make_leaf(dir, "other-server", cn, &server_ext(&names), &other);
    super::pg::give_to_server(dir);
    Certs {
        dir: dir.to_path_buf(),
        ca_cert: ca.0,
        ca_key: ca.1,
        server_cert: server.0,
        server_key: server.1,
        other_ca_cert: other.0,
        other_ca_key: other.1,
        other_server_cert: other_server.0,
        other_server_key: other_server.1,
    }
}

impl Certs {
    /// A client certificate with CN = `user`, signed by the test CA: (cert, key) paths.
    /// Made once per user; later calls return the same files.
    pub fn client_cert(&self, user: &str) -> (PathBuf, PathBuf) {
        let stem = format!("client-{user}");
        let cert = self.dir.join(format!("{stem}.crt"));
        let key = self.dir.join(format!("{stem}.key"));
        if cert.exists() && key.exists() {
            return (cert, key);
        }
        let ext = "basicConstraints=critical,CA:FALSE\n\
                   keyUsage=critical,digitalSignature,keyEncipherment\n\
                   extendedKeyUsage=clientAuth\n";
        let ca = (self.ca_cert.clone(), self.ca_key.clone());
        make_leaf(&self.dir, &stem, user, ext, &ca)
    }

    /// A client certificate for `user` signed by the unrelated CA (negative tests).
    pub fn other_client_cert(&self, user: &str) -> (PathBuf, PathBuf) {
        let ext = "basicConstraints=critical,CA:FALSE\nextendedKeyUsage=clientAuth\n";
        let ca = (self.other_ca_cert.clone(), self.other_ca_key.clone());
        make_leaf(&self.dir, &format!("other-client-{user}"), user, ext, &ca)
    }

    /// A CRL (PEM) signed by the test CA revoking the given certificates (none: an empty
    /// CRL), written to `out`. Uses `openssl ca` with a throwaway database next to `out`.
    pub fn crl(&self, revoked: &[&Path], out: &Path) {
        let db = out.with_extension("db");
        std::fs::create_dir_all(&db).expect("create CRL database dir");
        let index = db.join("index.txt");
        std::fs::write(&index, "").expect("write index.txt");
        std::fs::write(db.join("crlnumber"), "01\n").expect("write crlnumber");
        let cnf = db.join("ca.cnf");
        std::fs::write(
            &cnf,
            format!(
                "[ca]\ndefault_ca = d\n[d]\ndatabase = {}\ncrlnumber = {}\ndefault_md = sha256\ndefault_crl_days = 30\n",
                p(&index),
                p(&db.join("crlnumber"))
            ),
        )
        .expect("write ca.cnf");
        let base = [
            "ca",
            "-config",
            p(&cnf),
            "-keyfile",
            p(&self.ca_key),
            "-cert",
            p(&self.ca_cert),
        ];
        for cert in revoked {
            let mut args = base.to_vec();
            args.extend(["-revoke", p(cert)]);
            openssl(&args, "ca -revoke");
        }
        let mut args = base.to_vec();
        args.extend(["-gencrl", "-out", p(out)]);
        openssl(&args, "ca -gencrl");
    }

    /// postgresql.conf lines enabling TLS with these files (`ssl_ca_file` = the test CA,
    /// so `clientcert=verify-ca` / `cert` auth in pg_hba work).
    pub fn server_conf_lines(&self) -> Vec<String> {
        vec![
            "ssl = on".to_string(),
            format!("ssl_cert_file = '{}'", self.server_cert.display()),
            format!("ssl_key_file = '{}'", self.server_key.display()),
            format!("ssl_ca_file = '{}'", self.ca_cert.display()),
        ]
    }
}
