//! Connection tracking lifetimes: how long an entry stays valid after its last packet,
//! depending on the protocol and on how far the connection has got.

use proxy_common::{CtValue, DatapathConfig, PROTO_TCP, config_flags, ct_flags, default_lifetime};

use crate::{maps::CONFIG, packet::Flow};

static BUILT_IN: DatapathConfig = DatapathConfig {
    tcp_syn_ns: default_lifetime::TCP_SYN_NS,
    tcp_established_ns: default_lifetime::TCP_ESTABLISHED_NS,
    tcp_closing_ns: default_lifetime::TCP_CLOSING_NS,
    udp_ns: default_lifetime::UDP_NS,
    udp_stream_ns: default_lifetime::UDP_STREAM_NS,
    flags: 0,
};

/// The configured lifetimes, or the built-in ones when the controller has not written any.
/// A reference, not a copy: stack space is scarce in BPF.
#[inline(always)]
pub fn lifetimes() -> &'static DatapathConfig {
    match CONFIG.get(0) {
        Some(cfg) if cfg.flags & config_flags::SET != 0 => cfg,
        _ => &BUILT_IN,
    }
}

#[inline(always)]
fn lifetime(cfg: &DatapathConfig, proto: u8, flags: u16) -> u64 {
    let answered = flags & ct_flags::SEEN_REPLY != 0;
    if proto == PROTO_TCP {
        if flags & ct_flags::CLOSING != 0 {
            cfg.tcp_closing_ns
        } else if answered {
            cfg.tcp_established_ns
        } else {
            cfg.tcp_syn_ns
        }
    } else if answered {
        cfg.udp_stream_ns
    } else {
        cfg.udp_ns
    }
}

/// Whether a tracked forward entry may carry `flow`'s packet. An entry past its lifetime, or
/// a closed TCP connection whose client port is reused for a new one, is selected afresh, so
/// a port reused long after is not tied to a backend chosen for someone else.
#[inline(always)]
pub fn still_valid(entry: &CtValue, flow: &Flow, now: u64, cfg: &DatapathConfig) -> bool {
    !expired(entry, flow.proto, now, cfg)
        && !(flow.is_syn() && entry.flags & ct_flags::CLOSING != 0)
}

/// Whether an entry has outlived its lifetime: nothing may rely on it any more.
#[inline(always)]
pub fn expired(entry: &CtValue, proto: u8, now: u64, cfg: &DatapathConfig) -> bool {
    now.saturating_sub(entry.last_seen_ns) > lifetime(cfg, proto, entry.flags)
}

/// Updates an entry for a packet of its own direction.
#[inline(always)]
pub fn touch(entry: &mut CtValue, flow: &Flow, now: u64) {
    entry.last_seen_ns = now;
    if flow.is_closing() {
        entry.flags |= ct_flags::CLOSING;
    }
}
