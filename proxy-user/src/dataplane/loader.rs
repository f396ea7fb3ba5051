//! Loading, attaching and pinning the datapath; and removing it (thin kernel layer).
//!
//! Links are pinned so the datapath outlives the process: a restarted `sluice run` loads a new
//! program and swaps it into each pinned link atomically, reusing the pinned maps — so
//! conntrack, and with it every established flow, survives.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::MapInfo,
    programs::{
        LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode as AyaXdpMode,
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
        xdp::XdpLink,
    },
};
use proxy_common::map_names;
use tracing::{info, warn};

use super::maps::PinnedMaps;
pub use crate::config::MapSizes;
use crate::config::XdpMode;

pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/sluice";
const TC_PROGRAM: &str = "sluice_tc_ingress";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const LINKS_DIR: &str = "links";

/// The loaded datapath. Dropping it leaves the programs attached and the maps pinned.
pub struct Datapath {
    _ebpf: Ebpf,
    pub maps: PinnedMaps,
    /// The maps' real capacities (an adopted map keeps the size it was made with).
    pub capacities: MapSizes,
    pub pin_dir: PathBuf,
}

/// Loads the programs, creates or adopts the pinned maps, and attaches to `interfaces`.
pub fn load(pin_dir: &Path, interfaces: &[String], sizes: MapSizes) -> anyhow::Result<Datapath> {
    check_privileges()?;
    check_bpffs(pin_dir)?;
    let links_dir = pin_dir.join(LINKS_DIR);
    fs::create_dir_all(&links_dir)
        .with_context(|| format!("creating pin directory {}", links_dir.display()))?;
    let adopted = pin_dir.join(map_names::SERVICES).exists();

    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(pin_dir)
        .map_max_entries(map_names::SERVICES, sizes.services)
        .map_max_entries(map_names::SLOTS, sizes.slots)
        .map_max_entries(map_names::BACKENDS, sizes.backends)
        .map_max_entries(map_names::CONNTRACK, sizes.conntrack)
        .load(crate::EBPF_OBJECT)
        .context("loading the eBPF object (the kernel verifier's log, if any, is above)")?;
    let program: &mut SchedClassifier = ebpf
        .program_mut(TC_PROGRAM)
        .with_context(|| format!("program {TC_PROGRAM} missing from the eBPF object"))?
        .try_into()?;
    program
        .load()
        .with_context(|| format!("loading program {TC_PROGRAM} into the kernel"))?;

    for iface in interfaces {
        attach_tc_ingress(program, &links_dir, iface)?;
    }
    detach_unlisted(&links_dir, interfaces)?;
    info!(
        pin_dir = %pin_dir.display(),
        ?interfaces,
        adopted_maps = adopted,
        "datapath loaded"
    );
    let capacities = pinned_capacities(pin_dir, sizes)?;
    let maps = PinnedMaps::open(pin_dir)?;
    Ok(Datapath {
        _ebpf: ebpf,
        maps,
        capacities,
        pin_dir: pin_dir.to_path_buf(),
    })
}

const XDP_PROGRAM: &str = "sluice_xdp";
const XDP_LINK_PREFIX: &str = "xdp-";

impl Datapath {
    /// Attaches the XDP fast path to `interfaces` (and detaches it from interfaces no longer
    /// listed). `Auto` tries the driver's native mode and falls back to generic, saying so.
    pub fn attach_xdp(&mut self, interfaces: &[String], mode: XdpMode) -> anyhow::Result<()> {
        let links_dir = self.pin_dir.join(LINKS_DIR);
        let wanted: Vec<&String> = if mode == XdpMode::Off {
            Vec::new()
        } else {
            interfaces.iter().collect()
        };
        for entry in fs::read_dir(&links_dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(iface) = xdp_link_iface(&name)
                && !wanted.iter().any(|w| *w == iface)
            {
                warn!(link = %name, "detaching XDP from an interface no longer configured");
                remove_link(&entry.path())?;
            }
        }
        if wanted.is_empty() {
            return Ok(());
        }
        let program: &mut Xdp = self
            ._ebpf
            .program_mut(XDP_PROGRAM)
            .with_context(|| format!("program {XDP_PROGRAM} missing from the eBPF object"))?
            .try_into()?;
        if program.fd().is_err() {
            program
                .load()
                .with_context(|| format!("loading program {XDP_PROGRAM} into the kernel"))?;
        }
        for iface in wanted {
            attach_xdp_to(program, &links_dir, iface, mode)?;
        }
        Ok(())
    }
}

fn xdp_link_iface(file_name: &str) -> Option<&str> {
    let rest = file_name.strip_prefix(XDP_LINK_PREFIX)?;
    Some(&rest[..rest.rfind('-')?])
}

fn attach_xdp_to(
    program: &mut Xdp,
    links_dir: &Path,
    iface: &str,
    mode: XdpMode,
) -> anyhow::Result<()> {
    let ifindex = nix::net::if_::if_nametoindex(iface)
        .with_context(|| format!("XDP interface {iface} not found (check `xdp.interfaces`)"))?;
    let pin = links_dir.join(format!("{XDP_LINK_PREFIX}{iface}-{ifindex}"));
    if let Ok(pinned) = PinnedLink::from_pin(&pin) {
        let link = XdpLink::try_from(FdLink::from(pinned)).context("pinned link is not XDP")?;
        let id = program
            .attach_to_link(link)
            .with_context(|| format!("replacing the XDP program on {iface}"))?;
        drop(program.take_link(id)?);
        info!(iface, "replaced program in pinned XDP link");
        return Ok(());
    }
    let modes: &[(AyaXdpMode, &str)] = match mode {
        XdpMode::Native => &[(AyaXdpMode::Driver, "native")],
        XdpMode::Generic => &[(AyaXdpMode::Skb, "generic")],
        XdpMode::Auto => &[(AyaXdpMode::Driver, "native"), (AyaXdpMode::Skb, "generic")],
        XdpMode::Off => &[],
    };
    let mut last_error = None;
    for (aya_mode, name) in modes {
        match program.attach(iface, *aya_mode) {
            Ok(id) => {
                let link: FdLink = program.take_link(id)?.try_into().with_context(|| {
                    format!("XDP on {iface} was attached without a BPF link (kernel < 5.9?)")
                })?;
                link.pin(&pin)
                    .with_context(|| format!("pinning link at {}", pin.display()))?;
                info!(iface, mode = name, "attached XDP fast path");
                return Ok(());
            }
            Err(e) => {
                if mode == XdpMode::Auto {
                    warn!(iface, mode = name, error = %e, "XDP mode not available; trying the next");
                }
                last_error = Some(e);
            }
        }
    }
    Err(
        anyhow::Error::from(last_error.expect("at least one mode is tried"))
            .context(format!("attaching XDP to {iface} ({} mode)", mode.as_str())),
    )
}

/// The sizes the kernel's maps really have. A pinned map is adopted as it is (that is what
/// keeps conntrack across restarts), so a changed size setting only applies after `sluice
/// cleanup`; and a map whose layout differs was made by another Sluice version.
fn pinned_capacities(pin_dir: &Path, wanted: MapSizes) -> anyhow::Result<MapSizes> {
    use std::mem::size_of;

    use proxy_common::{Backend, CtKey, CtValue, ServiceKey, ServiceValue, SlotKey};
    let check = |name: &str, wanted: u32, key: usize, value: usize| -> anyhow::Result<u32> {
        let info = MapInfo::from_pin(pin_dir.join(name))
            .with_context(|| format!("reading pinned map {name}"))?;
        if (info.key_size() as usize, info.value_size() as usize) != (key, value) {
            bail!(
                "pinned map {name} has {}-byte keys and {}-byte values where this Sluice expects \
                 {key} and {value}: another Sluice version made it; run `sluice cleanup` (this \
                 drops tracked connections) and start again",
                info.key_size(),
                info.value_size()
            );
        }
        if info.max_entries() != wanted {
            warn!(
                map = name,
                pinned = info.max_entries(),
                configured = wanted,
                "the pinned map keeps its size; the configured size applies after `sluice cleanup` \
                 and a restart (which drops tracked connections)"
            );
        }
        Ok(info.max_entries())
    };
    Ok(MapSizes {
        services: check(
            map_names::SERVICES,
            wanted.services,
            size_of::<ServiceKey>(),
            size_of::<ServiceValue>(),
        )?,
        slots: check(
            map_names::SLOTS,
            wanted.slots,
            size_of::<SlotKey>(),
            size_of::<u32>(),
        )?,
        backends: check(
            map_names::BACKENDS,
            wanted.backends,
            size_of::<u32>(),
            size_of::<Backend>(),
        )?,
        conntrack: check(
            map_names::CONNTRACK,
            wanted.conntrack,
            size_of::<CtKey>(),
            size_of::<CtValue>(),
        )?,
    })
}

fn attach_tc_ingress(
    program: &mut SchedClassifier,
    links_dir: &Path,
    iface: &str,
) -> anyhow::Result<()> {
    let ifindex = nix::net::if_::if_nametoindex(iface).with_context(|| {
        format!("interface {iface} not found (check --interface / `interfaces` in the config)")
    })?;
    // The ifindex is part of the pin name: a link pinned for an interface that was deleted and
    // re-created under the same name is defunct and must not be reused.
    let pin = links_dir.join(format!("tc-ingress-{iface}-{ifindex}"));
    match PinnedLink::from_pin(&pin) {
        Ok(pinned) => {
            let link = SchedClassifierLink::try_from(FdLink::from(pinned))
                .context("pinned link is not a TCX link")?;
            let id = program
                .attach_to_link(link)
                .with_context(|| format!("replacing the program on {iface}"))?;
            // The pin keeps the link; this process's handle can go.
            drop(program.take_link(id)?);
            info!(iface, "replaced program in pinned tc link");
        }
        Err(_) => {
            unpin_links_for(links_dir, iface)?;
            let id = program
                .attach_with_options(
                    iface,
                    TcAttachType::Ingress,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
                .with_context(|| {
                    format!("attaching to {iface} ingress (needs TCX, Linux ≥ 6.6)")
                })?;
            let link: FdLink = program.take_link(id)?.try_into()?;
            link.pin(&pin)
                .with_context(|| format!("pinning link at {}", pin.display()))?;
            info!(iface, "attached tc ingress");
        }
    }
    Ok(())
}

fn link_iface(file_name: &str) -> Option<&str> {
    let rest = file_name.strip_prefix("tc-ingress-")?;
    Some(&rest[..rest.rfind('-')?])
}

fn unpin_links_for(links_dir: &Path, iface: &str) -> io::Result<()> {
    for entry in fs::read_dir(links_dir)? {
        let entry = entry?;
        if link_iface(&entry.file_name().to_string_lossy()) == Some(iface) {
            remove_link(&entry.path())?;
        }
    }
    Ok(())
}

/// Detaches a pinned link now, then removes its pin.
///
/// Removing the pin alone only drops a reference: the kernel releases (and so detaches) the
/// link from deferred work, which on a loaded machine ran long after cleanup had returned,
/// and never while any process still holds the link open.
fn remove_link(pin: &Path) -> io::Result<()> {
    if let Err(e) = super::link_detach::detach_pinned_link(pin) {
        warn!(link = %pin.display(), error = %e, "BPF_LINK_DETACH failed; unpinning only");
    }
    fs::remove_file(pin)
}

/// Detaches links of interfaces no longer configured.
fn detach_unlisted(links_dir: &Path, interfaces: &[String]) -> io::Result<()> {
    for entry in fs::read_dir(links_dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if xdp_link_iface(&name).is_some() {
            continue; // managed by `Datapath::attach_xdp`
        }
        if link_iface(&name).is_none_or(|i| !interfaces.iter().any(|x| x == i)) {
            warn!(link = %name, "detaching from an interface no longer configured");
            remove_link(&entry.path())?;
        }
    }
    Ok(())
}

/// What `sluice cleanup` removed.
#[derive(Debug, Default)]
pub struct CleanupReport {
    pub links: Vec<String>,
    pub maps: Vec<String>,
}

/// Detaches every program Sluice attached (by removing its pinned links) and removes the pinned
/// maps and the pin directory.
pub fn cleanup(pin_dir: &Path) -> anyhow::Result<CleanupReport> {
    check_privileges()?;
    let mut report = CleanupReport::default();
    if !pin_dir.exists() {
        return Ok(report);
    }
    let links_dir = pin_dir.join(LINKS_DIR);
    if links_dir.exists() {
        for entry in fs::read_dir(&links_dir)? {
            let entry = entry?;
            remove_link(&entry.path())
                .with_context(|| format!("removing {}", entry.path().display()))?;
            report
                .links
                .push(entry.file_name().to_string_lossy().into_owned());
        }
        fs::remove_dir(&links_dir)?;
    }
    for entry in fs::read_dir(pin_dir)? {
        let entry = entry?;
        fs::remove_file(entry.path())
            .with_context(|| format!("removing {}", entry.path().display()))?;
        report
            .maps
            .push(entry.file_name().to_string_lossy().into_owned());
    }
    fs::remove_dir(pin_dir).with_context(|| format!("removing {}", pin_dir.display()))?;
    Ok(report)
}

fn check_privileges() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "Sluice must run as root (uid 0) with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON to load, \
             attach and pin its BPF programs (and CAP_SYS_ADMIN to mount bpffs when /sys/fs/bpf \
             is not mounted)"
        );
    }
    Ok(())
}

fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
}

/// Makes sure `pin_dir` lies on a BPF filesystem, mounting one at /sys/fs/bpf when nothing is
/// mounted there yet (a fresh node often has none).
fn check_bpffs(pin_dir: &Path) -> anyhow::Result<()> {
    let probe = pin_dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    if is_bpffs(probe) {
        return Ok(());
    }
    let default_root = Path::new("/sys/fs/bpf");
    if pin_dir.starts_with(default_root) && default_root.is_dir() {
        nix::mount::mount(
            Some("bpf"),
            default_root,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .with_context(|| format!("mounting a BPF filesystem at {}", default_root.display()))?;
        warn!(path = %default_root.display(), "no BPF filesystem was mounted; mounted one");
        if is_bpffs(probe) {
            return Ok(());
        }
    }
    bail!(
        "{} is not on a BPF filesystem: mount one with `mount -t bpf bpf /sys/fs/bpf` (inside \
         `ip netns exec`, /sys/fs/bpf is hidden: use nsenter instead)",
        probe.display()
    );
}
