use std::{net::IpAddr, time::Duration};

use anyhow::{Context as _, bail};
use clap::{CommandFactory as _, Parser as _};
use sluice::{
    cli::{Cli, Command, RunArgs},
    config::Dataplane,
    config::{self, Config},
    controller::{self, Controller, SyncSettings},
    dataplane::{
        fallback::{self, RuleDataplane, RuleSettings},
        loader,
        maps::PinnedMaps,
        probe,
        settings::datapath_settings,
    },
    inspect,
    model::NodeContext,
    observe::{self, Observer, Servers},
    source::{Feed, kube, manifests},
};
use tracing::{info, warn};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Trace(args) => trace(&args),
        Command::Cleanup(args) => {
            fallback::cleanup::remove_others(None, &args.pin_path, args.kube_proxy).map(|removed| {
                for line in &removed {
                    println!("removed {line}");
                }
                if removed.is_empty() {
                    println!("nothing to remove");
                }
            })
        }
        Command::Probe(args) => {
            let report = probe::probe(&args.pretend_missing);
            print!("{report}");
            match probe::decide(args.dataplane, &report) {
                Ok(decision) => {
                    println!("dataplane: {} ({})", decision.mode, decision.reason);
                    for w in decision.warnings {
                        println!("warning: {w}");
                    }
                    Ok(())
                }
                Err(e) => Err(anyhow::anyhow!(e)),
            }
        }
        Command::Inspect(args) => inspect::run(&args),
        Command::Completions(args) => {
            clap_complete::generate(
                args.shell,
                &mut Cli::command(),
                "sluice",
                &mut std::io::stdout(),
            );
            Ok(())
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn trace(args: &sluice::cli::TraceArgs) -> anyhow::Result<()> {
    use sluice::dataplane::trace::{Tracer, explain, matched_meta, synthetic_packet};
    let proto = if args.proto == "udp" {
        proxy_common::PROTO_UDP
    } else {
        proxy_common::PROTO_TCP
    };
    let maps = PinnedMaps::open(&args.pin_path)?;
    let mut tracer = Tracer::load(&args.pin_path)?;
    let traced = tracer.run(&synthetic_packet(args.from, args.to, proto))?;
    let explanation = explain(&traced, matched_meta(&maps, &traced.record).as_ref());
    if args.output == "json" {
        println!("{}", serde_json::to_string_pretty(&explanation)?);
    } else {
        println!("{} -> {}/{}", args.from, args.to, args.proto);
        if let Some(service) = &explanation.service {
            println!("  service   {service}");
        }
        for (i, step) in explanation.steps.iter().enumerate() {
            println!("  {}. {step}", i + 1);
        }
        if let Some(rewritten) = &explanation.rewritten {
            println!("  packet    {rewritten}");
        }
        println!("  verdict   {}", explanation.verdict);
    }
    Ok(())
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let (mut config, warnings) = match (&args.config, &args.sluice_config) {
        (None, None) => (Config::default(), Vec::new()),
        (kube_proxy, own) => config::load_files(kube_proxy.as_deref(), own.as_deref())?,
    };
    for warning in &warnings {
        warn!("{warning}");
    }
    config.apply_overrides(&args.overrides())?;
    if args.validate_config {
        println!("configuration is valid ({} warning(s))", warnings.len());
        println!("{config:#?}");
        return Ok(());
    }
    // Decided once, logged once: the probe's every missing feature and the choice.
    let report = probe::probe(&args.pretend_missing);
    for missing in report.missing_required() {
        warn!(feature = %missing, "BPF feature missing");
    }
    let decision = probe::decide(config.dataplane, &report).map_err(anyhow::Error::msg)?;
    for warning in &decision.warnings {
        warn!("{warning}");
    }
    info!(
        dataplane = %decision.mode,
        setting = %config.dataplane,
        kernel = %report.kernel,
        reason = %decision.reason,
        "dataplane chosen"
    );
    // The previous dataplane's state (Sluice's own or a kube-proxy's) would keep answering
    // for Services beside the new one.
    fallback::cleanup::switch_to(decision.mode, &config.pin_path);
    let ebpf = decision.mode == Dataplane::Ebpf;
    if ebpf && config.interfaces.is_empty() {
        bail!("no interface to attach to: pass --interface IFACE or set `interfaces`");
    }
    let datapath = if ebpf {
        let mut datapath = loader::load(&config.pin_path, &config.interfaces, config.maps)?;
        let datapath_settings = datapath_settings(&config);
        for warning in &datapath_settings.warnings {
            warn!("{warning}");
        }
        datapath
            .maps
            .configure(&datapath_settings)
            .context("writing the datapath's settings (SLUICE_CONFIG, SLUICE_LOCAL4)")?;
        datapath.attach_xdp(&config.xdp_interfaces, config.xdp_mode)?;
        Some(datapath)
    } else {
        None
    };
    let node_name = kube::node_name(config.hostname_override.as_deref())?;
    let node_addresses = if args.node_addresses.is_empty() {
        interface_addresses(&config.interfaces)?
    } else {
        args.node_addresses.clone()
    };
    let node = NodeContext {
        node_port_addresses: config.node_port_addresses.clone(),
        localhost_node_ports: config.localhost_node_ports,
        // Seeded with the resolved name so endpoints are recognised as local even before (or
        // without) this node's Node object.
        ..NodeContext::new(Some(node_name.clone()), node_addresses)
    };
    let settings = SyncSettings {
        min_sync_period: config.min_sync_period,
        sync_period: config.sync_period,
        scheduler: config.scheduler,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let observer = Observer::new(config.sync_period);
        observer.metrics.set_dataplane_mode(decision.mode.as_str());
        // Bound before anything runs, so a busy port fails the start with its setting named.
        let servers = Servers::bind(
            config.metrics_bind_address,
            config.healthz_bind_address,
            &observer,
        )
        .await?;
        info!(
            metrics = %servers.metrics_addr(),
            healthz = %servers.healthz_addr(),
            "serving /metrics, /healthz and /livez"
        );
        let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
        let mut stop = shutdown_rx.clone();
        tokio::spawn(servers.run(async move {
            let _ = stop.wait_for(|s| *s).await;
        }));

        let feed = Feed::new();
        let rx = feed.subscribe();
        let source = match config.manifests_dir.clone() {
            Some(dir) => {
                info!(dir = %dir.display(), "serving Services from a manifests folder");
                let metrics = observer.metrics.clone();
                tokio::spawn(async move {
                    manifests::watch(dir, args.poll_interval, feed, move |problems| {
                        for _ in 0..problems {
                            metrics.record_skipped("malformed_manifest");
                        }
                    })
                    .await;
                    anyhow::Ok(())
                })
            }
            None => {
                let client =
                    kube::client_from(config.client_connection.kubeconfig.as_deref()).await?;
                info!(node = %node_name, "watching the Kubernetes API");
                tokio::spawn(kube::run(client, node_name, feed))
            }
        };
        let controller = match datapath {
            Some(datapath) => {
                tokio::spawn(controller::mirror_datapath_counters(
                    PinnedMaps::open(&config.pin_path)?,
                    observer.metrics.clone(),
                    Duration::from_secs(1),
                ));
                Controller::new(
                    datapath.maps,
                    node,
                    settings,
                    observer.clone(),
                    datapath.capacities,
                )
            }
            None => {
                let (rule_settings, warnings) =
                    RuleSettings::from_config(&config, &node.node_addresses);
                for warning in &warnings {
                    warn!("{warning}");
                }
                let rules: Box<dyn RuleDataplane> = match decision.mode {
                    Dataplane::Iptables => {
                        Box::new(fallback::iptables::Iptables::new(rule_settings))
                    }
                    Dataplane::Ipvs => Box::new(fallback::ipvs::Ipvs::new(rule_settings)),
                    _ => Box::new(fallback::nftables::Nftables::new(rule_settings)),
                };
                Controller::with_rules(rules, node, settings, observer.clone())
            }
        };
        tokio::spawn(observe::service_health::run(
            controller.health_checks(),
            observer,
        ));
        let result = tokio::select! {
            () = controller.run(rx) => Ok(()),
            joined = source => match joined {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.context("the source of Services stopped")),
                Err(e) => Err(anyhow::anyhow!("the source of Services panicked: {e}")),
            },
            () = shutdown_signal() => {
                info!("stopping; the dataplane stays in place (`sluice cleanup` removes it)");
                Ok(())
            }
        };
        let _ = shutdown_tx.send(true);
        result
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn interface_addresses(interfaces: &[String]) -> anyhow::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for ifaddr in nix::ifaddrs::getifaddrs().context("listing interface addresses")? {
        // With no interface named (a fallback dataplane needs none), every address but the
        // loopback's answers NodePorts, as kube-proxy's default nodePortAddresses.
        let listed = if interfaces.is_empty() {
            ifaddr.interface_name != "lo"
        } else {
            interfaces.contains(&ifaddr.interface_name)
        };
        if !listed {
            continue;
        }
        if let Some(sin) = ifaddr.address.as_ref().and_then(|a| a.as_sockaddr_in()) {
            out.push(IpAddr::V4(sin.ip()));
        } else if let Some(sin6) = ifaddr.address.as_ref().and_then(|a| a.as_sockaddr_in6()) {
            out.push(IpAddr::V6(sin6.ip()));
        }
    }
    Ok(out)
}
