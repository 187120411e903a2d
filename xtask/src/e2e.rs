//! `cargo xtask e2e-kind`: kproxy in a real Kubernetes cluster (kind, without
//! kube-proxy), checked with kubectl and curl.
//!
//! ```text
//! check tools ─ kind create cluster (deploy/kind.yaml: kubeProxyMode none)
//!   ─ docker build (deploy/Dockerfile) ─ kind load ─ kubectl apply deploy/
//!   ─ workloads (agnhost echo pods, a curl client) ─ checks ─ kind delete cluster
//! ```
//!
//! Needs Docker with a running daemon, kind and kubectl, and network access to pull the
//! kind node image and the test images. Development machines without Docker get a clear
//! error; the README says where the command runs.

use std::{collections::BTreeSet, path::Path, process::Command, thread, time::Duration};

use anyhow::{Context as _, Result, bail};

use crate::util::{output, run};

const CLUSTER: &str = "kproxy-e2e";
const IMAGE: &str = "kproxy:dev";
const ECHO_IMAGE: &str = "registry.k8s.io/e2e-test-images/agnhost:2.53";
const CURL_IMAGE: &str = "curlimages/curl:8.11.1";
const NS: &str = "e2e";

/// A named check: what it shows, and the function that fails when it does not hold.
type Check = (&'static str, fn() -> Result<()>);

/// Runs the whole suite; the cluster is deleted at the end unless `keep`.
pub(crate) fn e2e_kind(mode: &str, keep: bool) -> Result<()> {
    check_tools()?;
    if !matches!(mode, "nftables" | "ebpf") {
        bail!("--mode must be nftables or ebpf, not {mode:?}");
    }
    // A cluster left by an earlier run would make `create` fail.
    let _ = output(Command::new("kind").args(["delete", "cluster", "--name", CLUSTER]));
    run(Command::new("kind").args(["create", "cluster", "--config", "deploy/kind.yaml"]))?;
    let result = deploy_and_check(mode);
    if keep {
        println!("e2e: cluster {CLUSTER} kept (kind delete cluster --name {CLUSTER})");
    } else {
        run(Command::new("kind").args(["delete", "cluster", "--name", CLUSTER]))?;
    }
    result
}

/// Fails with what is missing and where the command runs instead.
fn check_tools() -> Result<()> {
    let mut missing = Vec::new();
    if output(Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"])).is_none() {
        missing.push("docker (with a running daemon)");
    }
    if output(Command::new("kind").arg("version")).is_none() {
        missing.push("kind (https://kind.sigs.k8s.io)");
    }
    if output(Command::new("kubectl").args(["version", "--client"])).is_none() {
        missing.push("kubectl");
    }
    if !missing.is_empty() {
        bail!(
            "cargo xtask e2e-kind needs {}, which this machine lacks. It builds a container \
             image and a kind cluster, so it runs where Docker does: a Linux workstation or a \
             CI runner with Docker (e.g. GitHub Actions ubuntu-latest). Everything else \
             (`cargo xtask test`, `cargo xtask demo`) runs here without Docker.",
            missing.join(", ")
        );
    }
    Ok(())
}

fn deploy_and_check(mode: &str) -> Result<()> {
    println!("e2e: building {IMAGE}");
    run(Command::new("docker").args(["build", "-f", "deploy/Dockerfile", "-t", IMAGE, "."]))?;
    run(Command::new("kind").args(["load", "docker-image", IMAGE, "--name", CLUSTER]))?;

    println!("e2e: deploying kproxy ({mode})");
    let api = node_ip(&format!("{CLUSTER}-control-plane"))?;
    let configmap = kubectl(&[
        "-n",
        "kube-system",
        "create",
        "configmap",
        "kproxy-apiserver",
        &format!("--from-literal=host={api}"),
        "--from-literal=port=6443",
        "--dry-run=client",
        "-o",
        "yaml",
    ])?;
    kubectl_apply_stdin(&configmap)?;
    for file in [
        "rbac.yaml",
        "config.yaml",
        &format!("daemonset-{mode}.yaml"),
    ] {
        kubectl(&[
            "apply",
            "-f",
            &Path::new("deploy").join(file).to_string_lossy(),
        ])?;
    }
    kubectl(&[
        "-n",
        "kube-system",
        "rollout",
        "status",
        "ds/kproxy",
        "--timeout=180s",
    ])?;
    // CoreDNS is reached through its ClusterIP: ready only once kproxy serves it.
    kubectl(&[
        "-n",
        "kube-system",
        "rollout",
        "status",
        "deploy/coredns",
        "--timeout=180s",
    ])?;

    println!("e2e: workloads");
    kubectl_apply_stdin(&workloads())?;
    for d in ["echo", "echo-local"] {
        kubectl(&[
            "-n",
            NS,
            "rollout",
            "status",
            &format!("deploy/{d}"),
            "--timeout=180s",
        ])?;
    }
    kubectl(&[
        "-n",
        NS,
        "wait",
        "--for=condition=Ready",
        "pod/client",
        "--timeout=180s",
    ])?;

    let checks: [Check; 6] = [
        ("ClusterIP balances over every endpoint", check_cluster_ip),
        ("NodePort answers on every node", check_node_port),
        (
            "externalTrafficPolicy Local keeps the source, only where an endpoint runs",
            check_local,
        ),
        ("ClientIP session affinity sticks", check_affinity),
        ("a Service without endpoints rejects", check_no_endpoints),
        ("metrics are served on each node", check_metrics),
    ];
    let mut failed = Vec::new();
    for (name, check) in checks {
        match check() {
            Ok(()) => println!("e2e: ok    {name}"),
            Err(e) => {
                println!("e2e: FAIL  {name}: {e:#}");
                failed.push(name);
            }
        }
    }
    if !failed.is_empty() {
        let logs =
            kubectl(&["-n", "kube-system", "logs", "ds/kproxy", "--tail=50"]).unwrap_or_default();
        bail!(
            "{} e2e check(s) failed: {}\nkproxy log:\n{logs}",
            failed.len(),
            failed.join("; ")
        );
    }
    println!("e2e: all checks passed");
    Ok(())
}

/// The test workloads: echo pods everywhere, one echo pod pinned to the first worker for
/// eTP Local, a curl client, and the Services under test.
fn workloads() -> String {
    let echo = |name: &str, replicas: u8, pin: &str| {
        format!(
            "---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}, namespace: {NS}}}\nspec:\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec:\n{pin}      containers:\n      - name: echo\n        image: {ECHO_IMAGE}\n        args: [netexec, --http-port=8080]\n        ports: [{{containerPort: 8080}}]\n        readinessProbe: {{httpGet: {{path: /healthz, port: 8080}}}}\n"
        )
    };
    let svc = |name: &str, app: &str, extra: &str, node_port: Option<u16>| {
        let np = node_port
            .map(|p| format!(", nodePort: {p}"))
            .unwrap_or_default();
        format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {NS}}}\nspec:\n  selector: {{app: {app}}}\n{extra}  ports: [{{port: 80, targetPort: 8080{np}}}]\n"
        )
    };
    let pin = format!("      nodeSelector: {{kubernetes.io/hostname: {CLUSTER}-worker}}\n");
    [
        format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NS}}}\n"),
        echo("echo", 3, ""),
        echo("echo-local", 1, &pin),
        svc("echo", "echo", "", None),
        svc("echo-np", "echo", "  type: NodePort\n", Some(30080)),
        svc(
            "echo-local",
            "echo-local",
            "  type: NodePort\n  externalTrafficPolicy: Local\n",
            Some(30081),
        ),
        svc("echo-affinity", "echo", "  sessionAffinity: ClientIP\n", None),
        svc("empty", "nothing-matches", "", None),
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: client, namespace: {NS}}}\nspec:\n  containers:\n  - name: curl\n    image: {CURL_IMAGE}\n    command: [sleep, \"3600\"]\n"
        ),
    ]
    .concat()
}

fn check_cluster_ip() -> Result<()> {
    let pods = echo_pods("echo")?;
    let seen = distinct(30, || {
        curl_from_client(&format!("http://echo.{NS}/hostname"))
    })?;
    ensure_eq(&seen, &pods, "pods answering the ClusterIP")
}

fn check_node_port() -> Result<()> {
    let pods = echo_pods("echo")?;
    for node in nodes()? {
        let ip = node_ip(&node)?;
        // From another node (the control plane container), as outside traffic arrives.
        let seen = distinct(30, || {
            curl_from_node(
                &format!("{CLUSTER}-control-plane"),
                &format!("http://{ip}:30080/hostname"),
            )
        })?;
        if !seen.is_subset(&pods) || seen.is_empty() {
            bail!("NodePort on {node}: answered by {seen:?}, expected some of {pods:?}");
        }
    }
    Ok(())
}

fn check_local() -> Result<()> {
    let local_pod = echo_pods("echo-local")?;
    let from = format!("{CLUSTER}-control-plane");
    let from_ip = node_ip(&from)?;
    let worker_ip = node_ip(&format!("{CLUSTER}-worker"))?;
    let name = curl_from_node(&from, &format!("http://{worker_ip}:30081/hostname"))?;
    ensure_eq(&BTreeSet::from([name]), &local_pod, "eTP Local endpoint")?;
    let client = curl_from_node(&from, &format!("http://{worker_ip}:30081/clientip"))?;
    if !client.starts_with(&format!("{from_ip}:")) {
        bail!("eTP Local: the endpoint saw {client}, not the client's own address {from_ip}");
    }
    // The second worker has no local endpoint: dropped, so curl times out.
    let other_worker_ip = node_ip(&format!("{CLUSTER}-worker2"))?;
    match curl_code_from_node(&from, &format!("http://{other_worker_ip}:30081/hostname"))? {
        28 => Ok(()),
        code => bail!(
            "eTP Local on a node without a local endpoint: curl exit {code}, expected 28 (timeout: dropped)"
        ),
    }
}

fn check_affinity() -> Result<()> {
    let seen = distinct(15, || {
        curl_from_client(&format!("http://echo-affinity.{NS}/hostname"))
    })?;
    if seen.len() != 1 {
        bail!("ClientIP affinity: answered by {seen:?}, expected one pod");
    }
    Ok(())
}

fn check_no_endpoints() -> Result<()> {
    let code = kubectl_code(&[
        "-n",
        NS,
        "exec",
        "client",
        "--",
        "curl",
        "-s",
        "--max-time",
        "5",
        &format!("http://empty.{NS}/"),
    ])?;
    // 7: connection refused (the REJECT kube-proxy sends), as opposed to 28 (timeout).
    if code != 7 {
        bail!("Service without endpoints: curl exit {code}, expected 7 (connection refused)");
    }
    Ok(())
}

fn check_metrics() -> Result<()> {
    for node in nodes()? {
        let text = curl_from_node(&node, "http://127.0.0.1:10249/metrics")?;
        if !text.contains("kubeproxy_sync_proxy_rules_duration_seconds_count") {
            bail!("no sync metrics on {node}");
        }
    }
    Ok(())
}

// ---- helpers ------------------------------------------------------------------------

fn kubectl(args: &[&str]) -> Result<String> {
    let out = Command::new("kubectl")
        .args(["--context", &format!("kind-{CLUSTER}")])
        .args(args)
        .output()
        .context("running kubectl")?;
    if !out.status.success() {
        bail!(
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// kubectl's exit code (for curl exit codes passed through `kubectl exec`).
fn kubectl_code(args: &[&str]) -> Result<i32> {
    let status = Command::new("kubectl")
        .args(["--context", &format!("kind-{CLUSTER}")])
        .args(args)
        .output()
        .context("running kubectl")?
        .status;
    Ok(status.code().unwrap_or(-1))
}

fn kubectl_apply_stdin(yaml: &str) -> Result<()> {
    use std::io::Write as _;
    let mut child = Command::new("kubectl")
        .args(["--context", &format!("kind-{CLUSTER}"), "apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .context("running kubectl apply")?;
    child
        .stdin
        .take()
        .context("kubectl stdin")?
        .write_all(yaml.as_bytes())?;
    if !child.wait()?.success() {
        bail!("kubectl apply failed");
    }
    Ok(())
}

fn nodes() -> Result<Vec<String>> {
    Ok(
        kubectl(&["get", "nodes", "-o", "jsonpath={.items[*].metadata.name}"])?
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
    )
}

/// A kind node's address on the `kind` docker network.
fn node_ip(node: &str) -> Result<String> {
    let ip = output(Command::new("docker").args([
        "inspect",
        "-f",
        "{{.NetworkSettings.Networks.kind.IPAddress}}",
        node,
    ]))
    .with_context(|| format!("docker inspect {node}"))?;
    Ok(ip.trim().to_owned())
}

fn echo_pods(app: &str) -> Result<BTreeSet<String>> {
    Ok(kubectl(&[
        "-n",
        NS,
        "get",
        "pods",
        "-l",
        &format!("app={app}"),
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ])?
    .split_whitespace()
    .map(str::to_owned)
    .collect())
}

fn curl_from_client(url: &str) -> Result<String> {
    Ok(kubectl(&[
        "-n",
        NS,
        "exec",
        "client",
        "--",
        "curl",
        "-sf",
        "--max-time",
        "5",
        url,
    ])?
    .trim()
    .to_owned())
}

/// curl inside a kind node container (the node's own network namespace).
fn curl_from_node(node: &str, url: &str) -> Result<String> {
    let out =
        output(Command::new("docker").args(["exec", node, "curl", "-sf", "--max-time", "5", url]))
            .with_context(|| format!("curl {url} from {node}"))?;
    Ok(out.trim().to_owned())
}

fn curl_code_from_node(node: &str, url: &str) -> Result<i32> {
    let status = Command::new("docker")
        .args(["exec", node, "curl", "-s", "--max-time", "3", url])
        .output()
        .context("docker exec")?
        .status;
    Ok(status.code().unwrap_or(-1))
}

/// The distinct answers of `n` requests (retrying each failed one a few times: DNS and
/// endpoints settle right after deployment).
fn distinct(n: usize, mut request: impl FnMut() -> Result<String>) -> Result<BTreeSet<String>> {
    let mut seen = BTreeSet::new();
    for _ in 0..n {
        let mut attempt = 0;
        loop {
            match request() {
                Ok(answer) => {
                    seen.insert(answer);
                    break;
                }
                Err(e) if attempt >= 5 => return Err(e),
                Err(_) => {
                    attempt += 1;
                    thread::sleep(Duration::from_secs(2));
                }
            }
        }
    }
    Ok(seen)
}

fn ensure_eq(seen: &BTreeSet<String>, want: &BTreeSet<String>, what: &str) -> Result<()> {
    if seen != want {
        bail!("{what}: got {seen:?}, expected {want:?}");
    }
    Ok(())
}
