//! Views → text: aligned tables for people (coloured only on a terminal) and JSON for scripts.

use std::io::{self, Write};

use serde::Serialize;

use super::views::{
    AffinityView, BackendsView, ConntrackView, Frontend, ServiceView, ServicesView, StatsView,
    Traffic, affinity_state, slot_state,
};

/// How a cell is emphasised on a terminal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tone {
    Plain,
    Good,
    Warn,
    Bad,
    Dim,
}

impl Tone {
    fn code(self) -> Option<&'static str> {
        match self {
            Self::Plain => None,
            Self::Good => Some("32"),
            Self::Warn => Some("33"),
            Self::Bad => Some("31"),
            Self::Dim => Some("2"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cell {
    pub text: String,
    pub tone: Tone,
}

impl Cell {
    fn new(text: impl Into<String>, tone: Tone) -> Self {
        Self {
            text: text.into(),
            tone,
        }
    }
}

impl From<String> for Cell {
    fn from(text: String) -> Self {
        Self::new(text, Tone::Plain)
    }
}

impl From<&str> for Cell {
    fn from(text: &str) -> Self {
        Self::new(text, Tone::Plain)
    }
}

impl From<u64> for Cell {
    fn from(n: u64) -> Self {
        Self::new(n.to_string(), Tone::Plain)
    }
}

/// A table: a header row and rows of the same width. Columns named in `numeric` are
/// right-aligned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    pub headers: Vec<&'static str>,
    pub numeric: Vec<&'static str>,
    pub rows: Vec<Vec<Cell>>,
    /// Printed instead of the table when it has no rows.
    pub empty: String,
}

impl Table {
    fn new(headers: &[&'static str], numeric: &[&'static str], empty: impl Into<String>) -> Self {
        Self {
            headers: headers.to_vec(),
            numeric: numeric.to_vec(),
            rows: Vec::new(),
            empty: empty.into(),
        }
    }

    fn push(&mut self, row: Vec<Cell>) {
        debug_assert_eq!(row.len(), self.headers.len());
        self.rows.push(row);
    }
}

/// What a view prints, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Block {
    Line(String),
    Table(Table),
}

/// Writes blocks; `colour` adds ANSI styles (callers pass true only for a terminal).
pub fn write_blocks(out: &mut impl Write, blocks: &[Block], colour: bool) -> io::Result<()> {
    for block in blocks {
        match block {
            Block::Line(line) => writeln!(out, "{line}")?,
            Block::Table(table) => write_table(out, table, colour)?,
        }
    }
    Ok(())
}

fn write_table(out: &mut impl Write, table: &Table, colour: bool) -> io::Result<()> {
    if table.rows.is_empty() {
        return writeln!(out, "{}", table.empty);
    }
    let mut widths: Vec<usize> = table.headers.iter().map(|h| h.chars().count()).collect();
    for row in &table.rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.text.chars().count());
        }
    }
    let last = widths.len() - 1;
    let header: Vec<Cell> = table
        .headers
        .iter()
        .map(|h| Cell::new(*h, Tone::Plain))
        .collect();
    for (index, row) in std::iter::once(&header).chain(&table.rows).enumerate() {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            let pad = widths[i] - cell.text.chars().count();
            let right = table.numeric.contains(&table.headers[i]);
            if i > 0 {
                line.push_str("  ");
            }
            if right {
                line.extend(std::iter::repeat_n(' ', pad));
            }
            let code = if index == 0 {
                Some("1")
            } else {
                cell.tone.code()
            };
            match code.filter(|_| colour) {
                Some(code) => line.push_str(&format!("\x1b[{code}m{}\x1b[0m", cell.text)),
                None => line.push_str(&cell.text),
            }
            // No trailing blanks after the last column.
            if !right && i != last {
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// Pretty JSON for one answer; one compact line per refresh when watching, so a script can
/// read a stream of documents line by line.
pub fn write_json(out: &mut impl Write, view: &impl Serialize, one_line: bool) -> io::Result<()> {
    if one_line {
        serde_json::to_writer(&mut *out, view)?;
    } else {
        serde_json::to_writer_pretty(&mut *out, view)?;
    }
    writeln!(out)
}

fn dash_if_empty(items: &[String]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join(",")
    }
}

fn affinity_text(seconds: u32) -> String {
    if seconds == 0 {
        "-".into()
    } else {
        format!("{seconds}s")
    }
}

fn backend_count(f: &Frontend) -> Cell {
    let tone = if f.backend_count == 0 && !f.is_split_marker() {
        Tone::Warn
    } else {
        Tone::Plain
    };
    Cell::new(f.backend_count.to_string(), tone)
}

fn service_cell(label: String) -> Cell {
    let tone = if label == "-" { Tone::Dim } else { Tone::Plain };
    Cell::new(label, tone)
}

pub fn services(view: &ServicesView, namespace: Option<&str>) -> Vec<Block> {
    let mut t = Table::new(
        &[
            "SERVICE",
            "PORT",
            "KIND",
            "FRONTEND",
            "SCOPE",
            "ALGORITHM",
            "AFFINITY",
            "BACKENDS",
            "FLAGS",
        ],
        &["BACKENDS"],
        match namespace {
            Some(ns) => format!("no frontends of namespace {ns} in the datapath"),
            None => "no frontends in the datapath".into(),
        },
    );
    for f in &view.frontends {
        t.push(vec![
            service_cell(f.service()),
            f.port_name.as_deref().unwrap_or("-").into(),
            f.kind.into(),
            f.endpoint().into(),
            f.scope.into(),
            f.algorithm.as_str().into(),
            affinity_text(f.affinity_timeout_seconds).into(),
            backend_count(f),
            dash_if_empty(&f.flags).into(),
        ]);
    }
    vec![Block::Table(t)]
}

fn traffic_cells(t: &Traffic) -> [Cell; 4] {
    [
        t.forward_packets.into(),
        t.forward_bytes.into(),
        t.reply_packets.into(),
        t.reply_bytes.into(),
    ]
}

const TRAFFIC_HEADERS: [&str; 4] = ["FWD PKTS", "FWD BYTES", "REPLY PKTS", "REPLY BYTES"];

pub fn backends(view: &BackendsView) -> Vec<Block> {
    let mut headers = vec!["ID", "BACKEND", "SERVICES", "FRONTENDS"];
    headers.extend(TRAFFIC_HEADERS);
    let mut numeric = vec!["ID", "FRONTENDS"];
    numeric.extend(TRAFFIC_HEADERS);
    let mut t = Table::new(&headers, &numeric, "no backends in the datapath");
    for b in &view.backends {
        let services = if b.services.is_empty() {
            // Not in any live bank: being added, or left for the next sync to remove.
            Cell::new("-", Tone::Dim)
        } else {
            b.services.join(",").into()
        };
        let mut row = vec![
            u64::from(b.id).into(),
            format!("{}:{}/{}", b.address, b.port, b.protocol).into(),
            services,
            u64::from(b.frontends).into(),
        ];
        row.extend(traffic_cells(&b.traffic));
        t.push(row);
    }
    vec![Block::Table(t)]
}

pub fn service(view: &ServiceView) -> Vec<Block> {
    let mut blocks = vec![Block::Line(format!(
        "Service {}/{}: {} frontend entr{}",
        view.namespace,
        view.name,
        view.frontends.len(),
        if view.frontends.len() == 1 {
            "y"
        } else {
            "ies"
        }
    ))];
    let mut t = Table::new(
        &[
            "FRONTEND",
            "PORT",
            "KIND",
            "SCOPE",
            "ID",
            "BANK",
            "ALGORITHM",
            "AFFINITY",
            "BACKENDS",
            "FLAGS",
        ],
        &["ID", "BANK", "BACKENDS"],
        "",
    );
    for sf in &view.frontends {
        let f = &sf.frontend;
        t.push(vec![
            f.endpoint().into(),
            f.port_name.as_deref().unwrap_or("-").into(),
            f.kind.into(),
            f.scope.into(),
            u64::from(f.service_id).into(),
            u64::from(f.bank).into(),
            f.algorithm.as_str().into(),
            affinity_text(f.affinity_timeout_seconds).into(),
            backend_count(f),
            dash_if_empty(&f.flags).into(),
        ]);
    }
    blocks.push(Block::Table(t));
    for sf in &view.frontends {
        let f = &sf.frontend;
        blocks.push(Block::Line(String::new()));
        blocks.push(Block::Line(format!(
            "{} ({}, scope {}, live bank {}):",
            f.endpoint(),
            f.kind,
            f.scope,
            f.bank
        )));
        let empty = if f.is_split_marker() {
            "  no slots: clients are split by scope (see the internal and external entries)"
        } else {
            "  no backend slots: packets are refused, or dropped (drop-when-empty)"
        };
        let mut slots = Table::new(
            &["SLOT", "BANK", "BACKEND ID", "BACKEND", "STATE", "FLOWS"],
            &["SLOT", "BANK", "BACKEND ID", "FLOWS"],
            empty,
        );
        for s in &sf.slots {
            let backend = match (s.address, s.port) {
                (Some(a), Some(p)) => format!("{a}:{p}"),
                _ => "-".into(),
            };
            let tone = match s.state {
                slot_state::LIVE => Tone::Good,
                slot_state::IDLE => Tone::Dim,
                _ => Tone::Bad,
            };
            slots.push(vec![
                u64::from(s.slot).into(),
                u64::from(s.bank).into(),
                s.backend_id
                    .map_or_else(|| "-".into(), |id| id.to_string())
                    .into(),
                backend.into(),
                Cell::new(s.state, tone),
                s.flows.into(),
            ]);
        }
        blocks.push(Block::Table(slots));
    }
    blocks
}

/// `1h2m`, `3m4s`, `5.2s`: idle times at a glance.
fn human_seconds(seconds: f64) -> String {
    let whole = seconds as u64;
    match whole {
        0..60 => format!("{seconds:.1}s"),
        60..3600 => format!("{}m{}s", whole / 60, whole % 60),
        3600..86_400 => format!("{}h{}m", whole / 3600, whole % 3600 / 60),
        _ => format!("{}d{}h", whole / 86_400, whole % 86_400 / 3600),
    }
}

pub fn conntrack(view: &ConntrackView, summary: bool) -> Vec<Block> {
    let mut blocks = Vec::new();
    if !summary {
        let mut t = Table::new(
            &[
                "PROTO", "CLIENT", "FRONTEND", "BACKEND", "SNAT", "STATE", "IDLE", "SERVICE",
                "FLAGS",
            ],
            &["IDLE"],
            "no tracked flows match",
        );
        for f in &view.flows {
            let snat = match (f.snat_address, f.snat_port) {
                (Some(a), Some(p)) => format!("{a}:{p}"),
                _ => "-".into(),
            };
            let (state, tone) = if f.expired {
                (format!("{} (expired)", f.state), Tone::Dim)
            } else {
                (f.state.to_string(), Tone::Plain)
            };
            t.push(vec![
                f.protocol.as_str().into(),
                format!("{}:{}", f.client_address, f.client_port).into(),
                format!("{}:{}", f.frontend_address, f.frontend_port).into(),
                format!("{}:{}", f.backend_address, f.backend_port).into(),
                snat.into(),
                Cell::new(state, tone),
                human_seconds(f.idle_seconds).into(),
                service_cell(f.service()),
                dash_if_empty(&f.flags).into(),
            ]);
        }
        blocks.push(Block::Table(t));
        blocks.push(Block::Line(String::new()));
    }
    let c = &view.counts;
    let join = |m: Vec<String>| {
        if m.is_empty() {
            "-".to_string()
        } else {
            m.join(", ")
        }
    };
    blocks.push(Block::Line(format!(
        "{} flow(s) match: by protocol {}; by state {}; {} expired",
        c.matched,
        join(
            c.by_protocol
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect()
        ),
        join(c.by_state.iter().map(|(k, v)| format!("{k} {v}")).collect()),
        c.expired
    )));
    blocks.push(Block::Line(format!(
        "{} tracked flow(s), {} reply entr{}, {} conntrack entr{} in all",
        c.flows,
        c.replies,
        if c.replies == 1 { "y" } else { "ies" },
        c.entries,
        if c.entries == 1 { "y" } else { "ies" },
    )));
    blocks
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

pub fn affinity(view: &AffinityView) -> Vec<Block> {
    let mut t = Table::new(
        &[
            "CLIENT", "SERVICE", "FRONTEND", "SCOPE", "BACKEND", "STATE", "IDLE", "TIMEOUT",
        ],
        &["IDLE", "TIMEOUT"],
        "no remembered clients match",
    );
    for e in &view.entries {
        let frontend = match (e.frontend_address, e.frontend_port, &e.protocol) {
            (Some(a), Some(p), Some(proto)) => format!("{a}:{p}/{proto}"),
            _ => format!("(gone, id {})", e.service_id),
        };
        let backend = match (e.backend_address, e.backend_port) {
            (Some(a), Some(p)) => format!("{a}:{p}"),
            _ => format!("(gone, id {})", e.backend_id),
        };
        let tone = match e.state {
            affinity_state::ACTIVE => Tone::Good,
            _ => Tone::Dim,
        };
        t.push(vec![
            e.client_address.to_string().into(),
            service_cell(e.service()),
            frontend.into(),
            e.scope.unwrap_or("-").into(),
            backend.into(),
            Cell::new(e.state, tone),
            human_seconds(e.idle_seconds).into(),
            e.timeout_seconds
                .map_or_else(|| "-".to_string(), |t| format!("{t}s"))
                .into(),
        ]);
    }
    let c = &view.counts;
    let states: Vec<String> = c.by_state.iter().map(|(k, v)| format!("{k} {v}")).collect();
    vec![
        Block::Table(t),
        Block::Line(String::new()),
        Block::Line(format!(
            "{} match{} of {} in SLUICE_AFFINITY4",
            plural(c.matched, "entry", "entries"),
            if states.is_empty() {
                String::new()
            } else {
                format!(" ({})", states.join(", "))
            },
            c.entries
        )),
    ]
}

/// `12.5%`; fills of concern stand out on a terminal (writes fail at 100%).
fn fill_cell(fill: Option<f64>) -> Cell {
    match fill {
        None => Cell::new("-", Tone::Dim),
        Some(f) => {
            let tone = if f >= 0.95 {
                Tone::Bad
            } else if f >= 0.8 {
                Tone::Warn
            } else {
                Tone::Plain
            };
            // A handful of entries in a large map is not 0%.
            let text = if f > 0.0 && f < 0.001 {
                "<0.1%".to_string()
            } else {
                format!("{:.1}%", f * 100.0)
            };
            Cell::new(text, tone)
        }
    }
}

pub fn stats(view: &StatsView) -> Vec<Block> {
    let mut counters = Table::new(&["COUNTER", "PACKETS"], &["PACKETS"], "no counters");
    for c in &view.counters {
        counters.push(vec![c.counter.into(), c.packets.into()]);
    }
    let mut drops = Table::new(
        &["REASON", "PACKETS", "ACTION", "MEANING"],
        &["PACKETS"],
        "",
    );
    for d in &view.drops {
        let tone = if d.packets > 0 {
            Tone::Bad
        } else {
            Tone::Plain
        };
        drops.push(vec![
            d.reason.into(),
            Cell::new(d.packets.to_string(), tone),
            d.action.into(),
            d.meaning.into(),
        ]);
    }
    let mut headers = vec!["SERVICE", "FRONTENDS"];
    headers.extend(TRAFFIC_HEADERS);
    let mut numeric = vec!["FRONTENDS"];
    numeric.extend(TRAFFIC_HEADERS);
    let mut services = Table::new(&headers, &numeric, "no Service has seen traffic");
    for s in &view.services {
        let mut row = vec![
            format!("{}/{}", s.namespace, s.name).into(),
            u64::from(s.frontends).into(),
        ];
        row.extend(traffic_cells(&s.traffic));
        services.push(row);
    }
    let mut headers = vec!["SERVICE", "PORT", "KIND", "FRONTEND"];
    headers.extend(TRAFFIC_HEADERS);
    let mut frontends = Table::new(&headers, &TRAFFIC_HEADERS, "no frontend has seen traffic");
    for f in &view.frontends {
        let mut row = vec![
            service_cell(f.service()),
            f.port_name.as_deref().unwrap_or("-").into(),
            f.kind.into(),
            format!("{}:{}/{}", f.address, f.port, f.protocol).into(),
        ];
        row.extend(traffic_cells(&f.traffic));
        frontends.push(row);
    }
    let mut headers = vec!["ID", "BACKEND"];
    headers.extend(TRAFFIC_HEADERS);
    let mut numeric = vec!["ID"];
    numeric.extend(TRAFFIC_HEADERS);
    let mut backends = Table::new(&headers, &numeric, "no backend has seen traffic");
    for b in &view.backends {
        let mut row = vec![
            b.id.map_or_else(|| Cell::new("-", Tone::Dim), |id| u64::from(id).into()),
            format!("{}:{}/{}", b.address, b.port, b.protocol).into(),
        ];
        row.extend(traffic_cells(&b.traffic));
        backends.push(row);
    }
    let mut maps = Table::new(
        &["MAP", "TYPE", "ENTRIES", "CAPACITY", "FILL"],
        &["ENTRIES", "CAPACITY", "FILL"],
        "",
    );
    for m in &view.maps {
        maps.push(vec![
            m.map.into(),
            m.kind.into(),
            m.entries
                .map_or_else(|| "-".to_string(), |e| e.to_string())
                .into(),
            u64::from(m.capacity).into(),
            fill_cell(m.fill),
        ]);
    }
    let mut blocks = Vec::new();
    for (title, table) in [
        ("Datapath counters (packets, all CPUs):", counters),
        (
            "Drops and refusals by reason (they overlap, see MEANING):",
            drops,
        ),
        ("Traffic per Service (its frontends summed):", services),
        ("Traffic per frontend:", frontends),
        ("Traffic per backend:", backends),
        ("Map fill:", maps),
    ] {
        if !blocks.is_empty() {
            blocks.push(Block::Line(String::new()));
        }
        blocks.push(Block::Line(title.into()));
        blocks.push(Block::Table(table));
    }
    blocks
}
