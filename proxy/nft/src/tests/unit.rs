//! Render and sync tests against the in-memory backend (no privileges).

use std::sync::{Arc, Mutex};

use kproxy_model::{FrontendKind, InternalMasquerade, Protocol, ProxyModel, Verdict};

use super::{PortBuilder, diff, ep, fwd, ip, local, many, model, net};
use crate::{
    NftConfig, NftDataplane,
    error::Error,
    fake::{FakeBackend, FakeKernel, FakeTable},
    ir::{ElemData, Element, Expr, Family, Op, Value, Verdict as NftVerdict},
    layout::SHORTCUT_LIST_OFFSET,
};

fn dataplane() -> (NftDataplane, Arc<Mutex<FakeKernel>>) {
    let fake = FakeBackend::default();
    let kernel = fake.kernel.clone();
    (
        NftDataplane::with_backend(NftConfig::default(), Box::new(fake)),
        kernel,
    )
}

fn table(k: &Arc<Mutex<FakeKernel>>, f: Family) -> FakeTable {
    k.lock()
        .unwrap()
        .tables
        .get(&f)
        .cloned()
        .expect("table exists")
}

fn elements(t: &FakeTable, set: &str) -> Vec<Element> {
    t.sets
        .get(set)
        .map(|(_, e)| e.values().cloned().collect())
        .unwrap_or_default()
}

fn keys(t: &FakeTable, set: &str) -> Vec<Value> {
    elements(t, set).into_iter().map(|e| e.key).collect()
}

fn last_tx(k: &Arc<Mutex<FakeKernel>>) -> crate::ir::Transaction {
    k.lock()
        .unwrap()
        .transactions
        .last()
        .cloned()
        .expect("a transaction")
}

/// The kernel contents after a series of partial syncs must equal what a fresh full sync
/// of the final model produces (set sizes aside: they are fixed when a set is created).
fn assert_same_as_fresh(k: &Arc<Mutex<FakeKernel>>, m: &ProxyModel) {
    let (mut fresh, fk) = dataplane();
    fresh.sync_full(m).unwrap();
    for f in [Family::Ip, Family::Ip6] {
        let got = table(k, f);
        let want = table(&fk, f);
        assert_eq!(got.chains, want.chains, "chains of {f:?}");
        let names = |t: &FakeTable| t.sets.keys().cloned().collect::<Vec<_>>();
        assert_eq!(names(&got), names(&want), "sets of {f:?}");
        for (name, (_, els)) in &want.sets {
            assert_eq!(&got.sets[name].1, els, "elements of {f:?} {name}");
        }
    }
}

fn web() -> PortBuilder {
    PortBuilder::tcp("web", "10.96.0.10", 80)
        .endpoints(vec![ep("10.1.0.1", 8080), ep("10.1.0.2", 8080)])
}

#[test]
fn cluster_ip_is_load_balanced_through_a_shared_class() {
    let (mut dp, k) = dataplane();
    let stats = dp.sync_full(&model([web().build()])).unwrap();
    assert!(stats.full);
    let t = table(&k, Family::Ip);
    let class = "lb-n2-masq-out-10.0.0.0/8";
    assert_eq!(
        keys(&t, class),
        vec![Value::Frontend(ip("10.96.0.10"), 6, 80)]
    );
    assert_eq!(
        elements(&t, class)[0].comment.as_deref(),
        Some("default/web:http/tcp")
    );
    let eps = elements(&t, "endpoints");
    assert_eq!(eps.len(), 2);
    assert_eq!(eps[1].key, Value::FrontendSlot(ip("10.96.0.10"), 6, 80, 1));
    assert_eq!(
        eps[1].data,
        Some(ElemData::Value(Value::AddrPort(ip("10.1.0.2"), 8080)))
    );
    assert_eq!(keys(&t, "cluster-ips"), vec![Value::Addr(ip("10.96.0.10"))]);
    // The class chain masquerades non-pod sources, then DNATs with numgen mod 2.
    let rules = &t.chains[class];
    assert_eq!(rules.len(), 2);
    assert!(rules[1].exprs.contains(&Expr::Numgen {
        dreg: crate::ir::Reg::r32(3),
        modulus: 2,
        offset: 0
    }));
    // services: the affinity vmap, then one dispatch rule for the class.
    assert_eq!(t.chains["services"].len(), 2);
    assert!(keys(&t, "no-endpoint-reject").is_empty());
    assert!(t.chains.contains_key("nat-prerouting") && t.chains.contains_key("filter-output"));
    // Nothing of the IPv4 service leaks into the IPv6 table.
    assert!(elements(&table(&k, Family::Ip6), "endpoints").is_empty());
}

#[test]
fn reject_and_drop_verdicts_go_to_filter_sets_without_dnat() {
    let (mut dp, k) = dataplane();
    let rejected = PortBuilder::tcp("gone", "10.96.0.11", 80).build();
    let dropped = PortBuilder::tcp("local-only", "10.96.0.12", 80)
        .endpoints(vec![ep("10.1.0.3", 80)])
        .internal(Verdict::Drop)
        .build();
    dp.sync_full(&model([rejected, dropped])).unwrap();
    let t = table(&k, Family::Ip);
    assert_eq!(
        keys(&t, "no-endpoint-reject"),
        vec![Value::Frontend(ip("10.96.0.11"), 6, 80)]
    );
    assert_eq!(
        keys(&t, "no-endpoint-drop"),
        vec![Value::Frontend(ip("10.96.0.12"), 6, 80)]
    );
    assert!(elements(&t, "endpoints").is_empty());
    assert_eq!(t.chains["services"].len(), 1, "no class chain is needed");
    // The reject helper answers TCP with a reset and anything else with port unreachable.
    let reject = &t.chains["reject-chain"];
    assert!(
        reject[0]
            .exprs
            .contains(&Expr::Reject(crate::ir::RejectKind::TcpReset))
    );
    assert!(
        reject[1]
            .exprs
            .contains(&Expr::Reject(crate::ir::RejectKind::PortUnreachable(
                Family::Ip
            )))
    );
}

#[test]
fn masquerade_modes_select_different_classes() {
    let (mut dp, k) = dataplane();
    let all = web().masquerade(InternalMasquerade::Always).build();
    let hairpin_only = PortBuilder::tcp("b", "10.96.0.20", 80)
        .endpoints(vec![ep("10.1.0.1", 80)])
        .masquerade(InternalMasquerade::HairpinOnly)
        .build();
    dp.sync_full(&model([all, hairpin_only])).unwrap();
    let t = table(&k, Family::Ip);
    assert_eq!(t.chains["lb-n2-masq-all"].len(), 2);
    assert_eq!(t.chains["lb-n1"].len(), 1, "no masquerade rule");
}

#[test]
fn external_traffic_policy_local_short_circuits_to_the_cluster_list() {
    let (mut dp, k) = dataplane();
    let p = PortBuilder::tcp("lb", "10.96.0.30", 80)
        .endpoints(vec![
            local(ep("10.1.0.1", 80)),
            ep("10.2.0.1", 80),
            ep("10.2.0.2", 80),
        ])
        .frontend(FrontendKind::LoadBalancer, "203.0.113.7", 80)
        .frontend(FrontendKind::NodePort, "192.0.2.1", 30080)
        .external_local(fwd(&[0]), &["10.0.0.0/8"])
        .build();
    dp.sync_full(&model([p])).unwrap();
    let t = table(&k, Family::Ip);
    let class = "lb-n1-pods-10.0.0.0/8-n3-node-n3";
    assert_eq!(
        keys(&t, class),
        vec![
            Value::Frontend(ip("192.0.2.1"), 6, 30080),
            Value::Frontend(ip("203.0.113.7"), 6, 80)
        ]
    );
    // pods rule, node rule, local rule.
    assert_eq!(t.chains[class].len(), 3);
    let lb_slots: Vec<Value> = keys(&t, "endpoints")
        .into_iter()
        .filter(|k| matches!(k, Value::FrontendSlot(a, _, _, _) if *a == ip("203.0.113.7")))
        .collect();
    assert_eq!(lb_slots.len(), 4, "1 local + 3 cluster endpoints");
    assert!(lb_slots.contains(&Value::FrontendSlot(
        ip("203.0.113.7"),
        6,
        80,
        SHORTCUT_LIST_OFFSET + 2
    )));
    assert_eq!(
        keys(&t, "hairpin"),
        vec![Value::AddrPair(ip("10.1.0.1"), ip("10.1.0.1"))]
    );
}

#[test]
fn external_without_local_endpoints_drops_but_pods_still_reach_the_cluster() {
    let (mut dp, k) = dataplane();
    let p = PortBuilder::tcp("lb", "10.96.0.31", 80)
        .endpoints(vec![ep("10.2.0.1", 80)])
        .frontend(FrontendKind::ExternalIp, "198.51.100.9", 80)
        .external_local(Verdict::Drop, &["10.0.0.0/8"])
        .build();
    dp.sync_full(&model([p])).unwrap();
    let t = table(&k, Family::Ip);
    assert_eq!(
        keys(&t, "no-endpoint-drop"),
        vec![Value::Frontend(ip("198.51.100.9"), 6, 80)]
    );
    assert_eq!(
        keys(&t, "lb-none-pods-10.0.0.0/8-n1-node-n1"),
        vec![Value::Frontend(ip("198.51.100.9"), 6, 80)]
    );
}

#[test]
fn source_ranges_protect_load_balancer_frontends_only() {
    let (mut dp, k) = dataplane();
    let p = web()
        .frontend(FrontendKind::LoadBalancer, "203.0.113.8", 80)
        .frontend(FrontendKind::ExternalIp, "198.51.100.8", 80)
        .external_cluster()
        .source_ranges(&["192.0.2.0/24", "198.51.100.0/25"])
        .build();
    dp.sync_full(&model([p])).unwrap();
    let t = table(&k, Family::Ip);
    assert_eq!(
        keys(&t, "firewall-ips"),
        vec![Value::Frontend(ip("203.0.113.8"), 6, 80)]
    );
    assert_eq!(
        keys(&t, "firewall-allow"),
        vec![
            Value::FrontendSource(ip("203.0.113.8"), 6, 80, net("192.0.2.0/24")),
            Value::FrontendSource(ip("203.0.113.8"), 6, 80, net("198.51.100.0/25")),
        ]
    );
    // eTP Cluster: external frontends share a masquerading class.
    assert_eq!(keys(&t, "lb-n2-masq").len(), 2);
}

#[test]
fn affinity_services_get_their_own_chains_and_per_endpoint_sets() {
    let (mut dp, k) = dataplane();
    let p = web().affinity(10800).build();
    let m1 = model([p.clone()]);
    dp.sync_full(&m1).unwrap();
    let t = table(&k, Family::Ip);
    let svc = "svc-default/web/tcp/http";
    assert_eq!(
        elements(&t, "service-chains")[0].data,
        Some(ElemData::Verdict(NftVerdict::Goto(svc.into())))
    );
    assert!(t.chains.contains_key("pick-default/web/tcp/http/internal"));
    let ep1 = "ep-default/web/tcp/http__10.1.0.1/8080";
    assert_eq!(t.chains[ep1].len(), 1);
    assert_eq!(t.sets[ep1].0.timeout_ms, Some(10_800_000));
    // Replace one endpoint: the other endpoint's affinity set (and its clients) survives.
    let mut p2 = p.clone();
    p2.endpoints[1] = ep("10.1.0.3", 8080);
    let m2 = model([p2]);
    dp.sync_partial(&m2, &diff(&m1, &m2)).unwrap();
    let tx = last_tx(&k);
    let deleted_sets: Vec<_> = tx
        .ops
        .iter()
        .filter_map(|o| match o {
            Op::DeleteSet(_, s) => Some(s.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(
        deleted_sets,
        vec!["ep-default/web/tcp/http__10.1.0.2/8080".to_owned()]
    );
    assert!(
        !tx.ops
            .iter()
            .any(|o| matches!(o, Op::AddSet(_, s) if &*s.name == ep1))
    );
    assert_same_as_fresh(&k, &m2);
}

#[test]
fn one_endpoint_change_touches_two_elements_at_scale() {
    let (mut dp, k) = dataplane();
    let m1 = many(2000, 10);
    dp.sync_full(&m1).unwrap();
    let mut m2 = m1.clone();
    let key = m2.ports.keys().nth(777).unwrap().clone();
    m2.ports.get_mut(&key).unwrap().endpoints[3] = ep("10.250.0.1", 8080);
    let stats = dp.sync_partial(&m2, &diff(&m1, &m2)).unwrap();
    assert!(!stats.full);
    assert_eq!(stats.elements, 2, "delete + add of one endpoint slot");
    assert_eq!(stats.rules, 0);
    let tx = last_tx(&k);
    assert_eq!(tx.ops.len(), 2, "{tx:#?}");
    assert!(
        matches!(&tx.ops[0], Op::DeleteElements(_, s, e) if &**s == "endpoints" && e.len() == 1)
    );
    assert!(matches!(&tx.ops[1], Op::AddElements(_, s, e) if &**s == "endpoints" && e.len() == 1));
    assert_same_as_fresh(&k, &m2);
}

#[test]
fn endpoint_count_change_moves_the_frontend_between_classes() {
    let (mut dp, k) = dataplane();
    let m1 = many(10, 3);
    dp.sync_full(&m1).unwrap();
    let mut m2 = m1.clone();
    let key = m2.ports.keys().next().unwrap().clone();
    m2.ports
        .get_mut(&key)
        .unwrap()
        .endpoints
        .push(ep("10.250.0.1", 8080));
    m2.ports.get_mut(&key).unwrap().internal = fwd(&[0, 1, 2, 3]);
    let stats = dp.sync_partial(&m2, &diff(&m1, &m2)).unwrap();
    // New class: set + chain + its 2 rules + services rewritten (vmap + 2 dispatch rules).
    assert_eq!(stats.rules, 5);
    assert_eq!(
        stats.elements,
        1 + 1 + 1,
        "frontend out of lb-n3, into lb-n4, one new slot"
    );
    assert_same_as_fresh(&k, &m2);
    // Back to 3: the now unused class is deleted again.
    dp.sync_partial(&m1, &diff(&m2, &m1)).unwrap();
    let t = table(&k, Family::Ip);
    assert!(!t.chains.contains_key("lb-n4-masq-out-10.0.0.0/8"));
    assert!(!t.sets.contains_key("lb-n4-masq-out-10.0.0.0/8"));
    assert_same_as_fresh(&k, &m1);
}

#[test]
fn services_come_and_go_incrementally() {
    let (mut dp, k) = dataplane();
    let base = many(50, 2);
    dp.sync_full(&base).unwrap();
    let mut m = base.clone();
    // Add a second port of an existing service: the ClusterIP is shared.
    let first = m.ports.values().next().unwrap().clone();
    let mut second = first.clone();
    second.key.name.port_name = "https".into();
    second.port = 443;
    second.frontends[0].port = 443;
    m.ports.insert(second.key.clone(), second.clone());
    // Remove another service, add a UDP and an SCTP service.
    let victim = m.ports.keys().nth(10).unwrap().clone();
    m.ports.remove(&victim);
    for (proto, name, cip) in [
        (Protocol::Udp, "dns", "10.96.100.1"),
        (Protocol::Sctp, "sig", "10.96.100.2"),
    ] {
        let p = PortBuilder::new("kube-system", name, "p", proto, cip, 53)
            .endpoints(vec![ep("10.1.9.9", 53)])
            .build();
        m.ports.insert(p.key.clone(), p);
    }
    dp.sync_partial(&m, &diff(&base, &m)).unwrap();
    assert_same_as_fresh(&k, &m);
    // Removing one of the two ports keeps the shared ClusterIP.
    let mut m3 = m.clone();
    m3.ports.remove(&second.key);
    dp.sync_partial(&m3, &diff(&m, &m3)).unwrap();
    let t = table(&k, Family::Ip);
    assert!(keys(&t, "cluster-ips").contains(&Value::Addr(first.cluster_ip)));
    assert_same_as_fresh(&k, &m3);
}

#[test]
fn duplicate_frontends_belong_to_one_port_and_move_when_it_goes() {
    let (mut dp, k) = dataplane();
    let a = PortBuilder::tcp("a", "10.96.0.1", 80)
        .endpoints(vec![ep("10.1.0.1", 80)])
        .frontend(FrontendKind::ExternalIp, "198.51.100.1", 80)
        .external_cluster()
        .build();
    let b = PortBuilder::tcp("b", "10.96.0.2", 80)
        .endpoints(vec![ep("10.1.0.2", 80), ep("10.1.0.3", 80)])
        .frontend(FrontendKind::ExternalIp, "198.51.100.1", 80)
        .external_cluster()
        .build();
    let m1 = model([a.clone(), b.clone()]);
    dp.sync_full(&m1).unwrap();
    let t = table(&k, Family::Ip);
    let ext = Value::Frontend(ip("198.51.100.1"), 6, 80);
    assert!(
        keys(&t, "lb-n1-masq").contains(&ext),
        "the smaller key (a) owns it"
    );
    assert!(!keys(&t, "lb-n2-masq").contains(&ext));
    let m2 = model([b]);
    dp.sync_partial(&m2, &diff(&m1, &m2)).unwrap();
    let t = table(&k, Family::Ip);
    assert!(keys(&t, "lb-n2-masq").contains(&ext), "b takes it over");
    assert_same_as_fresh(&k, &m2);
}

#[test]
fn hairpin_pairs_are_shared_between_services() {
    let (mut dp, k) = dataplane();
    let a = PortBuilder::tcp("a", "10.96.0.1", 80)
        .endpoints(vec![local(ep("10.1.0.1", 80))])
        .build();
    let b = PortBuilder::tcp("b", "10.96.0.2", 80)
        .endpoints(vec![local(ep("10.1.0.1", 81))])
        .build();
    let m1 = model([a.clone(), b]);
    dp.sync_full(&m1).unwrap();
    assert_eq!(
        keys(&table(&k, Family::Ip), "hairpin"),
        vec![Value::AddrPair(ip("10.1.0.1"), ip("10.1.0.1"))]
    );
    let m2 = model([a]);
    dp.sync_partial(&m2, &diff(&m1, &m2)).unwrap();
    assert_eq!(
        keys(&table(&k, Family::Ip), "hairpin").len(),
        1,
        "still used by a"
    );
    assert_same_as_fresh(&k, &m2);
}

#[test]
fn ipv6_ports_go_to_the_ip6_table() {
    let (mut dp, k) = dataplane();
    let p = PortBuilder::tcp("v6", "fd00:96::10", 80)
        .endpoints(vec![ep("fd00:1::1", 8080)])
        .build();
    dp.sync_full(&model([p])).unwrap();
    let t6 = table(&k, Family::Ip6);
    assert_eq!(
        keys(&t6, "cluster-ips"),
        vec![Value::Addr(ip("fd00:96::10"))]
    );
    assert!(t6.chains.contains_key("lb-n1-masq-out-fd00../8"));
    let reject = &t6.chains["reject-chain"];
    assert!(
        reject[1]
            .exprs
            .contains(&Expr::Reject(crate::ir::RejectKind::PortUnreachable(
                Family::Ip6
            )))
    );
    assert!(keys(&table(&k, Family::Ip), "cluster-ips").is_empty());
}

#[test]
fn a_failed_sync_forces_a_full_sync() {
    let (mut dp, k) = dataplane();
    let m1 = many(5, 2);
    dp.sync_full(&m1).unwrap();
    let before = table(&k, Family::Ip);
    let m2 = many(6, 2);
    k.lock().unwrap().fail_next = Some(libc::ENOMEM);
    let err = dp.sync_partial(&m2, &diff(&m1, &m2)).unwrap_err();
    assert!(matches!(err, Error::Rejected { .. }), "{err}");
    assert_eq!(
        table(&k, Family::Ip).chains,
        before.chains,
        "nothing applied"
    );
    assert!(matches!(
        dp.sync_partial(&m2, &diff(&m1, &m2)),
        Err(Error::NeedFullSync)
    ));
    dp.sync_full(&m2).unwrap();
    assert_same_as_fresh(&k, &m2);
}

#[test]
fn disabled_families_are_left_alone() {
    let fake = FakeBackend::default();
    let k = fake.kernel.clone();
    let mut dp = NftDataplane::with_backend(
        NftConfig {
            ipv6: false,
            ..NftConfig::default()
        },
        Box::new(fake),
    );
    dp.sync_full(&many(1, 1)).unwrap();
    let k = k.lock().unwrap();
    assert!(k.tables.contains_key(&Family::Ip));
    assert!(!k.tables.contains_key(&Family::Ip6));
    assert!(
        k.transactions[0]
            .ops
            .iter()
            .all(|o| o.family() == Family::Ip)
    );
}

#[test]
fn full_sync_replaces_the_table_in_one_transaction() {
    let (mut dp, k) = dataplane();
    dp.sync_full(&many(3, 1)).unwrap();
    dp.sync_full(&many(2, 1)).unwrap();
    let k2 = k.lock().unwrap();
    assert_eq!(k2.transactions.len(), 2);
    let ops = &k2.transactions[1].ops;
    // add + delete + add per family, first thing in the batch: an atomic replace.
    assert!(matches!(
        ops[..3],
        [
            Op::AddTable(Family::Ip),
            Op::DeleteTable(Family::Ip),
            Op::AddTable(Family::Ip)
        ]
    ));
    drop(k2);
    assert_same_as_fresh(&k, &many(2, 1));
}

#[test]
fn random_edit_sequences_match_a_fresh_full_sync() {
    // Deterministic pseudo-random edits over a small model.
    let (mut dp, k) = dataplane();
    let mut m = many(30, 3);
    dp.sync_full(&m).unwrap();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..40 {
        let old = m.clone();
        for _ in 0..3 {
            let n = m.ports.len();
            let key = m
                .ports
                .keys()
                .nth(usize::try_from(next()).unwrap() % n)
                .unwrap()
                .clone();
            let p = m.ports.get_mut(&key).unwrap();
            match next() % 5 {
                0 => {
                    let k2 = u32::try_from(next() % 200).unwrap();
                    p.endpoints
                        .push(ep(&format!("10.200.{}.{}", k2 / 100, k2 % 100 + 1), 8080));
                }
                1 if p.endpoints.len() > 1 => {
                    p.endpoints.pop();
                }
                2 => p.affinity_timeout_secs = p.affinity_timeout_secs.xor(Some(60)),
                3 => p
                    .endpoints
                    .iter_mut()
                    .for_each(|e| e.is_local = !e.is_local),
                _ => p.internal_masquerade = InternalMasquerade::Always,
            }
            let count = u32::try_from(p.endpoints.len()).unwrap();
            p.internal = fwd(&(0..count).collect::<Vec<_>>());
        }
        if round % 7 == 0 {
            let extra = PortBuilder::tcp(&format!("x{round}"), &format!("10.97.0.{round}"), 80)
                .endpoints(vec![ep("10.1.0.1", 80)])
                .build();
            m.ports.insert(extra.key.clone(), extra);
        }
        dp.sync_partial(&m, &diff(&old, &m)).unwrap();
        assert_same_as_fresh(&k, &m);
    }
}

#[test]
fn a_frontend_listed_twice_in_one_port_is_rendered_once() {
    let (mut dp, k) = dataplane();
    let p = web()
        .frontend(FrontendKind::ExternalIp, "203.0.113.9", 80)
        .frontend(FrontendKind::LoadBalancer, "203.0.113.9", 80)
        .external_cluster()
        .source_ranges(&["192.0.2.0/24", "192.0.2.128/25", "192.0.3.0/24"])
        .build();
    let m1 = model([p]);
    dp.sync_full(&m1).unwrap();
    let t = table(&k, Family::Ip);
    // The LoadBalancer kind wins, so its source ranges apply, merged (overlaps and
    // adjacent ranges would be refused by an interval set).
    assert_eq!(
        keys(&t, "firewall-ips"),
        vec![Value::Frontend(ip("203.0.113.9"), 6, 80)]
    );
    assert_eq!(
        keys(&t, "firewall-allow"),
        vec![Value::FrontendSource(
            ip("203.0.113.9"),
            6,
            80,
            net("192.0.2.0/23")
        )]
    );
    assert_eq!(keys(&t, "lb-n2-masq").len(), 1);
    let m2 = model([]);
    dp.sync_partial(&m2, &diff(&m1, &m2)).unwrap();
    assert_same_as_fresh(&k, &m2);
}

#[test]
fn an_affinity_timeout_change_falls_back_to_a_full_sync() {
    let (mut dp, k) = dataplane();
    let m1 = model([web().affinity(60).build()]);
    dp.sync_full(&m1).unwrap();
    let m2 = model([web().affinity(120).build()]);
    let stats = dp.sync_partial(&m2, &diff(&m1, &m2)).unwrap();
    assert!(stats.full);
    let t = table(&k, Family::Ip);
    assert_eq!(
        t.sets["ep-default/web/tcp/http__10.1.0.1/8080"]
            .0
            .timeout_ms,
        Some(120_000)
    );
}

#[test]
fn bad_endpoint_indices_are_skipped_not_fatal() {
    let (mut dp, k) = dataplane();
    let p = web().internal(fwd(&[0, 7, 1])).build();
    dp.sync_full(&model([p])).unwrap();
    assert_eq!(elements(&table(&k, Family::Ip), "endpoints").len(), 2);
}

#[test]
fn overflowing_a_sized_set_falls_back_to_a_full_sync() {
    let (mut dp, k) = dataplane();
    let m1 = many(1000, 10); // 10k endpoint elements: the map gets a fixed size
    dp.sync_full(&m1).unwrap();
    let size = table(&k, Family::Ip).sets["endpoints"]
        .0
        .size
        .expect("sized");
    assert_eq!(size, 15_000);
    let m2 = many(1600, 10);
    let stats = dp.sync_partial(&m2, &diff(&m1, &m2)).unwrap();
    assert!(stats.full, "16k elements do not fit 15k");
    assert_eq!(table(&k, Family::Ip).sets["endpoints"].0.size, Some(24_000));
    let m3 = many(1700, 10);
    assert!(!dp.sync_partial(&m3, &diff(&m2, &m3)).unwrap().full);
}
