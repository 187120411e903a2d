//! The Kubernetes API source: kube-rs reflectors on Services, EndpointSlices and this
//! node's Node, with kube-proxy's selectors.
//!
//! ```text
//! watcher ─▶ default_backoff ─▶ modify (strip) ─▶ reflect(writer) ─▶ task: bump generation
//!   (×3: Services, EndpointSlices, Node)              │                        │
//!                                             Store::state() ◀── snapshot() ◀──┴── changed()
//! ```
//!
//! Each store is replaced wholesale only at the end of a (re)list (kube's `Writer` buffers
//! `InitApply` until `InitDone`), so a relist after a 410 never shows a half-filled or empty
//! store. Errors never clear a store: a dropped watch, an expired resourceVersion or an API
//! server that is away for minutes leave the last known state in place while the watchers
//! retry with client-go's backoff (0.8 s doubling to 30 s, with jitter).
//!
//! An outage is logged twice: one warning when the first list or watch fails, and one info
//! line when every list/watch request succeeds again, however many retries lie between. A
//! watch that merely breaks or expires is routine (load balancers and API server restarts
//! do it) and is logged at debug; if the reconnect then fails, that is the outage.
//!
//! Objects pass through unvalidated: the model validates every object it builds from and
//! warns about the invalid ones, so checking here too would only warn twice.

use std::{
    fmt,
    path::PathBuf,
    pin::pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
    time::Instant,
};

use futures::{StreamExt, future::BoxFuture};
use k8s_openapi::api::{core::v1::Node, core::v1::Service, discovery::v1::EndpointSlice};
use kproxy_model::{ClusterState, LABEL_HEADLESS, LABEL_SERVICE_PROXY_NAME, ObjectKey};
use kube::{
    Api, Resource, ResourceExt,
    client::ClientBuilder,
    config::{KubeConfigOptions, Kubeconfig},
    core::{Expression, Selector},
    runtime::{
        WatchStreamExt,
        reflector::{self, Store, store::Writer},
        watcher::{self, Event, watcher},
    },
};
use serde::de::DeserializeOwned;
use tokio::{sync::watch, task::JoinSet};
use tracing::{debug, error, info, instrument::WithSubscriber, warn};

use super::{Source, SourceError};

/// The annotation `kubectl apply` leaves: a second copy of the whole object, never read.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// kube-proxy's Service field selector: headless Services are dropped by the API server
/// (kubernetes#126769; API servers before 1.31 ignore it, and the model skips them anyway).
const SERVICE_FIELD_SELECTOR: &str = "spec.clusterIP!=None";

/// How to reach the API server and what to select.
#[derive(Debug, Clone, Default)]
pub struct KubeSourceConfig {
    /// `--kubeconfig`; without it, the in-cluster service account (or `master` alone).
    pub kubeconfig: Option<PathBuf>,
    /// `--master`: overrides the kubeconfig's server URL, as kube-proxy's flag does.
    pub master: Option<String>,
    /// This node's name: the Node to watch.
    pub node_name: String,
    /// `serviceProxyName`: when set, only Services and EndpointSlices labelled
    /// `service.kubernetes.io/service-proxy-name=<name>` are proxied, as by the newer
    /// kube-proxy that knows the field; when unset, only unlabelled ones (labelled objects
    /// belong to another proxy).
    pub proxy_name: Option<String>,
}

/// The three inputs, for logs and for telling their requests apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Input {
    Services,
    EndpointSlices,
    Node,
}

impl Input {
    const ALL: [Input; 3] = [Input::Services, Input::EndpointSlices, Input::Node];

    fn bit(self) -> u8 {
        1 << self as u8
    }

    fn all_bits() -> u8 {
        Self::ALL.iter().fold(0, |bits, input| bits | input.bit())
    }

    /// The input a request is for, by its collection path (kube's base-URI layer adds any
    /// server path prefix below the layer that asks).
    fn from_path(path: &str) -> Option<Self> {
        match path {
            "/api/v1/services" => Some(Self::Services),
            "/apis/discovery.k8s.io/v1/endpointslices" => Some(Self::EndpointSlices),
            "/api/v1/nodes" => Some(Self::Node),
            _ => None,
        }
    }
}

impl fmt::Display for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Services => "Services",
            Self::EndpointSlices => "EndpointSlices",
            Self::Node => "Node",
        })
    }
}

/// What the watch tasks publish: a generation bumped on every store change, and which
/// inputs have completed their first list.
#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    generation: u64,
    listed: u8,
}

/// The Kubernetes API source. Dropping it stops its watches.
pub struct KubeSource {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    nodes: Store<Node>,
    node_name: String,
    progress: watch::Receiver<Progress>,
    /// One task per input, each returning its input if its watch ever ends.
    tasks: JoinSet<Input>,
    stopped: bool,
}

impl fmt::Debug for KubeSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubeSource")
            .field("node_name", &self.node_name)
            .field("progress", &*self.progress.borrow())
            .finish_non_exhaustive()
    }
}

fn start_error(reason: String) -> SourceError {
    SourceError::Start {
        source_kind: "kube",
        reason,
    }
}

/// The label selector of both Services and EndpointSlices, as kube-proxy builds it: the
/// proxy-name requirement and no headless objects.
pub(crate) fn label_selector(proxy_name: Option<&str>) -> String {
    let proxy = match proxy_name {
        None => Expression::DoesNotExist(LABEL_SERVICE_PROXY_NAME.into()),
        Some(name) => Expression::Equal(LABEL_SERVICE_PROXY_NAME.into(), name.into()),
    };
    Selector::from_iter([proxy, Expression::DoesNotExist(LABEL_HEADLESS.into())]).to_string()
}

/// The Node field selector: this node only.
fn node_field_selector(node_name: &str) -> String {
    format!("metadata.name={node_name}")
}

/// kube's configuration the way kube-proxy builds client-go's: the kubeconfig file if
/// given, else in-cluster, else `master` alone; `master` overrides the server URL.
async fn client_config(config: &KubeSourceConfig) -> Result<kube::Config, SourceError> {
    let parse_master = |master: &str| {
        master
            .parse()
            .map_err(|e| start_error(format!("invalid --master URL {master:?}: {e}")))
    };
    let mut client_config = match (&config.kubeconfig, &config.master) {
        (Some(path), _) => {
            let kubeconfig = Kubeconfig::read_from(path).map_err(|e| {
                start_error(format!("cannot read kubeconfig {}: {e}", path.display()))
            })?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|e| start_error(format!("invalid kubeconfig {}: {e}", path.display())))?
        }
        (None, Some(master)) => kube::Config::new(parse_master(master)?),
        (None, None) => kube::Config::incluster().map_err(|e| {
            start_error(format!(
                "no --kubeconfig or --master given and not running in a cluster: {e}"
            ))
        })?,
    };
    if let Some(master) = &config.master {
        client_config.cluster_url = parse_master(master)?;
    }
    Ok(client_config)
}

impl KubeSource {
    /// Connects the watches and returns at once; the API server need not be reachable yet
    /// (the watches keep retrying, and [`Source::snapshot`] stays None until every input has
    /// been listed). Fails only on configuration: an unreadable kubeconfig, no in-cluster
    /// environment, an invalid URL, an empty node name.
    pub async fn start(config: KubeSourceConfig) -> Result<KubeSource, SourceError> {
        if config.node_name.is_empty() {
            return Err(start_error("the node name is empty".into()));
        }
        let health = Arc::new(Health::default());
        let client = ClientBuilder::try_from(client_config(&config).await?)
            .map_err(|e| start_error(format!("cannot build the API client: {e}")))?
            .with_layer(&HealthLayer(health.clone()))
            .build();

        let (progress_tx, progress) = watch::channel(Progress::default());
        let progress_tx = Arc::new(progress_tx);
        let labels = label_selector(config.proxy_name.as_deref());
        let mut tasks = JoinSet::new();
        let common = |input| Reflector {
            input,
            progress: progress_tx.clone(),
            health: health.clone(),
        };

        // The tasks log through the subscriber current at start, so a caller's scoped
        // subscriber sees them too, as it would a synchronous call.
        let (services, writer) = reflector::store();
        let watch_config = watcher::Config::default()
            .labels(&labels)
            .fields(SERVICE_FIELD_SELECTOR);
        tasks.spawn(
            common(Input::Services)
                .run(Api::all(client.clone()), watch_config, writer, strip, || {})
                .with_current_subscriber(),
        );

        let (slices, writer) = reflector::store();
        let watch_config = watcher::Config::default().labels(&labels);
        tasks.spawn(
            common(Input::EndpointSlices)
                .run(Api::all(client.clone()), watch_config, writer, strip, || {})
                .with_current_subscriber(),
        );

        let (nodes, writer) = reflector::store();
        let watch_config =
            watcher::Config::default().fields(&node_field_selector(&config.node_name));
        tasks.spawn(
            common(Input::Node)
                .run(
                    Api::all(client),
                    watch_config,
                    writer,
                    strip_node,
                    node_presence(nodes.clone(), config.node_name.clone()),
                )
                .with_current_subscriber(),
        );

        Ok(KubeSource {
            services,
            slices,
            nodes,
            node_name: config.node_name,
            progress,
            tasks,
            stopped: false,
        })
    }
}

impl Source for KubeSource {
    async fn changed(&mut self) -> Result<(), SourceError> {
        let stopped = SourceError::Stopped {
            source_kind: "kube",
        };
        if self.stopped {
            return Err(stopped);
        }
        tokio::select! {
            changed = self.progress.changed() => {
                if changed.is_ok() {
                    return Ok(());
                }
            }
            Some(ended) = self.tasks.join_next() => match ended {
                Ok(input) => error!(%input, "the watch ended; no further changes will be seen"),
                Err(e) => error!(error = %e, "a watch task failed; no further changes will be seen"),
            },
        }
        self.stopped = true;
        Err(stopped)
    }

    fn snapshot(&mut self) -> Option<ClusterState> {
        if self.progress.borrow_and_update().listed != Input::all_bits() {
            return None;
        }
        Some(ClusterState {
            services: self
                .services
                .state()
                .into_iter()
                .map(|s| (key(&*s), s))
                .collect(),
            slices: self
                .slices
                .state()
                .into_iter()
                .map(|s| (key(&*s), s))
                .collect(),
            node: self
                .nodes
                .state()
                .into_iter()
                .find(|n| n.name_any() == self.node_name),
        })
    }
}

fn key<K: ResourceExt>(object: &K) -> ObjectKey {
    ObjectKey::new(object.namespace().unwrap_or_default(), object.name_any())
}

/// Drops what the proxy never reads before caching: managed fields and kubectl's copy of
/// the object are often larger than the object itself.
fn strip<K: ResourceExt>(object: &mut K) {
    object.meta_mut().managed_fields = None;
    object.annotations_mut().remove(LAST_APPLIED);
}

/// [`strip`], plus the Node's image list (hundreds of entries on a busy node).
fn strip_node(node: &mut Node) {
    strip(node);
    if let Some(status) = &mut node.status {
        status.images = None;
    }
}

/// Warns once when this node's Node object is missing after a list or a deletion (the
/// proxy then works without the node's addresses, zone and labels), and says when it
/// appears again.
fn node_presence(nodes: Store<Node>, node_name: String) -> impl FnMut() + Send {
    let mut present = None;
    move || {
        let now = nodes.state().iter().any(|n| n.name_any() == node_name);
        match (present, now) {
            (None | Some(true), false) => warn!(
                node = %node_name,
                "this node's Node object does not exist; serving without its addresses, \
                 zone and labels until it appears"
            ),
            (Some(false), true) => info!(node = %node_name, "this node's Node object appeared"),
            _ => {}
        }
        present = Some(now);
    }
}

/// What every watch task shares.
struct Reflector {
    input: Input,
    progress: Arc<watch::Sender<Progress>>,
    health: Arc<Health>,
}

impl Reflector {
    /// Runs one reflector until its watch ends (it never does by itself: every watcher
    /// error is retried), bumping the generation after each store change.
    async fn run<K>(
        self,
        api: Api<K>,
        config: watcher::Config,
        writer: Writer<K>,
        strip: fn(&mut K),
        mut after_change: impl FnMut() + Send,
    ) -> Input
    where
        K: Resource<DynamicType = ()>
            + Clone
            + DeserializeOwned
            + fmt::Debug
            + Send
            + Sync
            + 'static,
    {
        let mut events = pin!(
            watcher(api, config)
                .default_backoff()
                .modify(strip)
                .reflect(writer)
        );
        while let Some(event) = events.next().await {
            match event {
                // Buffered by the writer; the store changes only at InitDone.
                Ok(Event::Init | Event::InitApply(_)) => {}
                Ok(Event::Apply(_) | Event::Delete(_)) => {
                    self.progress.send_modify(|p| p.generation += 1);
                    after_change();
                }
                Ok(Event::InitDone) => {
                    let input = self.input;
                    self.progress.send_modify(|p| {
                        p.generation += 1;
                        p.listed |= input.bit();
                    });
                    debug!(%input, "list complete");
                    after_change();
                }
                Err(error) => self.health.failed(self.input, &error),
            }
        }
        self.input
    }
}

/// Whether a 410 Gone: the resourceVersion expired and the watcher relists, which is
/// routine.
fn is_expired(error: &watcher::Error) -> bool {
    let (watcher::Error::WatchError(status)
    | watcher::Error::InitialListFailed(kube::Error::Api(status))
    | watcher::Error::WatchStartFailed(kube::Error::Api(status))) = error
    else {
        return false;
    };
    status.code == 410
}

/// Tracks which inputs' requests are failing, to log an outage once at each end.
#[derive(Debug, Default)]
struct Health {
    state: Mutex<Outage>,
}

#[derive(Debug, Default)]
struct Outage {
    /// Bits of the inputs whose last list or watch request failed.
    failing: u8,
    /// When the first of them failed.
    since: Option<Instant>,
}

impl Health {
    fn failed(&self, input: Input, error: &watcher::Error) {
        match error {
            _ if is_expired(error) => {
                debug!(%input, %error, "resourceVersion expired; relisting");
                return;
            }
            watcher::Error::WatchFailed(kube::Error::SerdeError(e)) => {
                warn!(%input, error = %e, "skipping a watch event that cannot be decoded");
                return;
            }
            // The stream broke; the watcher reconnects from where it was, and only if
            // that fails is the API server away.
            watcher::Error::WatchFailed(_) => {
                debug!(%input, %error, "watch interrupted; resuming");
                return;
            }
            _ => {}
        }
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let first_for_input = state.failing & input.bit() == 0;
        state.failing |= input.bit();
        if state.since.is_none() {
            state.since = Some(Instant::now());
            warn!(
                %input,
                %error,
                "cannot list or watch the Kubernetes API server; serving the last known state \
                 and retrying"
            );
        } else if first_for_input {
            debug!(%input, %error, "list or watch failing as well");
        } else {
            debug!(%input, %error, "retry failed");
        }
    }

    /// A request for `input` got a successful response.
    fn succeeded(&self, input: Input) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.failing & input.bit() == 0 {
            return;
        }
        state.failing &= !input.bit();
        if state.failing == 0
            && let Some(since) = state.since.take()
        {
            info!(
                outage_seconds = since.elapsed().as_secs(),
                "the Kubernetes API server answers lists and watches again"
            );
        }
    }
}

/// Sees every response the client gets, so a recovery is noticed when the first request
/// succeeds, not when the next object changes (a resumed watch says nothing until then).
#[derive(Debug, Clone)]
struct HealthLayer(Arc<Health>);

impl<S> tower::Layer<S> for HealthLayer {
    type Service = HealthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HealthService {
            inner,
            health: self.0.clone(),
        }
    }
}

#[derive(Debug, Clone)]
struct HealthService<S> {
    inner: S,
    health: Arc<Health>,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for HealthService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let input = Input::from_path(request.uri().path());
        let health = self.health.clone();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            if let (Some(input), Ok(response)) = (input, &response)
                && response.status().is_success()
            {
                health.succeeded(input);
            }
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_are_kube_proxys() {
        assert_eq!(
            label_selector(None),
            "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless"
        );
        assert_eq!(
            label_selector(Some("mine")),
            "service.kubernetes.io/service-proxy-name=mine,!service.kubernetes.io/headless"
        );
        assert_eq!(node_field_selector("n1"), "metadata.name=n1");
    }

    #[test]
    fn request_paths_map_to_inputs() {
        for input in Input::ALL {
            let path = match input {
                Input::Services => Service::url_path(&(), None),
                Input::EndpointSlices => EndpointSlice::url_path(&(), None),
                Input::Node => Node::url_path(&(), None),
            };
            assert_eq!(Input::from_path(&path), Some(input), "{path}");
        }
        assert_eq!(Input::from_path("/api/v1/namespaces/x/services"), None);
    }
}
