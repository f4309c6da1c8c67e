//! The private PostgreSQL server.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{require, run, running_as_root, PrivateDb, CERT_USER, PASSWORD, PASSWORD_USER};

/// Where Debian installs the server binaries, one directory per major version.
const PG_ROOT: &str = "/usr/lib/postgresql";

/// TCP connections must use TLS; [`CERT_USER`] signs in with its client certificate and every
/// other account with its password. The test's own setup uses the Unix socket, trusted.
const PG_HBA: &str = "\
local   all  all                 trust
hostssl all  courier_cert 127.0.0.1/32 cert
hostssl all  all          127.0.0.1/32 scram-sha-256
";

pub(super) fn start() -> PrivateDb {
    let bin = bin_dir();
    let (mut db, server) = PrivateDb::prepare("postgres", "postgres", "QUIT");
    let (dir, port) = (db.dir.clone(), db.port.to_string());
    let data = dir.join("data");
    // PostgreSQL refuses to run as root; a root test runs it as the `postgres` account.
    let owner = running_as_root().then(|| account("postgres"));
    if let Some((uid, gid)) = owner {
        for path in [&dir, &server.cert, &server.key, &db.ca] {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown to postgres");
        }
    }
    let as_owner = |program: &str| {
        let mut command = Command::new(bin.join(program));
        command.current_dir(&dir);
        if let Some((uid, gid)) = owner {
            command.uid(uid).gid(gid);
        }
        command
    };
    run(
        as_owner("initdb").arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-N",
            "--no-instructions",
        ]),
        "initdb",
    );
    std::fs::write(data.join("pg_hba.conf"), PG_HBA).expect("write pg_hba.conf");
    let settings = [
        "listen_addresses=127.0.0.1".to_owned(),
        "ssl=on".to_owned(),
        format!("ssl_cert_file={}", server.cert.display()),
        format!("ssl_key_file={}", server.key.display()),
        format!("ssl_ca_file={}", db.ca.display()),
        "fsync=off".to_owned(),
        "shared_buffers=16MB".to_owned(),
        "max_connections=50".to_owned(),
    ];
    let mut postgres = as_owner("postgres");
    postgres.arg("-D").arg(&data).arg("-p").arg(&port).arg("-k").arg(&dir);
    for setting in settings {
        postgres.arg("-c").arg(setting);
    }
    let psql = || {
        let mut command = Command::new(bin.join("psql"));
        command
            .arg("-h")
            .arg(&dir)
            .arg("-p")
            .arg(&port)
            .args(["-U", "postgres", "-d", "postgres", "-X", "-q"]);
        command
    };
    db.spawn(&mut postgres, "private PostgreSQL", || {
        psql().args(["-c", "SELECT 1"]).output().is_ok_and(|o| o.status.success())
    });
    let mut setup = psql();
    for statement in [
        format!("CREATE ROLE {PASSWORD_USER} LOGIN PASSWORD '{PASSWORD}'"),
        format!("CREATE DATABASE {PASSWORD_USER} OWNER {PASSWORD_USER}"),
        format!("CREATE ROLE {CERT_USER} LOGIN"),
        format!("CREATE DATABASE {CERT_USER} OWNER {CERT_USER}"),
    ] {
        // One -c each: CREATE DATABASE cannot run inside the transaction of a multi-statement -c.
        setup.arg("-c").arg(statement);
    }
    run(setup.args(["-v", "ON_ERROR_STOP=1"]), "creating the private PostgreSQL's accounts");
    db
}

/// The bin directory of the newest installed major version.
fn bin_dir() -> PathBuf {
    let newest = std::fs::read_dir(PG_ROOT)
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .max();
    let bin = Path::new(PG_ROOT).join(newest.map(|v| v.to_string()).unwrap_or_default()).join("bin");
    require(&bin.join("initdb"));
    bin
}

/// The user and group ids of the account `name` (from /etc/passwd).
fn account(name: &str) -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    passwd
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| fields.len() > 3 && fields[0] == name)
        .and_then(|fields| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
        .unwrap_or_else(|| {
            panic!("no `{name}` account to run PostgreSQL as (root may not): install postgresql")
        })
}
