//! The deployment files: the Dockerfile passes hadolint and keeps its promises (non-root,
//! volumes, health check on /healthz); the systemd unit and the Kubernetes manifest carry the
//! settings the README's operator section relies on.

use std::path::Path;
use std::process::Command;

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap()
}

#[test]
fn dockerfile_lints_clean_and_runs_as_non_root() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile");
    match Command::new("hadolint").arg(&path).output() {
        Ok(out) => assert!(
            out.status.success(),
            "hadolint: {}",
            String::from_utf8_lossy(&out.stdout)
        ),
        Err(e) if std::env::var_os("CI").is_some() => panic!("hadolint is required in CI: {e}"),
        Err(e) => eprintln!("SKIPPED hadolint: {e}"),
    }
    let d = read("Dockerfile");
    let user = d
        .lines()
        .rev()
        .find(|l| l.starts_with("USER "))
        .expect("a USER line");
    assert!(!user.contains("root") && !user.contains(" 0"), "{user}");
    assert!(d.contains("HEALTHCHECK") && d.contains("/healthz"));
    assert!(d.contains("VOLUME [\"/var/lib/dpss-sync\"]"));
    assert!(d.contains("cargo build --release --locked"));
    assert!(
        d.matches("\nFROM ").count() + usize::from(d.starts_with("FROM ")) >= 2,
        "multi-stage"
    );
}

#[test]
fn systemd_unit_is_hardened() {
    let u = read("deploy/systemd/dpss-sync.service");
    for directive in [
        "User=dpss-sync",
        "StateDirectory=dpss-sync",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "Restart=on-failure",
        "EnvironmentFile=",
        "ExecStart=/usr/local/bin/dpss-sync --config /etc/dpss-sync/dpss-sync.toml run",
        "LimitNOFILE=8192",
    ] {
        assert!(
            u.lines().any(|l| l.trim_start().starts_with(directive)),
            "missing {directive}"
        );
    }
}

/// The configuration a manifest embeds, as dpss-sync loads it.
fn embedded_settings(manifest: &str) -> dpss_sync::config::Settings {
    let toml: String = manifest
        .split("dpss-sync.toml: |\n")
        .nth(1)
        .unwrap()
        .lines()
        .take_while(|l| l.starts_with("    ") || l.is_empty())
        .map(|l| format!("{}\n", l.trim_start()))
        .collect();
    dpss_sync::config::Settings::load(&dpss_sync::config::Sources {
        inline: vec![toml],
        ..Default::default()
    })
    .unwrap()
}

#[test]
fn the_postgres_manifest_runs_two_replicas_that_roll_and_survive_a_drain() {
    let k = read("deploy/kubernetes/dpss-sync-postgres.yaml");
    for needle in [
        "replicas: 2",
        "type: RollingUpdate",
        "kind: PodDisruptionBudget",
        "minAvailable: 1",
        "path: /healthz",
        "path: /readyz",
        "mountPath: /run/secrets/dpss-sync-postgres",
    ] {
        assert!(k.contains(needle), "missing {needle}");
    }
    assert!(!k.contains("PersistentVolumeClaim"), "no state on a volume");
    let s = embedded_settings(&k);
    let dpss_sync::model::StateUrl::Postgres { url, password_file } = &s.state.url else {
        panic!("{:?}", s.state.url)
    };
    assert!(
        url.password().is_none(),
        "the password is a Secret, not in the URL"
    );
    assert!(password_file.is_some());
}

#[test]
fn kubernetes_manifest_keeps_one_writer_and_probes() {
    let k = read("deploy/kubernetes/dpss-sync.yaml");
    for needle in [
        "replicas: 1",
        "type: Recreate",
        "kind: PersistentVolumeClaim",
        "kind: ConfigMap",
        "kind: Secret",
        "path: /healthz",
        "path: /readyz",
        "prometheus.io/scrape: \"true\"",
        "runAsNonRoot: true",
        "client_secret_file = \"/run/secrets/dpss-sync/client_secret\"",
        "mountPath: /run/secrets/dpss-sync",
        "defaultMode: 0400",
    ] {
        assert!(k.contains(needle), "missing {needle}");
    }
    // The embedded configuration is one dpss-sync accepts, with its connection cap.
    assert_eq!(embedded_settings(&k).server.max_connections, 2048);
}
