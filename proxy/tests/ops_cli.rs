//! The `kproxy` binary's command line, unprivileged: what an operator sees when a flag or
//! the config file is wrong, before anything touches the kernel.

use std::{path::Path, process::Command};

fn kproxy(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kproxy"))
        .args(args)
        .output()
        .expect("run kproxy");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn temp_file(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("kproxy-ops-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn version_prints_the_version() {
    let (code, out, _) = kproxy(&["version"]);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), format!("kproxy {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn kube_proxy_flags_without_a_kproxy_meaning_say_what_to_do() {
    let (code, _, err) = kproxy(&["--iptables-min-sync-period=1s", "--hostname-override=n"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("use --min-sync-period"), "{err}");
    let (code, _, err) = kproxy(&["run", "--feature-gates=Foo=true"]);
    assert_eq!(code, 2);
    assert!(err.contains("no feature gates"), "{err}");
    let (code, _, err) = kproxy(&["run", "--frobnicate"]);
    assert_eq!(code, 2);
    assert!(err.contains("kproxy run --help"), "{err}");
}

#[test]
fn a_bad_config_file_fails_naming_the_field() {
    let path = temp_file(
        "bad.yaml",
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n\
         nftables: {syncPeriod: soon}\nmode: nftables\n",
    );
    let (code, _, err) = kproxy(&[
        "--config",
        path.to_str().unwrap(),
        "--manifests",
        "/nonexistent",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("nftables.syncPeriod"), "{err}");

    let path = temp_file("wrong-kind.yaml", "apiVersion: v1\nkind: ConfigMap\n");
    let (code, _, err) = kproxy(&["run", "--config", path.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("KubeProxyConfiguration"), "{err}");

    let (code, _, err) = kproxy(&["run", "--config", "/nonexistent/kproxy.yaml"]);
    assert_ne!(code, 0);
    assert!(err.contains("/nonexistent/kproxy.yaml"), "{err}");
    let _ = std::fs::remove_dir_all(Path::new(&path).parent().unwrap());
}
