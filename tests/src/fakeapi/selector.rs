//! Label and field selectors, parsed and matched the way the API server does for the
//! forms kube-proxy uses: `key`, `!key`, `key=value`, `key==value`, `key!=value`.
//! Set-based forms (`in`, `notin`) are refused with 400 rather than misread.

use serde_json::Value;

use super::store::Kind;

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Exists(String),
    DoesNotExist(String),
    Equal(String, String),
    NotEqual(String, String),
}

impl Requirement {
    fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let valid_key = |k: &str| {
            !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
        };
        let requirement = if let Some((key, value)) = text.split_once("!=") {
            Self::NotEqual(key.trim().into(), value.trim().into())
        } else if let Some((key, value)) = text.split_once("==") {
            Self::Equal(key.trim().into(), value.trim().into())
        } else if let Some((key, value)) = text.split_once('=') {
            Self::Equal(key.trim().into(), value.trim().into())
        } else if let Some(key) = text.strip_prefix('!') {
            Self::DoesNotExist(key.trim().into())
        } else {
            Self::Exists(text.into())
        };
        let (Self::Exists(key)
        | Self::DoesNotExist(key)
        | Self::Equal(key, _)
        | Self::NotEqual(key, _)) = &requirement;
        if valid_key(key) {
            Ok(requirement)
        } else {
            Err(format!("unable to parse requirement: {text:?}"))
        }
    }

    fn key(&self) -> &str {
        let (Self::Exists(key)
        | Self::DoesNotExist(key)
        | Self::Equal(key, _)
        | Self::NotEqual(key, _)) = self;
        key
    }

    /// `value` is the label's value, or the field's (fields always exist).
    fn matches(&self, value: Option<&str>) -> bool {
        match self {
            Self::Exists(_) => value.is_some(),
            Self::DoesNotExist(_) => value.is_none(),
            Self::Equal(_, want) => value == Some(want.as_str()),
            Self::NotEqual(_, want) => value != Some(want.as_str()),
        }
    }
}

fn parse_all(text: Option<&str>) -> Result<Vec<Requirement>, String> {
    let text = text.unwrap_or_default();
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    if text.contains('(') {
        return Err(format!(
            "set-based selectors are not supported by the fake: {text:?}"
        ));
    }
    text.split(',').map(Requirement::parse).collect()
}

/// A request's label and field selectors, checked against what the real server supports
/// for the kind.
#[derive(Debug, Clone, Default)]
pub(crate) struct Selectors {
    labels: Vec<Requirement>,
    fields: Vec<Requirement>,
}

/// The field selectors the real API server supports per kind (besides the generic
/// `metadata.name` and `metadata.namespace`); others are a 400 there too.
fn supported_field(kind: Kind, field: &str) -> bool {
    let extra: &[&str] = match kind {
        Kind::Service => &["spec.clusterIP", "spec.type"],
        Kind::EndpointSlice => &["addressType"],
        Kind::Node => &["spec.unschedulable"],
    };
    field == "metadata.name"
        || (field == "metadata.namespace" && kind.namespaced())
        || extra.contains(&field)
}

impl Selectors {
    pub(crate) fn parse(
        kind: Kind,
        labels: Option<&str>,
        fields: Option<&str>,
    ) -> Result<Self, String> {
        let labels = parse_all(labels)?;
        let fields = parse_all(fields)?;
        for field in &fields {
            if matches!(field, Requirement::Exists(_) | Requirement::DoesNotExist(_)) {
                return Err(format!(
                    "invalid field selector {:?}: needs an operator",
                    field.key()
                ));
            }
            if !supported_field(kind, field.key()) {
                return Err(format!(
                    "field label not supported: {} (for {kind})",
                    field.key()
                ));
            }
        }
        Ok(Self { labels, fields })
    }

    pub(crate) fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        let labels_match = self
            .labels
            .iter()
            .all(|r| r.matches(labels.get(r.key()).and_then(Value::as_str)));
        labels_match
            && self.fields.iter().all(|r| {
                let value = r.key().split('.').fold(object, |v, part| &v[part]);
                let value = match value {
                    Value::String(s) => s.clone(),
                    Value::Bool(b) => b.to_string(),
                    // Unset fields select as their zero value.
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                r.matches(Some(&value))
            })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn svc(labels: &Value, cluster_ip: &str) -> Value {
        json!({"kind": "Service", "metadata": {"name": "a", "namespace": "ns", "labels": labels},
               "spec": {"clusterIP": cluster_ip}})
    }

    #[test]
    fn kube_proxy_selectors_select_as_the_api_server_does() {
        let sel = Selectors::parse(
            Kind::Service,
            Some("!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless"),
            Some("spec.clusterIP!=None"),
        )
        .unwrap();
        assert!(sel.matches(&svc(&json!({"app": "x"}), "10.0.0.1")));
        assert!(sel.matches(&svc(&Value::Null, "10.0.0.1")));
        assert!(!sel.matches(&svc(
            &json!({"service.kubernetes.io/headless": ""}),
            "10.0.0.1"
        )));
        assert!(!sel.matches(&svc(
            &json!({"service.kubernetes.io/service-proxy-name": "x"}),
            "1.1.1.1"
        )));
        assert!(!sel.matches(&svc(&Value::Null, "None")));

        let named = Selectors::parse(
            Kind::Service,
            Some("service.kubernetes.io/service-proxy-name=mine"),
            None,
        )
        .unwrap();
        assert!(named.matches(&svc(
            &json!({"service.kubernetes.io/service-proxy-name": "mine"}),
            ""
        )));
        assert!(!named.matches(&svc(
            &json!({"service.kubernetes.io/service-proxy-name": "other"}),
            ""
        )));
        assert!(!named.matches(&svc(&Value::Null, "")));

        let not_equal = Selectors::parse(Kind::Service, Some("app!=x"), None).unwrap();
        assert!(not_equal.matches(&svc(&Value::Null, "")));
        assert!(!not_equal.matches(&svc(&json!({"app": "x"}), "")));
    }

    #[test]
    fn node_name_field_selector() {
        let sel = Selectors::parse(Kind::Node, None, Some("metadata.name=n1")).unwrap();
        assert!(sel.matches(&json!({"metadata": {"name": "n1"}})));
        assert!(!sel.matches(&json!({"metadata": {"name": "n2"}})));
    }

    #[test]
    fn unsupported_selectors_are_refused() {
        assert!(Selectors::parse(Kind::Node, None, Some("spec.clusterIP!=None")).is_err());
        assert!(Selectors::parse(Kind::Service, None, Some("metadata.labels=x")).is_err());
        assert!(Selectors::parse(Kind::Service, Some("a in (b,c)"), None).is_err());
        assert!(Selectors::parse(Kind::Service, Some("a=b,,c"), None).is_err());
        assert!(Selectors::parse(Kind::Node, None, Some("metadata.namespace=x")).is_err());
    }
}
