use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

/// The operator's IPVS file from a large cluster, byte for byte.
const KUBE_PROXY_IPVS_FIXTURE: &str = include_str!("testdata/kube-proxy-config.yaml");

const KP: &str = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n";
const SL: &str = "apiVersion: sluice.dev/v1alpha1\nkind: SluiceConfiguration\n";

fn kube_proxy(body: &str) -> String {
    format!("{KP}{body}")
}

fn sluice(body: &str) -> String {
    format!("{SL}{body}")
}

fn load(yaml: &str) -> (Config, Vec<Warning>) {
    match from_yaml_str(yaml) {
        Ok(loaded) => loaded,
        Err(e) => panic!("expected {yaml:?} to load, got: {e}"),
    }
}

fn load_err(yaml: &str) -> ConfigError {
    match from_yaml_str(yaml) {
        Ok((cfg, _)) => panic!("expected {yaml:?} to fail, loaded {cfg:?}"),
        Err(e) => e,
    }
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// A file under the system temp folder, removed on drop, so tests can exercise `load_file`.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, contents: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("sluice-config-test-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).expect("write temp file");
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

// --- the operator's file ---------------------------------------------------------------------

#[test]
fn ipvs_fixture_loads_unchanged() {
    let (cfg, warnings) = load(KUBE_PROXY_IPVS_FIXTURE);
    assert!(warnings.is_empty(), "unexpected warnings: {warnings:?}");

    assert_eq!(cfg.kube_proxy_mode, ProxyMode::Ipvs);
    assert_eq!(cfg.client_connection.qps, 50.0);
    assert_eq!(cfg.client_connection.burst, 100);
    assert_eq!(
        cfg.client_connection.accept_content_types.as_deref(),
        Some("application/vnd.kubernetes.protobuf")
    );
    assert_eq!(cfg.client_connection.content_type, DEFAULT_CONTENT_TYPE);
    assert_eq!(cfg.client_connection.kubeconfig, None);

    assert_eq!(cfg.sync_period, secs(30));
    // ipvs.minSyncPeriod 0s keeps kube-proxy's IPVS meaning: apply each change at once.
    assert_eq!(cfg.min_sync_period, Duration::ZERO);
    assert_eq!(cfg.scheduler, Scheduler::RoundRobin);
    assert_eq!(cfg.ipvs, Ipvs::default());

    assert_eq!(cfg.conntrack.min, 131_072);
    assert_eq!(cfg.conntrack.max_per_core, 32_768);
    assert_eq!(cfg.conntrack.tcp_established_timeout, Some(secs(24 * 3600)));
    assert_eq!(cfg.conntrack.tcp_close_wait_timeout, Some(secs(3600)));
    assert_eq!(cfg.conntrack.udp_timeout, None);

    assert_eq!(cfg.hostname_override, None);
    assert_eq!(cfg.bind_address, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    assert_eq!(cfg.healthz_bind_address, "0.0.0.0:10256".parse().unwrap());
    assert_eq!(cfg.metrics_bind_address, "127.0.0.1:10249".parse().unwrap());
    assert_eq!(cfg.config_sync_period, secs(15 * 60));
    assert_eq!(cfg.oom_score_adj, -999);
    assert_eq!(cfg.detect_local, DetectLocal::ClusterCidr);
    assert!(cfg.cluster_cidrs.is_empty());
    assert_eq!(cfg.node_port_addresses, NodePortAddresses::All);
    assert_eq!(cfg.logging.flush_frequency, secs(5));
    assert_eq!(cfg.logging.verbosity, 0);
    assert!(!cfg.enable_profiling);
    assert!(!cfg.bind_address_hard_fail);

    // No SluiceConfiguration: Sluice's own defaults, and mode does not pick the dataplane.
    assert_eq!(cfg.dataplane, Dataplane::Auto);
    assert_eq!(cfg.pin_path, Path::new("/sys/fs/bpf/sluice"));
    assert_eq!(cfg.maglev_table_size, 16381);
}

#[test]
fn ipvs_fixture_loads_from_a_file() {
    let file = TempFile::new("fixture.yaml", KUBE_PROXY_IPVS_FIXTURE);
    let (cfg, warnings) = load_file(&file.0).unwrap();
    assert!(warnings.is_empty());
    assert_eq!(cfg, load(KUBE_PROXY_IPVS_FIXTURE).0);
}

#[test]
fn default_is_an_empty_kube_proxy_configuration() {
    let (cfg, warnings) = load(KP);
    assert!(warnings.is_empty());
    assert_eq!(cfg, Config::default());
    assert_eq!(Config::default().scheduler, Scheduler::Random);
    assert_eq!(Config::default().sync_period, secs(30));
    assert_eq!(Config::default().min_sync_period, secs(1));
    assert_eq!(Config::default().client_connection.qps, 5.0);
    assert_eq!(Config::default().client_connection.burst, 10);
    assert_eq!(load_files(None, None).unwrap().0, Config::default());
}

// --- invalid values --------------------------------------------------------------------------

#[test]
fn invalid_values_name_their_field() {
    // (document, field path that must be named, words the reason must contain)
    let cases: Vec<(String, &str, &str)> = vec![
        (
            kube_proxy("mode: ipvs\nipvs: {syncPeriod: abc}"),
            "ipvs.syncPeriod",
            "invalid duration",
        ),
        (
            kube_proxy("mode: ipvs\nipvs: {syncPeriod: -1s}"),
            "ipvs.syncPeriod",
            "negative",
        ),
        (
            kube_proxy("iptables: {syncPeriod: 10s, minSyncPeriod: 20s}"),
            "iptables.minSyncPeriod",
            "20s must not be longer than syncPeriod 10s",
        ),
        (
            kube_proxy("mode: ipvs\nipvs: {minSyncPeriod: 1m}"),
            "ipvs.minSyncPeriod",
            "1m0s must not be longer than syncPeriod 30s",
        ),
        (
            kube_proxy("mode: nftables\nnftables: {syncPeriod: 1s, minSyncPeriod: 2s}"),
            "nftables.minSyncPeriod",
            "longer",
        ),
        (
            kube_proxy("clientConnection: {qps: -1}"),
            "clientConnection.qps",
            "negative",
        ),
        (
            kube_proxy("clientConnection: {qps: fast}"),
            "clientConnection.qps",
            "expected a number",
        ),
        (
            kube_proxy("clientConnection: {burst: -5}"),
            "clientConnection.burst",
            "negative",
        ),
        (
            kube_proxy("clientConnection: {burst: 1.5}"),
            "clientConnection.burst",
            "whole number",
        ),
        (kube_proxy("mode: userspace"), "mode", "\"userspace\""),
        (
            kube_proxy("bindAddress: 0.0.0.300"),
            "bindAddress",
            "not an IPv4 or IPv6 address",
        ),
        (
            kube_proxy("healthzBindAddress: localhost:10256"),
            "healthzBindAddress",
            "not IP:PORT",
        ),
        (
            kube_proxy("metricsBindAddress: \"1.2.3.4:0\""),
            "metricsBindAddress",
            "port must be 1-65535",
        ),
        (
            kube_proxy("clusterCIDR: 10.0.0.0/33"),
            "clusterCIDR",
            "prefix length",
        ),
        (
            kube_proxy("clusterCIDR: 10.0.0.0/8,10.1.0.0/16"),
            "clusterCIDR",
            "one IPv4 and one IPv6",
        ),
        (
            kube_proxy("clusterCIDR: 10.0.0.0/8,fd00::/48,fd01::/48"),
            "clusterCIDR",
            "at most two",
        ),
        (
            kube_proxy("nodePortAddresses: [10.0.0.0/8, nonsense]"),
            "nodePortAddresses[1]",
            "invalid CIDR",
        ),
        (
            kube_proxy("nodePortAddresses: [primary, 10.0.0.0/8]"),
            "nodePortAddresses[0]",
            "cannot be combined",
        ),
        (
            kube_proxy("ipvs: {excludeCIDRs: [1.2.3.4]}"),
            "ipvs.excludeCIDRs[0]",
            "ADDRESS/PREFIX-LENGTH",
        ),
        (
            kube_proxy("mode: ipvs\nipvs: {scheduler: wrr}"),
            "ipvs.scheduler",
            "\"wrr\" is not supported by Sluice; supported: \"\" (rr), rr, sh, mh, random",
        ),
        (
            kube_proxy("mode: ipvs\nipvs: {scheduler: fancy}"),
            "ipvs.scheduler",
            "unknown scheduler \"fancy\"; supported",
        ),
        (
            kube_proxy("conntrack: {tcpEstablishedTimeout: 5}"),
            "conntrack.tcpEstablishedTimeout",
            "bare number 5",
        ),
        (
            kube_proxy("conntrack: {maxPerCore: -1}"),
            "conntrack.maxPerCore",
            "negative",
        ),
        (
            kube_proxy("conntrack: {udpTimeout: 1fortnight}"),
            "conntrack.udpTimeout",
            "unknown unit",
        ),
        (
            kube_proxy("configSyncPeriod: 1x"),
            "configSyncPeriod",
            "unknown unit \"x\"",
        ),
        (
            kube_proxy("oomScoreAdj: 2000"),
            "oomScoreAdj",
            "between -1000 and 1000",
        ),
        (
            kube_proxy("detectLocalMode: BridgeInterface"),
            "detectLocal.bridgeInterface",
            "must be set",
        ),
        (
            kube_proxy("detectLocalMode: InterfaceNamePrefix"),
            "detectLocal.interfaceNamePrefix",
            "must be set",
        ),
        (
            kube_proxy("detectLocalMode: Pods"),
            "detectLocalMode",
            "unsupported value \"Pods\"",
        ),
        (
            kube_proxy("iptables: {masqueradeBit: 32}"),
            "iptables.masqueradeBit",
            "between 0 and 31",
        ),
        (
            kube_proxy("logging: {format: xml}"),
            "logging.format",
            "unsupported log format",
        ),
        (
            kube_proxy("logging: {vmodule: [{verbosity: 3}]}"),
            "logging.vmodule[0].filePattern",
            "required",
        ),
        (
            kube_proxy("featureGates: {Foo: maybe}"),
            "featureGates.Foo",
            "expected true or false",
        ),
        (
            kube_proxy("hostnameOverride: \"   \""),
            "hostnameOverride",
            "blank",
        ),
        (kube_proxy("ipvs: 5"), "ipvs", "expected a mapping"),
        (
            kube_proxy("ipvs: {strictARP: 1}"),
            "ipvs.strictARP",
            "expected true or false",
        ),
        (
            sluice("maglev: {tableSize: 16380}"),
            "maglev.tableSize",
            "16380 is not prime",
        ),
        (
            sluice("maglev: {tableSize: 1}"),
            "maglev.tableSize",
            "not prime",
        ),
        (
            sluice("dataplane: dpdk"),
            "dataplane",
            "unknown dataplane \"dpdk\"",
        ),
        (
            sluice("xdp: {mode: offload}"),
            "xdp.mode",
            "unknown XDP mode",
        ),
        (sluice("pinPath: relative/pins"), "pinPath", "absolute"),
        (
            sluice("interfaces: [eth0, this-name-is-too-long]"),
            "interfaces[1]",
            "longer than 15",
        ),
        (
            sluice("interfaces: [\"eth 0\"]"),
            "interfaces[0]",
            "not a valid interface name",
        ),
        (
            sluice("maps: {services: 0}"),
            "maps.services",
            "between 1 and 4294967295",
        ),
        (
            sluice("maps: {conntrack: 4294967296}"),
            "maps.conntrack",
            "between 1",
        ),
        (sluice("syncPeriod: 0s"), "syncPeriod", "greater than zero"),
        (
            sluice("minSyncPeriod: 1h"),
            "minSyncPeriod",
            "1h0m0s must not be longer than syncPeriod 30s",
        ),
        (
            sluice("scheduler: lc"),
            "scheduler",
            "\"lc\" is not supported",
        ),
        (
            sluice("nodePortLoopback: sometimes"),
            "nodePortLoopback",
            "expected true or false",
        ),
    ];
    for (yaml, field, reason) in cases {
        let err = load_err(&yaml);
        let fields: Vec<&str> = err
            .field_errors()
            .iter()
            .map(|e| e.field.as_str())
            .collect();
        assert_eq!(fields, [field], "for {yaml:?}: {err}");
        let message = err.to_string();
        assert!(
            message.contains(&format!("{field}: ")),
            "{message:?} lacks {field}"
        );
        assert!(message.contains(reason), "{message:?} lacks {reason:?}");
    }
}

#[test]
fn every_invalid_value_is_reported_at_once() {
    let err = load_err(&kube_proxy(
        "clientConnection: {qps: -1, burst: -1}\nmode: ipvs\nipvs: {syncPeriod: 1y}",
    ));
    let mut fields: Vec<&str> = err
        .field_errors()
        .iter()
        .map(|e| e.field.as_str())
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "clientConnection.burst",
            "clientConnection.qps",
            "ipvs.syncPeriod"
        ]
    );
    assert!(
        err.to_string()
            .starts_with("3 invalid configuration values: ")
    );
    assert!(
        err.field_errors()
            .iter()
            .all(|e| e.origin.source == Source::KubeProxyConfiguration)
    );
}

#[test]
fn document_errors_name_api_version_and_kind() {
    let err =
        load_err("apiVersion: kubeproxy.config.k8s.io/v1beta1\nkind: KubeProxyConfiguration\n");
    let msg = err.to_string();
    assert!(
        msg.contains("apiVersion \"kubeproxy.config.k8s.io/v1beta1\""),
        "{msg}"
    );
    assert!(
        msg.contains("expected apiVersion kubeproxy.config.k8s.io/v1alpha1"),
        "{msg}"
    );

    let msg =
        load_err("apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeletConfiguration\n")
            .to_string();
    assert!(msg.contains("kind \"KubeletConfiguration\""), "{msg}");

    let msg = load_err("mode: ipvs\n").to_string();
    assert!(
        msg.contains("unsupported apiVersion \"\" / kind \"\""),
        "{msg}"
    );

    let msg = load_err(&format!("{KP}---\n{SL}---\n{KP}")).to_string();
    assert_eq!(
        msg,
        "document 3: a second KubeProxyConfiguration; the first is document 1"
    );

    let msg = load_err("- just\n- a list\n").to_string();
    assert!(
        msg.contains("expected a mapping with apiVersion and kind, got a list"),
        "{msg}"
    );

    assert!(
        load_err("")
            .to_string()
            .contains("no configuration document found")
    );
    assert!(
        load_err("---\n---\n")
            .to_string()
            .contains("no configuration document found")
    );

    let msg = load_err(&format!("{KP}---\n{SL}maps: [unclosed\n")).to_string();
    assert!(msg.starts_with("YAML document 2: "), "{msg}");
}

#[test]
fn errors_from_files_carry_the_file_path() {
    let file = TempFile::new("bad.yaml", &kube_proxy("clientConnection: {qps: -3}\n"));
    let err = load_file(&file.0).unwrap_err();
    let msg = err.to_string();
    assert_eq!(
        msg,
        format!(
            "invalid configuration: {}: KubeProxyConfiguration: clientConnection.qps: -3 must not be negative",
            file.0.display()
        )
    );
    assert_eq!(
        err.field_errors()[0].origin.file.as_deref(),
        Some(file.0.as_path())
    );

    let missing = Path::new("/nonexistent/sluice/config.yaml");
    let msg = load_file(missing).unwrap_err().to_string();
    assert!(
        msg.starts_with("cannot read configuration file /nonexistent/sluice/config.yaml: "),
        "{msg}"
    );

    let empty = TempFile::new("empty.yaml", "# nothing here\n");
    let msg = load_file(&empty.0).unwrap_err().to_string();
    assert!(msg.starts_with(&format!("{}: no configuration document", empty.0.display())));
}

// --- unknown fields ----------------------------------------------------------------------------

#[test]
fn unknown_fields_are_warnings_with_their_path() {
    let yaml = format!(
        "{}---\n{}",
        kube_proxy(
            "mode: ipvs
udpIdleTimeout: 250ms
ipvs:
  syncPeriod: 20s
  bogus: true
conntrack:
  min: 1000
  newThing: 1
clientConnection:
  qps: 7
  extra: x
logging:
  options:
    json: {infoBufferSize: \"0\", fancy: 1}
detectLocal: {bridgeInterface: cbr0, other: y}
winkernel: {networkName: x, futureOption: 1}
"
        ),
        sluice("maps: {services: 1000, ring: 5}\nexperimental: {}\n")
    );
    let (cfg, warnings) = load(&yaml);
    let mut paths: Vec<(Source, &str)> = warnings
        .iter()
        .map(|w| (w.origin.source, w.field.as_str()))
        .collect();
    paths.sort_by_key(|&(_, p)| p);
    use Source::{KubeProxyConfiguration as K, SluiceConfiguration as S};
    assert_eq!(
        paths,
        [
            (K, "clientConnection.extra"),
            (K, "conntrack.newThing"),
            (K, "detectLocal.other"),
            (S, "experimental"),
            (K, "ipvs.bogus"),
            (K, "logging.options.json.fancy"),
            (S, "maps.ring"),
            (K, "udpIdleTimeout"),
            (K, "winkernel.futureOption"),
        ]
    );
    assert!(
        warnings
            .iter()
            .all(|w| w.message == "unknown field, ignored")
    );
    assert_eq!(
        warnings
            .iter()
            .find(|w| w.field == "ipvs.bogus")
            .unwrap()
            .to_string(),
        "KubeProxyConfiguration: ipvs.bogus: unknown field, ignored"
    );
    // Known fields next to the unknown ones still count.
    assert_eq!(cfg.sync_period, secs(20));
    assert_eq!(cfg.conntrack.min, 1000);
    assert_eq!(cfg.client_connection.qps, 7.0);
    assert_eq!(cfg.maps.services, 1000);
}

#[test]
fn other_warnings() {
    let (cfg, warnings) = load(&kube_proxy(
        "mode: iptables\nipvs: {scheduler: sh}\nportRange: 30000-32767\n",
    ));
    let fields: Vec<&str> = warnings.iter().map(|w| w.field.as_str()).collect();
    assert_eq!(fields, ["ipvs.scheduler", "portRange"]);
    assert!(
        warnings[0]
            .message
            .contains("ignored because mode is \"iptables\"")
    );
    assert_eq!(cfg.scheduler, Scheduler::Random);

    let file = TempFile::new("warn.yaml", &kube_proxy("surprise: 1\n"));
    let (_, warnings) = load_file(&file.0).unwrap();
    assert_eq!(
        warnings[0].to_string(),
        format!(
            "{}: KubeProxyConfiguration: surprise: unknown field, ignored",
            file.0.display()
        )
    );
}

// --- mode, sync periods, scheduler -------------------------------------------------------------

#[test]
fn mode_selects_the_block_for_sync_periods() {
    let blocks = "iptables: {syncPeriod: 1m, minSyncPeriod: 0s}
ipvs: {syncPeriod: 2m, minSyncPeriod: 5s}
nftables: {syncPeriod: 3m, minSyncPeriod: 10s}
";
    for (mode, sync, min_sync) in [
        ("", secs(60), secs(1)),
        ("iptables", secs(60), secs(1)),
        ("kernelspace", secs(60), secs(1)),
        ("ipvs", secs(120), secs(5)),
        ("nftables", secs(180), secs(10)),
    ] {
        let (cfg, warnings) = load(&kube_proxy(&format!("mode: \"{mode}\"\n{blocks}")));
        assert!(warnings.is_empty());
        assert_eq!(
            (cfg.sync_period, cfg.min_sync_period),
            (sync, min_sync),
            "mode {mode:?}"
        );
    }
    // 0 means kube-proxy's default; only IPVS keeps minSyncPeriod 0.
    let zeros = "iptables: {syncPeriod: 0s, minSyncPeriod: 0s}
ipvs: {syncPeriod: \"0\", minSyncPeriod: 0}
nftables: {syncPeriod: 0s, minSyncPeriod: 0s}
";
    for (mode, min_sync) in [
        ("iptables", secs(1)),
        ("ipvs", Duration::ZERO),
        ("nftables", secs(1)),
    ] {
        let (cfg, _) = load(&kube_proxy(&format!("mode: {mode}\n{zeros}")));
        assert_eq!(
            (cfg.sync_period, cfg.min_sync_period),
            (secs(30), min_sync),
            "mode {mode}"
        );
    }
    // A block that is not selected is still parsed, but its period order does not matter.
    let (cfg, _) = load(&kube_proxy(
        "mode: ipvs\niptables: {syncPeriod: 1s, minSyncPeriod: 9s}",
    ));
    assert_eq!(cfg.sync_period, secs(30));
}

#[test]
fn scheduler_mapping() {
    for (scheduler, expected) in [
        ("", Scheduler::RoundRobin),
        ("rr", Scheduler::RoundRobin),
        ("sh", Scheduler::SourceHash),
        ("mh", Scheduler::Maglev),
        ("random", Scheduler::Random),
    ] {
        let (cfg, _) = load(&kube_proxy(&format!(
            "mode: ipvs\nipvs: {{scheduler: \"{scheduler}\"}}"
        )));
        assert_eq!(cfg.scheduler, expected, "ipvs.scheduler {scheduler:?}");
    }
    for mode in ["", "iptables", "nftables", "kernelspace"] {
        let (cfg, _) = load(&kube_proxy(&format!("mode: \"{mode}\"")));
        assert_eq!(cfg.scheduler, Scheduler::Random, "mode {mode:?}");
    }
    for name in ["wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sed", "nq"] {
        let err = name.parse::<Scheduler>().unwrap_err();
        assert!(
            err.contains(name) && err.contains("rr, sh, mh, random"),
            "{err}"
        );
    }
    // The SluiceConfiguration can choose a scheduler whatever kube-proxy's mode.
    let (cfg, _) = load(&format!("{KP}mode: iptables\n---\n{SL}scheduler: mh\n"));
    assert_eq!(cfg.scheduler, Scheduler::Maglev);
}

// --- the SluiceConfiguration -------------------------------------------------------------------

const FULL_SLUICE: &str = "apiVersion: sluice.dev/v1alpha1
kind: SluiceConfiguration
dataplane: ebpf
pinPath: /sys/fs/bpf/sluice-test
interfaces: [eth0, bond0.100]
manifestsDir: /etc/sluice/manifests
maps:
  services: 1024
  backends: 4096
  slots: 65536
  conntrack: 8192
maglev:
  tableSize: 65537
xdp:
  mode: native
nodePortLoopback: true
";

#[test]
fn multi_document_file_with_sluice_configuration() {
    let yaml = format!("{KUBE_PROXY_IPVS_FIXTURE}---\n{FULL_SLUICE}");
    let (cfg, warnings) = load(&yaml);
    assert!(warnings.is_empty(), "{warnings:?}");
    // The kube-proxy document is still read.
    assert_eq!(cfg.kube_proxy_mode, ProxyMode::Ipvs);
    assert_eq!(cfg.client_connection.burst, 100);
    // And so is Sluice's.
    assert_eq!(cfg.dataplane, Dataplane::Ebpf);
    assert_eq!(cfg.pin_path, Path::new("/sys/fs/bpf/sluice-test"));
    assert_eq!(cfg.interfaces, ["eth0", "bond0.100"]);
    assert_eq!(
        cfg.manifests_dir.as_deref(),
        Some(Path::new("/etc/sluice/manifests"))
    );
    assert_eq!(
        cfg.maps,
        MapSizes {
            services: 1024,
            backends: 4096,
            slots: 65536,
            conntrack: 8192
        }
    );
    assert_eq!(cfg.maglev_table_size, 65537);
    assert_eq!(cfg.xdp_mode, XdpMode::Native);
    assert!(cfg.node_port_loopback);

    // Order of the documents and stray separators do not matter.
    let reordered = format!("---\n{FULL_SLUICE}---\n{KUBE_PROXY_IPVS_FIXTURE}---\n");
    assert_eq!(load(&reordered).0, cfg);

    // A SluiceConfiguration alone runs with kube-proxy's defaults.
    let (alone, _) = load(FULL_SLUICE);
    assert_eq!(alone.kube_proxy_mode, ProxyMode::Unset);
    assert_eq!(alone.sync_period, DEFAULT_SYNC_PERIOD);
    assert_eq!(alone.maglev_table_size, 65537);
}

#[test]
fn sluice_defaults() {
    let (cfg, _) = load(SL);
    assert_eq!(cfg, Config::default());
    assert_eq!(cfg.dataplane, Dataplane::Auto);
    assert_eq!(cfg.pin_path, Path::new(DEFAULT_PIN_PATH));
    assert!(cfg.interfaces.is_empty());
    assert_eq!(cfg.manifests_dir, None);
    assert_eq!(
        cfg.maps,
        MapSizes {
            services: 262_144,
            backends: 1_048_576,
            slots: 2_097_152,
            conntrack: 524_288
        }
    );
    assert_eq!(cfg.maglev_table_size, 16381);
    assert_eq!(cfg.xdp_mode, XdpMode::Auto);
    assert!(
        cfg.xdp_interfaces.is_empty(),
        "XDP attaches nowhere unless asked"
    );
    assert!(!cfg.node_port_loopback);
}

#[test]
fn sluice_configuration_overrides_sync_periods() {
    let (cfg, _) = load(&format!(
        "{KUBE_PROXY_IPVS_FIXTURE}---\n{SL}syncPeriod: 10s\nminSyncPeriod: 250ms\n"
    ));
    assert_eq!(
        (cfg.sync_period, cfg.min_sync_period),
        (secs(10), Duration::from_millis(250))
    );

    // The final pair is checked, and the error points at the Sluice field that broke it.
    let err = load_err(&format!(
        "{}---\n{SL}syncPeriod: 5s\n",
        kube_proxy("mode: ipvs\nipvs: {minSyncPeriod: 10s}\n")
    ));
    let e = &err.field_errors()[0];
    assert_eq!(
        (e.origin.source, e.field.as_str()),
        (Source::SluiceConfiguration, "syncPeriod")
    );
    assert_eq!(
        e.reason,
        "minSyncPeriod 10s must not be longer than syncPeriod 5s"
    );
}

#[test]
fn sluice_config_in_a_separate_file() {
    let kp = TempFile::new("kp.yaml", KUBE_PROXY_IPVS_FIXTURE);
    let sl = TempFile::new("sl.yaml", FULL_SLUICE);
    let (cfg, warnings) = load_files(Some(&kp.0), Some(&sl.0)).unwrap();
    assert!(warnings.is_empty());
    assert_eq!(
        cfg,
        load(&format!("{KUBE_PROXY_IPVS_FIXTURE}---\n{FULL_SLUICE}")).0
    );

    // The same kind twice across the two files is refused, naming both.
    let both = TempFile::new("both.yaml", &format!("{KP}---\n{FULL_SLUICE}"));
    let msg = load_files(Some(&both.0), Some(&sl.0))
        .unwrap_err()
        .to_string();
    assert_eq!(
        msg,
        format!(
            "{}: document 1: a second SluiceConfiguration; the first is {} document 2",
            sl.0.display(),
            both.0.display()
        )
    );

    // Errors in the Sluice file carry that file's path.
    let bad = TempFile::new("bad-sl.yaml", &sluice("maglev: {tableSize: 100}\n"));
    let err = load_files(Some(&kp.0), Some(&bad.0)).unwrap_err();
    assert_eq!(
        err.field_errors()[0].origin.file.as_deref(),
        Some(bad.0.as_path())
    );
    assert!(err.to_string().contains(&format!(
        "{}: SluiceConfiguration: maglev.tableSize: 100 is not prime",
        bad.0.display()
    )));
}

// --- flags -------------------------------------------------------------------------------------

#[test]
fn overrides_take_precedence_over_files() {
    let (mut cfg, _) = load(&format!("{KUBE_PROXY_IPVS_FIXTURE}---\n{FULL_SLUICE}"));
    let file_cfg = cfg.clone();

    cfg.apply_overrides(&ConfigOverrides::default()).unwrap();
    assert_eq!(cfg, file_cfg, "empty overrides change nothing");

    let overrides = ConfigOverrides {
        manifests_dir: Some("/tmp/manifests".into()),
        pin_path: Some("/sys/fs/bpf/other".into()),
        interfaces: Some(vec!["ens5".into()]),
        metrics_bind_address: Some("0.0.0.0:9100".parse().unwrap()),
        healthz_bind_address: Some("[::]:10256".parse().unwrap()),
        sync_period: Some(secs(60)),
        min_sync_period: Some(secs(2)),
        scheduler: Some(Scheduler::Maglev),
        dataplane: Some(Dataplane::Nftables),
        hostname_override: Some(" Node-7.Example ".into()),
    };
    cfg.apply_overrides(&overrides).unwrap();
    assert_eq!(
        cfg.manifests_dir.as_deref(),
        Some(Path::new("/tmp/manifests"))
    );
    assert_eq!(cfg.pin_path, Path::new("/sys/fs/bpf/other"));
    assert_eq!(cfg.interfaces, ["ens5"]);
    assert_eq!(cfg.metrics_bind_address, "0.0.0.0:9100".parse().unwrap());
    assert_eq!(
        cfg.healthz_bind_address,
        SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 10256)
    );
    assert_eq!((cfg.sync_period, cfg.min_sync_period), (secs(60), secs(2)));
    assert_eq!(cfg.scheduler, Scheduler::Maglev);
    assert_eq!(cfg.dataplane, Dataplane::Nftables);
    assert_eq!(cfg.hostname_override.as_deref(), Some("node-7.example"));
    // Untouched by flags: still from the files.
    assert_eq!(cfg.client_connection.qps, 50.0);
    assert_eq!(cfg.maglev_table_size, 65537);

    // Only the min flag: checked against the file's sync period.
    let mut cfg = file_cfg.clone();
    let err = cfg
        .apply_overrides(&ConfigOverrides {
            min_sync_period: Some(secs(45)),
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(err.field_errors()[0].field, "min_sync_period");
    assert_eq!(err.field_errors()[0].origin.source, Source::Overrides);
    assert_eq!(cfg, file_cfg);
}

#[test]
fn invalid_overrides_change_nothing() {
    let mut cfg = Config::default();
    let err = cfg
        .apply_overrides(&ConfigOverrides {
            pin_path: Some("pins".into()),
            interfaces: Some(vec!["eth0".into(), "a/b".into()]),
            metrics_bind_address: Some("127.0.0.1:0".parse().unwrap()),
            sync_period: Some(Duration::ZERO),
            hostname_override: Some("  ".into()),
            manifests_dir: Some(PathBuf::new()),
            dataplane: Some(Dataplane::Ebpf),
            ..Default::default()
        })
        .unwrap_err();
    let fields: Vec<&str> = err
        .field_errors()
        .iter()
        .map(|e| e.field.as_str())
        .collect();
    assert_eq!(
        fields,
        [
            "manifests_dir",
            "pin_path",
            "interfaces[1]",
            "metrics_bind_address",
            "hostname_override",
            "sync_period",
        ]
    );
    assert!(err.to_string().contains("flags: pin_path: "));
    assert_eq!(cfg, Config::default());
}

// --- individual fields ---------------------------------------------------------------------------

#[test]
fn addresses_and_cidrs() {
    let (cfg, _) = load(&kube_proxy(
        "bindAddress: 10.0.0.5
healthzBindAddress: 10.0.0.5
metricsBindAddress: \"::1\"
hostnameOverride: \" Worker-1 \"
clusterCIDR: \"10.244.0.0/16, fd00:10:244::/56\"
nodePortAddresses: [192.168.1.0/24, \"2001:db8::/64\"]
ipvs: {excludeCIDRs: [10.1.2.3/8]}
",
    ));
    assert_eq!(cfg.bind_address, "10.0.0.5".parse::<IpAddr>().unwrap());
    assert_eq!(cfg.healthz_bind_address, "10.0.0.5:10256".parse().unwrap());
    assert_eq!(cfg.metrics_bind_address, "[::1]:10249".parse().unwrap());
    assert_eq!(cfg.hostname_override.as_deref(), Some("worker-1"));
    let cluster: Vec<String> = cfg.cluster_cidrs.iter().map(ToString::to_string).collect();
    assert_eq!(cluster, ["10.244.0.0/16", "fd00:10:244::/56"]);
    let NodePortAddresses::Cidrs(np) = &cfg.node_port_addresses else {
        panic!("{:?}", cfg.node_port_addresses);
    };
    assert!(np[0].contains("192.168.1.77".parse().unwrap()));
    assert!(!np[0].contains("192.168.2.1".parse().unwrap()));
    assert!(np[1].contains("2001:db8::42".parse().unwrap()));
    assert_eq!(cfg.ipvs.exclude_cidrs[0].to_string(), "10.0.0.0/8");

    let (cfg, _) = load(&kube_proxy(
        "nodePortAddresses: [primary]\nmetricsBindAddress: \"[fd00::1]:9999\"",
    ));
    assert_eq!(cfg.node_port_addresses, NodePortAddresses::Primary);
    assert_eq!(cfg.metrics_bind_address.port(), 9999);
}

#[test]
fn cidr_parse_and_contains() {
    let v4: Cidr = "10.1.2.3/8".parse().unwrap();
    assert_eq!(v4.to_string(), "10.0.0.0/8");
    assert_eq!(v4.prefix_len(), 8);
    assert!(v4.is_ipv4());
    assert!(v4.contains("10.255.0.1".parse().unwrap()));
    assert!(!v4.contains("11.0.0.1".parse().unwrap()));
    assert!(v4.contains("::ffff:10.0.0.1".parse().unwrap()));
    assert!(!v4.contains("fd00::1".parse().unwrap()));

    let v6: Cidr = "fd00::/8".parse().unwrap();
    assert!(v6.is_ipv6());
    assert!(v6.contains("fd12:3456::1".parse().unwrap()));
    assert!(!v6.contains("fe80::1".parse().unwrap()));
    assert!(!v6.contains("10.0.0.1".parse().unwrap()));

    let all: Cidr = "0.0.0.0/0".parse().unwrap();
    assert!(all.contains("203.0.113.9".parse().unwrap()));
    let host: Cidr = "2001:db8::1/128".parse().unwrap();
    assert!(host.contains("2001:db8::1".parse().unwrap()));
    assert!(!host.contains("2001:db8::2".parse().unwrap()));

    for bad in [
        "10.0.0.0",
        "10.0.0.0/",
        "10.0.0.0/+8",
        "10.0.0.0/33",
        "::/129",
        "example/8",
        "10.0.0/8",
    ] {
        assert!(bad.parse::<Cidr>().is_err(), "{bad} parsed");
    }
}

#[test]
fn conntrack_zero_means_leave_the_kernel_alone() {
    let (cfg, _) = load(&kube_proxy(
        "conntrack: {maxPerCore: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s, \
         udpTimeout: 30s, udpStreamTimeout: 2m, tcpBeLiberal: true}",
    ));
    assert_eq!(cfg.conntrack.max_per_core, 0);
    assert_eq!(cfg.conntrack.min, DEFAULT_CONNTRACK_MIN);
    assert_eq!(cfg.conntrack.tcp_established_timeout, None);
    assert_eq!(cfg.conntrack.tcp_close_wait_timeout, None);
    assert_eq!(cfg.conntrack.udp_timeout, Some(secs(30)));
    assert_eq!(cfg.conntrack.udp_stream_timeout, Some(secs(120)));
    assert!(cfg.conntrack.tcp_be_liberal);
}

#[test]
fn remaining_kube_proxy_fields() {
    let (cfg, warnings) = load(&kube_proxy(
        "featureGates: {TopologyAwareHints: true, Legacy: false}
clientConnection:
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
  contentType: application/json
  acceptContentTypes: \"\"
  qps: 12.5
  burst: 0
logging:
  format: json
  flushFrequency: 2s
  verbosity: 4
  vmodule: [{filePattern: proxier*, verbosity: 6}]
  options: {text: {splitStream: true}}
mode: nftables
nftables: {masqueradeAll: true, masqueradeBit: 3}
iptables: {masqueradeBit: 20, localhostNodePorts: false}
detectLocalMode: InterfaceNamePrefix
detectLocal: {interfaceNamePrefix: veth}
oomScoreAdj: 0
configSyncPeriod: 1h
enableProfiling: yes
bindAddressHardFail: true
showHiddenMetricsForVersion: \"1.33\"
windowsRunAsService: false
winkernel: {enableDSR: false}
",
    ));
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(cfg.feature_gates.get("TopologyAwareHints"), Some(&true));
    assert_eq!(cfg.feature_gates.get("Legacy"), Some(&false));
    assert_eq!(
        cfg.client_connection.kubeconfig.as_deref(),
        Some(Path::new("/var/lib/kube-proxy/kubeconfig.conf"))
    );
    assert_eq!(cfg.client_connection.content_type, "application/json");
    assert_eq!(cfg.client_connection.accept_content_types, None);
    assert_eq!(cfg.client_connection.qps, 12.5);
    assert_eq!(cfg.client_connection.burst, DEFAULT_BURST);
    assert_eq!(cfg.logging.format, LogFormat::Json);
    assert_eq!(cfg.logging.flush_frequency, secs(2));
    assert_eq!(cfg.logging.verbosity, 4);
    assert_eq!(
        cfg.logging.vmodule,
        [VModule {
            pattern: "proxier*".into(),
            verbosity: 6
        }]
    );
    // nftables mode: masquerade settings from the nftables block.
    assert!(cfg.masquerade_all);
    assert_eq!(cfg.masquerade_bit, 3);
    assert!(!cfg.localhost_node_ports);
    assert_eq!(
        cfg.detect_local,
        DetectLocal::InterfaceNamePrefix("veth".into())
    );
    assert_eq!(cfg.oom_score_adj, 0);
    assert_eq!(cfg.config_sync_period, secs(3600));
    assert!(cfg.enable_profiling);
    assert!(cfg.bind_address_hard_fail);
    assert_eq!(cfg.show_hidden_metrics_for_version.as_deref(), Some("1.33"));

    // IPVS mode masquerades with the iptables block's settings.
    let (cfg, _) = load(&kube_proxy(
        "mode: ipvs\niptables: {masqueradeAll: true, masqueradeBit: 20}\nipvs: {strictARP: true, tcpTimeout: 900s, tcpFinTimeout: 2m, udpTimeout: 0s}\nlogging: {flushFrequency: 1000000}\ndetectLocalMode: BridgeInterface\ndetectLocal: {bridgeInterface: cbr0}",
    ));
    assert!(cfg.masquerade_all);
    assert_eq!(cfg.masquerade_bit, 20);
    assert!(cfg.ipvs.strict_arp);
    assert_eq!(cfg.ipvs.tcp_timeout, Some(secs(900)));
    assert_eq!(cfg.ipvs.tcp_fin_timeout, Some(secs(120)));
    assert_eq!(cfg.ipvs.udp_timeout, None);
    assert_eq!(cfg.logging.flush_frequency, Duration::from_millis(1));
    assert_eq!(
        cfg.detect_local,
        DetectLocal::BridgeInterface("cbr0".into())
    );
}

#[test]
fn yaml_merge_keys_are_applied() {
    let (cfg, warnings) = load(&kube_proxy(
        "mode: nftables\niptables: &periods {syncPeriod: 45s, minSyncPeriod: 3s}\nnftables:\n  <<: *periods\n",
    ));
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!((cfg.sync_period, cfg.min_sync_period), (secs(45), secs(3)));
}

#[test]
fn maglev_table_size_must_be_prime() {
    for prime in [2, 3, 251, 16381, 65537, 4_294_967_291] {
        assert!(is_prime(prime), "{prime}");
    }
    for composite in [0, 1, 4, 9, 16383, 65535, 4_294_967_295] {
        assert!(!is_prime(composite), "{composite}");
    }
}

// --- Go durations --------------------------------------------------------------------------------

#[test]
fn go_durations() {
    let ok = [
        ("1h2m3.5s", Duration::from_millis(3_723_500)),
        ("500ms", Duration::from_millis(500)),
        ("0", Duration::ZERO),
        ("0s", Duration::ZERO),
        ("-0s", Duration::ZERO),
        ("+5s", secs(5)),
        ("30s", secs(30)),
        ("1m30s", secs(90)),
        ("24h", secs(86_400)),
        ("1.5h", secs(5_400)),
        (".5s", Duration::from_millis(500)),
        ("5.s", secs(5)),
        ("1h1h", secs(7_200)),
        ("1us", Duration::from_micros(1)),
        ("1\u{b5}s", Duration::from_micros(1)),
        ("1\u{3bc}s", Duration::from_micros(1)),
        ("100ns", Duration::from_nanos(100)),
        ("0.000000001s", Duration::from_nanos(1)),
        (
            "2562047h47m16.854775807s",
            Duration::from_nanos(i64::MAX as u64),
        ),
    ];
    for (input, expected) in ok {
        assert_eq!(parse_go_duration(input), Ok(expected), "{input}");
    }
    assert!(matches!(
        parse_go_duration("-1s"),
        Err(DurationError::Negative(_))
    ));
    assert!(matches!(
        parse_go_duration(""),
        Err(DurationError::Empty(_))
    ));
    assert!(matches!(
        parse_go_duration("1"),
        Err(DurationError::MissingUnit { .. })
    ));
    assert!(matches!(
        parse_go_duration("1h2"),
        Err(DurationError::MissingUnit { .. })
    ));
    assert!(matches!(
        parse_go_duration("1d"),
        Err(DurationError::UnknownUnit { .. })
    ));
    assert!(matches!(
        parse_go_duration("s"),
        Err(DurationError::Syntax(_))
    ));
    assert!(matches!(
        parse_go_duration("."),
        Err(DurationError::Syntax(_))
    ));
    assert!(matches!(
        parse_go_duration("-"),
        Err(DurationError::Syntax(_))
    ));
    assert!(matches!(
        parse_go_duration("1 s"),
        Err(DurationError::UnknownUnit { .. })
    ));
    assert!(matches!(
        parse_go_duration("2562048h"),
        Err(DurationError::Overflow(_))
    ));
    assert_eq!(
        parse_go_duration("-1s").unwrap_err().to_string(),
        "invalid duration \"-1s\": must not be negative"
    );
}

#[test]
fn go_duration_formatting_round_trips() {
    for (d, text) in [
        (Duration::ZERO, "0s"),
        (Duration::from_nanos(1500), "1.5\u{b5}s"),
        (Duration::from_millis(500), "500ms"),
        (secs(30), "30s"),
        (secs(90), "1m30s"),
        (Duration::from_millis(3_723_500), "1h2m3.5s"),
        (secs(86_400), "24h0m0s"),
    ] {
        assert_eq!(format_go_duration(d), text);
        assert_eq!(parse_go_duration(text), Ok(d));
    }
}

// --- the documentation -------------------------------------------------------------------------

#[test]
fn documented_example_loads() {
    let doc = include_str!("../../../docs/configuration.md");
    let example = doc
        .split("## Example")
        .nth(1)
        .and_then(|s| s.split("```yaml\n").nth(1))
        .and_then(|s| s.split("```").next())
        .expect("docs/configuration.md has a yaml example");
    let (cfg, warnings) = load(example);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(cfg.kube_proxy_mode, ProxyMode::Ipvs);
    assert_eq!(cfg.scheduler, Scheduler::Maglev);
    assert_eq!(cfg.min_sync_period, Duration::ZERO);
    assert_eq!(cfg.cluster_cidrs.len(), 2);
    assert_eq!(cfg.interfaces, ["eth0"]);
    assert_eq!(cfg.maglev_table_size, 65537);
    assert_eq!(cfg.xdp_mode, XdpMode::Native);
}
