//! Reads a `kubeproxy.config.k8s.io/v1alpha1` `KubeProxyConfiguration` with kube-proxy's
//! defaults (pkg/proxy/apis/config/v1alpha1/defaults.go) and validation rules.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde_yaml::Value;

use super::reader::{Ctx, Obj, bool_value, duration_value, integer_value, sequence};
use super::*;

/// The fields shared by the `iptables`, `ipvs` and `nftables` blocks, as written.
#[derive(Default)]
struct ModeBlock {
    sync_period: Option<Duration>,
    min_sync_period: Option<Duration>,
    masquerade_all: Option<bool>,
    masquerade_bit: Option<u8>,
}

fn read_mode_block<'v>(
    root: &mut Obj<'v>,
    key: &'static str,
    with_masquerade: bool,
    cx: &mut Ctx,
) -> (ModeBlock, Option<Obj<'v>>) {
    let mut block = ModeBlock::default();
    let Some(mut obj) = root.object(key, cx) else {
        return (block, None);
    };
    block.sync_period = obj.duration("syncPeriod", cx);
    block.min_sync_period = obj.duration("minSyncPeriod", cx);
    if with_masquerade {
        block.masquerade_all = obj.boolean("masqueradeAll", cx);
        block.masquerade_bit = obj.integer("masqueradeBit", 0, 31, cx).map(|b| b as u8);
    }
    (block, Some(obj))
}

pub(super) fn read(doc: &Value, cfg: &mut Config, cx: &mut Ctx) {
    let Some(mut root) = Obj::new(doc, String::new(), cx) else {
        return;
    };
    // apiVersion and kind were checked when the document was sorted; windowsRunAsService is
    // valid in the format but meaningless on a Linux node.
    root.known(&["apiVersion", "kind", "windowsRunAsService"]);

    if let Some(mode) = root.string("mode", cx) {
        match mode.parse() {
            Ok(mode) => cfg.kube_proxy_mode = mode,
            Err(reason) => cx.error("mode", reason),
        }
    }

    if let Some(gates) = root.object("featureGates", cx) {
        for (name, value) in gates.entries(cx) {
            if let Some(on) = bool_value(value, &gates.path(&name), cx) {
                cfg.feature_gates.insert(name, on);
            }
        }
    }

    read_client_connection(&mut root, &mut cfg.client_connection, cx);
    read_logging(&mut root, &mut cfg.logging, cx);
    read_addresses(&mut root, cfg, cx);

    if let Some(b) = root.boolean("bindAddressHardFail", cx) {
        cfg.bind_address_hard_fail = b;
    }
    if let Some(b) = root.boolean("enableProfiling", cx) {
        cfg.enable_profiling = b;
    }
    if let Some(v) = root.string("showHiddenMetricsForVersion", cx) {
        cfg.show_hidden_metrics_for_version = (!v.is_empty()).then_some(v);
    }
    if let Some(mut win) = root.object("winkernel", cx) {
        win.known(&[
            "networkName",
            "sourceVip",
            "enableDSR",
            "rootHnsEndpointName",
            "forwardHealthCheckVip",
        ]);
        win.finish(cx);
    }

    read_mode_blocks(&mut root, cfg, cx);
    read_local_detection(&mut root, cfg, cx);
    read_conntrack(&mut root, &mut cfg.conntrack, cx);

    if let Some(adj) = root.integer("oomScoreAdj", -1000, 1000, cx) {
        cfg.oom_score_adj = adj as i32;
    }
    if let Some(d) = root.duration("configSyncPeriod", cx)
        && !d.is_zero()
    {
        cfg.config_sync_period = d;
    }
    if let Some(range) = root.string("portRange", cx)
        && !range.trim().is_empty()
    {
        cx.warn(
            "portRange",
            "unused since kube-proxy's userspace mode was removed; ignored",
        );
    }
    root.finish(cx);
}

fn read_client_connection(root: &mut Obj<'_>, cc: &mut ClientConnection, cx: &mut Ctx) {
    let Some(mut obj) = root.object("clientConnection", cx) else {
        return;
    };
    if let Some(path) = obj.string("kubeconfig", cx) {
        cc.kubeconfig = (!path.is_empty()).then(|| PathBuf::from(path));
    }
    if let Some(t) = obj.string("contentType", cx)
        && !t.is_empty()
    {
        cc.content_type = t;
    }
    if let Some(t) = obj.string("acceptContentTypes", cx) {
        cc.accept_content_types = (!t.is_empty()).then_some(t);
    }
    if let Some(qps) = obj.float("qps", cx) {
        if qps < 0.0 {
            cx.error(obj.path("qps"), format!("{qps} must not be negative"));
        } else if qps > f64::from(f32::MAX) {
            cx.error(obj.path("qps"), format!("{qps} is too large"));
        } else if qps > 0.0 {
            cc.qps = qps as f32;
        }
    }
    if let Some(burst) = obj.integer("burst", 0, i64::from(i32::MAX), cx)
        && burst > 0
    {
        cc.burst = burst as u32;
    }
    obj.finish(cx);
}

fn read_logging(root: &mut Obj<'_>, logging: &mut Logging, cx: &mut Ctx) {
    let Some(mut obj) = root.object("logging", cx) else {
        return;
    };
    if let Some(format) = obj.string("format", cx) {
        match format.as_str() {
            "" | "text" => logging.format = LogFormat::Text,
            "json" => logging.format = LogFormat::Json,
            other => cx.error(
                obj.path("format"),
                format!("unsupported log format {other:?}; valid: text, json"),
            ),
        }
    }
    // A `TimeOrMetaDuration`: nanoseconds as a number, or a duration string.
    let path = obj.path("flushFrequency");
    if let Some(v) = obj.take("flushFrequency") {
        let d = match v {
            Value::Number(_) => {
                integer_value(v, &path, 0, i64::MAX, cx).map(|ns| Duration::from_nanos(ns as u64))
            }
            _ => duration_value(v, &path, cx),
        };
        if let Some(d) = d
            && !d.is_zero()
        {
            logging.flush_frequency = d;
        }
    }
    if let Some(v) = obj.integer("verbosity", 0, i64::from(u32::MAX), cx) {
        logging.verbosity = v as u32;
    }
    let path = obj.path("vmodule");
    if let Some(items) = obj.take("vmodule").and_then(|v| sequence(v, &path, cx)) {
        for (i, item) in items.iter().enumerate() {
            let Some(mut entry) = Obj::new(item, format!("{path}[{i}]"), cx) else {
                continue;
            };
            let pattern = entry.string("filePattern", cx);
            let verbosity = entry.integer("verbosity", 0, i64::from(u32::MAX), cx);
            match (pattern, verbosity) {
                (Some(p), _) if p.is_empty() => {
                    cx.error(entry.path("filePattern"), "must not be empty");
                }
                (Some(pattern), Some(v)) => logging.vmodule.push(VModule {
                    pattern,
                    verbosity: v as u32,
                }),
                (None, _) => cx.error(entry.path("filePattern"), "is required"),
                (Some(_), None) => {}
            }
            entry.finish(cx);
        }
    }
    if let Some(mut options) = obj.object("options", cx) {
        // Output buffering of the Go logger; nothing in tracing corresponds to it.
        for key in ["json", "text"] {
            if let Some(mut o) = options.object(key, cx) {
                o.known(&["splitStream", "infoBufferSize"]);
                o.finish(cx);
            }
        }
        options.finish(cx);
    }
    obj.finish(cx);
}

fn read_addresses(root: &mut Obj<'_>, cfg: &mut Config, cx: &mut Ctx) {
    if let Some(name) = root.string("hostnameOverride", cx)
        && !name.is_empty()
    {
        match normalize_hostname(&name) {
            Some(name) => cfg.hostname_override = Some(name),
            None => cx.error("hostnameOverride", "must not be blank"),
        }
    }
    if let Some(addr) = root.string("bindAddress", cx)
        && !addr.is_empty()
    {
        match addr.parse() {
            Ok(ip) => cfg.bind_address = ip,
            Err(_) => cx.error(
                "bindAddress",
                format!("{addr:?} is not an IPv4 or IPv6 address"),
            ),
        }
    }
    for (key, port, slot) in [
        (
            "healthzBindAddress",
            DEFAULT_HEALTHZ_PORT,
            &mut cfg.healthz_bind_address,
        ),
        (
            "metricsBindAddress",
            DEFAULT_METRICS_PORT,
            &mut cfg.metrics_bind_address,
        ),
    ] {
        if let Some(addr) = root.string(key, cx)
            && !addr.is_empty()
        {
            match parse_bind_address(&addr, port) {
                Ok(a) => *slot = a,
                Err(reason) => cx.error(key, reason),
            }
        }
    }
}

/// kube-proxy takes `IP:PORT`, `[IPv6]:PORT`, or a bare IP to which it appends the default
/// port; host names are refused.
fn parse_bind_address(addr: &str, default_port: u16) -> Result<SocketAddr, String> {
    if let Ok(ip) = addr.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, default_port));
    }
    match addr.parse::<SocketAddr>() {
        Ok(a) if a.port() == 0 => Err(format!("{addr:?}: port must be 1-65535")),
        Ok(a) => Ok(a),
        Err(_) => Err(format!(
            "{addr:?} is not IP:PORT, [IPv6]:PORT or an IP address"
        )),
    }
}

fn read_mode_blocks(root: &mut Obj<'_>, cfg: &mut Config, cx: &mut Ctx) {
    let (iptables, obj) = read_mode_block(root, "iptables", true, cx);
    let mut localhost_node_ports = None;
    if let Some(mut obj) = obj {
        localhost_node_ports = obj.boolean("localhostNodePorts", cx);
        obj.finish(cx);
    }
    let (nftables, obj) = read_mode_block(root, "nftables", true, cx);
    if let Some(obj) = obj {
        obj.finish(cx);
    }
    let (ipvs, obj) = read_mode_block(root, "ipvs", false, cx);
    let mut scheduler = String::new();
    if let Some(mut obj) = obj {
        scheduler = obj.string("scheduler", cx).unwrap_or_default();
        let path = obj.path("excludeCIDRs");
        for (i, s) in obj
            .strings("excludeCIDRs", cx)
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            match s.parse::<Cidr>() {
                Ok(c) => cfg.ipvs.exclude_cidrs.push(c),
                Err(e) => cx.error(format!("{path}[{i}]"), format!("{e}")),
            }
        }
        if let Some(b) = obj.boolean("strictARP", cx) {
            cfg.ipvs.strict_arp = b;
        }
        cfg.ipvs.tcp_timeout = obj.duration("tcpTimeout", cx).filter(|d| !d.is_zero());
        cfg.ipvs.tcp_fin_timeout = obj.duration("tcpFinTimeout", cx).filter(|d| !d.is_zero());
        cfg.ipvs.udp_timeout = obj.duration("udpTimeout", cx).filter(|d| !d.is_zero());
        obj.finish(cx);
    }

    let mode = cfg.kube_proxy_mode;
    let block_name = mode.periods_block();
    let periods = match mode {
        ProxyMode::Ipvs => &ipvs,
        ProxyMode::Nftables => &nftables,
        _ => &iptables,
    };
    cfg.sync_period = match periods.sync_period {
        Some(d) if !d.is_zero() => d,
        _ => DEFAULT_SYNC_PERIOD,
    };
    // kube-proxy defaults a 0 minSyncPeriod to 1s for iptables and nftables but leaves the
    // ipvs one alone, where 0 means "apply every change immediately". Sluice does the same so
    // that an operator's tuning carries over.
    cfg.min_sync_period = match periods.min_sync_period {
        Some(d) if !d.is_zero() => d,
        _ if mode == ProxyMode::Ipvs => Duration::ZERO,
        _ => DEFAULT_MIN_SYNC_PERIOD,
    };
    if cfg.min_sync_period > cfg.sync_period {
        cx.error(
            format!("{block_name}.minSyncPeriod"),
            period_order_reason(cfg.min_sync_period, cfg.sync_period),
        );
    }

    let masquerade = if mode == ProxyMode::Nftables {
        &nftables
    } else {
        &iptables
    };
    cfg.masquerade_all = masquerade.masquerade_all.unwrap_or(false);
    cfg.masquerade_bit = masquerade.masquerade_bit.unwrap_or(DEFAULT_MASQUERADE_BIT);
    cfg.localhost_node_ports = localhost_node_ports.unwrap_or(true);

    if mode == ProxyMode::Ipvs {
        match scheduler.parse() {
            Ok(s) => cfg.scheduler = s,
            Err(reason) => cx.error("ipvs.scheduler", reason),
        }
    } else {
        cfg.scheduler = Scheduler::Random;
        if !scheduler.is_empty() {
            cx.warn(
                "ipvs.scheduler",
                format!(
                    "ignored because mode is {:?}, not \"ipvs\" (set scheduler in the \
                     {SLUICE_KIND} to choose one)",
                    mode.as_str()
                ),
            );
        }
    }
}

fn read_local_detection(root: &mut Obj<'_>, cfg: &mut Config, cx: &mut Ctx) {
    if let Some(list) = root.string("clusterCIDR", cx)
        && !list.trim().is_empty()
    {
        let mut cidrs = Vec::new();
        for part in list.split(',') {
            match part.trim().parse::<Cidr>() {
                Ok(c) => cidrs.push(c),
                Err(e) => cx.error("clusterCIDR", e.to_string()),
            }
        }
        match cidrs.as_slice() {
            [_, _, _, ..] => cx.error(
                "clusterCIDR",
                format!("{list:?}: at most two CIDRs, one IPv4 and one IPv6"),
            ),
            [a, b] if a.is_ipv4() == b.is_ipv4() => cx.error(
                "clusterCIDR",
                format!("{list:?}: two CIDRs must be one IPv4 and one IPv6"),
            ),
            _ => cfg.cluster_cidrs = cidrs,
        }
    }

    let mut bridge = String::new();
    let mut prefix = String::new();
    if let Some(mut obj) = root.object("detectLocal", cx) {
        bridge = obj.string("bridgeInterface", cx).unwrap_or_default();
        prefix = obj.string("interfaceNamePrefix", cx).unwrap_or_default();
        obj.finish(cx);
    }
    let mode = root.string("detectLocalMode", cx).unwrap_or_default();
    let detect_local = match mode.as_str() {
        "" | "ClusterCIDR" => Ok(DetectLocal::ClusterCidr),
        "NodeCIDR" => Ok(DetectLocal::NodeCidr),
        "BridgeInterface" if bridge.is_empty() => Err((
            "detectLocal.bridgeInterface",
            "must be set when detectLocalMode is BridgeInterface".to_owned(),
        )),
        "BridgeInterface" => Ok(DetectLocal::BridgeInterface(bridge)),
        "InterfaceNamePrefix" if prefix.is_empty() => Err((
            "detectLocal.interfaceNamePrefix",
            "must be set when detectLocalMode is InterfaceNamePrefix".to_owned(),
        )),
        "InterfaceNamePrefix" => Ok(DetectLocal::InterfaceNamePrefix(prefix)),
        other => Err((
            "detectLocalMode",
            format!(
                "unsupported value {other:?}; valid: ClusterCIDR, NodeCIDR, BridgeInterface, \
                 InterfaceNamePrefix"
            ),
        )),
    };
    match detect_local {
        Ok(d) => cfg.detect_local = d,
        Err((field, reason)) => cx.error(field, reason),
    }

    let entries = root.strings("nodePortAddresses", cx).unwrap_or_default();
    let mut cidrs = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let field = format!("nodePortAddresses[{i}]");
        if entry == "primary" {
            if entries.len() == 1 {
                cfg.node_port_addresses = NodePortAddresses::Primary;
            } else {
                cx.error(field, "\"primary\" cannot be combined with CIDRs");
            }
            continue;
        }
        match entry.parse::<Cidr>() {
            Ok(c) => cidrs.push(c),
            Err(e) => cx.error(field, format!("{e}")),
        }
    }
    if !cidrs.is_empty() {
        cfg.node_port_addresses = NodePortAddresses::Cidrs(cidrs);
    }
}

fn read_conntrack(root: &mut Obj<'_>, ct: &mut Conntrack, cx: &mut Ctx) {
    let Some(mut obj) = root.object("conntrack", cx) else {
        return;
    };
    let max = i64::from(i32::MAX);
    if let Some(n) = obj.integer("maxPerCore", 0, max, cx) {
        ct.max_per_core = n as u32;
    }
    if let Some(n) = obj.integer("min", 0, max, cx) {
        ct.min = n as u32;
    }
    // Absent means kube-proxy's default; an explicit 0 means "leave the kernel's value".
    if let Some(d) = obj.duration("tcpEstablishedTimeout", cx) {
        ct.tcp_established_timeout = (!d.is_zero()).then_some(d);
    }
    if let Some(d) = obj.duration("tcpCloseWaitTimeout", cx) {
        ct.tcp_close_wait_timeout = (!d.is_zero()).then_some(d);
    }
    if let Some(b) = obj.boolean("tcpBeLiberal", cx) {
        ct.tcp_be_liberal = b;
    }
    ct.udp_timeout = obj.duration("udpTimeout", cx).filter(|d| !d.is_zero());
    ct.udp_stream_timeout = obj
        .duration("udpStreamTimeout", cx)
        .filter(|d| !d.is_zero());
    obj.finish(cx);
}
