//! Command-line interface of the `sluice` binary.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{
    config::{ConfigOverrides, Dataplane, parse_go_duration},
    dataplane::loader::DEFAULT_PIN_PATH,
    inspect::{ConntrackFilter, EndpointFilter, ProtocolFilter, ServiceRef},
};

#[derive(Debug, Parser)]
#[command(
    name = "sluice",
    version,
    about = "Kubernetes service load balancing in eBPF"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load and attach the datapath and keep its maps in step with the Services.
    ///
    /// Example: sluice run --manifests ./examples/manifests --interface eth0
    Run(RunArgs),
    /// Remove every dataplane's state: BPF programs and pinned maps, the nftables table,
    /// the iptables chains and the IPVS services Sluice made.
    ///
    /// Example: sluice cleanup --kube-proxy
    Cleanup(CleanupArgs),
    /// Run a synthetic packet through the live datapath and explain what it would do.
    ///
    /// The packet goes through a separate, unattached trace instance of the program that
    /// shares the live maps but writes none of them: conntrack, affinity and counters are
    /// untouched.
    ///
    /// Example: sluice trace --from 10.0.1.2:40000 --to 10.96.0.10:80 --proto tcp
    Trace(TraceArgs),
    /// Report the kernel features Sluice needs and the dataplane `run` would choose.
    ///
    /// Example: sluice probe --dataplane auto
    Probe(ProbeArgs),
    /// Show what the live datapath holds, read from its pinned maps.
    ///
    /// Works whether or not `sluice run` is up; needs the privileges to read BPF maps. Every
    /// JSON field is described in docs/cli.md.
    ///
    /// Example: sluice inspect services --output json
    Inspect(InspectArgs),
    /// Print a completion script for a shell.
    ///
    /// Example: sluice completions bash > /etc/bash_completion.d/sluice
    Completions(CompletionsArgs),
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    /// The client: IPv4 address and port.
    #[arg(long, value_name = "IP:PORT")]
    pub from: std::net::SocketAddrV4,
    /// The destination: a frontend (VIP:port) or any address.
    #[arg(long, value_name = "IP:PORT")]
    pub to: std::net::SocketAddrV4,
    #[arg(long, default_value = "tcp", value_parser = ["tcp", "udp"])]
    pub proto: String,
    #[arg(long, default_value = DEFAULT_PIN_PATH, value_name = "DIR")]
    pub pin_path: PathBuf,
    /// `table` for people, `json` for scripts.
    #[arg(long, short = 'o', default_value = "table", value_parser = ["table", "json"])]
    pub output: String,
}

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The dataplane setting to decide for (auto, ebpf, nftables, iptables, ipvs).
    #[arg(long, default_value = "auto")]
    pub dataplane: Dataplane,
    /// Report a feature as absent (repeat); for rehearsing older kernels and for tests.
    #[arg(long, value_name = "FEATURE")]
    pub pretend_missing: Vec<String>,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to write the script for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    #[command(subcommand)]
    pub what: InspectCommand,
    #[command(flatten)]
    pub common: InspectCommon,
}

/// Options every `inspect` subcommand takes (before or after the subcommand's name).
#[derive(Debug, Clone, Args)]
pub struct InspectCommon {
    /// bpffs directory where the maps are pinned.
    #[arg(long, global = true, default_value = DEFAULT_PIN_PATH, value_name = "DIR")]
    pub pin_path: PathBuf,
    /// Aligned tables for people, or JSON for scripts (field names: docs/cli.md).
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// Print again every INTERVAL (Go duration, default 2s) until interrupted. With
    /// `--output json`, each refresh is one JSON document on one line.
    #[arg(
        long,
        global = true,
        value_name = "INTERVAL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "2s",
        value_parser = parse_go_duration
    )]
    pub watch: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum InspectCommand {
    /// Every frontend (address, port, protocol, scope) and the Service it came from.
    ///
    /// Example: sluice inspect services --namespace kube-system
    Services {
        /// Only the Services of this namespace.
        #[arg(long, short = 'n', value_name = "NS")]
        namespace: Option<String>,
    },
    /// Every backend, the Services that send to it, and its traffic.
    ///
    /// Example: sluice inspect backends --output json
    Backends,
    /// One Service: its frontends and each one's backend slots in order, with their states.
    ///
    /// Example: sluice inspect service default/web
    Service {
        /// The Service as NAMESPACE/NAME.
        service: ServiceRef,
    },
    /// A Service's Maglev lookup table (the datapath has none yet: this says so and fails).
    ///
    /// Example: sluice inspect maglev default/web --full
    Maglev {
        /// The Service as NAMESPACE/NAME.
        service: ServiceRef,
        /// Print every table entry, not only each backend's share.
        #[arg(long)]
        full: bool,
    },
    /// Tracked flows (client → frontend → backend), filtered, with counts.
    ///
    /// Example: sluice inspect conntrack --vip 10.96.0.10:80 --protocol tcp
    Conntrack(ConntrackArgs),
    /// Clients remembered by `sessionAffinity: ClientIP`, the backend each goes to, and
    /// whether the datapath still honours it.
    ///
    /// Example: sluice inspect affinity default/web --client 10.0.1.2
    Affinity {
        /// Only this Service (NAMESPACE/NAME).
        service: Option<ServiceRef>,
        /// Only this client address.
        #[arg(long, value_name = "IP")]
        client: Option<std::net::Ipv4Addr>,
    },
    /// Datapath counters, drops by reason, traffic per Service, frontend and backend, map fill.
    ///
    /// Example: sluice inspect stats --watch=1s
    Stats,
}

#[derive(Debug, Clone, Args)]
pub struct ConntrackArgs {
    /// Flows to this frontend address (IP or IP:PORT).
    #[arg(long, value_name = "IP[:PORT]")]
    pub vip: Option<EndpointFilter>,
    /// Flows sent to this backend (IP or IP:PORT).
    #[arg(long, value_name = "IP[:PORT]")]
    pub backend: Option<EndpointFilter>,
    /// Flows from this client (IP or IP:PORT).
    #[arg(long, value_name = "IP[:PORT]")]
    pub client: Option<EndpointFilter>,
    /// Flows of this protocol.
    #[arg(long, value_enum)]
    pub protocol: Option<ProtocolFilter>,
    /// Flows of this Service (NAMESPACE/NAME).
    #[arg(long, value_name = "NS/NAME")]
    pub service: Option<ServiceRef>,
    /// Print only the counts, not the flows.
    #[arg(long)]
    pub summary: bool,
}

impl ConntrackArgs {
    pub fn filter(&self) -> ConntrackFilter {
        ConntrackFilter {
            vip: self.vip,
            backend: self.backend,
            client: self.client,
            protocol: self.protocol,
            service: self.service.clone(),
        }
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// A kube-proxy KubeProxyConfiguration file, used unchanged; it may carry a second
    /// document of kind SluiceConfiguration (see docs/configuration.md).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// A separate SluiceConfiguration file.
    #[arg(long, value_name = "FILE")]
    pub sluice_config: Option<PathBuf>,
    /// Load and check the configuration, print it, and exit (0 if valid).
    #[arg(long)]
    pub validate_config: bool,
    /// Folder of Service and EndpointSlice YAML to serve (no cluster needed).
    #[arg(long, value_name = "DIR")]
    pub manifests: Option<PathBuf>,
    /// Interface to attach to (repeat for several). Traffic to Services and replies from
    /// backends must enter the node through one of them.
    #[arg(long = "interface", short = 'i', value_name = "IFACE")]
    pub interfaces: Vec<String>,
    /// bpffs directory where maps and links are pinned [default: /sys/fs/bpf/sluice].
    #[arg(long, value_name = "DIR")]
    pub pin_path: Option<PathBuf>,
    /// Address NodePorts answer on (repeat); default: the addresses of the attached interfaces.
    #[arg(long = "node-address", value_name = "IP")]
    pub node_addresses: Vec<IpAddr>,
    /// How often the manifests folder is checked for changes (Go duration).
    #[arg(long, default_value = "1s", value_parser = parse_go_duration)]
    pub poll_interval: Duration,
    /// Changes arriving within this period are applied together (overrides the file).
    #[arg(long, value_parser = parse_go_duration)]
    pub min_sync_period: Option<Duration>,
    /// Interval of full reconciles that repair drift in the maps (overrides the file).
    #[arg(long, value_parser = parse_go_duration)]
    pub sync_period: Option<Duration>,
    /// The dataplane: auto, ebpf, nftables, iptables or ipvs (overrides the file).
    #[arg(long)]
    pub dataplane: Option<Dataplane>,
    /// Report a kernel feature as absent to the start-up probe (repeat), e.g. `attach:tcx`:
    /// rehearses what `auto` picks on an older kernel. See `sluice probe`.
    #[arg(long, value_name = "FEATURE")]
    pub pretend_missing: Vec<String>,
}

impl RunArgs {
    /// The flags that override the configuration file.
    pub fn overrides(&self) -> ConfigOverrides {
        ConfigOverrides {
            manifests_dir: self.manifests.clone(),
            pin_path: self.pin_path.clone(),
            interfaces: (!self.interfaces.is_empty()).then(|| self.interfaces.clone()),
            sync_period: self.sync_period,
            min_sync_period: self.min_sync_period,
            dataplane: self.dataplane,
            ..ConfigOverrides::default()
        }
    }
}

#[derive(Debug, Args)]
pub struct CleanupArgs {
    #[arg(long, default_value = DEFAULT_PIN_PATH, value_name = "DIR")]
    pub pin_path: PathBuf,
    /// Also remove a kube-proxy's leftovers (its KUBE-* chains, `kube-proxy` nft tables and
    /// kube-ipvs0); only once kube-proxy no longer runs on the node.
    #[arg(long)]
    pub kube_proxy: bool,
}
