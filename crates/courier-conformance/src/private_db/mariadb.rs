//! The private MariaDB server.

use std::path::Path;
use std::process::Command;

use super::{require, run, running_as_root, PrivateDb, CERT_USER, PASSWORD, PASSWORD_USER};

const MARIADBD: &str = "/usr/sbin/mariadbd";
const INSTALL_DB: &str = "/usr/bin/mariadb-install-db";
const CLIENT: &str = "/usr/bin/mariadb";

/// Small InnoDB files and buffers: the defaults take over 100 MB of disk per server.
const SMALL: [&str; 2] = ["--innodb-log-file-size=4M", "--innodb-buffer-pool-size=16M"];

pub(super) fn start() -> PrivateDb {
    for program in [MARIADBD, INSTALL_DB, CLIENT] {
        require(Path::new(program));
    }
    let (mut db, server) = PrivateDb::prepare("mariadb", "mysql", "KILL");
    let data = format!("--datadir={}", db.dir.join("data").display());
    let socket = format!("--socket={}", db.dir.join("mariadbd.sock").display());
    // A temporary directory of its own: mariadbd deletes every `#sql*` file in its tmpdir when
    // it starts, so servers sharing /tmp delete each other's temporary tables (a concurrent
    // test's mariadb-install-db then fails with "Unknown table 'mysql.tmp_user_sys'").
    let tmp = db.dir.join("tmp");
    std::fs::create_dir_all(&tmp).expect("create the server's tmpdir");
    let tmpdir = format!("--tmpdir={}", tmp.display());
    // mariadbd refuses to run as root unless told to.
    let user = running_as_root().then_some("--user=root");
    run(
        Command::new(INSTALL_DB)
            .args([
                "--no-defaults",
                &data,
                &tmpdir,
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ])
            .args(user)
            .args(SMALL),
        "mariadb-install-db",
    );
    let client = || {
        let mut command = Command::new(CLIENT);
        command.args(["--no-defaults", "-uroot", &socket]);
        command
    };
    let mut mariadbd = Command::new(MARIADBD);
    mariadbd
        .args(["--no-defaults", &data, &tmpdir, &socket, "--bind-address=127.0.0.1", "--skip-name-resolve"])
        .arg(format!("--port={}", db.port))
        .arg(format!("--ssl-ca={}", db.ca.display()))
        .arg(format!("--ssl-cert={}", server.cert.display()))
        .arg(format!("--ssl-key={}", server.key.display()))
        .args(user)
        .args(SMALL);
    db.spawn(&mut mariadbd, "private MariaDB", || {
        client().args(["-e", "SELECT 1"]).output().is_ok_and(|o| o.status.success())
    });
    let setup = format!(
        "CREATE USER '{PASSWORD_USER}'@'%' IDENTIFIED BY '{PASSWORD}' REQUIRE SSL;
         CREATE DATABASE {PASSWORD_USER};
         GRANT ALL ON {PASSWORD_USER}.* TO '{PASSWORD_USER}'@'%';
         CREATE USER '{CERT_USER}'@'%' REQUIRE X509;
         CREATE DATABASE {CERT_USER};
         GRANT ALL ON {CERT_USER}.* TO '{CERT_USER}'@'%';"
    );
    run(client().args(["-e", &setup]), "creating the private MariaDB's accounts");
    db
}
