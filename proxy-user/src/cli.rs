//! Command-line interface of the `sluice` binary.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::dataplane::loader::DEFAULT_PIN_PATH;

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
    /// Detach every program Sluice attached and remove its pinned maps.
    ///
    /// Example: sluice cleanup
    Cleanup(CleanupArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Folder of Service and EndpointSlice YAML to serve (no cluster needed).
    #[arg(long, value_name = "DIR")]
    pub manifests: PathBuf,
    /// Interface to attach to (repeat for several). Traffic to Services and replies from
    /// backends must enter the node through one of them.
    #[arg(long = "interface", short = 'i', value_name = "IFACE", required = true)]
    pub interfaces: Vec<String>,
    /// bpffs directory where maps and links are pinned.
    #[arg(long, default_value = DEFAULT_PIN_PATH, value_name = "DIR")]
    pub pin_path: PathBuf,
    /// Address NodePorts answer on (repeat); default: the addresses of the attached interfaces.
    #[arg(long = "node-address", value_name = "IP")]
    pub node_addresses: Vec<IpAddr>,
    /// How often the manifests folder is checked for changes.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,
    /// Changes arriving within this period are applied together.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub min_sync_period: Duration,
    /// Interval of full reconciles that repair drift in the maps.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub sync_period: Duration,
}

#[derive(Debug, Args)]
pub struct CleanupArgs {
    #[arg(long, default_value = DEFAULT_PIN_PATH, value_name = "DIR")]
    pub pin_path: PathBuf,
}
