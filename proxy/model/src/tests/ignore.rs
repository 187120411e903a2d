//! Objects the proxy leaves alone by rule: silently, unlike invalid ones.

use super::fixtures::{build_clean, build_yaml, config, ep, port, slice, svc, warning_lines};
use crate::{IpFamily, LABEL_HEADLESS, LABEL_SERVICE_PROXY_NAME, ModelConfig};

fn served(yaml: &str, cfg: &ModelConfig) -> Vec<String> {
    build_clean(yaml, cfg)
        .model
        .ports
        .keys()
        .map(|k| k.name.name.clone())
        .collect()
}

#[test]
fn service_proxy_name_label_selects_the_proxy() {
    let yaml = svc("mine", "10.96.0.60").port("http", 80).yaml()
        + &svc("labelled", "10.96.0.61")
            .label(LABEL_SERVICE_PROXY_NAME, "kproxy")
            .port("http", 80)
            .yaml()
        + &svc("foreign", "10.96.0.62")
            .label(LABEL_SERVICE_PROXY_NAME, "other-proxy")
            .port("http", 80)
            .yaml();
    assert_eq!(
        served(&yaml, &config()),
        ["mine"],
        "labelled objects are another proxy's by default"
    );
    let named = ModelConfig {
        proxy_name: Some("kproxy".to_owned()),
        ..config()
    };
    assert_eq!(served(&yaml, &named), ["labelled", "mine"]);
}

#[test]
fn slices_labelled_for_another_proxy_or_headless_are_skipped() {
    let yaml = svc("web", "10.96.0.63").port("http", 80).yaml()
        + &slice("web-1", "web")
            .port("http", 80)
            .endpoints([ep("10.0.0.1")])
            .yaml()
        + &slice("web-2", "web")
            .label(LABEL_SERVICE_PROXY_NAME, "other-proxy")
            .port("http", 80)
            .endpoints([ep("10.0.0.2")])
            .yaml()
        + &slice("web-3", "web")
            .label(LABEL_HEADLESS, "")
            .port("http", 80)
            .endpoints([ep("10.0.0.3")])
            .yaml()
        + &slice("web-4", "web")
            .address_type("FQDN")
            .port("http", 80)
            .endpoints([ep("web.example")])
            .yaml();
    let built = build_clean(&yaml, &config());
    let ips: Vec<String> = port(&built, "web", "http", IpFamily::V4)
        .endpoints
        .iter()
        .map(|e| e.ip.to_string())
        .collect();
    assert_eq!(ips, ["10.0.0.1"]);
}

#[test]
fn slices_of_skipped_services_are_not_warned_about() {
    let yaml = svc("headless", "None").port("http", 80).yaml()
        + &slice("headless-1", "headless")
            .port("http", 80)
            .endpoints([ep("10.0.0.1")])
            .yaml()
        + &svc("foreign", "10.96.0.64")
            .label(LABEL_SERVICE_PROXY_NAME, "other-proxy")
            .port("http", 80)
            .yaml()
        + &slice("foreign-1", "foreign")
            .port("http", 80)
            .endpoints([ep("10.0.0.2")])
            .yaml();
    let built = build_yaml(&yaml, &config());
    assert!(built.model.ports.is_empty());
    assert!(built.warnings.is_empty(), "{:?}", warning_lines(&built));
}
