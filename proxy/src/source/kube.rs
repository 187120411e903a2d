//! The Kubernetes API source: kube-rs watchers on Services, EndpointSlices and this node's
//! Node, with kube-proxy's selectors, kept as the model's compact inputs.
//!
//! ```text
//! watcher ─▶ default_backoff ─▶ task: convert (ServiceInfo, SliceInfo, NodeInfo) ─▶ Store
//!   (×3: Services, EndpointSlices, Node)       (the API object is dropped here)     │
//!                               snapshot_changes() ◀── shared state + changed keys ◀──┘
//! ```
//!
//! No API object is kept: each is converted as it arrives, so 100k Services with 10
//! endpoints each cost the model's compact form, not kube-rs stores of full objects. Like
//! kube-proxy's change trackers, the source records which objects changed since the last
//! snapshot, so the model rebuilds only what changed; an update that changes nothing the
//! proxy reads (a status field, an annotation) is no change at all.
//!
//! A (re)list is buffered until it completes (`InitDone`) and then compared with what the
//! source held: objects deleted while the watch was down are removed then, and the state is
//! never half-filled or empty in between. Errors never clear anything: a dropped watch, an
//! expired resourceVersion or an API server that is away for minutes leave the last known
//! state in place while the watchers retry with client-go's backoff (0.8 s doubling to
//! 30 s, with jitter).
//!
//! An outage is logged twice: one warning when the first list or watch fails, and one info
//! line when every list/watch request succeeds again, however many retries lie between. A
//! watch that merely breaks or expires is routine (load balancers and API server restarts
//! do it) and is logged at debug; if the reconnect then fails, that is the outage.
//!
//! Objects are converted unvalidated: the model warns about the invalid ones when it builds,
//! so checking here too would only warn twice.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    path::PathBuf,
    pin::pin,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    task::{Context, Poll},
    time::Instant,
};

use futures::{StreamExt, future::BoxFuture};
use k8s_openapi::api::{core::v1::Node, core::v1::Service, discovery::v1::EndpointSlice};
use kproxy_model::{
    Changes, ClusterState, Interner, LABEL_HEADLESS, LABEL_SERVICE_PROXY_NAME, NodeInfo, ObjectKey,
    ServiceInfo, SliceInfo,
};
use kube::{
    Api, Resource, ResourceExt,
    client::ClientBuilder,
    config::{KubeConfigOptions, Kubeconfig},
    core::{Expression, Selector},
    runtime::{
        WatchStreamExt,
        watcher::{self, Event, watcher},
    },
};
use serde::de::DeserializeOwned;
use tokio::{sync::watch, task::JoinSet};
use tracing::{debug, error, info, instrument::WithSubscriber, warn};

use super::{Source, SourceError};

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

/// What the watch tasks publish: a generation bumped on every state change, and which
/// inputs have completed their first list.
#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    generation: u64,
    listed: u8,
}

/// The state the watch tasks write and snapshots read.
#[derive(Debug)]
struct Shared {
    /// Shared copy-on-write with the sync loop: a change updates it in place unless a
    /// snapshot is still alive.
    state: Arc<ClusterState>,
    /// What changed since the last [`Source::snapshot_changes`].
    changes: Changes,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            state: Arc::default(),
            // The first snapshot is a whole new state.
            changes: Changes::All,
        }
    }
}

/// The shared state, behind a lock held only to apply one event or take one snapshot.
#[derive(Debug, Clone, Default)]
struct Store(Arc<Mutex<Shared>>);

impl Store {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The Kubernetes API source. Dropping it stops its watches.
pub struct KubeSource {
    store: Store,
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
        let store = Store::default();
        let mut tasks = JoinSet::new();
        let common = |input| Watch {
            input,
            progress: progress_tx.clone(),
            health: health.clone(),
            store: store.clone(),
        };

        // The tasks log through the subscriber current at start, so a caller's scoped
        // subscriber sees them too, as it would a synchronous call.
        let watch_config = watcher::Config::default()
            .labels(&labels)
            .fields(SERVICE_FIELD_SELECTOR);
        tasks.spawn(
            common(Input::Services)
                .run(
                    Api::<Service>::all(client.clone()),
                    watch_config,
                    ServiceStore,
                )
                .with_current_subscriber(),
        );

        let watch_config = watcher::Config::default().labels(&labels);
        tasks.spawn(
            common(Input::EndpointSlices)
                .run(
                    Api::<EndpointSlice>::all(client.clone()),
                    watch_config,
                    SliceStore::default(),
                )
                .with_current_subscriber(),
        );

        let watch_config =
            watcher::Config::default().fields(&node_field_selector(&config.node_name));
        tasks.spawn(
            common(Input::Node)
                .run(
                    Api::<Node>::all(client),
                    watch_config,
                    NodeStore {
                        node_name: config.node_name.clone(),
                        present: None,
                    },
                )
                .with_current_subscriber(),
        );

        Ok(KubeSource {
            store,
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
        Some((*self.store.lock().state).clone())
    }

    fn snapshot_changes(&mut self) -> Option<(Arc<ClusterState>, Changes)> {
        if self.progress.borrow_and_update().listed != Input::all_bits() {
            return None;
        }
        let mut shared = self.store.lock();
        let changes = std::mem::replace(&mut shared.changes, Changes::none());
        Some((Arc::clone(&shared.state), changes))
    }
}

fn key<K: ResourceExt>(object: &K) -> ObjectKey {
    ObjectKey::new(object.namespace().unwrap_or_default(), object.name_any())
}

/// The changes of one kind of object, as [`Changes`] spells them.
fn changes(input: Input, keys: BTreeSet<ObjectKey>) -> Changes {
    match input {
        Input::Services => Changes::Keys {
            services: keys,
            slices: BTreeSet::new(),
            node: false,
        },
        Input::EndpointSlices => Changes::Keys {
            services: BTreeSet::new(),
            slices: keys,
            node: false,
        },
        Input::Node => Changes::Keys {
            services: BTreeSet::new(),
            slices: BTreeSet::new(),
            node: !keys.is_empty(),
        },
    }
}

/// How one input's objects are converted and stored in the [`ClusterState`].
trait Kind: Send + 'static {
    /// The API object.
    type Object: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + fmt::Debug
        + Send
        + Sync
        + 'static;
    /// Its compact form.
    type Info: PartialEq + Send + Sync + 'static;

    /// The key of `object`; None when this source does not keep it (another node's Node).
    fn key(&self, object: &Self::Object) -> Option<ObjectKey>;

    /// Converts `object` (whose key is known).
    fn convert(&mut self, object: &Self::Object) -> Self::Info;

    /// The stored object at `key`.
    fn get<'s>(state: &'s ClusterState, key: &ObjectKey) -> Option<&'s Arc<Self::Info>>;

    /// Stores (or removes) the object at `key`.
    fn set(state: &mut ClusterState, key: ObjectKey, info: Option<Arc<Self::Info>>);

    /// Keys of every stored object of this kind.
    fn keys(state: &ClusterState) -> Vec<ObjectKey>;

    /// Called after every change, with the new state.
    fn after_change(&mut self, _state: &ClusterState) {}
}

fn set_in<V>(map: &mut BTreeMap<ObjectKey, Arc<V>>, key: ObjectKey, value: Option<Arc<V>>) {
    match value {
        Some(value) => {
            map.insert(key, value);
        }
        None => {
            map.remove(&key);
        }
    }
}

struct ServiceStore;

impl Kind for ServiceStore {
    type Object = Service;
    type Info = ServiceInfo;

    fn key(&self, service: &Service) -> Option<ObjectKey> {
        Some(key(service))
    }

    fn convert(&mut self, service: &Service) -> ServiceInfo {
        ServiceInfo::from_k8s(service)
    }

    fn get<'s>(state: &'s ClusterState, key: &ObjectKey) -> Option<&'s Arc<ServiceInfo>> {
        state.services.get(key)
    }

    fn set(state: &mut ClusterState, key: ObjectKey, info: Option<Arc<ServiceInfo>>) {
        set_in(&mut state.services, key, info);
    }

    fn keys(state: &ClusterState) -> Vec<ObjectKey> {
        state.services.keys().cloned().collect()
    }
}

#[derive(Default)]
struct SliceStore {
    /// Shares endpoint node names, zones and hints among all slices.
    strings: Interner,
}

impl Kind for SliceStore {
    type Object = EndpointSlice;
    type Info = SliceInfo;

    fn key(&self, slice: &EndpointSlice) -> Option<ObjectKey> {
        Some(key(slice))
    }

    fn convert(&mut self, slice: &EndpointSlice) -> SliceInfo {
        SliceInfo::from_k8s(slice, &mut self.strings)
    }

    fn get<'s>(state: &'s ClusterState, key: &ObjectKey) -> Option<&'s Arc<SliceInfo>> {
        state.slices.get(key)
    }

    fn set(state: &mut ClusterState, key: ObjectKey, info: Option<Arc<SliceInfo>>) {
        set_in(&mut state.slices, key, info);
    }

    fn keys(state: &ClusterState) -> Vec<ObjectKey> {
        state.slices.keys().cloned().collect()
    }

    fn after_change(&mut self, _state: &ClusterState) {
        // Forgets the names of nodes that left with their endpoints. A scan of the few
        // hundred distinct names, far less than converting the slice did.
        self.strings.prune();
    }
}

/// This node's Node.
struct NodeStore {
    node_name: String,
    /// Whether the Node existed at the last change (None before the first list).
    present: Option<bool>,
}

impl Kind for NodeStore {
    type Object = Node;
    type Info = NodeInfo;

    fn key(&self, node: &Node) -> Option<ObjectKey> {
        // The field selector asks for this node only; a skewed server may send others.
        (node.name_any() == self.node_name).then(|| ObjectKey::cluster_scoped(node.name_any()))
    }

    fn convert(&mut self, node: &Node) -> NodeInfo {
        NodeInfo::from_k8s(node)
    }

    fn get<'s>(state: &'s ClusterState, key: &ObjectKey) -> Option<&'s Arc<NodeInfo>> {
        state.node.as_ref().filter(|node| node.name() == &*key.name)
    }

    fn set(state: &mut ClusterState, _key: ObjectKey, info: Option<Arc<NodeInfo>>) {
        state.node = info;
    }

    fn keys(state: &ClusterState) -> Vec<ObjectKey> {
        state
            .node
            .iter()
            .map(|node| ObjectKey::cluster_scoped(node.name()))
            .collect()
    }

    /// Warns once when this node's Node object is missing after a list or a deletion (the
    /// proxy then works without the node's addresses, zone and labels), and says when it
    /// appears again.
    fn after_change(&mut self, state: &ClusterState) {
        let now = state.node.is_some();
        match (self.present, now) {
            (None | Some(true), false) => warn!(
                node = %self.node_name,
                "this node's Node object does not exist; serving without its addresses, \
                 zone and labels until it appears"
            ),
            (Some(false), true) => {
                info!(node = %self.node_name, "this node's Node object appeared");
            }
            _ => {}
        }
        self.present = Some(now);
    }
}

/// What every watch task shares.
struct Watch {
    input: Input,
    progress: Arc<watch::Sender<Progress>>,
    health: Arc<Health>,
    store: Store,
}

impl Watch {
    /// Runs one watch until it ends (it never does by itself: every watcher error is
    /// retried), converting each object and bumping the generation after each change.
    async fn run<K: Kind>(
        self,
        api: Api<K::Object>,
        config: watcher::Config,
        mut kind: K,
    ) -> Input {
        let mut events = pin!(watcher(api, config).default_backoff());
        // A (re)list in progress: what it has delivered so far.
        let mut listing: BTreeMap<ObjectKey, K::Info> = BTreeMap::new();
        while let Some(event) = events.next().await {
            match event {
                Ok(Event::Init) => listing.clear(),
                Ok(Event::InitApply(object)) => {
                    if let Some(key) = kind.key(&object) {
                        let info = kind.convert(&object);
                        listing.insert(key, info);
                    }
                }
                Ok(Event::InitDone) => {
                    let listed = std::mem::take(&mut listing);
                    self.replace_all(&mut kind, listed);
                    let input = self.input;
                    self.progress.send_modify(|p| {
                        p.generation += 1;
                        p.listed |= input.bit();
                    });
                    debug!(%input, "list complete");
                }
                Ok(Event::Apply(object)) => {
                    if let Some(key) = kind.key(&object) {
                        let info = kind.convert(&object);
                        drop(object);
                        self.put(&mut kind, key, Some(info));
                    }
                }
                Ok(Event::Delete(object)) => {
                    if let Some(key) = kind.key(&object) {
                        self.put(&mut kind, key, None);
                    }
                }
                Err(error) => self.health.failed(self.input, &error),
            }
        }
        self.input
    }

    /// Stores one object (or its deletion); records and announces a change only when what
    /// the proxy reads of it changed.
    fn put<K: Kind>(&self, kind: &mut K, key: ObjectKey, info: Option<K::Info>) {
        let mut shared = self.store.lock();
        let same = match (K::get(&shared.state, &key), &info) {
            (None, None) => true,
            (Some(current), Some(info)) => **current == *info,
            _ => false,
        };
        if same {
            return;
        }
        let state = Arc::make_mut(&mut shared.state);
        K::set(state, key.clone(), info.map(Arc::new));
        kind.after_change(state);
        shared
            .changes
            .merge(changes(self.input, BTreeSet::from([key])));
        drop(shared);
        self.progress.send_modify(|p| p.generation += 1);
    }

    /// Replaces every object of this kind with a complete list: what is not in it was
    /// deleted (perhaps while the watch was down), what differs changed, and objects whose
    /// content is the same keep their `Arc`.
    fn replace_all<K: Kind>(&self, kind: &mut K, listed: BTreeMap<ObjectKey, K::Info>) {
        let mut shared = self.store.lock();
        let mut changed = BTreeSet::new();
        let removed: Vec<ObjectKey> = K::keys(&shared.state)
            .into_iter()
            .filter(|key| !listed.contains_key(key))
            .collect();
        let updated: Vec<(ObjectKey, K::Info)> = listed
            .into_iter()
            .filter(|(key, info)| {
                K::get(&shared.state, key).is_none_or(|current| **current != *info)
            })
            .collect();
        if !removed.is_empty() || !updated.is_empty() {
            let state = Arc::make_mut(&mut shared.state);
            for key in removed {
                K::set(state, key.clone(), None);
                changed.insert(key);
            }
            for (key, info) in updated {
                K::set(state, key.clone(), Some(Arc::new(info)));
                changed.insert(key);
            }
        }
        kind.after_change(&shared.state);
        if !changed.is_empty() {
            shared.changes.merge(changes(self.input, changed));
        }
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
