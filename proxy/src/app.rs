//! Wiring: flags → source, dataplane, servers and the sync loop.

use std::time::Duration;

use anyhow::{Context as _, Result};
use kproxy_model::ModelConfig;
use tracing::{info, warn};

use crate::{
    backends,
    cli::{CleanupArgs, Explicit, RunArgs},
    config,
    dataplane::Dataplane,
    health::Health,
    healthcheck::ServiceHealthServers,
    metrics::{Metrics, SyncObserver},
    servers,
    source::{
        Source,
        kube::{KubeSource, KubeSourceConfig},
        manifests::ManifestsSource,
    },
    sync::{SyncConfig, SyncLoop},
};

/// Applies `--config` (if given) under the flags given on the command line, logging one
/// warning per ignored field.
pub fn resolve(mut args: RunArgs, explicit: &Explicit) -> Result<RunArgs> {
    if let Some(path) = args.config.clone() {
        let file = config::load(&path)?;
        for w in &file.warnings {
            warn!(config = %path.display(), "{w}");
        }
        config::apply(&mut args, file, explicit);
    }
    Ok(args)
}

/// This node's name: `--hostname-override`, else the hostname (lower-cased, as kube-proxy).
pub fn node_name(args: &RunArgs) -> String {
    args.hostname_override.clone().unwrap_or_else(|| {
        nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().to_lowercase())
            .unwrap_or_default()
    })
}

/// `kproxy run`: serves until SIGTERM or SIGINT, then leaves the datapath in place.
pub async fn run(args: RunArgs) -> Result<()> {
    let node = node_name(&args);
    info!(mode = %args.proxy_mode, node, "starting kproxy");
    let health = Health::new(args.sync_period);
    let listener = servers::bind(args.healthz_bind_address)
        .await
        .with_context(|| format!("binding the health server to {}", args.healthz_bind_address))?;
    let metrics = Metrics::new();
    let health_task = tokio::spawn(servers::serve_health(
        listener,
        health.clone(),
        metrics.clone(),
    ));
    // As kube-proxy without bindAddressHardFail: a metrics port in use is not fatal.
    let metrics_task = match servers::bind(args.metrics_bind_address).await {
        Ok(l) => Some(tokio::spawn(servers::serve_metrics(
            l,
            metrics.clone(),
            args.proxy_mode,
        ))),
        Err(e) => {
            warn!(addr = %args.metrics_bind_address, error = %e, "cannot bind the metrics server; running without it");
            None
        }
    };
    let observer = SyncObserver::new(metrics).with_service_health(ServiceHealthServers::new(
        health.clone(),
        args.nodeport_addresses.clone(),
    ));

    let dataplane = backends::open(&args)?;
    let config = SyncConfig {
        min_sync_period: args.min_sync_period,
        sync_period: args.sync_period,
        model: ModelConfig {
            node_name: node.clone(),
            cluster_cidrs: args.cluster_cidr.clone(),
            masquerade_all: args.masquerade_all,
            nodeport_addresses: args.nodeport_addresses.clone(),
            local_addresses: Vec::new(),
            proxy_name: None,
        },
        discover_local_addresses: true,
    };
    let result = if let Some(dir) = &args.manifests {
        let source = ManifestsSource::new(dir.clone(), node)?;
        run_loop(source, dataplane, config, health, observer).await
    } else {
        let source = KubeSource::start(KubeSourceConfig {
            kubeconfig: args.kubeconfig.clone(),
            master: args.master.clone(),
            node_name: node,
            proxy_name: None,
        })
        .await?;
        run_loop(source, dataplane, config, health, observer).await
    };
    health_task.abort();
    if let Some(t) = metrics_task {
        t.abort();
    }
    result
}

async fn run_loop<S: Source>(
    source: S,
    dataplane: Box<dyn Dataplane>,
    config: SyncConfig,
    health: Health,
    observer: SyncObserver,
) -> Result<()> {
    // The loop owns the observer and with it the healthCheckNodePort servers: they close
    // when the loop returns.
    SyncLoop::new(source, dataplane, config, health)
        .with_observer(observer)
        .run(shutdown_signal())
        .await?;
    info!("shutting down; the datapath stays programmed (kproxy cleanup removes it)");
    Ok(())
}

/// `kproxy cleanup`.
pub fn cleanup(args: &CleanupArgs) -> Result<()> {
    backends::cleanup(args)
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => info!("SIGTERM"),
        _ = int.recv() => info!("SIGINT"),
    }
    // Let the last log lines flush.
    tokio::time::sleep(Duration::from_millis(10)).await;
}
