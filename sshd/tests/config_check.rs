//! `turku-storage config-check`: an original install's config directory is read, the secret
//! never printed, unknown keys warned on stderr, and a broken directory is a clear error.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn config_check(dir: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_turku-storage"))
        .args(["config-check", "--config-dir"])
        .arg(dir)
        .output()
        .unwrap()
}

#[test]
fn config_check_prints_the_parsed_config_with_secrets_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let config_d = dir.path().join("config.d");
    std::fs::create_dir(&config_d).unwrap();
    std::fs::write(
        config_d.join("10-storage.json"),
        r#"{"name": "s1", "secret": "TOPSECRET", "api_url": "https://t.example/v1",
            "volumes": {"a": {"path": "/media/backup"}}, "colour": "blue"}"#,
    )
    .unwrap();
    std::fs::write(config_d.join("20-port.yaml"), "ssh_ping_port: 2222\n").unwrap();
    let out = config_check(dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stdout.contains("TOPSECRET"), "{stdout}");
    assert!(stdout.contains("0.0.0.0:2222"), "{stdout}");
    assert!(stdout.contains("/media/backup/turku-store"), "{stdout}");
    assert!(stderr.contains("colour"), "{stderr}");

    std::fs::write(config_d.join("30-broken.yaml"), "volumes: [\n").unwrap();
    let out = config_check(dir.path());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("30-broken.yaml"));
}
