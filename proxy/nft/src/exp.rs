//! Temporary layout experiment.
#![allow(clippy::pedantic, unreachable_pub, dead_code)]
use std::{net::{IpAddr, Ipv4Addr}, sync::Arc, time::Instant};

use crate::{Backend, ir::*, netlink::NetlinkBackend};

fn size() -> Option<u32> { std::env::var("EXP_SIZE").ok().map(|s| s.parse().unwrap()) }
fn cmt(c: Name) -> Option<Name> { if std::env::var("EXP_NOCOMMENT").is_ok() { None } else { Some(c) } }
fn n(s: &str) -> Name { Arc::from(s) }

const KEY3: Concat = &[DataType::Ipv4Addr, DataType::InetProto, DataType::InetService];

fn base(tx: &mut Transaction) {
    let f = Family::Ip;
    tx.push(Op::AddTable(f));
    tx.push(Op::DeleteTable(f));
    tx.push(Op::AddTable(f));
    tx.push(Op::AddChain(f, Chain { name: n("nat-prerouting"), hook: Some(BaseHook { chain_type: ChainType::Nat, hook: Hook::Prerouting, priority: -100 }), comment: None }));
    tx.push(Op::AddChain(f, Chain { name: n("nat-output"), hook: Some(BaseHook { chain_type: ChainType::Nat, hook: Hook::Output, priority: -100 }), comment: None }));
    tx.push(Op::AddSet(f, Set { name: n("service-ips"), key: KEY3, data: Some(SetData::Verdict), interval: false, timeout_ms: None, size: size(), comment: Some(n("ClusterIP, ExternalIP and LoadBalancer IP traffic")) }));
    tx.push(Op::AddSet(f, Set { name: n("cluster-ips"), key: &[DataType::Ipv4Addr], data: None, interval: false, timeout_ms: None, size: size(), comment: None }));
    for c in ["nat-prerouting", "nat-output"] {
        tx.push(Op::AddRule(f, n(c), Rule { exprs: vec![
            Expr::Payload { field: Field::Daddr(f), dreg: Reg::r32(0) },
            Expr::Meta { key: MetaKey::L4Proto, dreg: Reg::r32(1) },
            Expr::Payload { field: Field::ThDport, dreg: Reg::r32(2) },
            Expr::Lookup { set: n("service-ips"), sreg: Reg::r32(0), dreg: Some(Reg::VERDICT), invert: false },
        ], comment: None }));
    }
}

fn vip(i: u32) -> IpAddr { IpAddr::V4(Ipv4Addr::from(0x0a60_0000 + i)) }
fn ep(i: u32, k: u32) -> IpAddr { IpAddr::V4(Ipv4Addr::from(0x0a80_0000 + i * 16 + k)) }

fn layout_a(services: u32, eps: u32, tx: &mut Transaction) {
    let f = Family::Ip;
    tx.push(Op::AddSet(f, Set { name: n("endpoint-slots"), key: &[DataType::Mark], data: Some(SetData::Value(&[DataType::Ipv4Addr, DataType::InetService])), interval: false, timeout_ms: None, size: size(), comment: None }));
    let mut svc_elems = Vec::new();
    let mut slot_elems = Vec::new();
    let mut cips = Vec::new();
    for i in 0..services {
        let name = n(&format!("svc-namespace-{}/service-{i}/tcp/http", i % 100));
        tx.push(Op::AddChain(f, Chain { name: name.clone(), hook: None, comment: None }));
        tx.push(Op::AddRule(f, name.clone(), Rule { exprs: vec![
            Expr::Payload { field: Field::Saddr(f), dreg: Reg::r32(0) },
            Expr::Bitwise { sreg: Reg::r32(0), dreg: Reg::r32(0), mask: vec![255, 0, 0, 0], xor: vec![0; 4] },
            Expr::Cmp { sreg: Reg::r32(0), op: CmpOp::Neq, data: vec![10, 0, 0, 0] },
            Expr::Meta { key: MetaKey::Mark, dreg: Reg::r32(0) },
            Expr::Bitwise { sreg: Reg::r32(0), dreg: Reg::r32(0), mask: (!0x4000u32).to_ne_bytes().to_vec(), xor: 0x4000u32.to_ne_bytes().to_vec() },
            Expr::MetaSetMark { sreg: Reg::r32(0) },
        ], comment: None }));
        let base = i * eps;
        tx.push(Op::AddRule(f, name.clone(), Rule { exprs: vec![
            Expr::Numgen { dreg: Reg::r32(0), modulus: eps, offset: base },
            Expr::Lookup { set: n("endpoint-slots"), sreg: Reg::r32(0), dreg: Some(Reg::r32(0)), invert: false },
            Expr::Nat { kind: NatKind::Dnat, family: f, addr: Reg::r32(0), port: Some(Reg::r32(1)) },
        ], comment: None }));
        svc_elems.push(Element { key: Value::Frontend(vip(i), 6, 80), data: Some(ElemData::Verdict(Verdict::Goto(name.clone()))), comment: Some(name.clone()) });
        cips.push(Element::key(Value::Addr(vip(i))));
        for k in 0..eps {
            slot_elems.push(Element { key: Value::Slot(base + k), data: Some(ElemData::Value(Value::AddrPort(ep(i, k), 8080))), comment: None });
        }
    }
    tx.push(Op::AddElements(f, n("service-ips"), svc_elems));
    tx.push(Op::AddElements(f, n("cluster-ips"), cips));
    tx.push(Op::AddElements(f, n("endpoint-slots"), slot_elems));
}

fn layout_b(services: u32, eps: u32, tx: &mut Transaction) {
    let f = Family::Ip;
    const G2: Concat = &[DataType::Mark, DataType::Mark];
    tx.push(Op::AddSet(f, Set { name: n("service-groups"), key: KEY3, data: Some(SetData::Value(&[DataType::Mark])), interval: false, timeout_ms: None, size: size(), comment: None }));
    tx.push(Op::AddSet(f, Set { name: n("endpoints"), key: G2, data: Some(SetData::Value(&[DataType::Ipv4Addr, DataType::InetService])), interval: false, timeout_ms: None, size: size(), comment: None }));
    let lb = n(&format!("lb-{eps}"));
    tx.push(Op::AddChain(f, Chain { name: lb.clone(), hook: None, comment: None }));
    tx.push(Op::AddRule(f, lb.clone(), Rule { exprs: vec![
        Expr::Payload { field: Field::Daddr(f), dreg: Reg::r32(0) },
        Expr::Meta { key: MetaKey::L4Proto, dreg: Reg::r32(1) },
        Expr::Payload { field: Field::ThDport, dreg: Reg::r32(2) },
        Expr::Lookup { set: n("service-groups"), sreg: Reg::r32(0), dreg: Some(Reg::r32(0)), invert: false },
        Expr::Numgen { dreg: Reg::r32(1), modulus: eps, offset: 0 },
        Expr::Lookup { set: n("endpoints"), sreg: Reg::r32(0), dreg: Some(Reg::r32(0)), invert: false },
        Expr::Nat { kind: NatKind::Dnat, family: f, addr: Reg::r32(0), port: Some(Reg::r32(1)) },
    ], comment: None }));
    let mut svc_elems = Vec::new();
    let mut grp = Vec::new();
    let mut slot_elems = Vec::new();
    let mut cips = Vec::new();
    let cm = n("ns/name:http/tcp");
    for i in 0..services {
        svc_elems.push(Element { key: Value::Frontend(vip(i), 6, 80), data: Some(ElemData::Verdict(Verdict::Goto(lb.clone()))), comment: cmt(cm.clone()) });
        grp.push(Element { key: Value::Frontend(vip(i), 6, 80), data: Some(ElemData::Value(Value::Slot(i))), comment: None });
        cips.push(Element::key(Value::Addr(vip(i))));
        for k in 0..eps {
            slot_elems.push(Element { key: Value::AddrPair(IpAddr::V4(Ipv4Addr::from(i)), IpAddr::V4(Ipv4Addr::from(k.swap_bytes()))), data: Some(ElemData::Value(Value::AddrPort(ep(i, k), 8080))), comment: None });
        }
    }
    let only = std::env::var("EXP_ONLY").unwrap_or_default();
    if only.is_empty() || only == "svc" { tx.push(Op::AddElements(f, n("service-ips"), svc_elems)); }
    if only.is_empty() || only == "grp" { tx.push(Op::AddElements(f, n("service-groups"), grp)); }
    if only.is_empty() || only == "cips" { tx.push(Op::AddElements(f, n("cluster-ips"), cips)); }
    if only.is_empty() || only == "eps" { tx.push(Op::AddElements(f, n("endpoints"), slot_elems)); }
}

fn run(label: &str, services: u32, build: fn(u32, u32, &mut Transaction)) {
    let mut b = NetlinkBackend::open().unwrap();
    let t0 = Instant::now();
    let mut tx = Transaction::default();
    base(&mut tx);
    build(services, 10, &mut tx);
    let t1 = Instant::now();
    let mut enc = crate::wire::BatchEncoder::new(1);
    for (i, op) in tx.ops.iter().enumerate() { enc.op(i, op); }
    let (buf, _, _) = enc.finish();
    let t2 = Instant::now();
    let r = b.apply(&tx);
    let t3 = Instant::now();
    eprintln!("{label} {services}: render {:?} encode {:?} ({} MB) apply(incl encode) {:?} -> {:?}", t1 - t0, t2 - t1, buf.len() >> 20, t3 - t2, r.err());
    // second full sync on top (replace)
    let t4 = Instant::now();
    let r = b.apply(&tx);
    eprintln!("   replace: {:?} {:?}", t4.elapsed(), r.err());
    // small transaction: one element replace
    let t5 = Instant::now();
    let f = Family::Ip;
    let mut small = Transaction::default();
    small.push(Op::DeleteElements(f, n(if label == "A" {"endpoint-slots"} else {"endpoints"}), vec![Element::key(if label == "A" { Value::Slot(5) } else { Value::AddrPair(IpAddr::V4(Ipv4Addr::from(0)), IpAddr::V4(Ipv4Addr::from(5u32.swap_bytes()))) })]));
    small.push(Op::AddElements(f, n(if label == "A" {"endpoint-slots"} else {"endpoints"}), vec![Element { key: if label == "A" { Value::Slot(5) } else { Value::AddrPair(IpAddr::V4(Ipv4Addr::from(0)), IpAddr::V4(Ipv4Addr::from(5u32.swap_bytes()))) }, data: Some(ElemData::Value(Value::AddrPort(ep(99, 99), 1))), comment: None }]));
    let r = b.apply(&small);
    eprintln!("   one element: {:?} {:?}", t5.elapsed(), r.err());
    if label == "C" { return; }
    if label == "A" {
        let t6 = Instant::now();
        let name = n("svc-namespace-0/service-0/tcp/http");
        let mut small = Transaction::default();
        small.push(Op::FlushChain(f, name.clone()));
        small.push(Op::AddRule(f, name.clone(), Rule { exprs: vec![
            Expr::Numgen { dreg: Reg::r32(0), modulus: 9, offset: 0 },
            Expr::Lookup { set: n("endpoint-slots"), sreg: Reg::r32(0), dreg: Some(Reg::r32(0)), invert: false },
            Expr::Nat { kind: NatKind::Dnat, family: f, addr: Reg::r32(0), port: Some(Reg::r32(1)) },
        ], comment: None }));
        let r = b.apply(&small);
        eprintln!("   one rule replace: {:?} {:?}", t6.elapsed(), r.err());
        let t7 = Instant::now();
        let name = n("svc-new");
        let mut small = Transaction::default();
        small.push(Op::AddChain(f, Chain { name: name.clone(), hook: None, comment: None }));
        small.push(Op::AddElements(f, n("service-ips"), vec![Element { key: Value::Frontend(vip(services + 1), 6, 80), data: Some(ElemData::Verdict(Verdict::Goto(name.clone()))), comment: None }]));
        let r = b.apply(&small);
        eprintln!("   one vmap goto element + chain: {:?} {:?}", t7.elapsed(), r.err());
    }
}

fn layout_c(services: u32, eps: u32, tx: &mut Transaction) {
    let f = Family::Ip;
    const K4: Concat = &[DataType::Ipv4Addr, DataType::InetProto, DataType::InetService, DataType::Mark];
    tx.push(Op::AddSet(f, Set { name: n("service-classes"), key: KEY3, data: Some(SetData::Value(&[DataType::Mark])), interval: false, timeout_ms: None, size: size(), comment: None }));
    tx.push(Op::AddSet(f, Set { name: n("class-chains"), key: &[DataType::Mark], data: Some(SetData::Verdict), interval: false, timeout_ms: None, size: None, comment: None }));
    tx.push(Op::AddSet(f, Set { name: n("endpoints"), key: K4, data: Some(SetData::Value(&[DataType::Ipv4Addr, DataType::InetService])), interval: false, timeout_ms: None, size: size().map(|s| s * 10), comment: None }));
    let lb = n(&format!("lb-{eps}"));
    tx.push(Op::AddChain(f, Chain { name: lb.clone(), hook: None, comment: None }));
    if std::env::var("EXP_NOLB").is_err() { tx.push(Op::AddRule(f, lb.clone(), Rule { exprs: vec![
        Expr::Payload { field: Field::Daddr(f), dreg: Reg::r32(0) },
        Expr::Meta { key: MetaKey::L4Proto, dreg: Reg::r32(1) },
        Expr::Payload { field: Field::ThDport, dreg: Reg::r32(2) },
        Expr::Numgen { dreg: Reg::r32(3), modulus: eps, offset: 0 },
        Expr::Lookup { set: n("endpoints"), sreg: Reg::r32(0), dreg: Some(Reg::r32(0)), invert: false },
        Expr::Nat { kind: NatKind::Dnat, family: f, addr: Reg::r32(0), port: Some(Reg::r32(1)) },
    ], comment: None })); }
    tx.push(Op::AddElements(f, n("class-chains"), vec![Element { key: Value::Slot(7), data: Some(ElemData::Verdict(Verdict::Goto(lb.clone()))), comment: Some(n("10 endpoints")) }]));
    for c in ["nat-prerouting", "nat-output"] {
        if std::env::var("EXP_NODISPATCH").is_ok() { continue; }
        tx.push(Op::AddRule(f, n(c), Rule { exprs: vec![
            Expr::Payload { field: Field::Daddr(f), dreg: Reg::r32(0) },
            Expr::Meta { key: MetaKey::L4Proto, dreg: Reg::r32(1) },
            Expr::Payload { field: Field::ThDport, dreg: Reg::r32(2) },
            Expr::Lookup { set: n("service-classes"), sreg: Reg::r32(0), dreg: Some(Reg::r32(0)), invert: false },
            Expr::Lookup { set: n("class-chains"), sreg: Reg::r32(0), dreg: Some(Reg::VERDICT), invert: false },
        ], comment: None }));
    }
    let mut svc_elems = Vec::new();
    let mut slot_elems = Vec::new();
    let mut cips = Vec::new();
    let cm = n("ns/name:http/tcp");
    for i in 0..services {
        svc_elems.push(Element { key: Value::Frontend(vip(i), 6, 80), data: Some(ElemData::Value(Value::Slot(7))), comment: cmt(cm.clone()) });
        cips.push(Element::key(Value::Addr(vip(i))));
        for k in 0..eps {
            slot_elems.push(Element { key: Value::FrontendSlot(vip(i), 6, 80, k), data: Some(ElemData::Value(Value::AddrPort(ep(i, k), 8080))), comment: None });
        }
    }
    tx.push(Op::AddElements(f, n("service-classes"), svc_elems));
    tx.push(Op::AddElements(f, n("cluster-ips"), cips));
    tx.push(Op::AddElements(f, n("endpoints"), slot_elems));
    if std::env::var("EXP_LIST").is_ok() {
        let tid = unsafe { libc::gettid() };
        let pid = std::process::id();
        std::thread::sleep(std::time::Duration::from_millis(1));
        let _ = (tid, pid);
    }
}

#[test]
#[ignore]
fn layout_experiment() {
    std::thread::spawn(|| {
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
        let sizes: Vec<u32> = std::env::var("EXP_SIZES").unwrap_or("1000,10000,100000".into()).split(',').map(|s| s.parse().unwrap()).collect();
        for &s in &sizes {
            if std::env::var("EXP_A").is_ok() { run("A", s, layout_a); }
            if std::env::var("EXP_B").is_ok() { run("B", s, layout_b); }
            if std::env::var("EXP_C").is_ok() { run("C", s, layout_c); }
            if std::env::var("EXP_LIST").is_ok() {
                let tid = unsafe { libc::gettid() };
                let out = std::process::Command::new("nsenter").arg(format!("--net=/proc/{}/task/{tid}/ns/net", std::process::id())).args(["nft", "list", "table", "ip", "kproxy"]).output().unwrap();
                eprintln!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            }
        }
    }).join().unwrap();
}
