//! The configuration of `sluice run --config FILE`.
//!
//! Sluice reads kube-proxy's own `kubeproxy.config.k8s.io/v1alpha1` `KubeProxyConfiguration`
//! unchanged, with kube-proxy's defaults, so a cluster can swap kube-proxy for Sluice without
//! rewriting its ConfigMap. Sluice's own settings live in a separate `sluice.dev/v1alpha1`
//! `SluiceConfiguration` document, either as a further document of the same file or in a file
//! of its own (`--sluice-config`): a foreign key inside the KubeProxyConfiguration would make
//! kube-proxy reject the file. Precedence, lowest first: built-in defaults, the
//! KubeProxyConfiguration, the SluiceConfiguration, command-line flags ([`ConfigOverrides`]).
//!
//! Unknown fields are not errors (kube-proxy itself falls back to lenient decoding): they are
//! returned as [`Warning`]s with their path for the caller to log once. Invalid values are
//! errors naming the field path, all of them at once. See docs/configuration.md.

mod cidr;
mod duration;
mod kube_proxy;
mod reader;
mod sluice;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use serde_yaml::Value;

pub use cidr::{Cidr, CidrError};
pub use duration::{DurationError, format_go_duration, parse_go_duration};
use reader::Ctx;

pub const KUBE_PROXY_API_VERSION: &str = "kubeproxy.config.k8s.io/v1alpha1";
pub const KUBE_PROXY_KIND: &str = "KubeProxyConfiguration";
pub const SLUICE_API_VERSION: &str = "sluice.dev/v1alpha1";
pub const SLUICE_KIND: &str = "SluiceConfiguration";

// kube-proxy's defaults (pkg/proxy/apis/config/v1alpha1/defaults.go and its flag defaults).
pub const DEFAULT_SYNC_PERIOD: Duration = Duration::from_secs(30);
pub const DEFAULT_MIN_SYNC_PERIOD: Duration = Duration::from_secs(1);
pub const DEFAULT_CONFIG_SYNC_PERIOD: Duration = Duration::from_secs(15 * 60);
pub const DEFAULT_HEALTHZ_PORT: u16 = 10256;
pub const DEFAULT_METRICS_PORT: u16 = 10249;
pub const DEFAULT_QPS: f32 = 5.0;
pub const DEFAULT_BURST: u32 = 10;
pub const DEFAULT_CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";
pub const DEFAULT_OOM_SCORE_ADJ: i32 = -999;
pub const DEFAULT_MASQUERADE_BIT: u8 = 14;
pub const DEFAULT_CONNTRACK_MAX_PER_CORE: u32 = 32 * 1024;
pub const DEFAULT_CONNTRACK_MIN: u32 = 128 * 1024;
pub const DEFAULT_TCP_ESTABLISHED_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_TCP_CLOSE_WAIT_TIMEOUT: Duration = Duration::from_secs(3600);
pub const DEFAULT_LOG_FLUSH_FREQUENCY: Duration = Duration::from_secs(5);

// Sluice's defaults.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/sluice";
pub const DEFAULT_MAGLEV_TABLE_SIZE: u32 = 16381;

/// Linux's IFNAMSIZ less the terminating NUL.
const MAX_INTERFACE_NAME: usize = 15;

// ---------------------------------------------------------------------------------------------
// Enumerations
// ---------------------------------------------------------------------------------------------

/// kube-proxy's `mode`. For Sluice it only selects which block (`iptables`, `ipvs`,
/// `nftables`) supplies the sync periods, masquerade settings and scheduler; the dataplane is
/// [`Dataplane`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ProxyMode {
    /// `""`: kube-proxy picks its platform default (iptables on Linux).
    #[default]
    Unset,
    Iptables,
    Ipvs,
    Nftables,
    Kernelspace,
}

impl ProxyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyMode::Unset => "",
            ProxyMode::Iptables => "iptables",
            ProxyMode::Ipvs => "ipvs",
            ProxyMode::Nftables => "nftables",
            ProxyMode::Kernelspace => "kernelspace",
        }
    }

    /// The block whose `syncPeriod`/`minSyncPeriod` apply, as kube-proxy's v1alpha1
    /// conversion picks it: ipvs and nftables their own, everything else iptables's.
    pub fn periods_block(self) -> &'static str {
        match self {
            ProxyMode::Ipvs => "ipvs",
            ProxyMode::Nftables => "nftables",
            ProxyMode::Unset | ProxyMode::Iptables | ProxyMode::Kernelspace => "iptables",
        }
    }
}

impl FromStr for ProxyMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "" => ProxyMode::Unset,
            "iptables" => ProxyMode::Iptables,
            "ipvs" => ProxyMode::Ipvs,
            "nftables" => ProxyMode::Nftables,
            "kernelspace" => ProxyMode::Kernelspace,
            other => {
                return Err(format!(
                    "unsupported mode {other:?}; valid: \"\", iptables, ipvs, nftables, kernelspace"
                ));
            }
        })
    }
}

impl fmt::Display for ProxyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a backend is chosen for a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheduler {
    /// `rr`: IPVS's default.
    RoundRobin,
    /// `sh`: hash of the client address.
    SourceHash,
    /// `mh`: Maglev consistent hashing.
    Maglev,
    /// `random`: what kube-proxy does outside IPVS mode (iptables' statistic match).
    Random,
}

/// IPVS schedulers kube-proxy would pass to the kernel but Sluice does not implement; named so
/// the error can say "not supported" rather than "unknown".
const IPVS_ONLY_SCHEDULERS: &[&str] = &["wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sed", "nq"];

const SUPPORTED_SCHEDULERS: &str = "\"\" (rr), rr, sh, mh, random";

impl Scheduler {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheduler::RoundRobin => "rr",
            Scheduler::SourceHash => "sh",
            Scheduler::Maglev => "mh",
            Scheduler::Random => "random",
        }
    }

    /// The IPVS scheduler serving this choice in the IPVS fallback: IPVS has no random
    /// scheduler, so `random` becomes round robin (kube-proxy's IPVS default).
    pub fn ipvs_name(self) -> &'static str {
        match self {
            Scheduler::Random => "rr",
            other => other.as_str(),
        }
    }
}

impl FromStr for Scheduler {
    type Err = String;

    /// Accepts IPVS scheduler names; `""` is IPVS's default, round robin.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "" | "rr" => Scheduler::RoundRobin,
            "sh" => Scheduler::SourceHash,
            "mh" => Scheduler::Maglev,
            "random" => Scheduler::Random,
            other if IPVS_ONLY_SCHEDULERS.contains(&other) => {
                return Err(format!(
                    "IPVS scheduler {other:?} is not supported by Sluice; supported: {SUPPORTED_SCHEDULERS}"
                ));
            }
            other => {
                return Err(format!(
                    "unknown scheduler {other:?}; supported: {SUPPORTED_SCHEDULERS}"
                ));
            }
        })
    }
}

impl fmt::Display for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which datapath Sluice programs. `Auto` lets Sluice choose from what the kernel offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Dataplane {
    #[default]
    Auto,
    Ebpf,
    Nftables,
    Iptables,
    Ipvs,
}

impl Dataplane {
    pub fn as_str(self) -> &'static str {
        match self {
            Dataplane::Auto => "auto",
            Dataplane::Ebpf => "ebpf",
            Dataplane::Nftables => "nftables",
            Dataplane::Iptables => "iptables",
            Dataplane::Ipvs => "ipvs",
        }
    }
}

impl FromStr for Dataplane {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "auto" => Dataplane::Auto,
            "ebpf" => Dataplane::Ebpf,
            "nftables" => Dataplane::Nftables,
            "iptables" => Dataplane::Iptables,
            "ipvs" => Dataplane::Ipvs,
            other => {
                return Err(format!(
                    "unknown dataplane {other:?}; valid: auto, ebpf, nftables, iptables, ipvs"
                ));
            }
        })
    }
}

impl fmt::Display for Dataplane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the XDP program is attached, if at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum XdpMode {
    /// Native (driver) mode where the driver supports it, generic otherwise.
    #[default]
    Auto,
    Native,
    Generic,
    Off,
}

impl XdpMode {
    pub fn as_str(self) -> &'static str {
        match self {
            XdpMode::Auto => "auto",
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
            XdpMode::Off => "off",
        }
    }
}

impl FromStr for XdpMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "auto" => XdpMode::Auto,
            "native" => XdpMode::Native,
            "generic" => XdpMode::Generic,
            "off" => XdpMode::Off,
            other => {
                return Err(format!(
                    "unknown XDP mode {other:?}; valid: auto, native, generic, off"
                ));
            }
        })
    }
}

impl fmt::Display for XdpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How traffic from local pods is told apart (kube-proxy's `detectLocalMode`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DetectLocal {
    /// Source inside [`Config::cluster_cidrs`]; with no cluster CIDR, nothing is local.
    #[default]
    ClusterCidr,
    /// Source inside the Node's `spec.podCIDRs`.
    NodeCidr,
    /// Traffic arriving on this bridge.
    BridgeInterface(String),
    /// Traffic arriving on interfaces whose name starts with this prefix.
    InterfaceNamePrefix(String),
}

/// Which node addresses accept NodePort traffic (`nodePortAddresses`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum NodePortAddresses {
    /// Empty list: every local address.
    #[default]
    All,
    /// `["primary"]`: the node's primary IPs (from the Node object).
    Primary,
    /// Local addresses inside any of these prefixes.
    Cidrs(Vec<Cidr>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// One `logging.vmodule` entry: a verbosity for log sites in files matching `pattern`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VModule {
    pub pattern: String,
    pub verbosity: u32,
}

// ---------------------------------------------------------------------------------------------
// The resolved configuration
// ---------------------------------------------------------------------------------------------

/// kube-proxy's `clientConnection`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientConnection {
    /// `None`: in-cluster configuration (service account), as kube-proxy with an empty value.
    pub kubeconfig: Option<PathBuf>,
    pub content_type: String,
    /// `None`: let the client send its default `Accept`.
    pub accept_content_types: Option<String>,
    pub qps: f32,
    pub burst: u32,
}

impl Default for ClientConnection {
    fn default() -> Self {
        Self {
            kubeconfig: None,
            content_type: DEFAULT_CONTENT_TYPE.to_owned(),
            accept_content_types: None,
            qps: DEFAULT_QPS,
            burst: DEFAULT_BURST,
        }
    }
}

/// kube-proxy's `conntrack`: netfilter conntrack tuning. `None` timeouts mean "leave the
/// kernel's value alone" (kube-proxy's meaning of an explicit 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conntrack {
    /// 0: leave `nf_conntrack_max` alone.
    pub max_per_core: u32,
    pub min: u32,
    pub tcp_established_timeout: Option<Duration>,
    pub tcp_close_wait_timeout: Option<Duration>,
    pub tcp_be_liberal: bool,
    pub udp_timeout: Option<Duration>,
    pub udp_stream_timeout: Option<Duration>,
}

impl Default for Conntrack {
    fn default() -> Self {
        Self {
            max_per_core: DEFAULT_CONNTRACK_MAX_PER_CORE,
            min: DEFAULT_CONNTRACK_MIN,
            tcp_established_timeout: Some(DEFAULT_TCP_ESTABLISHED_TIMEOUT),
            tcp_close_wait_timeout: Some(DEFAULT_TCP_CLOSE_WAIT_TIMEOUT),
            tcp_be_liberal: false,
            udp_timeout: None,
            udp_stream_timeout: None,
        }
    }
}

/// The IPVS-specific part of kube-proxy's `ipvs` block (sync periods and scheduler are
/// resolved into [`Config`] itself). Meaningful only with [`Dataplane::Ipvs`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ipvs {
    pub exclude_cidrs: Vec<Cidr>,
    pub strict_arp: bool,
    /// `None`: leave the kernel's IPVS timeouts alone (kube-proxy's 0).
    pub tcp_timeout: Option<Duration>,
    pub tcp_fin_timeout: Option<Duration>,
    pub udp_timeout: Option<Duration>,
}

/// kube-proxy's `logging`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logging {
    pub format: LogFormat,
    pub verbosity: u32,
    pub flush_frequency: Duration,
    pub vmodule: Vec<VModule>,
}

impl Default for Logging {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            verbosity: 0,
            flush_frequency: DEFAULT_LOG_FLUSH_FREQUENCY,
            vmodule: Vec::new(),
        }
    }
}

/// BPF map capacities (`maps` in the SluiceConfiguration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapSizes {
    pub services: u32,
    pub backends: u32,
    pub slots: u32,
    pub conntrack: u32,
}

impl Default for MapSizes {
    /// Taken from `proxy_common::capacity` so the configuration and the datapath cannot drift.
    fn default() -> Self {
        use proxy_common::capacity;
        Self {
            services: capacity::SERVICES,
            backends: capacity::BACKENDS,
            slots: capacity::SLOTS,
            conntrack: capacity::CONNTRACK,
        }
    }
}

/// Everything `sluice run` needs, resolved and typed. `Config::default()` is what Sluice runs
/// with when no file is given; it equals loading a KubeProxyConfiguration with no fields set.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    // --- from the KubeProxyConfiguration ---
    /// `mode` as written; see [`ProxyMode`] for what it does (and does not) decide.
    pub kube_proxy_mode: ProxyMode,
    /// The longest time between two full resyncs of the datapath.
    pub sync_period: Duration,
    /// The shortest time between two resyncs; changes arriving sooner are coalesced.
    /// Zero applies every change immediately (only reachable through the `ipvs` block,
    /// the SluiceConfiguration or flags: kube-proxy turns 0 into 1s for iptables/nftables).
    pub min_sync_period: Duration,
    pub scheduler: Scheduler,
    /// Informer resync period (`configSyncPeriod`).
    pub config_sync_period: Duration,
    /// Node name to use instead of the host name, lower-cased and trimmed like kube-proxy.
    pub hostname_override: Option<String>,
    /// `bindAddress`: when not unspecified, kube-proxy takes it as the node's IP.
    pub bind_address: IpAddr,
    pub bind_address_hard_fail: bool,
    pub healthz_bind_address: SocketAddr,
    pub metrics_bind_address: SocketAddr,
    /// `clusterCIDR`: at most one per IP family.
    pub cluster_cidrs: Vec<Cidr>,
    pub detect_local: DetectLocal,
    pub node_port_addresses: NodePortAddresses,
    /// From the `nftables` block in nftables mode, else from `iptables` (IPVS mode masquerades
    /// with iptables too).
    pub masquerade_all: bool,
    pub masquerade_bit: u8,
    pub localhost_node_ports: bool,
    pub ipvs: Ipvs,
    pub conntrack: Conntrack,
    pub client_connection: ClientConnection,
    pub oom_score_adj: i32,
    pub logging: Logging,
    pub enable_profiling: bool,
    pub show_hidden_metrics_for_version: Option<String>,
    pub feature_gates: BTreeMap<String, bool>,

    // --- from the SluiceConfiguration ---
    pub dataplane: Dataplane,
    pub pin_path: PathBuf,
    /// Interfaces to attach to; empty means Sluice picks them.
    pub interfaces: Vec<String>,
    /// When set, Services and EndpointSlices come from YAML files in this folder instead of
    /// the API server.
    pub manifests_dir: Option<PathBuf>,
    pub maps: MapSizes,
    /// Maglev lookup table size per service; always prime.
    pub maglev_table_size: u32,
    pub xdp_mode: XdpMode,
    /// External interfaces the XDP fast path attaches to (empty: none).
    pub xdp_interfaces: Vec<String>,
    pub node_port_loopback: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            kube_proxy_mode: ProxyMode::Unset,
            sync_period: DEFAULT_SYNC_PERIOD,
            min_sync_period: DEFAULT_MIN_SYNC_PERIOD,
            // kube-proxy outside IPVS mode picks endpoints at random.
            scheduler: Scheduler::Random,
            config_sync_period: DEFAULT_CONFIG_SYNC_PERIOD,
            hostname_override: None,
            bind_address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            bind_address_hard_fail: false,
            healthz_bind_address: SocketAddr::new(
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                DEFAULT_HEALTHZ_PORT,
            ),
            metrics_bind_address: SocketAddr::new(
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                DEFAULT_METRICS_PORT,
            ),
            cluster_cidrs: Vec::new(),
            detect_local: DetectLocal::ClusterCidr,
            node_port_addresses: NodePortAddresses::All,
            masquerade_all: false,
            masquerade_bit: DEFAULT_MASQUERADE_BIT,
            localhost_node_ports: true,
            ipvs: Ipvs::default(),
            conntrack: Conntrack::default(),
            client_connection: ClientConnection::default(),
            oom_score_adj: DEFAULT_OOM_SCORE_ADJ,
            logging: Logging::default(),
            enable_profiling: false,
            show_hidden_metrics_for_version: None,
            feature_gates: BTreeMap::new(),
            dataplane: Dataplane::Auto,
            pin_path: PathBuf::from(DEFAULT_PIN_PATH),
            interfaces: Vec::new(),
            manifests_dir: None,
            maps: MapSizes::default(),
            maglev_table_size: DEFAULT_MAGLEV_TABLE_SIZE,
            xdp_mode: XdpMode::Auto,
            xdp_interfaces: Vec::new(),
            node_port_loopback: false,
        }
    }
}

/// Command-line flags; each `Some` replaces the value from the files.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfigOverrides {
    pub manifests_dir: Option<PathBuf>,
    pub pin_path: Option<PathBuf>,
    /// `Some(vec![])` goes back to automatic interface selection.
    pub interfaces: Option<Vec<String>>,
    pub metrics_bind_address: Option<SocketAddr>,
    pub healthz_bind_address: Option<SocketAddr>,
    pub sync_period: Option<Duration>,
    pub min_sync_period: Option<Duration>,
    pub scheduler: Option<Scheduler>,
    pub dataplane: Option<Dataplane>,
    pub hostname_override: Option<String>,
}

impl Config {
    /// Applies flags on top of the loaded configuration. All-or-nothing: on error `self` is
    /// unchanged and every invalid flag is reported.
    pub fn apply_overrides(&mut self, overrides: &ConfigOverrides) -> Result<(), ConfigError> {
        let mut cx = Ctx::new(Origin::new(Source::Overrides, None));
        let mut next = self.clone();
        let o = overrides;
        if let Some(dir) = &o.manifests_dir {
            if dir.as_os_str().is_empty() {
                cx.error("manifests_dir", "must not be empty");
            }
            next.manifests_dir = Some(dir.clone());
        }
        if let Some(path) = &o.pin_path {
            if let Err(reason) = check_pin_path(path) {
                cx.error("pin_path", reason);
            }
            next.pin_path = path.clone();
        }
        if let Some(interfaces) = &o.interfaces {
            for (i, name) in interfaces.iter().enumerate() {
                if let Err(reason) = check_interface_name(name) {
                    cx.error(format!("interfaces[{i}]"), reason);
                }
            }
            next.interfaces = interfaces.clone();
        }
        for (field, addr, slot) in [
            (
                "metrics_bind_address",
                o.metrics_bind_address,
                &mut next.metrics_bind_address,
            ),
            (
                "healthz_bind_address",
                o.healthz_bind_address,
                &mut next.healthz_bind_address,
            ),
        ] {
            if let Some(addr) = addr {
                if addr.port() == 0 {
                    cx.error(field, format!("{addr}: port must be 1-65535"));
                }
                *slot = addr;
            }
        }
        if let Some(name) = &o.hostname_override {
            match normalize_hostname(name) {
                Some(name) => next.hostname_override = Some(name),
                None => cx.error("hostname_override", "must not be blank"),
            }
        }
        if let Some(s) = o.scheduler {
            next.scheduler = s;
        }
        if let Some(d) = o.dataplane {
            next.dataplane = d;
        }
        if let Some(d) = o.sync_period {
            if d.is_zero() {
                cx.error("sync_period", "must be greater than zero");
            }
            next.sync_period = d;
        }
        if let Some(d) = o.min_sync_period {
            next.min_sync_period = d;
        }
        // A zero sync period is already reported; comparing against it would only add noise.
        if (o.sync_period.is_some() || o.min_sync_period.is_some())
            && !next.sync_period.is_zero()
            && next.min_sync_period > next.sync_period
        {
            let field = if o.min_sync_period.is_some() {
                "min_sync_period"
            } else {
                "sync_period"
            };
            cx.error(
                field,
                period_order_reason(next.min_sync_period, next.sync_period),
            );
        }
        if !cx.errors.is_empty() {
            return Err(ConfigError::Invalid { errors: cx.errors });
        }
        *self = next;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Errors and warnings
// ---------------------------------------------------------------------------------------------

/// Which part of the configuration a message is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    KubeProxyConfiguration,
    SluiceConfiguration,
    /// [`ConfigOverrides`] (command-line flags).
    Overrides,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::KubeProxyConfiguration => KUBE_PROXY_KIND,
            Source::SluiceConfiguration => SLUICE_KIND,
            Source::Overrides => "flags",
        })
    }
}

/// The document and file a message is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub source: Source,
    pub file: Option<PathBuf>,
}

impl Origin {
    fn new(source: Source, file: Option<&Path>) -> Self {
        Self {
            source,
            file: file.map(Path::to_path_buf),
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(file) => write!(f, "{}: {}", file.display(), self.source),
            None => write!(f, "{}", self.source),
        }
    }
}

/// One invalid value: `field` is the YAML path (`ipvs.syncPeriod`, `nodePortAddresses[1]`) or,
/// for flags, the [`ConfigOverrides`] field name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub origin: Origin,
    pub field: String,
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.origin, self.field, self.reason)
    }
}

/// Something the caller should log once; loading went on regardless.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub origin: Origin,
    pub field: String,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.origin, self.field, self.message)
    }
}

// The wrapped errors are written into each message rather than exposed as `source()`: the CLI
// prints these once with `{}` or `{:#}`, and a chain would repeat the inner message.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}YAML document {document}: {error}", file_prefix(file))]
    Yaml {
        file: Option<PathBuf>,
        document: usize,
        error: serde_yaml::Error,
    },
    /// A document Sluice cannot place: unknown `apiVersion`/`kind`, not a mapping, a repeated
    /// kind, or no document at all.
    #[error("{}{}{reason}", file_prefix(file), document_prefix(*document))]
    Document {
        file: Option<PathBuf>,
        /// 1-based; 0 when the problem is not about one document.
        document: usize,
        reason: String,
    },
    #[error("{}", field_errors_message(errors))]
    Invalid { errors: Vec<FieldError> },
}

impl ConfigError {
    /// The invalid fields, when that is what went wrong.
    pub fn field_errors(&self) -> &[FieldError] {
        match self {
            ConfigError::Invalid { errors } => errors,
            _ => &[],
        }
    }
}

fn file_prefix(file: &Option<PathBuf>) -> String {
    file.as_ref()
        .map(|f| format!("{}: ", f.display()))
        .unwrap_or_default()
}

fn document_prefix(document: usize) -> String {
    if document == 0 {
        String::new()
    } else {
        format!("document {document}: ")
    }
}

fn field_errors_message(errors: &[FieldError]) -> String {
    match errors {
        [one] => format!("invalid configuration: {one}"),
        many => {
            let list: Vec<String> = many.iter().map(ToString::to_string).collect();
            format!(
                "{} invalid configuration values: {}",
                many.len(),
                list.join("; ")
            )
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

/// Loads `--config FILE`: a KubeProxyConfiguration, a SluiceConfiguration, or both as two
/// documents of one YAML stream.
pub fn load_file(path: impl AsRef<Path>) -> Result<(Config, Vec<Warning>), ConfigError> {
    load_files(Some(path.as_ref()), None)
}

/// Loads `--config` and `--sluice-config` together; each kind of document may appear once
/// across both files. With neither file, returns [`Config::default()`].
pub fn load_files(
    config: Option<&Path>,
    sluice_config: Option<&Path>,
) -> Result<(Config, Vec<Warning>), ConfigError> {
    let mut docs = Documents::default();
    for path in [config, sluice_config].into_iter().flatten() {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        let found = docs.add_stream(&text, Some(path))?;
        if found == 0 {
            return Err(ConfigError::Document {
                file: Some(path.to_path_buf()),
                document: 0,
                reason: no_document_reason(),
            });
        }
    }
    resolve(&docs)
}

/// Loads configuration from YAML text (one or two documents), as [`load_file`] without a file.
pub fn from_yaml_str(yaml: &str) -> Result<(Config, Vec<Warning>), ConfigError> {
    let mut docs = Documents::default();
    if docs.add_stream(yaml, None)? == 0 {
        return Err(ConfigError::Document {
            file: None,
            document: 0,
            reason: no_document_reason(),
        });
    }
    resolve(&docs)
}

fn no_document_reason() -> String {
    format!(
        "no configuration document found; expected apiVersion {KUBE_PROXY_API_VERSION} kind \
         {KUBE_PROXY_KIND} and/or apiVersion {SLUICE_API_VERSION} kind {SLUICE_KIND}"
    )
}

struct Doc {
    value: Value,
    file: Option<PathBuf>,
    index: usize,
}

#[derive(Default)]
struct Documents {
    kube_proxy: Option<Doc>,
    sluice: Option<Doc>,
}

impl Documents {
    /// Sorts each document of a YAML stream by `apiVersion`/`kind`; returns how many it found.
    fn add_stream(&mut self, yaml: &str, file: Option<&Path>) -> Result<usize, ConfigError> {
        let mut found = 0;
        for (i, de) in serde_yaml::Deserializer::from_str(yaml).enumerate() {
            let document = i + 1;
            let yaml_error = |error| ConfigError::Yaml {
                file: file.map(Path::to_path_buf),
                document,
                error,
            };
            let mut value = Value::deserialize(de).map_err(yaml_error)?;
            // kube-proxy's YAML reader honours `<<` merge keys; serde_yaml keeps them literal.
            value.apply_merge().map_err(yaml_error)?;
            // `---` separators around nothing (a leading or trailing one) are not documents.
            if value.is_null() {
                continue;
            }
            let doc_error = |reason: String| ConfigError::Document {
                file: file.map(Path::to_path_buf),
                document,
                reason,
            };
            let Value::Mapping(map) = &value else {
                return Err(doc_error(format!(
                    "expected a mapping with apiVersion and kind, got {}",
                    reader::kind_of(&value)
                )));
            };
            let api_version = map.get("apiVersion").and_then(Value::as_str).unwrap_or("");
            let kind = map.get("kind").and_then(Value::as_str).unwrap_or("");
            let slot = match (api_version, kind) {
                (KUBE_PROXY_API_VERSION, KUBE_PROXY_KIND) => &mut self.kube_proxy,
                (SLUICE_API_VERSION, SLUICE_KIND) => &mut self.sluice,
                _ => {
                    return Err(doc_error(format!(
                        "unsupported apiVersion {api_version:?} / kind {kind:?}; expected \
                         apiVersion {KUBE_PROXY_API_VERSION} kind {KUBE_PROXY_KIND}, or \
                         apiVersion {SLUICE_API_VERSION} kind {SLUICE_KIND}"
                    )));
                }
            };
            if let Some(first) = slot {
                let at = match &first.file {
                    Some(f) => format!("{} document {}", f.display(), first.index),
                    None => format!("document {}", first.index),
                };
                return Err(doc_error(format!("a second {kind}; the first is {at}")));
            }
            *slot = Some(Doc {
                value,
                file: file.map(Path::to_path_buf),
                index: document,
            });
            found += 1;
        }
        Ok(found)
    }
}

fn resolve(docs: &Documents) -> Result<(Config, Vec<Warning>), ConfigError> {
    let mut cfg = Config::default();
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    if let Some(doc) = &docs.kube_proxy {
        let mut cx = Ctx::new(Origin::new(
            Source::KubeProxyConfiguration,
            doc.file.as_deref(),
        ));
        kube_proxy::read(&doc.value, &mut cfg, &mut cx);
        errors.append(&mut cx.errors);
        warnings.append(&mut cx.warnings);
    }
    if let Some(doc) = &docs.sluice {
        let mut cx = Ctx::new(Origin::new(
            Source::SluiceConfiguration,
            doc.file.as_deref(),
        ));
        sluice::read(&doc.value, &mut cfg, &mut cx);
        errors.append(&mut cx.errors);
        warnings.append(&mut cx.warnings);
    }
    if errors.is_empty() {
        Ok((cfg, warnings))
    } else {
        Err(ConfigError::Invalid { errors })
    }
}

// ---------------------------------------------------------------------------------------------
// Shared checks
// ---------------------------------------------------------------------------------------------

fn period_order_reason(min: Duration, sync: Duration) -> String {
    format!(
        "minSyncPeriod {} must not be longer than syncPeriod {}",
        format_go_duration(min),
        format_go_duration(sync)
    )
}

/// kube-proxy's `GetHostname`: trimmed and lower-cased; blank is refused.
fn normalize_hostname(name: &str) -> Option<String> {
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_lowercase())
}

/// Pins live on a bpffs mount; a relative path would depend on the working directory.
fn check_pin_path(path: &Path) -> Result<(), String> {
    if path.is_absolute() {
        Ok(())
    } else {
        Err(format!(
            "{:?} must be an absolute path (on a bpffs mount)",
            path.display().to_string()
        ))
    }
}

/// The kernel's `dev_valid_name`.
fn check_interface_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("interface name must not be empty".to_owned());
    }
    if name.len() > MAX_INTERFACE_NAME {
        return Err(format!(
            "interface name {name:?} is longer than {MAX_INTERFACE_NAME} bytes"
        ));
    }
    if name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return Err(format!("{name:?} is not a valid interface name"));
    }
    Ok(())
}

fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let n = u64::from(n);
    let mut d = 3u64;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}
