//! Kubernetes manifests (multi-document YAML, or JSON) → Services, EndpointSlices, Nodes.
//!
//! Pure text in, objects out: reading files is the source's business. Each document is
//! parsed on its own, so one broken document costs only itself; errors carry the line the
//! problem is on (counted in the whole text) and, when it can be read, which object it is.

use std::fmt;

use k8s_openapi::{
    api::{core::v1::Node, core::v1::Service, discovery::v1::EndpointSlice},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use serde::de::{self, DeserializeOwned, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{DefaultMessageFormatter, SnippetMode};

use crate::ObjectKey;

/// Namespace kubectl assumes when a namespaced object names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Largest YAML document accepted, in parser nodes. serde-saphyr's default (250k) is a
/// little small for `kubectl get -o yaml` lists of big clusters; this still bounds what a
/// single hostile document can make the parser do.
const MAX_DOCUMENT_NODES: usize = 4_000_000;
/// Largest YAML document accepted, in parser events (a node is a few events).
const MAX_DOCUMENT_EVENTS: usize = 16_000_000;

/// One object read from a manifest.
#[derive(Debug, Clone, PartialEq)]
#[expect(
    clippy::large_enum_variant,
    reason = "each object is moved once, into the source's Arc; boxing would only add an allocation"
)]
pub enum ManifestObject {
    /// `v1 Service`.
    Service(Service),
    /// `discovery.k8s.io/v1 EndpointSlice`.
    EndpointSlice(EndpointSlice),
    /// `v1 Node`.
    Node(Node),
    /// A well-formed object of a kind the proxy does not read (Deployments, ConfigMaps…),
    /// kept so a source can say what it skipped.
    Ignored {
        /// `apiVersion`.
        api_version: String,
        /// `kind`.
        kind: String,
    },
}

impl ManifestObject {
    /// Namespace/name of a Service or EndpointSlice, name of a Node (namespace empty);
    /// None for ignored kinds.
    pub fn key(&self) -> Option<ObjectKey> {
        let meta = match self {
            Self::Service(svc) => &svc.metadata,
            Self::EndpointSlice(slice) => &slice.metadata,
            Self::Node(node) => &node.metadata,
            Self::Ignored { .. } => return None,
        };
        Some(ObjectKey::new(
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default(),
        ))
    }

    /// The object's `kind`.
    pub fn kind(&self) -> &str {
        match self {
            Self::Service(_) => "Service",
            Self::EndpointSlice(_) => "EndpointSlice",
            Self::Node(_) => "Node",
            Self::Ignored { kind, .. } => kind,
        }
    }
}

/// The object a broken document was meant to be, as far as it could be read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectRef {
    /// `kind`, when readable.
    pub kind: Option<String>,
    /// `metadata.namespace`, when readable.
    pub namespace: Option<String>,
    /// `metadata.name`, when readable.
    pub name: Option<String>,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.as_deref().unwrap_or("object"))?;
        match (&self.namespace, &self.name) {
            (Some(namespace), Some(name)) => write!(f, " {namespace}/{name}"),
            (None, Some(name)) => write!(f, " {name}"),
            (_, None) => f.write_str(" without a name"),
        }
    }
}

/// Why a document could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentErrorReason {
    /// Not YAML (or not JSON); `message` includes the line and column.
    #[error("syntax error: {message}")]
    Syntax {
        /// Parser message, with position.
        message: String,
    },
    /// The document is a scalar or a list, not an object.
    #[error("document is a {found}, not an object")]
    NotAnObject {
        /// What it is.
        found: &'static str,
    },
    /// No `kind` (or not a string).
    #[error("kind is missing")]
    MissingKind,
    /// No `apiVersion` (or not a string).
    #[error("apiVersion is missing")]
    MissingApiVersion,
    /// No `metadata.name`: the object cannot be told apart from others.
    #[error("metadata.name is missing")]
    MissingName,
    /// Well-formed YAML that does not fit the object's schema (a string where a number
    /// belongs, a list where an object belongs…); `message` includes the position.
    #[error("invalid {kind}: {message}")]
    InvalidObject {
        /// The kind being decoded.
        kind: String,
        /// Decoder message, with position.
        message: String,
    },
}

/// A document of a manifest that yields no object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentError {
    /// 1-based number of the document among the non-empty ones.
    pub document: usize,
    /// 1-based line where the document starts.
    pub line: usize,
    /// Which object it is, when that could be read.
    pub object: Option<ObjectRef>,
    /// Why it was not used.
    pub reason: DocumentErrorReason,
}

impl fmt::Display for DocumentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "document {} (line {})", self.document, self.line)?;
        if let Some(object) = &self.object {
            write!(f, ", {object}")?;
        }
        write!(f, ": {}", self.reason)
    }
}

// The reason is part of the message rather than a `source()`, so logging the error once
// says everything.
impl std::error::Error for DocumentError {}

/// Parses every document of `text`: multi-document YAML (`---` separated), or a stream of
/// JSON objects when the text starts with `{`. Empty documents are skipped; a `v1 List`
/// yields its items. Namespaced objects without a namespace get `default`, as kubectl does.
pub fn parse_documents(text: &str) -> Vec<Result<ManifestObject, DocumentError>> {
    let mut results = Vec::new();
    for_each_document(text, |result| results.push(result));
    results
}

/// [`parse_documents`], handing each result to `each` as soon as it is read, so a caller
/// that converts objects holds one parsed object at a time, not a whole file's.
pub fn for_each_document(text: &str, mut each: impl FnMut(Result<ManifestObject, DocumentError>)) {
    if text.trim_start().starts_with('{') {
        parse_json_stream(text).into_iter().for_each(each);
        return;
    }
    for (index, (line, document)) in split_yaml(text).into_iter().enumerate() {
        let at = Position {
            document: index + 1,
            line,
        };
        if let Some(object) = parse_yaml_fast(document) {
            each(Ok(object));
            continue;
        }
        parse_yaml_document(document, at)
            .into_iter()
            .for_each(&mut each);
    }
}

/// The common case in one parse: a block-style document whose top-level `apiVersion` and
/// `kind` lines name a known object kind, decoded straight as that kind. None sends the
/// document down the general path (header first, then the object), which also writes the
/// errors; anything this accepts, that path would have accepted the same way. k8s-openapi
/// checks `apiVersion` and `kind` itself while decoding, so a misread line cannot make a
/// Service of a Node.
fn parse_yaml_fast(text: &str) -> Option<ManifestObject> {
    let (mut api_version, mut kind) = (None, None);
    for line in text.lines() {
        if let Some(value) = line.strip_prefix("apiVersion:") {
            api_version = Some(value.trim());
        } else if let Some(value) = line.strip_prefix("kind:") {
            kind = Some(value.trim());
        }
    }
    let object = match (api_version?, kind?) {
        ("v1", "Service") => {
            ManifestObject::Service(serde_saphyr::from_str_with_options(text, yaml_options()).ok()?)
        }
        ("discovery.k8s.io/v1", "EndpointSlice") => ManifestObject::EndpointSlice(
            serde_saphyr::from_str_with_options(text, yaml_options()).ok()?,
        ),
        ("v1", "Node") => {
            ManifestObject::Node(serde_saphyr::from_str_with_options(text, yaml_options()).ok()?)
        }
        _ => return None,
    };
    let name = match &object {
        ManifestObject::Service(svc) => svc.metadata.name.as_deref(),
        ManifestObject::EndpointSlice(slice) => slice.metadata.name.as_deref(),
        ManifestObject::Node(node) => node.metadata.name.as_deref(),
        ManifestObject::Ignored { .. } => None,
    };
    name.is_some_and(|name| !name.is_empty())
        .then(|| default_namespace(object))
}

/// Where a document is, for errors.
#[derive(Debug, Clone, Copy)]
struct Position {
    document: usize,
    line: usize,
}

impl Position {
    fn error(self, object: Option<ObjectRef>, reason: DocumentErrorReason) -> DocumentError {
        DocumentError {
            document: self.document,
            line: self.line,
            object,
            reason,
        }
    }
}

/// Splits YAML text into its non-empty documents, with the 1-based line each starts on.
/// Splitting by hand (on `---` and `...` lines) rather than with the parser's stream lets a
/// syntax error in one document spare the others.
fn split_yaml(text: &str) -> Vec<(usize, &str)> {
    let mut documents = Vec::new();
    let mut start = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let content = line.trim_end_matches(['\n', '\r']);
        if is_marker(content, "---") {
            push_document(&mut documents, start_line, &text[start..offset]);
            start = offset;
            start_line = index + 1;
        }
        offset += line.len();
        if is_marker(content, "...") {
            push_document(&mut documents, start_line, &text[start..offset]);
            start = offset;
            start_line = index + 2;
        }
    }
    push_document(&mut documents, start_line, &text[start..]);
    documents
}

fn is_marker(line: &str, marker: &str) -> bool {
    line.strip_prefix(marker)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
}

fn push_document<'a>(documents: &mut Vec<(usize, &'a str)>, line: usize, document: &'a str) {
    let has_content = document.lines().any(|line| {
        let line = line.strip_prefix("---").unwrap_or(line).trim();
        !(line.is_empty() || line.starts_with('#') || line.starts_with('%') || line == "...")
    });
    if has_content {
        documents.push((line, document));
    }
}

/// The first things to know about a document, read leniently so that the errors about it
/// can name the object.
#[derive(Debug, Default)]
struct Header {
    api_version: Option<String>,
    kind: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
}

impl Header {
    /// The object, namespaced as it would have been had it parsed.
    fn object(&self) -> ObjectRef {
        let namespaced = matches!(self.kind.as_deref(), Some("Service" | "EndpointSlice"));
        let namespace = match &self.namespace {
            None if namespaced => Some(DEFAULT_NAMESPACE.to_owned()),
            namespace => namespace.clone(),
        };
        ObjectRef {
            kind: self.kind.clone(),
            namespace,
            name: self.name.clone(),
        }
    }
}

/// A document's top-level shape.
#[derive(Debug)]
enum Shape {
    /// `~`, `null`: nothing there.
    Null,
    /// Not a mapping.
    Other(&'static str),
    /// A mapping, with its header fields.
    Object(Header),
}

impl<'de> de::Deserialize<'de> for Shape {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ShapeVisitor)
    }
}

struct ShapeVisitor;

impl<'de> Visitor<'de> for ShapeVisitor {
    type Value = Shape;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Kubernetes object")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Shape, E> {
        Ok(Shape::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Shape, E> {
        Ok(Shape::Null)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Shape, E> {
        Ok(Shape::Other("boolean"))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Shape, E> {
        Ok(Shape::Other("number"))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Shape, E> {
        Ok(Shape::Other("number"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Shape, E> {
        Ok(Shape::Other("number"))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Shape, E> {
        Ok(Shape::Other("string"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Shape, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Shape::Other("list"))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Shape, A::Error> {
        let mut header = Header::default();
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "apiVersion" => header.api_version = as_string(map.next_value()?),
                "kind" => header.kind = as_string(map.next_value()?),
                "metadata" => {
                    let meta: serde_json::Value = map.next_value()?;
                    header.name = as_string(meta.get("name").cloned().unwrap_or_default());
                    header.namespace =
                        as_string(meta.get("namespace").cloned().unwrap_or_default());
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Shape::Object(header))
    }
}

fn as_string(value: serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(text) if !text.is_empty() => Some(text),
        _ => None,
    }
}

fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_nodes: MAX_DOCUMENT_NODES,
            max_events: MAX_DOCUMENT_EVENTS,
        },
        with_snippet: false,
    }
}

/// The parser's message, positioned in the whole text.
fn yaml_message(error: &serde_saphyr::Error, first_line: usize) -> String {
    let formatter = DefaultMessageFormatter;
    let options = serde_saphyr::render_options! {
        formatter: &formatter,
        snippets: SnippetMode::Off,
        line_offset: u64::try_from(first_line.saturating_sub(1)).unwrap_or(u64::MAX),
    };
    error.render_with_options(options)
}

fn parse_yaml_document(text: &str, at: Position) -> Vec<Result<ManifestObject, DocumentError>> {
    let header = match serde_saphyr::from_str_with_options::<Shape>(text, yaml_options()) {
        Ok(Shape::Null) => return Vec::new(),
        Ok(Shape::Other(found)) => {
            return vec![Err(
                at.error(None, DocumentErrorReason::NotAnObject { found })
            )];
        }
        Ok(Shape::Object(header)) => header,
        Err(error) => {
            let message = yaml_message(&error, at.line);
            return vec![Err(at.error(None, DocumentErrorReason::Syntax { message }))];
        }
    };
    let decode = |kind: &str| -> Result<ManifestObject, DocumentErrorReason> {
        let invalid = |error: serde_saphyr::Error| DocumentErrorReason::InvalidObject {
            kind: kind.to_owned(),
            message: yaml_message(&error, at.line),
        };
        Ok(match kind {
            "Service" => ManifestObject::Service(
                serde_saphyr::from_str_with_options(text, yaml_options()).map_err(invalid)?,
            ),
            "EndpointSlice" => ManifestObject::EndpointSlice(
                serde_saphyr::from_str_with_options(text, yaml_options()).map_err(invalid)?,
            ),
            "Node" => ManifestObject::Node(
                serde_saphyr::from_str_with_options(text, yaml_options()).map_err(invalid)?,
            ),
            _ => unreachable!("decode is only called for kinds from known_kind"),
        })
    };
    dispatch(&header, at, decode, |list| yaml_list_items(text, at, list))
}

/// Decodes a known kind; lists are handed to `list`. `decode` reads the document as the
/// kind it is given.
fn dispatch(
    header: &Header,
    at: Position,
    decode: impl FnOnce(&str) -> Result<ManifestObject, DocumentErrorReason>,
    list: impl FnOnce(ObjectRef) -> Vec<Result<ManifestObject, DocumentError>>,
) -> Vec<Result<ManifestObject, DocumentError>> {
    let object = header.object();
    let Some(kind) = header.kind.as_deref() else {
        return vec![Err(at.error(Some(object), DocumentErrorReason::MissingKind))];
    };
    let Some(api_version) = header.api_version.as_deref() else {
        return vec![Err(
            at.error(Some(object), DocumentErrorReason::MissingApiVersion)
        )];
    };
    match known_kind(api_version, kind) {
        None => vec![Ok(ManifestObject::Ignored {
            api_version: api_version.to_owned(),
            kind: kind.to_owned(),
        })],
        Some(Known::List) => list(object),
        Some(Known::Object) if header.name.is_none() => {
            vec![Err(at.error(Some(object), DocumentErrorReason::MissingName))]
        }
        Some(Known::Object) => vec![
            decode(kind)
                .map(default_namespace)
                .map_err(|reason| at.error(Some(object), reason)),
        ],
    }
}

enum Known {
    Object,
    List,
}

fn known_kind(api_version: &str, kind: &str) -> Option<Known> {
    match (api_version, kind) {
        ("v1", "Service" | "Node") | ("discovery.k8s.io/v1", "EndpointSlice") => {
            Some(Known::Object)
        }
        ("v1", "List") => Some(Known::List),
        _ => None,
    }
}

fn default_namespace(mut object: ManifestObject) -> ManifestObject {
    let fill = |meta: &mut ObjectMeta| {
        if meta.namespace.as_deref().is_none_or(str::is_empty) {
            meta.namespace = Some(DEFAULT_NAMESPACE.to_owned());
        }
    };
    match &mut object {
        ManifestObject::Service(svc) => fill(&mut svc.metadata),
        ManifestObject::EndpointSlice(slice) => fill(&mut slice.metadata),
        // Cluster-scoped: a namespace there means nothing.
        ManifestObject::Node(node) => node.metadata.namespace = None,
        ManifestObject::Ignored { .. } => {}
    }
    object
}

/// `items` of a `v1 List`.
#[derive(serde::Deserialize)]
struct ListItems {
    #[serde(default)]
    items: Vec<serde_json::Value>,
}

fn yaml_list_items(
    text: &str,
    at: Position,
    list: ObjectRef,
) -> Vec<Result<ManifestObject, DocumentError>> {
    match serde_saphyr::from_str_with_options::<ListItems>(text, yaml_options()) {
        Ok(items) => list_items(items.items, at),
        Err(error) => {
            let message = yaml_message(&error, at.line);
            vec![Err(at.error(
                Some(list),
                DocumentErrorReason::InvalidObject {
                    kind: "List".to_owned(),
                    message,
                },
            ))]
        }
    }
}

/// Items of a list, each dispatched like a document of its own. Their errors cannot point
/// at a line inside the list, so they name the item instead.
fn list_items(
    items: Vec<serde_json::Value>,
    at: Position,
) -> Vec<Result<ManifestObject, DocumentError>> {
    let mut results = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        let header = header_of_value(&item);
        let decode = |kind: &str| decode_value(kind, item, &format!("items[{index}]"));
        let nested = |object: ObjectRef| {
            vec![Err(at.error(
                Some(object),
                DocumentErrorReason::InvalidObject {
                    kind: "List".to_owned(),
                    message: format!("items[{index}] is itself a List"),
                },
            ))]
        };
        match &header {
            None => results.push(Err(at.error(
                None,
                DocumentErrorReason::NotAnObject {
                    found: "list item that is not an object",
                },
            ))),
            Some(header) => results.extend(dispatch(header, at, decode, nested)),
        }
    }
    results
}

fn header_of_value(value: &serde_json::Value) -> Option<Header> {
    let object = value.as_object()?;
    let text = |v: Option<&serde_json::Value>| v.cloned().and_then(as_string);
    let meta = object.get("metadata");
    Some(Header {
        api_version: text(object.get("apiVersion")),
        kind: text(object.get("kind")),
        namespace: text(meta.and_then(|m| m.get("namespace"))),
        name: text(meta.and_then(|m| m.get("name"))),
    })
}

fn decode_value(
    kind: &str,
    value: serde_json::Value,
    place: &str,
) -> Result<ManifestObject, DocumentErrorReason> {
    fn from<T: DeserializeOwned>(
        value: serde_json::Value,
        kind: &str,
        place: &str,
    ) -> Result<T, DocumentErrorReason> {
        serde_json::from_value(value).map_err(|error| DocumentErrorReason::InvalidObject {
            kind: kind.to_owned(),
            message: format!("{place}: {error}"),
        })
    }
    Ok(match kind {
        "Service" => ManifestObject::Service(from(value, kind, place)?),
        "EndpointSlice" => ManifestObject::EndpointSlice(from(value, kind, place)?),
        "Node" => ManifestObject::Node(from(value, kind, place)?),
        _ => unreachable!("decode is only called for kinds from known_kind"),
    })
}

/// A stream of JSON objects (kubectl's `-o json` output, possibly several concatenated).
fn parse_json_stream(text: &str) -> Vec<Result<ManifestObject, DocumentError>> {
    let mut results = Vec::new();
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<serde_json::Value>();
    let (mut start, mut start_line) = (0, 1);
    for document in 1.. {
        let Some(next) = stream.next() else { break };
        let end = stream.byte_offset();
        let source = &text[start..end];
        let leading = &source[..source.len() - source.trim_start().len()];
        let at = Position {
            document,
            line: start_line + leading.matches('\n').count(),
        };
        match next {
            Err(error) => {
                // A syntax error leaves the stream unusable: nothing after it can be read.
                let message = json_message(&error, 1);
                results.push(Err(at.error(None, DocumentErrorReason::Syntax { message })));
                break;
            }
            Ok(value) => results.extend(json_document(source, start_line, value, at)),
        }
        start = end;
        start_line += source.matches('\n').count();
    }
    results
}

/// One JSON document; `source` is its text, starting on line `source_line`.
fn json_document(
    source: &str,
    source_line: usize,
    value: serde_json::Value,
    at: Position,
) -> Vec<Result<ManifestObject, DocumentError>> {
    let Some(header) = header_of_value(&value) else {
        let found = if value.is_array() { "list" } else { "scalar" };
        return vec![Err(
            at.error(None, DocumentErrorReason::NotAnObject { found })
        )];
    };
    // Decode from the text (not the value) so errors carry a line and column.
    let decode = |kind: &str| {
        let invalid = |error: serde_json::Error| DocumentErrorReason::InvalidObject {
            kind: kind.to_owned(),
            message: json_message(&error, source_line),
        };
        Ok(match kind {
            "Service" => ManifestObject::Service(serde_json::from_str(source).map_err(invalid)?),
            "EndpointSlice" => {
                ManifestObject::EndpointSlice(serde_json::from_str(source).map_err(invalid)?)
            }
            "Node" => ManifestObject::Node(serde_json::from_str(source).map_err(invalid)?),
            _ => unreachable!("decode is only called for kinds from known_kind"),
        })
    };
    let items = match value {
        serde_json::Value::Object(mut object) => match object.remove("items") {
            Some(serde_json::Value::Array(items)) => items,
            _ => Vec::new(),
        },
        _ => Vec::new(),
    };
    dispatch(&header, at, decode, |_| list_items(items, at))
}

/// serde_json's message with its position moved to the whole text (`first_line` is the
/// line the decoded text starts on).
fn json_message(error: &serde_json::Error, first_line: usize) -> String {
    let full = error.to_string();
    let suffix = format!(" at line {} column {}", error.line(), error.column());
    let message = full.strip_suffix(&suffix).unwrap_or(&full);
    format!(
        "{message} at line {}, column {}",
        first_line + error.line().saturating_sub(1),
        error.column()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever the one-parse path accepts, the general path (header first, then the object)
    /// yields the same single object; whatever it declines is left to the general path.
    #[test]
    fn the_fast_path_agrees_with_the_general_path() {
        let accepted = [
            "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}\n",
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  namespace: shop\n  labels: {kubernetes.io/service-name: web}\naddressType: IPv4\nendpoints:\n- {addresses: [\"10.0.0.1\"], conditions: {ready: true}, nodeName: n1}\nports: [{port: 8080}]\n",
            "apiVersion: v1\nkind: Node\nmetadata: {name: n1, namespace: junk}\nstatus: {addresses: [{type: InternalIP, address: 192.0.2.1}]}\n",
        ];
        for text in accepted {
            let fast = parse_yaml_fast(text).expect("a plain object takes the fast path");
            let at = Position {
                document: 1,
                line: 1,
            };
            assert_eq!(parse_yaml_document(text, at), vec![Ok(fast)], "{text}");
        }
        let declined = [
            // Two kind lines: the document is not a clean object of either.
            "apiVersion: v1\nkind: Service\nkind: Node\nmetadata: {name: n1}\n",
            // Errors are the general path's to write.
            "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: eighty}]}\n",
            "apiVersion: v1\nkind: Service\nmetadata: {namespace: x}\nspec: {}\n",
            "apiVersion: v1\nkind: Service\nmetadata: {name: \"\"}\n",
            // Flow-style documents and other kinds are not recognised.
            "{apiVersion: v1, kind: Service, metadata: {name: web}}\n",
            "apiVersion: v2\nkind: Service\nmetadata: {name: web}\n",
            "apiVersion: v1\nkind: List\nitems: []\n",
        ];
        for text in declined {
            assert_eq!(parse_yaml_fast(text), None, "{text}");
        }
        // What makes a misread line harmless: decoding checks apiVersion and kind itself.
        let node = "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\n";
        assert!(serde_saphyr::from_str_with_options::<Service>(node, yaml_options()).is_err());
        assert!(serde_saphyr::from_str_with_options::<Node>(node, yaml_options()).is_ok());
    }
}
