//! `sluice inspect`: the live datapath, read from its pinned maps, for operators.
//!
//! Three layers, so that everything but the first is tested without a kernel:
//! [`source`] reads the maps into plain data, [`views`] turns that into rows (the JSON
//! documents of docs/cli.md), and [`render`] prints rows as tables or JSON.
//!
//! Reading pins rather than asking `sluice run` means the commands work whether or not it is
//! up, and show what the kernel really holds rather than what the controller believes.

pub mod render;
pub mod source;
pub mod views;

use std::{
    io::{self, IsTerminal as _, Write},
    time::{Duration, SystemTime},
};

use anyhow::bail;
use proxy_common::map_names;
use serde::Serialize;
pub use views::{ConntrackFilter, EndpointFilter, ProtocolFilter, ServiceRef};

use self::{render::Block, source::Parts};
use crate::{
    cli::{InspectArgs, InspectCommand, OutputFormat},
    dataplane::maps::PinnedMaps,
    observe::clock::format_rfc3339,
};

/// Runs one `sluice inspect` command, once or, with `--watch`, until interrupted.
pub fn run(args: &InspectArgs) -> anyhow::Result<()> {
    let stdout = io::stdout();
    let terminal = stdout.is_terminal();
    // https://no-color.org: any non-empty NO_COLOR turns colour off.
    let colour = terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let Some(interval) = args.common.watch else {
        let mut out = Vec::new();
        render_once(args, &mut out, colour, false)?;
        return write_out(&out);
    };
    if interval.is_zero() {
        // It would re-read every map in a busy loop.
        bail!("--watch needs an interval above zero, e.g. --watch=500ms");
    }
    let mut first = true;
    loop {
        let mut out = Vec::new();
        if args.common.output == OutputFormat::Table {
            if terminal {
                // Home and clear, so the table redraws in place like watch(1).
                out.extend_from_slice(b"\x1b[H\x1b[2J");
            } else if !first {
                out.push(b'\n');
            }
            writeln!(
                out,
                "Every {}: sluice inspect {}    {}\n",
                humantime(interval),
                args.what.name(),
                format_rfc3339(SystemTime::now())
            )?;
        }
        match render_once(args, &mut out, colour, true) {
            Ok(()) => write_out(&out)?,
            // Nothing to show from the start: say so once and stop, as without --watch.
            Err(e) if first => return Err(e),
            // The maps went away (e.g. `sluice cleanup`) or came back changed: keep watching.
            Err(e) => eprintln!("sluice: {e:#}"),
        }
        first = false;
        std::thread::sleep(interval);
    }
}

/// Writes everything at once (less flicker when redrawing); a reader that went away (`| head`)
/// is not an error.
fn write_out(bytes: &[u8]) -> anyhow::Result<()> {
    let mut stdout = io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => std::process::exit(0),
        other => Ok(other?),
    }
}

fn humantime(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

fn render_once(
    args: &InspectArgs,
    out: &mut Vec<u8>,
    colour: bool,
    watching: bool,
) -> anyhow::Result<()> {
    let pin = &args.common.pin_path;
    let maps = PinnedMaps::open(pin)?;
    let emit = Emit {
        json: args.common.output == OutputFormat::Json,
        colour,
        watching,
    };
    match &args.what {
        InspectCommand::Services { namespace } => {
            let contents = source::read(&maps, pin, Parts::default())?;
            let view = views::services(&contents, namespace.as_deref());
            emit.write(out, &view, |v| render::services(v, namespace.as_deref()))?;
        }
        InspectCommand::Backends => {
            let contents = source::read(&maps, pin, Parts::default())?;
            let view = views::backends(&contents);
            emit.write(out, &view, render::backends)?;
        }
        InspectCommand::Service { service } => {
            let parts = Parts {
                conntrack: true,
                ..Parts::default()
            };
            let contents = source::read(&maps, pin, parts)?;
            let Some(view) = views::service(&contents, service) else {
                bail!("{}", no_frontend(service));
            };
            emit.write(out, &view, render::service)?;
        }
        InspectCommand::Conntrack(filter) => {
            let parts = Parts {
                conntrack: true,
                ..Parts::default()
            };
            let contents = source::read(&maps, pin, parts)?;
            let view = views::conntrack(&contents, &filter.filter(), !filter.summary);
            emit.write(out, &view, |v| render::conntrack(v, filter.summary))?;
        }
        InspectCommand::Stats => {
            let parts = Parts {
                fill: true,
                ..Parts::default()
            };
            let contents = source::read(&maps, pin, parts)?;
            let view = views::stats(&contents);
            emit.write(out, &view, render::stats)?;
        }
        InspectCommand::Affinity { service, client } => {
            let parts = Parts {
                affinity: true,
                ..Parts::default()
            };
            let contents = source::read(&maps, pin, parts)?;
            let Some(view) = views::affinity(&contents, service.as_ref(), *client) else {
                bail!(
                    "this datapath has no session-affinity map ({} is not pinned: the running \
                     datapath predates session affinity)",
                    map_names::AFFINITY
                );
            };
            emit.write(out, &view, render::affinity)?;
        }
        // The maps were opened first so that a missing pin or privilege is reported as for
        // every other subcommand; what follows is the datapath's own limit, not a failure to
        // read it.
        InspectCommand::Maglev { service, .. } => {
            let contents = source::read(&maps, pin, Parts::default())?;
            let Some(algorithms) = views::algorithms(&contents, service) else {
                bail!("{}", no_frontend(service));
            };
            if algorithms.contains("maglev") {
                bail!(
                    "the datapath has no Maglev lookup tables yet: {service} asks for Maglev \
                     and is served at random until they land"
                );
            }
            bail!(
                "the datapath has no Maglev lookup tables yet, and {service} does not use \
                 Maglev (algorithm: {})",
                algorithms.into_iter().collect::<Vec<_>>().join(", ")
            );
        }
    }
    Ok(())
}

fn no_frontend(service: &ServiceRef) -> String {
    format!(
        "Service {service} has no frontend in the datapath (no such Service, no usable \
         address, or not synced yet): see `sluice inspect services`"
    )
}

/// How a view is printed.
struct Emit {
    json: bool,
    colour: bool,
    watching: bool,
}

impl Emit {
    /// Writes `view` as JSON, or as the blocks `table` makes of it (built only when needed).
    fn write<V: Serialize>(
        &self,
        out: &mut Vec<u8>,
        view: &V,
        table: impl FnOnce(&V) -> Vec<Block>,
    ) -> io::Result<()> {
        if self.json {
            render::write_json(out, view, self.watching)
        } else {
            render::write_blocks(out, &table(view), self.colour)
        }
    }
}

impl InspectCommand {
    /// The subcommand's name, for the `--watch` header.
    fn name(&self) -> String {
        match self {
            Self::Services { .. } => "services".into(),
            Self::Backends => "backends".into(),
            Self::Service { service } => format!("service {service}"),
            Self::Maglev { service, .. } => format!("maglev {service}"),
            Self::Conntrack(_) => "conntrack".into(),
            Self::Affinity { .. } => "affinity".into(),
            Self::Stats => "stats".into(),
        }
    }
}

#[cfg(test)]
mod tests;
