//! The typed nftables IR: what a transaction does, in kproxy's vocabulary.
//!
//! Rendering produces these values and nothing else; `wire` turns them into netlink bytes
//! and the fake backend replays them into an in-memory table. Element keys and data are
//! typed ([`Value`]) rather than byte strings so that tests read like the ruleset and a
//! 1M-element transaction does not allocate 2M small vectors.

use std::{net::IpAddr, sync::Arc};

use ipnet::IpNet;

/// A shared, cheaply cloned name (chain, set) or comment.
pub(crate) type Name = Arc<str>;

/// Address family of a kproxy table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Family {
    /// `ip` (NFPROTO_IPV4).
    Ip,
    /// `ip6` (NFPROTO_IPV6).
    Ip6,
}

impl Family {
    /// The nfgenmsg family number.
    pub(crate) fn nfproto(self) -> u8 {
        match self {
            Self::Ip => 2,
            Self::Ip6 => 10,
        }
    }

    /// The keyword nft prints.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Ip => "ip",
            Self::Ip6 => "ip6",
        }
    }

    /// Length of an address of this family in bytes.
    pub(crate) fn addr_len(self) -> u32 {
        match self {
            Self::Ip => 4,
            Self::Ip6 => 16,
        }
    }
}

/// Netfilter hook of a base chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

impl Hook {
    /// `NF_INET_*` number.
    pub(crate) fn number(self) -> u32 {
        match self {
            Self::Prerouting => 0,
            Self::Input => 1,
            Self::Forward => 2,
            Self::Output => 3,
            Self::Postrouting => 4,
        }
    }
}

/// Type of a base chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChainType {
    Filter,
    Nat,
}

impl ChainType {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Filter => "filter",
            Self::Nat => "nat",
        }
    }
}

/// Hook attachment of a base chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BaseHook {
    pub(crate) chain_type: ChainType,
    pub(crate) hook: Hook,
    pub(crate) priority: i32,
}

/// A chain to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Chain {
    pub(crate) name: Name,
    /// `Some` for base chains.
    pub(crate) hook: Option<BaseHook>,
    pub(crate) comment: Option<Name>,
}

/// A register. Only the 32-bit registers are used: concatenations need their packing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Reg(pub(crate) u32);

impl Reg {
    /// The verdict register.
    pub(crate) const VERDICT: Self = Self(0);

    /// 32-bit register `n` (NFT_REG32_00 + n).
    pub(crate) const fn r32(n: u32) -> Self {
        Self(8 + n)
    }

    /// The register `bytes` further on (registers are 4 bytes wide).
    pub(crate) fn after(self, bytes: u32) -> Self {
        Self(self.0 + bytes.div_ceil(4))
    }
}

/// A header field loaded by a payload expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Field {
    /// `ip saddr` / `ip6 saddr` (per family).
    Saddr(Family),
    /// `ip daddr` / `ip6 daddr`.
    Daddr(Family),
    /// `th dport`: the transport header's destination port, for TCP, UDP and SCTP alike.
    ThDport,
}

impl Field {
    /// (base, offset, length) as the payload expression wants them.
    pub(crate) fn layout(self) -> (u32, u32, u32) {
        const NETWORK: u32 = 1;
        const TRANSPORT: u32 = 2;
        match self {
            Self::Saddr(Family::Ip) => (NETWORK, 12, 4),
            Self::Daddr(Family::Ip) => (NETWORK, 16, 4),
            Self::Saddr(Family::Ip6) => (NETWORK, 8, 16),
            Self::Daddr(Family::Ip6) => (NETWORK, 24, 16),
            Self::ThDport => (TRANSPORT, 2, 2),
        }
    }
}

/// Meta keys used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MetaKey {
    Mark,
    L4Proto,
}

impl MetaKey {
    pub(crate) fn number(self) -> u32 {
        match self {
            Self::Mark => 3,
            Self::L4Proto => 16,
        }
    }
}

/// Conntrack keys used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CtKey {
    State,
    Status,
}

/// Comparison operators used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Eq,
    Neq,
}

/// What a `fib` expression looks up (always returning the address type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FibOn {
    Saddr,
}

/// Kind of NAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NatKind {
    Dnat,
}

/// How a reject answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RejectKind {
    /// TCP RST (only meaningful after a `meta l4proto tcp` match).
    TcpReset,
    /// ICMP (v4 code 3) or ICMPv6 (code 4) port unreachable; the code is per family and
    /// written explicitly because libnftnl's helper encodes ICMPX codes for ip tables.
    PortUnreachable(Family),
}

/// A chain verdict.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Verdict {
    Drop,
    Return,
    Jump(Name),
    Goto(Name),
}

/// One expression of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Expr {
    Payload {
        field: Field,
        dreg: Reg,
    },
    Meta {
        key: MetaKey,
        dreg: Reg,
    },
    /// `meta mark set <sreg>`.
    MetaSetMark {
        sreg: Reg,
    },
    Ct {
        key: CtKey,
        dreg: Reg,
    },
    /// `dreg = (sreg & mask) ^ xor` over `mask.len()` bytes.
    Bitwise {
        sreg: Reg,
        dreg: Reg,
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
    Cmp {
        sreg: Reg,
        op: CmpOp,
        data: Vec<u8>,
    },
    /// Set membership (no `dreg`) or map lookup (`dreg`; a verdict map when it is
    /// [`Reg::VERDICT`]).
    Lookup {
        set: Name,
        sreg: Reg,
        dreg: Option<Reg>,
        invert: bool,
    },
    /// `numgen random mod modulus offset offset`.
    Numgen {
        dreg: Reg,
        modulus: u32,
        offset: u32,
    },
    /// `fib <on> type` (address type, compared as a host-endian u32).
    Fib {
        on: FibOn,
        dreg: Reg,
    },
    Immediate {
        dreg: Reg,
        data: Vec<u8>,
    },
    Verdict(Verdict),
    /// `dnat to <addr reg>:<port reg>`.
    Nat {
        kind: NatKind,
        family: Family,
        addr: Reg,
        port: Option<Reg>,
    },
    /// `masquerade fully-random`.
    MasqueradeFullyRandom,
    Reject(RejectKind),
    /// `update @set { <sreg> }`: add or refresh the key (affinity).
    DynsetUpdate {
        set: Name,
        sreg: Reg,
        timeout_ms: u64,
    },
}

/// A rule: expressions plus an optional comment nft prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rule {
    pub(crate) exprs: Vec<Expr>,
    pub(crate) comment: Option<Name>,
}

/// Data types of set keys and map data, as nft names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DataType {
    Ipv4Addr,
    Ipv6Addr,
    InetProto,
    InetService,
    Mark,
}

impl DataType {
    /// nft's datatype number (TYPE_*).
    pub(crate) fn number(self) -> u32 {
        match self {
            Self::Ipv4Addr => 7,
            Self::Ipv6Addr => 8,
            Self::InetProto => 12,
            Self::InetService => 13,
            Self::Mark => 19,
        }
    }

    /// Bytes of the value (before register padding).
    pub(crate) fn len(self) -> u32 {
        match self {
            Self::Ipv4Addr | Self::Mark => 4,
            Self::Ipv6Addr => 16,
            Self::InetProto => 1,
            Self::InetService => 2,
        }
    }
}

/// A concatenation of data types (one field = plain type).
pub(crate) type Concat = &'static [DataType];

/// What a map maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SetData {
    Verdict,
    Value(Concat),
}

/// A named set or map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Set {
    pub(crate) name: Name,
    pub(crate) key: Concat,
    pub(crate) data: Option<SetData>,
    /// Interval set (CIDRs / ranges); with a concatenated key the kernel picks pipapo.
    pub(crate) interval: bool,
    /// Dynamic set with this element timeout (affinity).
    pub(crate) timeout_ms: Option<u64>,
    /// Expected number of elements, when known: lets the kernel size its hash table once.
    pub(crate) size: Option<u32>,
    pub(crate) comment: Option<Name>,
}

/// A typed key or data value; each variant belongs to one kind of set (see `layout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Value {
    /// `addr`.
    Addr(IpAddr),
    /// `addr . inet_proto . inet_service`.
    Frontend(IpAddr, u8, u16),
    /// `addr . inet_service` (a DNAT target).
    AddrPort(IpAddr, u16),
    /// `addr . inet_proto . inet_service . mark`: an endpoint slot of one frontend.
    FrontendSlot(IpAddr, u8, u16, u32),
    /// `addr . addr`.
    AddrPair(IpAddr, IpAddr),
    /// `addr . inet_proto . inet_service . addr` where the last field is a range (an
    /// interval element: key = network address, key end = broadcast address).
    FrontendSource(IpAddr, u8, u16, IpNet),
}

/// Data of a map element.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum ElemData {
    Verdict(Verdict),
    Value(Value),
}

/// A set or map element.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Element {
    pub(crate) key: Value,
    pub(crate) data: Option<ElemData>,
    pub(crate) comment: Option<Name>,
}

impl Element {
    /// A set element.
    pub(crate) fn key(key: Value) -> Self {
        Self {
            key,
            data: None,
            comment: None,
        }
    }
}

/// One `@endpoints` element: `frontend . slot : ip . port`. Stored only inside an
/// [`EndpointList`]; turned into an [`Element`] only while encoding or deleting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct EndpointSlot {
    /// `addr . inet_proto . inet_service` of the frontend.
    pub(crate) frontend: (IpAddr, u8, u16),
    /// Slot number (mark) in the frontend's list.
    pub(crate) slot: u32,
    /// DNAT target.
    pub(crate) target: (IpAddr, u16),
}

impl EndpointSlot {
    /// The general element, for encoding and deletes.
    pub(crate) fn element(self) -> Element {
        let (ip, proto, port) = self.frontend;
        Element {
            key: Value::FrontendSlot(ip, proto, port, self.slot),
            data: Some(ElemData::Value(Value::AddrPort(
                self.target.0,
                self.target.1,
            ))),
            comment: None,
        }
    }
}

/// The `@endpoints` elements of one frontend's list: slot `offset + i` goes to
/// `targets[i]`. A full sync at 100k services programs a million endpoint elements and
/// the state keeps them for as long as they are programmed, so only what differs per
/// element is stored: 20 bytes instead of a general [`Element`]'s ~100.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EndpointList {
    /// `addr . inet_proto . inet_service` of the frontend.
    pub(crate) frontend: (IpAddr, u8, u16),
    /// Slot of the first target.
    pub(crate) offset: u32,
    /// DNAT targets (`addr . inet_service`), in slot order; never empty.
    pub(crate) targets: Box<[(IpAddr, u16)]>,
}

impl EndpointList {
    /// Every element of the list.
    pub(crate) fn slots(&self) -> impl Iterator<Item = EndpointSlot> + '_ {
        (self.offset..)
            .zip(self.targets.iter())
            .map(|(slot, &target)| EndpointSlot {
                frontend: self.frontend,
                slot,
                target,
            })
    }
}

/// Number of elements in endpoint lists.
pub(crate) fn endpoint_count(lists: &[EndpointList]) -> usize {
    lists.iter().map(|l| l.targets.len()).sum()
}

/// One operation of a transaction. Tables are always kproxy's own (`layout::TABLE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    AddTable(Family),
    DeleteTable(Family),
    AddChain(Family, Chain),
    FlushChain(Family, Name),
    DeleteChain(Family, Name),
    AddRule(Family, Name, Rule),
    AddSet(Family, Set),
    DeleteSet(Family, Name),
    AddElements(Family, Name, Vec<Element>),
    /// Elements to add, in lists shared with the state that keeps them: a full sync's
    /// million endpoint elements are then not copied into the transaction.
    AddSharedElements(Family, Name, Vec<Arc<[EndpointList]>>),
    /// Elements to delete; only keys matter.
    DeleteElements(Family, Name, Vec<Element>),
}

impl Op {
    /// The family the op acts on.
    pub(crate) fn family(&self) -> Family {
        match self {
            Self::AddTable(f)
            | Self::DeleteTable(f)
            | Self::AddChain(f, _)
            | Self::FlushChain(f, _)
            | Self::DeleteChain(f, _)
            | Self::AddRule(f, _, _)
            | Self::AddSet(f, _)
            | Self::DeleteSet(f, _)
            | Self::AddElements(f, _, _)
            | Self::AddSharedElements(f, _, _)
            | Self::DeleteElements(f, _, _) => *f,
        }
    }

    /// A short description naming the object, for errors and logs.
    pub(crate) fn describe(&self) -> String {
        let f = self.family().as_str();
        match self {
            Self::AddTable(_) => format!("add table {f}"),
            Self::DeleteTable(_) => format!("delete table {f}"),
            Self::AddChain(_, c) => format!("add chain {f} {}", c.name),
            Self::FlushChain(_, c) => format!("flush chain {f} {c}"),
            Self::DeleteChain(_, c) => format!("delete chain {f} {c}"),
            Self::AddRule(_, c, r) => match &r.comment {
                Some(comment) => format!("add rule {f} {c} ({comment})"),
                None => format!("add rule {f} {c}"),
            },
            Self::AddSet(_, s) => format!("add set {f} {}", s.name),
            Self::DeleteSet(_, s) => format!("delete set {f} {s}"),
            Self::AddElements(_, s, e) => format!("add {} element(s) to {f} {s}", e.len()),
            Self::AddSharedElements(_, s, lists) => format!(
                "add {} element(s) to {f} {s}",
                lists.iter().map(|l| endpoint_count(l)).sum::<usize>()
            ),
            Self::DeleteElements(_, s, e) => {
                format!("delete {} element(s) from {f} {s}", e.len())
            }
        }
    }
}

/// An atomic batch of operations: the kernel applies all of them or none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Transaction {
    pub(crate) ops: Vec<Op>,
}

impl Transaction {
    pub(crate) fn push(&mut self, op: Op) {
        self.ops.push(op);
    }

    /// Number of elements added or deleted.
    pub(crate) fn element_count(&self) -> usize {
        self.ops
            .iter()
            .map(|op| match op {
                Op::AddElements(_, _, e) | Op::DeleteElements(_, _, e) => e.len(),
                Op::AddSharedElements(_, _, lists) => lists.iter().map(|l| endpoint_count(l)).sum(),
                _ => 0,
            })
            .sum()
    }

    /// Number of rules added.
    pub(crate) fn rule_count(&self) -> usize {
        self.ops
            .iter()
            .filter(|op| matches!(op, Op::AddRule(..)))
            .count()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}
