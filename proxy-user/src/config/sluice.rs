//! Reads Sluice's own `sluice.dev/v1alpha1` `SluiceConfiguration` on top of what the
//! KubeProxyConfiguration set.

use std::path::PathBuf;

use serde_yaml::Value;

use super::reader::{Ctx, Obj};
use super::*;

pub(super) fn read(doc: &Value, cfg: &mut Config, cx: &mut Ctx) {
    let Some(mut root) = Obj::new(doc, String::new(), cx) else {
        return;
    };
    root.known(&["apiVersion", "kind"]);

    if let Some(v) = root.string("dataplane", cx) {
        match v.parse() {
            Ok(d) => cfg.dataplane = d,
            Err(reason) => cx.error("dataplane", reason),
        }
    }
    if let Some(v) = root.string("pinPath", cx) {
        let path = PathBuf::from(v);
        match check_pin_path(&path) {
            Ok(()) => cfg.pin_path = path,
            Err(reason) => cx.error("pinPath", reason),
        }
    }
    if let Some(names) = root.strings("interfaces", cx) {
        let mut ok = true;
        for (i, name) in names.iter().enumerate() {
            if let Err(reason) = check_interface_name(name) {
                cx.error(format!("interfaces[{i}]"), reason);
                ok = false;
            }
        }
        if ok {
            cfg.interfaces = names;
        }
    }
    if let Some(dir) = root.string("manifestsDir", cx) {
        cfg.manifests_dir = (!dir.is_empty()).then(|| PathBuf::from(dir));
    }
    if let Some(mut maps) = root.object("maps", cx) {
        let max = i64::from(u32::MAX);
        for (key, slot) in [
            ("services", &mut cfg.maps.services),
            ("backends", &mut cfg.maps.backends),
            ("slots", &mut cfg.maps.slots),
            ("conntrack", &mut cfg.maps.conntrack),
        ] {
            if let Some(n) = maps.integer(key, 1, max, cx) {
                *slot = n as u32;
            }
        }
        maps.finish(cx);
    }
    if let Some(mut maglev) = root.object("maglev", cx) {
        if let Some(n) = maglev.integer("tableSize", 1, i64::from(u32::MAX), cx) {
            let n = n as u32;
            if is_prime(n) {
                cfg.maglev_table_size = n;
            } else {
                cx.error(
                    "maglev.tableSize",
                    format!(
                        "{n} is not prime (Maglev needs a prime table size, e.g. 16381 or 65537)"
                    ),
                );
            }
        }
        maglev.finish(cx);
    }
    if let Some(mut xdp) = root.object("xdp", cx) {
        if let Some(v) = xdp.string("mode", cx) {
            match v.parse() {
                Ok(m) => cfg.xdp_mode = m,
                Err(reason) => cx.error("xdp.mode", reason),
            }
        }
        if let Some(names) = xdp.strings("interfaces", cx) {
            let mut ok = true;
            for (i, name) in names.iter().enumerate() {
                if let Err(reason) = check_interface_name(name) {
                    cx.error(format!("xdp.interfaces[{i}]"), reason);
                    ok = false;
                }
            }
            if ok {
                cfg.xdp_interfaces = names;
            }
        }
        xdp.finish(cx);
    }
    if let Some(b) = root.boolean("nodePortLoopback", cx) {
        cfg.node_port_loopback = b;
    }
    if let Some(v) = root.string("scheduler", cx)
        && !v.is_empty()
    {
        match v.parse() {
            Ok(s) => cfg.scheduler = s,
            Err(reason) => cx.error("scheduler", reason),
        }
    }

    let sync = root.duration("syncPeriod", cx);
    let min_sync = root.duration("minSyncPeriod", cx);
    if let Some(d) = sync {
        if d.is_zero() {
            cx.error("syncPeriod", "must be greater than zero");
        } else {
            cfg.sync_period = d;
        }
    }
    if let Some(d) = min_sync {
        cfg.min_sync_period = d;
    }
    if (sync.is_some() || min_sync.is_some()) && cfg.min_sync_period > cfg.sync_period {
        let field = if min_sync.is_some() {
            "minSyncPeriod"
        } else {
            "syncPeriod"
        };
        cx.error(
            field,
            period_order_reason(cfg.min_sync_period, cfg.sync_period),
        );
    }
    root.finish(cx);
}
