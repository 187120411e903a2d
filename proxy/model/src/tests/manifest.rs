//! Manifest parsing: documents, JSON, lists, defaults, and errors that say where and what.

use crate::{
    ObjectKey,
    manifest::{DocumentErrorReason, ManifestObject, parse_documents},
};

fn keys(text: &str) -> Vec<String> {
    parse_documents(text)
        .into_iter()
        .map(|result| match result {
            Ok(ManifestObject::Ignored { api_version, kind }) => {
                format!("ignored {api_version} {kind}")
            }
            Ok(object) => format!("{} {}", object.kind(), object.key().unwrap()),
            Err(error) => format!("error {error}"),
        })
        .collect()
}

const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  clusterIP: 10.96.0.1\n  ports: [{port: 80}]\n";

#[test]
fn multi_document_yaml_with_empty_and_comment_documents() {
    let text = format!(
        "# leading comment\n---\n{SERVICE}---\n---\n# only a comment\n...\n---\napiVersion: v1\nkind: Node\nmetadata: {{name: node-a, namespace: junk}}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: app}}\n---\n~\n"
    );
    assert_eq!(
        keys(&text),
        [
            "Service default/web",
            "Node node-a",
            "ignored apps/v1 Deployment"
        ]
    );
}

#[test]
fn explicit_namespace_is_kept_and_missing_one_defaults() {
    let text = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s, namespace: shop}\naddressType: IPv4\nendpoints: []\n";
    assert_eq!(keys(text), ["EndpointSlice shop/s"]);
    assert_eq!(keys(SERVICE), ["Service default/web"]);
}

#[test]
fn document_marker_with_inline_content_and_end_markers() {
    let text = "--- {apiVersion: v1, kind: Node, metadata: {name: n1}}\n...\n--- {apiVersion: v1, kind: Node, metadata: {name: n2}}\n";
    assert_eq!(keys(text), ["Node n1", "Node n2"]);
}

#[test]
fn json_stream_and_json_list() {
    let text = r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a"}, "spec": {"ports": [{"port": 80}]}}
{"apiVersion": "v1", "kind": "List", "items": [
  {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n"}},
  {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}
]}"#;
    assert_eq!(
        keys(text),
        ["Service default/a", "Node n", "ignored v1 ConfigMap"]
    );
}

#[test]
fn yaml_list_items_are_objects_and_bad_items_are_named() {
    let text = "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Service, metadata: {name: a, namespace: x}, spec: {ports: [{port: 80}]}}\n- {apiVersion: v1, kind: Service, metadata: {name: b}, spec: {ports: [{port: eighty}]}}\n- {kind: Service, metadata: {name: c}}\n";
    let results = keys(text);
    assert_eq!(results[0], "Service x/a");
    assert!(
        results[1]
            .starts_with("error document 1 (line 1), Service default/b: invalid Service: items[1]"),
        "{results:?}"
    );
    assert!(
        results[2].ends_with("Service default/c: apiVersion is missing"),
        "{results:?}"
    );
    assert_eq!(results.len(), 3);
}

#[test]
fn errors_name_the_line_and_the_object() {
    let text = format!(
        "{SERVICE}---\napiVersion: v1\nkind: Service\nmetadata:\n  name: broken\nspec:\n  ports:\n  - port: [1]\n"
    );
    let results = parse_documents(&text);
    assert!(results[0].is_ok());
    let error = results[1].as_ref().unwrap_err();
    assert_eq!((error.document, error.line), (2, 8));
    assert_eq!(
        error.object.as_ref().and_then(|o| o.name.as_deref()),
        Some("broken")
    );
    let DocumentErrorReason::InvalidObject { message, .. } = &error.reason else {
        panic!("{error}")
    };
    assert!(
        message.contains("line 15"),
        "position in the whole text: {message}"
    );
}

#[test]
fn syntax_error_spares_the_next_document() {
    let text = format!("apiVersion: v1\nkind: Service\nmetadata: {{name: [\n---\n{SERVICE}");
    let results = keys(&text);
    assert_eq!(results.len(), 2);
    assert!(
        results[0].starts_with("error document 1 (line 1): syntax error:")
            && results[0].contains("line"),
        "{results:?}"
    );
    assert_eq!(results[1], "Service default/web");
}

#[test]
fn key_helper() {
    let objects: Vec<ManifestObject> = parse_documents(SERVICE)
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(objects[0].key(), Some(ObjectKey::new("default", "web")));
    assert_eq!(
        ManifestObject::Ignored {
            api_version: "v1".into(),
            kind: "Pod".into()
        }
        .key(),
        None
    );
}

#[test]
fn json_errors_carry_lines_and_stop_at_syntax_errors() {
    let text = "{\"apiVersion\": \"v1\", \"kind\": \"Node\", \"metadata\": {\"name\": \"n\"}}\n\
                {\"apiVersion\": \"v1\", \"kind\": \"Service\",\n \"metadata\": {\"name\": \"s\"},\n \"spec\": {\"ports\": [{\"port\": \"x\"}]}}\n\
                {\"apiVersion\": \"v1\", \"kind\": \n\
                {\"apiVersion\": \"v1\", \"kind\": \"Node\", \"metadata\": {\"name\": \"never\"}}\n";
    let results = keys(text);
    assert_eq!(results[0], "Node n");
    assert!(
        results[1].starts_with("error document 2 (line 2), Service default/s: invalid Service:")
            && results[1].contains("at line 4"),
        "{results:?}"
    );
    assert!(
        results[2].starts_with("error document 3 (line 5): syntax error:"),
        "{results:?}"
    );
    assert_eq!(
        results.len(),
        3,
        "nothing after a JSON syntax error can be read"
    );
}
