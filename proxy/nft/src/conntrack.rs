//! Stale UDP/SCTP conntrack entries: when an endpoint stops serving, connectionless flows
//! already DNAT'ed to it would keep going there until they time out, so they are deleted.
//! Dumps the family's conntrack table and deletes each matching entry by its original
//! tuple (ctnetlink has no filtered delete on older kernels).

use std::{
    collections::HashSet,
    io,
    net::{IpAddr, SocketAddr},
};

use kproxy_model::{ModelDiff, Protocol};
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
    conntrack::{ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Status, Tuple},
};
use netlink_sys::{Socket, SocketAddr as NlAddr, protocols::NETLINK_NETFILTER};

use crate::error::Error;

/// Flows DNAT'ed to an endpoint that no longer serves a connectionless service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StaleFlow {
    /// UDP or SCTP (TCP endpoints end their connections themselves).
    pub protocol: Protocol,
    /// The endpoint: the reply source of the DNAT'ed flows.
    pub endpoint: SocketAddr,
}

impl StaleFlow {
    /// The flows `diff` names as stale (its UDP/SCTP endpoints that stopped serving),
    /// deduplicated.
    pub fn from_diff(diff: &ModelDiff) -> Vec<Self> {
        let mut flows: Vec<Self> = diff
            .stale_udp_endpoints
            .iter()
            .map(|(key, ep)| Self {
                protocol: key.name.protocol,
                endpoint: SocketAddr::new(ep.ip, ep.port),
            })
            .collect();
        flows.sort_by_key(|f| (f.protocol, f.endpoint));
        flows.dedup();
        flows
    }
}

/// One conntrack entry, reduced to what matching needs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Flow {
    protocol: u8,
    reply_src: Option<SocketAddr>,
    dnat: bool,
    orig: Vec<Tuple>,
}

impl Flow {
    fn parse(attrs: &[ConntrackAttribute]) -> Self {
        let mut flow = Self {
            protocol: 0,
            reply_src: None,
            dnat: false,
            orig: Vec::new(),
        };
        for a in attrs {
            match a {
                ConntrackAttribute::CtaTupleOrig(t) => flow.orig.clone_from(t),
                ConntrackAttribute::CtaTupleReply(t) => {
                    let (ip, port, proto) = tuple_src(t);
                    flow.protocol = proto.unwrap_or(0);
                    flow.reply_src = ip.zip(port).map(|(ip, port)| SocketAddr::new(ip, port));
                }
                ConntrackAttribute::CtaStatus(s) => flow.dnat = s.contains(Status::DstNat),
                _ => {}
            }
        }
        flow
    }

    /// DNAT'ed (service traffic, not a direct connection to the endpoint) and replied to
    /// by a stale endpoint over the stale protocol.
    fn is_stale(&self, stale: &HashSet<(u8, SocketAddr)>) -> bool {
        self.dnat
            && self
                .reply_src
                .is_some_and(|src| stale.contains(&(self.protocol, src)))
    }
}

fn tuple_src(t: &[Tuple]) -> (Option<IpAddr>, Option<u16>, Option<u8>) {
    let (mut ip, mut port, mut proto) = (None, None, None);
    for part in t {
        match part {
            Tuple::Ip(ips) => {
                for i in ips {
                    if let IPTuple::SourceAddress(a) = i {
                        ip = Some(*a);
                    }
                }
            }
            Tuple::Proto(ps) => {
                for p in ps {
                    match p {
                        ProtoTuple::SourcePort(p) => port = Some(*p),
                        ProtoTuple::Protocol(p) => proto = Some(u8::from(*p)),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    (ip, port, proto)
}

fn message(family: NetfilterProtoFamily, flags: u16, seq: u32, msg: ConntrackMessage) -> Vec<u8> {
    let mut hdr = NetlinkHeader::default();
    hdr.flags = flags;
    hdr.sequence_number = seq;
    let mut packet = NetlinkMessage::new(
        hdr,
        NetlinkPayload::from(NetfilterMessage::new(
            NetfilterHeader::new(family, 0, 0),
            msg,
        )),
    );
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    buf
}

fn sys(call: &'static str) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Syscall {
        call,
        socket: "conntrack",
        source,
    }
}

/// Reads replies for `seq` until the dump is done or the ack arrives, calling `f` on each
/// conntrack message. Returns the errno of an error reply (0 for an ack).
fn read_replies(
    sock: &Socket,
    seq: u32,
    mut f: impl FnMut(&[ConntrackAttribute]),
) -> Result<i32, Error> {
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = sock.recv(&mut &mut buf[..], 0).map_err(sys("recvmsg"))?;
        let mut off = 0;
        while off < n {
            let msg =
                NetlinkMessage::<NetfilterMessage>::deserialize(&buf[off..n]).map_err(|_| {
                    Error::Malformed {
                        reason: "undecodable conntrack reply",
                    }
                })?;
            let len = msg.header.length as usize;
            if len == 0 {
                break;
            }
            off += len.next_multiple_of(4);
            if msg.header.sequence_number != seq {
                continue;
            }
            match msg.payload {
                NetlinkPayload::Done(_) => return Ok(0),
                NetlinkPayload::Error(e) => return Ok(e.code.map_or(0, |c| -c.get())),
                NetlinkPayload::InnerMessage(NetfilterMessage {
                    inner: NetfilterMessageInner::Conntrack(ConntrackMessage::New(attrs)),
                    ..
                }) => f(&attrs),
                _ => {}
            }
        }
    }
}

/// Deletes every DNAT'ed conntrack entry whose reply comes from a stale endpoint over
/// the stale flow's protocol, in the calling thread's network namespace. Returns how
/// many entries were deleted; entries that vanish meanwhile are not an error.
pub fn delete_udp_conntrack(stale: &[StaleFlow]) -> Result<usize, Error> {
    let mut sock = Socket::new(NETLINK_NETFILTER).map_err(sys("socket"))?;
    sock.bind_auto().map_err(sys("bind"))?;
    sock.connect(&NlAddr::new(0, 0)).map_err(sys("connect"))?;
    let mut deleted = 0;
    let mut seq = 1;
    for (family, v4) in [
        (NetfilterProtoFamily::IPv4, true),
        (NetfilterProtoFamily::IPv6, false),
    ] {
        let wanted: HashSet<(u8, SocketAddr)> = stale
            .iter()
            .filter(|s| s.endpoint.is_ipv4() == v4)
            .map(|s| (s.protocol.number(), s.endpoint))
            .collect();
        if wanted.is_empty() {
            continue;
        }
        seq += 1;
        let dump = message(
            family,
            NLM_F_REQUEST | NLM_F_DUMP,
            seq,
            ConntrackMessage::Get(vec![]),
        );
        sock.send(&dump, 0).map_err(sys("sendmsg"))?;
        let mut doomed = Vec::new();
        let errno = read_replies(&sock, seq, |attrs| {
            let flow = Flow::parse(attrs);
            if flow.is_stale(&wanted) {
                doomed.push(flow.orig);
            }
        })?;
        if errno != 0 {
            return Err(Error::Syscall {
                call: "conntrack dump",
                socket: "conntrack",
                source: io::Error::from_raw_os_error(errno),
            });
        }
        for orig in doomed {
            seq += 1;
            let del = ConntrackMessage::Delete(vec![ConntrackAttribute::CtaTupleOrig(orig)]);
            sock.send(&message(family, NLM_F_REQUEST | NLM_F_ACK, seq, del), 0)
                .map_err(sys("sendmsg"))?;
            match read_replies(&sock, seq, |_| {})? {
                0 => deleted += 1,
                libc::ENOENT => {}
                errno => {
                    return Err(Error::Syscall {
                        call: "conntrack delete",
                        socket: "conntrack",
                        source: io::Error::from_raw_os_error(errno),
                    });
                }
            }
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple(src: &str, dst: &str, sport: u16, dport: u16, proto: u8) -> Vec<Tuple> {
        vec![
            Tuple::Ip(vec![
                IPTuple::SourceAddress(src.parse().unwrap()),
                IPTuple::DestinationAddress(dst.parse().unwrap()),
            ]),
            Tuple::Proto(vec![
                ProtoTuple::Protocol(proto.into()),
                ProtoTuple::SourcePort(sport),
                ProtoTuple::DestinationPort(dport),
            ]),
        ]
    }

    fn flow(reply_src: &str, reply_port: u16, proto: u8, status: Status) -> Flow {
        Flow::parse(&[
            ConntrackAttribute::CtaTupleOrig(tuple("10.0.0.9", "192.0.2.10", 40000, 53, proto)),
            ConntrackAttribute::CtaTupleReply(tuple(
                reply_src, "10.0.0.9", reply_port, 40000, proto,
            )),
            ConntrackAttribute::CtaStatus(status),
        ])
    }

    #[test]
    fn only_dnated_flows_from_the_stale_endpoint_and_protocol_match() {
        let stale: HashSet<(u8, SocketAddr)> = [(17, "10.1.0.5:5353".parse().unwrap())].into();
        assert!(flow("10.1.0.5", 5353, 17, Status::DstNat | Status::Confirmed).is_stale(&stale));
        // Not DNAT'ed: a client talking to the pod directly keeps its flow.
        assert!(!flow("10.1.0.5", 5353, 17, Status::Confirmed).is_stale(&stale));
        // Other port, other protocol, other endpoint.
        assert!(!flow("10.1.0.5", 5354, 17, Status::DstNat).is_stale(&stale));
        assert!(!flow("10.1.0.5", 5353, 132, Status::DstNat).is_stale(&stale));
        assert!(!flow("10.1.0.6", 5353, 17, Status::DstNat).is_stale(&stale));
    }

    #[test]
    fn stale_flows_come_from_the_diff_once_each() {
        use crate::tests::{PortBuilder, ep};
        let key = PortBuilder::new("kube-system", "dns", "dns", Protocol::Udp, "10.96.0.10", 53)
            .build()
            .key;
        let diff = ModelDiff {
            stale_udp_endpoints: vec![
                (key.clone(), ep("10.1.0.5", 53)),
                (key.clone(), ep("10.1.0.5", 53)),
                (key, ep("10.1.0.6", 53)),
            ],
            ..ModelDiff::default()
        };
        let flows = StaleFlow::from_diff(&diff);
        assert_eq!(flows.len(), 2);
        assert_eq!(flows[0].endpoint, "10.1.0.5:53".parse().unwrap());
        assert_eq!(flows[0].protocol, Protocol::Udp);
    }

    #[test]
    fn the_original_tuple_is_kept_for_the_delete() {
        let f = flow("10.1.0.5", 5353, 17, Status::DstNat);
        assert_eq!(f.orig, tuple("10.0.0.9", "192.0.2.10", 40000, 53, 17));
        assert_eq!(f.protocol, 17);
    }
}
