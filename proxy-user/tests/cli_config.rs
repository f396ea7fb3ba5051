//! `sluice run --validate-config`: the operator's unmodified kube-proxy file is accepted; a bad
//! value fails naming its field.

use std::process::Command;

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

fn validate(path: &str) -> std::process::Output {
    Command::new(SLUICE)
        .args(["run", "--validate-config", "--config", path])
        .output()
        .unwrap()
}

#[test]
fn an_unmodified_kube_proxy_configuration_validates() {
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src/config/testdata/kube-proxy-config.yaml"
    );
    let out = validate(fixture);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("configuration is valid (0 warning(s))"),
        "{stdout}"
    );
    assert!(stdout.contains("sync_period: 30s"), "{stdout}");
}

#[test]
fn an_invalid_value_fails_naming_the_field_and_unknown_fields_warn() {
    let dir = std::env::temp_dir().join(format!("sluice-cli-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: ipvs\nipvs:\n  syncPeriod: -3s\n",
    )
    .unwrap();
    let out = validate(bad.to_str().unwrap());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("ipvs.syncPeriod"), "{stderr}");

    let unknown = dir.join("unknown.yaml");
    std::fs::write(
        &unknown,
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nfrobnicate: 1\n",
    )
    .unwrap();
    let out = validate(unknown.to_str().unwrap());
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("frobnicate"));
    std::fs::remove_dir_all(&dir).unwrap();
}
