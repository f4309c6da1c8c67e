//! The examples in `deploy/` agree with the binary: the Kubernetes probes ask the paths the relay
//! serves on the port its ConfigMap makes it listen on, the secret files are the ones its `*_file`
//! keys name, and Kubernetes and systemd wait longer than the relay's drain before killing it.
//! The relay is started as the Deployment starts it, with the ConfigMap's own courier.toml.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use courier_conformance::local::{free_port, http_get};

use serde_norway::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn read(relative: &str) -> String {
    let path = deploy_dir().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn manifest(name: &str) -> Value {
    let relative = format!("kubernetes/{name}");
    serde_norway::from_str(&read(&relative)).unwrap_or_else(|e| panic!("{relative} is not valid YAML: {e}"))
}

/// The value at `path`: mapping keys and sequence indexes joined by `.` (`\\.` inside a key).
fn at<'a>(value: &'a Value, path: &str) -> &'a Value {
    path.replace("\\.", "\0").split('.').fold(value, |value, step| {
        let step = step.replace('\0', ".");
        let next = match step.parse::<usize>() {
            Ok(index) => value.get(index),
            Err(_) => value.get(&step),
        };
        next.unwrap_or_else(|| panic!("no `{step}` in `{path}` of {value:?}"))
    })
}

fn text<'a>(value: &'a Value, path: &str) -> &'a str {
    at(value, path).as_str().unwrap_or_else(|| panic!("`{path}` is not a string"))
}

fn items<'a>(value: &'a Value, path: &str) -> &'a [Value] {
    at(value, path).as_sequence().unwrap_or_else(|| panic!("`{path}` is not a list"))
}

/// The element of the list at `path` whose `name` is `name`.
fn named<'a>(value: &'a Value, path: &str, name: &str) -> &'a Value {
    items(value, path)
        .iter()
        .find(|item| item.get("name").and_then(Value::as_str) == Some(name))
        .unwrap_or_else(|| panic!("no `{name}` in `{path}`"))
}

fn container(deployment: &Value) -> &Value {
    let containers = items(deployment, "spec.template.spec.containers");
    assert_eq!(containers.len(), 1, "the example runs one container");
    &containers[0]
}

/// A probe's or a Service's port: a number, or the name of one of the container's ports.
fn resolve_port(container: &Value, port: &Value) -> u64 {
    match port {
        Value::Number(number) => number.as_u64().expect("a port number"),
        Value::String(name) => at(named(container, "ports", name), "containerPort").as_u64().expect("a port"),
        other => panic!("a port is a number or a name, not {other:?}"),
    }
}

/// The ConfigMap's courier.toml, as text.
fn courier_toml() -> String {
    text(&manifest("configmap.yaml"), "data.courier\\.toml").to_owned()
}

/// The ConfigMap's courier.toml, parsed.
fn config() -> toml::Table {
    courier_toml().parse().expect("the ConfigMap's courier.toml is valid TOML")
}

/// `section.key` of the ConfigMap's courier.toml, else of reference.toml (the binary's defaults).
fn setting(key: &str) -> toml::Value {
    let reference: toml::Table = include_str!("../config/reference.toml").parse().unwrap();
    let lookup = |table: &toml::Table| {
        let (section, key) = key.split_once('.').unwrap();
        table.get(section).and_then(|s| s.get(key)).cloned()
    };
    lookup(&config()).or_else(|| lookup(&reference)).unwrap_or_else(|| panic!("no setting {key}"))
}

fn drain_timeout() -> Duration {
    humantime::parse_duration(setting("relay.drain_timeout").as_str().unwrap()).unwrap()
}

fn listen_port() -> u64 {
    let listen: std::net::SocketAddr = setting("http.listen").as_str().unwrap().parse().unwrap();
    assert!(listen.ip().is_unspecified(), "in a pod the relay must listen on every interface, not {listen}");
    u64::from(listen.port())
}

/// Every non-empty `*_file` key of the ConfigMap's courier.toml (as `database.password_file`)
/// with the file it names.
fn secret_files() -> BTreeSet<(String, String)> {
    fn collect(table: &toml::Table, prefix: &str, out: &mut BTreeSet<(String, String)>) {
        for (key, value) in table {
            let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
            match value {
                toml::Value::Table(inner) => collect(inner, &path, out),
                toml::Value::String(file) if key.ends_with("_file") && !file.is_empty() => {
                    out.insert((path, file.clone()));
                }
                _ => {}
            }
        }
    }
    let mut files = BTreeSet::new();
    collect(&config(), "", &mut files);
    files
}

/// The Deployment's mount path of the volume named `volume`.
fn mount_path<'a>(container: &'a Value, volume: &str) -> &'a str {
    text(named(container, "volumeMounts", volume), "mountPath")
}

/// `key=value` lines of the systemd unit, in order (comments and section headers left out).
fn unit() -> Vec<(String, String)> {
    read("systemd/courier-relay.service")
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with(['#', ';', '[']))
        .map(|line| {
            let (key, value) = line.split_once('=').unwrap_or_else(|| panic!("not key=value: {line}"));
            (key.to_owned(), value.to_owned())
        })
        .collect()
}

fn unit_values(key: &str) -> Vec<String> {
    unit().into_iter().filter(|(k, _)| k == key).map(|(_, v)| v).collect()
}

fn unit_value(key: &str) -> String {
    let values = unit_values(key);
    assert_eq!(values.len(), 1, "the unit sets {key} once: {values:?}");
    values[0].clone()
}

#[test]
fn kustomization_lists_every_manifest() {
    let listed: BTreeSet<String> = items(&manifest("kustomization.yaml"), "resources")
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    let files: BTreeSet<String> = std::fs::read_dir(deploy_dir().join("kubernetes"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".yaml") && name != "kustomization.yaml")
        .collect();
    assert_eq!(listed, files);
}

#[test]
fn probes_service_and_scrape_use_the_configured_listen_port() {
    let deployment = manifest("deployment.yaml");
    let container = container(&deployment);
    let port = listen_port();
    for probe in ["livenessProbe", "readinessProbe"] {
        let probe_port = at(container, &format!("{probe}.httpGet.port"));
        assert_eq!(resolve_port(container, probe_port), port, "{probe} port");
    }
    assert_eq!(text(container, "livenessProbe.httpGet.path"), "/healthz");
    assert_eq!(text(container, "readinessProbe.httpGet.path"), "/readyz");
    let annotations = at(&deployment, "spec.template.metadata.annotations");
    assert_eq!(text(annotations, "prometheus\\.io/port"), port.to_string());
    let service = manifest("service.yaml");
    let service_port = &items(&service, "spec.ports")[0];
    assert_eq!(resolve_port(container, at(service_port, "targetPort")), port, "the Service's targetPort");
    assert_eq!(
        at(&service, "spec.selector"),
        at(&deployment, "spec.template.metadata.labels"),
        "the Service selects the Deployment's pods"
    );
}

#[test]
fn secret_and_config_files_are_mounted_where_the_relay_reads_them() {
    let deployment = manifest("deployment.yaml");
    let container = container(&deployment);
    let command: Vec<&str> = items(container, "command").iter().map(|a| a.as_str().unwrap()).collect();
    let config_file = format!("{}/courier.toml", mount_path(container, "config"));
    assert_eq!(command, ["courier", "relay", "--config", config_file.as_str()]);
    assert_eq!(
        text(named(&deployment, "spec.template.spec.volumes", "config"), "configMap.name"),
        text(&manifest("configmap.yaml"), "metadata.name")
    );

    let secret_volume = named(&deployment, "spec.template.spec.volumes", "secrets");
    assert_eq!(text(secret_volume, "secret.secretName"), text(&manifest("secret.yaml"), "metadata.name"));
    let secret_dir = mount_path(container, "secrets");
    let mounted: BTreeSet<String> = at(&manifest("secret.yaml"), "stringData")
        .as_mapping()
        .unwrap()
        .keys()
        .map(|key| format!("{secret_dir}/{}", key.as_str().unwrap()))
        .collect();
    let named_files: BTreeSet<String> = secret_files().into_iter().map(|(_, file)| file).collect();
    assert_eq!(named_files, mounted, "the *_file keys of courier.toml and the Secret's files");
}

#[test]
fn kubernetes_and_systemd_wait_longer_than_the_drain() {
    let drain = drain_timeout();
    let grace = at(&manifest("deployment.yaml"), "spec.template.spec.terminationGracePeriodSeconds").as_u64();
    assert!(
        Duration::from_secs(grace.unwrap()) > drain,
        "terminationGracePeriodSeconds {grace:?} must exceed relay.drain_timeout {drain:?}"
    );
    let stop = humantime::parse_duration(&unit_value("TimeoutStopSec"))
        .or_else(|_| unit_value("TimeoutStopSec").parse().map(Duration::from_secs))
        .expect("TimeoutStopSec is a duration");
    assert!(stop > drain, "TimeoutStopSec {stop:?} must exceed relay.drain_timeout {drain:?}");
    assert_eq!(unit_value("KillSignal"), "SIGTERM");
    assert_eq!(unit_value("Restart"), "on-failure");
}

#[test]
fn systemd_credentials_replace_every_secret_file_of_the_config() {
    let exec = unit_value("ExecStart");
    let mut exec = exec.split_whitespace();
    assert!(exec.next().unwrap().ends_with("/courier"));
    assert_eq!(exec.collect::<Vec<_>>(), ["relay", "--config", "/etc/courier/courier.toml"]);

    let credentials: BTreeSet<String> = unit_values("LoadCredential")
        .iter()
        .map(|c| c.split_once(':').expect("LoadCredential=name:path").0.to_owned())
        .collect();
    let mut overridden = BTreeSet::new();
    for environment in unit_values("Environment") {
        let (variable, value) = environment.split_once('=').unwrap();
        let key =
            variable.strip_prefix("COURIER_").expect("a COURIER_ variable").to_lowercase().replace("__", ".");
        let credential =
            value.strip_prefix("%d/").unwrap_or_else(|| panic!("{variable} is not a credential"));
        assert!(credentials.contains(credential), "{variable} names credential {credential}, not loaded");
        overridden.insert(key);
    }
    let file_keys: BTreeSet<String> = secret_files().into_iter().map(|(key, _)| key).collect();
    assert_eq!(overridden, file_keys, "the unit's credential variables and the *_file keys of courier.toml");
}

/// The Deployment's command with the ConfigMap's courier.toml, as a real process: the database and
/// bus are swapped for a SQLite file and the memory bus (environment overrides, so the file is
/// the ConfigMap's own, loaded by the binary's loader), the listen port for a free one, and the
/// variables Kubernetes injects for the Service are set. Every probed path must answer 200.
#[test]
fn relay_started_as_the_deployment_says_answers_its_probes() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}", dir.path().join("outbox.db").display());
    let mut relay = Relay::start(
        dir.path(),
        &[
            ("COURIER_DATABASE__URL", sqlite),
            // The ConfigMap's password file is PostgreSQL's; SQLite takes none.
            ("COURIER_DATABASE__PASSWORD_FILE", String::new()),
            ("COURIER_BUS__URL", "memory".into()),
        ],
    );
    let deployment = manifest("deployment.yaml");
    let container = container(&deployment);
    let annotations = at(&deployment, "spec.template.metadata.annotations");
    for path in [
        text(container, "livenessProbe.httpGet.path"),
        text(container, "readinessProbe.httpGet.path"),
        text(annotations, "prometheus\\.io/path"),
    ] {
        relay.wait_for(path, |status, _| status == 200);
    }
    assert!(relay.get("/metrics").unwrap().1.contains("courier_outbox_pending"));
    let stderr = relay.terminate();
    assert!(!stderr.contains("CHANGE-ME"), "a secret reached the log:\n{stderr}");
}

/// While its database cannot be reached, the relay passes the liveness probe (so it is not
/// restarted while it retries) and fails the readiness probe naming the database, never the
/// Secret's password, which it is given in a file as in the pod.
#[test]
fn relay_waiting_for_its_database_is_alive_but_not_ready() {
    let dir = tempfile::tempdir().unwrap();
    let password = text(&manifest("secret.yaml"), "stringData.database-password").to_owned();
    let password_file = dir.path().join("database-password");
    std::fs::write(&password_file, &password).unwrap();
    let unreachable = format!("postgres://courier@127.0.0.1:{}/app", free_port());
    let mut relay = Relay::start(
        dir.path(),
        &[
            ("COURIER_DATABASE__URL", unreachable),
            ("COURIER_DATABASE__PASSWORD_FILE", password_file.display().to_string()),
            ("COURIER_BUS__URL", "memory".into()),
        ],
    );
    let deployment = manifest("deployment.yaml");
    let container = container(&deployment);
    relay.wait_for(text(container, "livenessProbe.httpGet.path"), |status, _| status == 200);
    let (_, body) = relay.wait_for(text(container, "readinessProbe.httpGet.path"), |status, body| {
        status == 503 && body.contains("database")
    });
    assert!(!body.contains(&password), "/readyz shows the password: {body}");
    let stderr = relay.terminate();
    assert!(!stderr.contains(&password), "a secret reached the log:\n{stderr}");
}

/// The relay's process, killed if the test fails before stopping it.
struct Relay {
    child: Child,
    listen: String,
}

impl Relay {
    /// Runs the Deployment's command with the ConfigMap's courier.toml (written into `dir`), the
    /// variables Kubernetes injects for the Service, `env`, and a free listen port.
    fn start(dir: &Path, env: &[(&str, String)]) -> Self {
        let config_file = dir.join("courier.toml");
        std::fs::write(&config_file, courier_toml()).unwrap();
        let deployment = manifest("deployment.yaml");
        let command = items(container(&deployment), "command");
        let args = command[1..].iter().map(|arg| match arg.as_str().unwrap() {
            arg if arg.ends_with("courier.toml") => config_file.display().to_string(),
            arg => arg.to_owned(),
        });
        let listen = format!("127.0.0.1:{}", free_port());
        let child = Command::new(env!("CARGO_BIN_EXE_courier"))
            .args(args)
            .env("COURIER_HTTP__LISTEN", &listen)
            .envs(kubernetes_service_env(&manifest("service.yaml")))
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Self { child, listen }
    }

    /// Status and body of `GET path`, or `None` when nothing answers.
    fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(&self.listen, path)
    }

    /// Polls `path` until its answer is what `wanted` accepts; a 404 (a path the binary does not
    /// serve) or the relay's exit fails at once.
    fn wait_for(&mut self, path: &str, wanted: impl Fn(u16, &str) -> bool) -> (u16, String) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let answer = self.get(path);
            match answer {
                Some((status, ref body)) if wanted(status, body) => return answer.unwrap(),
                Some((404, _)) => panic!("the relay does not serve {path}"),
                _ => {}
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("relay exited with {status}: {}", self.stderr());
            }
            assert!(Instant::now() < deadline, "{path} did not answer as expected within 60s: {answer:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends SIGTERM, expects a clean exit, and returns what the relay printed to stderr.
    fn terminate(mut self) -> String {
        assert!(Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success());
        let status = self.child.wait().unwrap();
        let stderr = self.stderr();
        assert!(status.success(), "exit after SIGTERM: {status:?}\n{stderr}");
        stderr
    }

    /// What the relay printed to stderr, once it has exited.
    fn stderr(&mut self) -> String {
        let mut text = String::new();
        if let Some(mut stderr) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        }
        text
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The variables Kubernetes sets in pods for `service` (docker-links style), e.g.
/// COURIER_RELAY_SERVICE_HOST and COURIER_RELAY_PORT for a Service named `courier-relay`.
fn kubernetes_service_env(service: &Value) -> Vec<(String, String)> {
    let name = text(service, "metadata.name").to_uppercase().replace('-', "_");
    let port = at(&items(service, "spec.ports")[0], "port").as_u64().unwrap();
    let host = "10.96.0.42";
    let prefix = format!("{name}_PORT_{port}_TCP");
    vec![
        (format!("{name}_SERVICE_HOST"), host.into()),
        (format!("{name}_SERVICE_PORT"), port.to_string()),
        (format!("{name}_SERVICE_PORT_HTTP"), port.to_string()),
        (format!("{name}_PORT"), format!("tcp://{host}:{port}")),
        (prefix.clone(), format!("tcp://{host}:{port}")),
        (format!("{prefix}_PROTO"), "tcp".into()),
        (format!("{prefix}_PORT"), port.to_string()),
        (format!("{prefix}_ADDR"), host.into()),
    ]
}
