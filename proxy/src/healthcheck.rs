//! healthCheckNodePort servers: one HTTP server per LoadBalancer Service with
//! `externalTrafficPolicy: Local`, on its `healthCheckNodePort`, telling the cloud load
//! balancer whether this node has a ready endpoint of the Service (200) or not (503).
//!
//! Answers as kube-proxy's: 200 when the node has at least one local ready endpoint (distinct
//! IPs; terminating endpoints do not count) and the proxy itself is healthy, else 503; the
//! JSON body names the Service and the count, and `X-Load-Balancing-Endpoint-Weight`
//! carries the count for load balancers that weight nodes by it. The set of servers
//! follows the programmed model: [`ServiceHealthServers::reconcile`] after every sync
//! opens servers for new Services, closes those of Services gone (or whose port
//! changed), and updates the counts the running servers answer with.
//!
//! Addresses: with `--nodeport-addresses` CIDRs, every local address inside them, as
//! kube-proxy; otherwise (`primary`) all addresses, where kube-proxy's nftables mode binds
//! the primary node IPs only: the port is reserved cluster-wide for this Service, so the
//! difference is only which local addresses answer.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::SystemTime,
};

use axum::{
    Router,
    extract::State,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use kproxy_model::{NodePortAddresses, ObjectKey, ProxyModel};
use serde::Serialize;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::{health::Health, metrics::local_ready_endpoints};

/// The header carrying the local endpoint count, as kube-proxy sets it.
pub const WEIGHT_HEADER: &str = "X-Load-Balancing-Endpoint-Weight";

/// The running servers. Owned by the sync loop (through its observer); every method must
/// run inside the tokio runtime.
#[derive(Debug)]
pub struct ServiceHealthServers {
    health: Health,
    nodeport_addresses: NodePortAddresses,
    servers: BTreeMap<ObjectKey, Instance>,
    /// Services whose port could not be opened, so the warning is logged once per port.
    failed: BTreeSet<(ObjectKey, u16)>,
}

#[derive(Debug)]
struct Instance {
    port: u16,
    state: Arc<InstanceState>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Instance {
    fn drop(&mut self) {
        // Aborting the accept loop drops the listener: the port closes at once.
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[derive(Debug)]
struct InstanceState {
    service: ObjectKey,
    endpoints: AtomicUsize,
    health: Health,
}

/// The JSON body, field names as kube-proxy's.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Body<'a> {
    service: ServiceName<'a>,
    local_endpoints: usize,
    service_proxy_healthy: bool,
}

#[derive(Debug, Serialize)]
struct ServiceName<'a> {
    namespace: &'a str,
    name: &'a str,
}

impl ServiceHealthServers {
    /// No servers yet; `health` is the proxy's (a 503 when the proxy is unhealthy).
    pub fn new(health: Health, nodeport_addresses: NodePortAddresses) -> Self {
        Self {
            health,
            nodeport_addresses,
            servers: BTreeMap::new(),
            failed: BTreeSet::new(),
        }
    }

    /// Which Services have a server, and on which port (tests, logs).
    pub fn ports(&self) -> BTreeMap<ObjectKey, u16> {
        self.servers
            .iter()
            .map(|(k, i)| (k.clone(), i.port))
            .collect()
    }

    /// Brings the servers in step with `model`.
    pub fn reconcile(&mut self, model: &ProxyModel) {
        let mut wanted: BTreeMap<ObjectKey, u16> = BTreeMap::new();
        for port in model.ports.values() {
            if let Some(p) = port.health_check_node_port {
                wanted.insert(
                    ObjectKey::new(&port.key.name.namespace, &port.key.name.name),
                    p,
                );
            }
        }
        let counts = local_ready_endpoints(model);
        self.servers.retain(|key, instance| {
            let keep = wanted.get(key) == Some(&instance.port);
            if !keep {
                info!(service = %key, port = instance.port, "closing healthCheckNodePort server");
            }
            keep
        });
        self.failed
            .retain(|(key, port)| wanted.get(key) == Some(port));
        for (key, port) in wanted {
            let count = counts.get(&key).copied().unwrap_or(0);
            if let Some(instance) = self.servers.get(&key) {
                instance.state.endpoints.store(count, Ordering::Relaxed);
                continue;
            }
            match self.open(&key, port, count) {
                Ok(instance) => {
                    info!(service = %key, port, local_endpoints = count, "healthCheckNodePort server listening");
                    self.failed.remove(&(key.clone(), port));
                    self.servers.insert(key, instance);
                }
                Err(e) => {
                    if self.failed.insert((key.clone(), port)) {
                        warn!(service = %key, port, error = %e, "cannot open the healthCheckNodePort server; retrying at each sync");
                    } else {
                        debug!(service = %key, port, error = %e, "healthCheckNodePort server still cannot open");
                    }
                }
            }
        }
    }

    fn addresses(&self, port: u16) -> Vec<SocketAddr> {
        match &self.nodeport_addresses {
            NodePortAddresses::Primary => vec![SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port)],
            NodePortAddresses::Cidrs(cidrs) => crate::sync::local_addresses()
                .into_iter()
                .filter(|ip| cidrs.iter().any(|c| c.contains(ip)))
                .map(|ip| SocketAddr::new(ip, port))
                .collect(),
        }
    }

    fn open(&self, key: &ObjectKey, port: u16, count: usize) -> std::io::Result<Instance> {
        let state = Arc::new(InstanceState {
            service: key.clone(),
            endpoints: AtomicUsize::new(count),
            health: self.health.clone(),
        });
        let mut tasks = Vec::new();
        for addr in self.addresses(port) {
            let listener = match bind(addr) {
                Ok(l) => l,
                Err(e) if addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED) => {
                    // No IPv6 on this node: the IPv4 wildcard, then.
                    debug!(error = %e, "no IPv6 wildcard; binding IPv4 only");
                    bind(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port))?
                }
                Err(e) => {
                    // Dropping `tasks` would leak nothing: abort what was opened.
                    for t in &tasks {
                        JoinHandle::abort(t);
                    }
                    return Err(e);
                }
            };
            let app = Router::new()
                .fallback(get(answer))
                .with_state(Arc::clone(&state));
            tasks.push(tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    warn!(error = %e, "healthCheckNodePort server stopped");
                }
            }));
        }
        Ok(Instance { port, state, tasks })
    }
}

/// Binds without blocking the runtime (a local bind does not wait).
fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(l)
}

async fn answer(State(state): State<Arc<InstanceState>>) -> Response {
    let count = state.endpoints.load(Ordering::Relaxed);
    let healthy = state.health.healthy(SystemTime::now());
    let body = Body {
        service: ServiceName {
            namespace: &state.service.namespace,
            name: &state.service.name,
        },
        local_endpoints: count,
        service_proxy_healthy: healthy,
    };
    let code = if count > 0 && healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let text = serde_json::to_string_pretty(&body).expect("plain struct");
    let mut response = (code, text).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(WEIGHT_HEADER, HeaderValue::from(count));
    response
}
