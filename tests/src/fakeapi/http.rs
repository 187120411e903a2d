//! The HTTP side of the fake API server: list and watch handlers.

use std::{collections::BTreeMap, io, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{Query, State},
    http::{Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use futures::{SinkExt, channel::mpsc};
use serde_json::{Value, json};
use tokio::time::{Instant, sleep_until};

use super::{
    RecordedRequest, Shared,
    selector::Selectors,
    store::{Change, Event, Gone, Kind},
};

/// The watch timeout when the client gives none; the real server picks 30 to 60 minutes.
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_mins(30);

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(handle).with_state(shared)
}

/// A `Status` object, the body of every error the real server sends.
fn status(code: StatusCode, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    })
}

/// A request the server refuses, answered with a `Status`.
struct Refusal {
    code: StatusCode,
    reason: &'static str,
    message: String,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (
            self.code,
            Json(status(self.code, self.reason, &self.message)),
        )
            .into_response()
    }
}

fn error(code: StatusCode, reason: &'static str, message: &str) -> Refusal {
    Refusal {
        code,
        reason,
        message: message.to_owned(),
    }
}

fn bad_request(message: &str) -> Refusal {
    error(StatusCode::BAD_REQUEST, "BadRequest", message)
}

fn gone(message: &str) -> Refusal {
    error(StatusCode::GONE, "Expired", message)
}

fn too_old(rv: u64, gone: Gone) -> String {
    format!("too old resource version: {rv} ({})", gone.oldest)
}

async fn handle(State(shared): State<Arc<Shared>>, method: Method, uri: Uri) -> Response {
    let params = Query::<BTreeMap<String, String>>::try_from_uri(&uri).map(|q| q.0);
    shared.record(RecordedRequest {
        method: method.to_string(),
        uri: uri.to_string(),
        path: uri.path().to_owned(),
        params: params.as_ref().ok().cloned().unwrap_or_default(),
    });
    let Ok(params) = params else {
        return bad_request("invalid query string").into_response();
    };
    if method != Method::GET {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "the fake only serves GET",
        )
        .into_response();
    }
    let Some(kind) = Kind::from_path(uri.path()) else {
        return error(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        )
        .into_response();
    };
    let param = |name: &str| {
        params
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    };
    let selectors = match Selectors::parse(kind, param("labelSelector"), param("fieldSelector")) {
        Ok(selectors) => selectors,
        Err(message) => return bad_request(&message).into_response(),
    };
    let request = Request {
        kind,
        selectors,
        params: &params,
    };
    if matches!(param("watch"), Some("true" | "1")) {
        watch(&shared, request)
    } else {
        list(&shared, &request)
    }
}

struct Request<'a> {
    kind: Kind,
    selectors: Selectors,
    params: &'a BTreeMap<String, String>,
}

impl Request<'_> {
    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn number(&self, name: &str) -> Result<Option<u64>, Refusal> {
        self.param(name)
            .map(|v| {
                v.parse()
                    .map_err(|_| bad_request(&format!("invalid {name}: {v:?}")))
            })
            .transpose()
    }
}

/// The snapshot a list reads: its resourceVersion, the objects, and where a continued
/// list resumes.
struct ListSource {
    rv: u64,
    objects: super::store::Objects,
    after: Option<(String, String)>,
}

fn list_source(shared: &Shared, request: &Request<'_>) -> Result<ListSource, Refusal> {
    let store = shared.store();
    let current = store.resource_version();
    let rv = request.number("resourceVersion")?;
    if let Some(token) = request.param("continue") {
        if rv.is_some() {
            return Err(bad_request(
                "specifying resource version is not allowed when using continue",
            ));
        }
        let mut parts = token.splitn(3, '/');
        let (Some(rv), Some(ns), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad_request("continue key is not valid"));
        };
        let rv = rv
            .parse()
            .map_err(|_| bad_request("continue key is not valid"))?;
        let objects = store.at(request.kind, rv).map_err(|_| {
            gone(
                "The provided continue parameter is too old to display a consistent list result. \
                  You can start a new list without the continue parameter.",
            )
        })?;
        return Ok(ListSource {
            rv,
            objects,
            after: Some((ns.to_owned(), name.to_owned())),
        });
    }
    let too_large = |rv: u64| {
        error(
            StatusCode::GATEWAY_TIMEOUT,
            "Timeout",
            &format!("Too large resource version: {rv}, current: {current}"),
        )
    };
    match (rv, request.param("resourceVersionMatch")) {
        (None, None) => Ok(ListSource {
            rv: current,
            objects: store.current(request.kind),
            after: None,
        }),
        (None, Some(_)) => Err(bad_request(
            "resourceVersionMatch is forbidden unless resourceVersion is provided",
        )),
        (Some(rv), Some("Exact")) => {
            if rv == 0 {
                return Err(bad_request(
                    "resourceVersionMatch \"Exact\" is forbidden for resourceVersion \"0\"",
                ));
            }
            if rv > current {
                return Err(too_large(rv));
            }
            let objects = store
                .at(request.kind, rv)
                .map_err(|g| gone(&too_old(rv, g)))?;
            Ok(ListSource {
                rv,
                objects,
                after: None,
            })
        }
        // "0" is "any version": the newest is as good as any.
        (Some(rv), None | Some("NotOlderThan")) => {
            if rv > current {
                return Err(too_large(rv));
            }
            Ok(ListSource {
                rv: current,
                objects: store.current(request.kind),
                after: None,
            })
        }
        (Some(_), Some(other)) => Err(bad_request(&format!(
            "unsupported resourceVersionMatch {other:?}"
        ))),
    }
}

fn list(shared: &Shared, request: &Request<'_>) -> Response {
    if shared.take_list_failure(request.kind) {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "the fake API server fails this list as the test asked",
        )
        .into_response();
    }
    let limit = match request.number("limit") {
        Ok(limit) => limit.filter(|&l| l > 0),
        Err(refusal) => return refusal.into_response(),
    };
    let source = match list_source(shared, request) {
        Ok(source) => source,
        Err(refusal) => return refusal.into_response(),
    };
    let mut selected = source
        .objects
        .into_iter()
        .filter(|(key, _)| source.after.as_ref().is_none_or(|after| key > after))
        .filter(|(_, object)| request.selectors.matches(object));
    let items: Vec<_> = match limit {
        #[expect(
            clippy::cast_possible_truncation,
            reason = "a limit beyond usize is no limit"
        )]
        Some(limit) => selected.by_ref().take(limit as usize).collect(),
        None => selected.by_ref().collect(),
    };
    let remaining = selected.count();
    let mut metadata = json!({"resourceVersion": source.rv.to_string()});
    if remaining > 0
        && let Some(((ns, name), _)) = items.last()
    {
        metadata["continue"] = json!(format!("{}/{ns}/{name}", source.rv));
        metadata["remainingItemCount"] = json!(remaining);
    }
    let items: Vec<&Value> = items.iter().map(|(_, object)| &**object).collect();
    Json(json!({
        "kind": format!("{}List", request.kind.kind()),
        "apiVersion": request.kind.api_version(),
        "metadata": metadata,
        "items": items,
    }))
    .into_response()
}

/// Where a watch starts.
#[derive(Debug, Clone, Copy)]
enum Start {
    /// Synthetic ADDED events for the current state first (no resourceVersion, "0", or
    /// `sendInitialEvents`); with `end_bookmark`, then the initial-events-end BOOKMARK.
    State { end_bookmark: bool },
    /// Replay the history after this resourceVersion.
    After(u64),
}

fn watch(shared: &Arc<Shared>, request: Request<'_>) -> Response {
    let timeout = match request.number("timeoutSeconds") {
        Ok(timeout) => timeout.map_or(DEFAULT_WATCH_TIMEOUT, Duration::from_secs),
        Err(refusal) => return refusal.into_response(),
    };
    let rv = match request.number("resourceVersion") {
        Ok(rv) => rv,
        Err(refusal) => return refusal.into_response(),
    };
    let bookmarks = request.param("allowWatchBookmarks") == Some("true");
    let initial_events = request.param("sendInitialEvents") == Some("true");
    let version_match = request.param("resourceVersionMatch");
    if initial_events {
        if version_match != Some("NotOlderThan") {
            return bad_request("sendInitialEvents requires resourceVersionMatch=NotOlderThan")
                .into_response();
        }
        if !bookmarks {
            return bad_request("sendInitialEvents requires allowWatchBookmarks=true")
                .into_response();
        }
    } else if version_match.is_some() {
        return bad_request(
            "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
        )
        .into_response();
    }
    let start = match rv {
        _ if initial_events => Start::State { end_bookmark: true },
        None | Some(0) => Start::State {
            end_bookmark: false,
        },
        Some(rv) => Start::After(rv),
    };
    let (tx, rx) = mpsc::channel(64);
    let watch = Watch {
        shared: shared.clone(),
        kind: request.kind,
        selectors: request.selectors,
        bookmarks,
        tx,
    };
    tokio::spawn(watch.run(start, Instant::now() + timeout));
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(rx),
    )
        .into_response()
}

type Chunk = Result<Bytes, io::Error>;

/// One running watch: a task feeding the response body.
struct Watch {
    shared: Arc<Shared>,
    kind: Kind,
    selectors: Selectors,
    bookmarks: bool,
    tx: mpsc::Sender<Chunk>,
}

/// The client went away.
struct Closed;

impl Watch {
    async fn run(mut self, start: Start, deadline: Instant) {
        let _open = self.shared.watch_opened();
        let mut written = self.shared.written.subscribe();
        let mut drops = self.shared.drops.subscribe();
        let interval = self.shared.bookmark_interval();
        let mut next_bookmark = Instant::now() + interval;

        let Ok(Some(mut seen)) = self.begin(start).await else {
            return;
        };
        loop {
            tokio::select! {
                changed = written.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let events = {
                        let store = self.shared.store();
                        store.events_after(self.kind, seen, false).map(|e| (e, store.resource_version()))
                    };
                    match events {
                        Ok((events, rv)) => {
                            if self.send_events(&events).await.is_err() {
                                return;
                            }
                            seen = seen.max(rv);
                        }
                        Err(gone) => {
                            let _ = self.send_gone(seen, gone).await;
                            return;
                        }
                    }
                }
                _ = drops.changed() => {
                    // An error in the body makes hyper cut the connection mid-response.
                    let _ = self.tx.send(Err(io::Error::other("the fake API server drops watches"))).await;
                    return;
                }
                () = sleep_until(next_bookmark), if self.bookmarks => {
                    if self.send_bookmark(seen, false).await.is_err() {
                        return;
                    }
                    next_bookmark += interval;
                }
                () = sleep_until(deadline) => {
                    if self.bookmarks {
                        let _ = self.send_bookmark(seen, false).await;
                    }
                    return;
                }
            }
        }
    }

    /// Sends what comes before live events; returns the resourceVersion the watch has
    /// caught up to, or None when it ended (410).
    async fn begin(&mut self, start: Start) -> Result<Option<u64>, Closed> {
        match start {
            Start::State { end_bookmark } => {
                let (rv, objects) = {
                    let store = self.shared.store();
                    (store.resource_version(), store.current(self.kind))
                };
                let selected: Vec<_> = objects
                    .into_values()
                    .filter(|o| self.selectors.matches(o))
                    .collect();
                for object in selected {
                    self.send(&json!({"type": "ADDED", "object": &*object}))
                        .await?;
                }
                if end_bookmark {
                    self.send_bookmark(rv, true).await?;
                }
                Ok(Some(rv))
            }
            Start::After(rv) => {
                let events = {
                    let store = self.shared.store();
                    store
                        .events_after(self.kind, rv, true)
                        .map(|e| (e, store.resource_version()))
                };
                match events {
                    Ok((events, current)) => {
                        self.send_events(&events).await?;
                        Ok(Some(current.max(rv)))
                    }
                    Err(gone) => {
                        self.send_gone(rv, gone).await?;
                        Ok(None)
                    }
                }
            }
        }
    }

    async fn send(&mut self, event: &Value) -> Result<(), Closed> {
        let mut line = serde_json::to_vec(event).expect("JSON values serialize");
        line.push(b'\n');
        self.tx
            .send(Ok(Bytes::from(line)))
            .await
            .map_err(|_| Closed)
    }

    /// Sends events as a selected watch sees them: an update that leaves the selection
    /// is a deletion, one that enters it an addition.
    async fn send_events(&mut self, events: &[Event]) -> Result<(), Closed> {
        for event in events {
            let now = event.change != Change::Deleted && self.selectors.matches(&event.object);
            let before = event
                .prev
                .as_ref()
                .is_some_and(|p| self.selectors.matches(p));
            let change = match (before, now) {
                (false, true) => Change::Added,
                (true, true) => Change::Modified,
                (true, false) => Change::Deleted,
                (false, false) => continue,
            };
            self.send(&json!({"type": change.wire(), "object": &*event.object}))
                .await?;
        }
        Ok(())
    }

    async fn send_bookmark(&mut self, rv: u64, initial_events_end: bool) -> Result<(), Closed> {
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if initial_events_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let object = json!({
            "kind": self.kind.kind(),
            "apiVersion": self.kind.api_version(),
            "metadata": metadata,
        });
        self.send(&json!({"type": "BOOKMARK", "object": object}))
            .await
    }

    /// The watch cache's answer to a version it no longer has: HTTP 200 and one ERROR
    /// event carrying a 410 Status.
    async fn send_gone(&mut self, rv: u64, gone: Gone) -> Result<(), Closed> {
        let object = status(StatusCode::GONE, "Expired", &too_old(rv, gone));
        self.send(&json!({"type": "ERROR", "object": object})).await
    }
}
