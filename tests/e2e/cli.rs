//! `sluice inspect` and `sluice completions` end to end: the real binary reading the maps of a
//! real `sluice run` that has carried real connections. JSON output is parsed, not grepped.

mod common;

use std::{
    collections::BTreeSet,
    io::{BufRead as _, BufReader},
    net::{Ipv4Addr, SocketAddrV4},
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Command, Output, Stdio},
    time::Duration,
};

use common::*;
use proxy_common::PROTO_TCP;
use serde_json::Value;
use sluice_testbed::{Topology, require_root};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// default/sticky: round robin with `sessionAffinity: ClientIP`, on the same backends.
const STICKY_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
const TIMEOUT: Duration = Duration::from_secs(3);
const REQUESTS: usize = 20;

/// Every `inspect` subcommand, with the arguments it needs.
const SUBCOMMANDS: [&[&str]; 7] = [
    &["services"],
    &["backends"],
    &["service", "default/web"],
    &["maglev", "default/web"],
    &["conntrack"],
    &["affinity"],
    &["stats"],
];

fn inspect(pin: &Path, args: &[&str]) -> Output {
    Command::new(SLUICE)
        .arg("inspect")
        .args(args)
        .arg("--pin-path")
        .arg(pin)
        .output()
        .expect("running sluice inspect")
}

fn table(pin: &Path, args: &[&str]) -> String {
    let out = inspect(pin, args);
    assert!(
        out.status.success(),
        "sluice inspect {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        !text.contains('\x1b'),
        "colour codes in piped output: {text:?}"
    );
    text
}

/// Runs `sluice inspect ARGS` on a pseudo-terminal (util-linux `script`), as a person would.
fn on_terminal(pin: &Path, args: &[&str], no_color: bool) -> String {
    let command = format!(
        "{SLUICE} inspect {} --pin-path {}",
        args.join(" "),
        pin.display()
    );
    let mut script = Command::new("script");
    script
        .args(["-qec", &command, "/dev/null"])
        .stdin(Stdio::null());
    if no_color {
        script.env("NO_COLOR", "1");
    } else {
        script.env_remove("NO_COLOR");
    }
    let out = script.output().expect("running script(1)");
    assert!(out.status.success(), "{command}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn json(pin: &Path, args: &[&str]) -> Value {
    let mut with_json = args.to_vec();
    with_json.extend(["--output", "json"]);
    serde_json::from_str(&table(pin, &with_json)).expect("the output is one JSON document")
}

/// The one line of a failure's stderr, after checking it is exactly one and the exit status.
fn one_line_error(out: &Output, what: &str) -> String {
    assert_eq!(out.status.code(), Some(1), "{what}: exit status");
    assert!(out.stdout.is_empty(), "{what}: printed {:?}", out.stdout);
    let stderr = String::from_utf8(out.stderr.clone()).unwrap();
    assert_eq!(
        stderr.lines().count(),
        1,
        "{what}: not one line: {stderr:?}"
    );
    assert!(stderr.starts_with("sluice: "), "{what}: {stderr:?}");
    stderr
}

fn services_now(pin: &Path) -> Value {
    json(pin, &["services"])
}

fn str_of<'a>(v: &'a Value, field: &str) -> &'a str {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} is not a string in {v}"))
}

fn u64_of(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} is not a number in {v}"))
}

fn array<'a>(v: &'a Value, field: &str) -> &'a [Value] {
    v[field]
        .as_array()
        .unwrap_or_else(|| panic!("{field} is not an array in {v}"))
}

/// A test bed with default/web (http 80 → 8080) on `backends` backends, served by Sluice.
fn serve_web(test: &str, backends: usize) -> (Topology, Scratch, Sluice, Vec<SocketAddrV4>) {
    require_root();
    let topo = Topology::star(test, backends).expect("building the test bed");
    let scratch = Scratch::new(test);
    let endpoints: Vec<_> = topo.backends().iter().map(v4).collect();
    scratch.write_manifest(
        "web.yaml",
        &service_yaml("web", VIP, &[tcp("http", 80, 8080)], &endpoints),
    );
    let sluice = Sluice::start(&topo, &scratch);
    let addrs: Vec<_> = endpoints
        .iter()
        .map(|ip| SocketAddrV4::new(*ip, 8080))
        .collect();
    sluice.wait_for_backends(SocketAddrV4::new(VIP, 80), PROTO_TCP, &addrs);
    (topo, scratch, sluice, addrs)
}

#[test]
fn inspect_shows_a_live_service_its_backends_flows_and_counters() {
    let (topo, scratch, sluice, backends) = serve_web("cliinspect", 2);
    let endpoints: Vec<_> = topo.backends().iter().map(v4).collect();
    scratch.write_manifest(
        "sticky.yaml",
        &service_yaml("sticky", STICKY_VIP, &[tcp("http", 80, 8080)], &endpoints).replacen(
            "  namespace: default\nspec:\n",
            "  namespace: default\n  annotations: {sluice.dev/scheduler: rr}\nspec:\n  \
             sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: \
             600}}\n",
            1,
        ),
    );
    sluice.wait_for_backends(SocketAddrV4::new(STICKY_VIP, 80), PROTO_TCP, &backends);
    let _servers: Vec<_> = topo
        .backends()
        .iter()
        .map(|b| b.tcp_server(8080).unwrap())
        .collect();
    let replies = topo.client().tcp_requests(sock(VIP, 80), REQUESTS, TIMEOUT);
    assert!(replies.iter().all(Result::is_ok), "{replies:?}");
    let sticky = topo.client().tcp_requests(sock(STICKY_VIP, 80), 5, TIMEOUT);
    let sticky_servers: BTreeSet<String> = sticky
        .iter()
        .map(|r| r.as_ref().expect("request to sticky").server().to_string())
        .collect();
    assert_eq!(
        sticky_servers.len(),
        1,
        "affinity keeps the client on one backend"
    );
    let pin = sluice.pin.as_path();
    let backend_set: BTreeSet<String> = backends.iter().map(ToString::to_string).collect();

    // services
    let services = json(pin, &["services"]);
    let web: Vec<&Value> = array(&services, "frontends")
        .iter()
        .filter(|f| f["name"] == "web")
        .collect();
    assert_eq!(web.len(), 1, "one frontend entry for web: {services}");
    let web = web[0];
    assert_eq!(str_of(web, "namespace"), "default");
    assert_eq!(str_of(web, "port_name"), "http");
    assert_eq!(str_of(web, "kind"), "ClusterIP");
    assert_eq!(str_of(web, "address"), VIP.to_string());
    assert_eq!(u64_of(web, "port"), 80);
    assert_eq!(str_of(web, "protocol"), "TCP");
    assert_eq!(str_of(web, "scope"), "any");
    assert_eq!(str_of(web, "algorithm"), "random");
    assert_eq!(u64_of(web, "backend_count"), 2);
    let text = table(pin, &["services"]);
    assert!(text.starts_with("SERVICE "), "{text}");
    let row = text
        .lines()
        .find(|l| l.starts_with("default/web "))
        .unwrap_or_else(|| panic!("no row for default/web:\n{text}"));
    for cell in ["http", "ClusterIP", "10.96.0.10:80/TCP", "any", "random"] {
        assert!(row.split_whitespace().any(|c| c == cell), "{cell} in {row}");
    }

    // backends
    let listed = json(pin, &["backends"]);
    let web_backends: Vec<&Value> = array(&listed, "backends")
        .iter()
        .filter(|b| {
            b["services"]
                .as_array()
                .unwrap()
                .contains(&"default/web".into())
        })
        .collect();
    let addrs: BTreeSet<String> = web_backends
        .iter()
        .map(|b| format!("{}:{}", str_of(b, "address"), u64_of(b, "port")))
        .collect();
    assert_eq!(addrs, backend_set);
    let forwarded: u64 = web_backends
        .iter()
        .map(|b| u64_of(b, "forward_packets"))
        .sum();
    assert!(forwarded >= REQUESTS as u64, "forward packets: {listed}");
    assert!(web_backends.iter().all(|b| u64_of(b, "reply_packets") > 0));
    let text = table(pin, &["backends"]);
    for b in &backends {
        assert!(
            text.lines()
                .any(|l| l.contains(&format!("{b}/TCP")) && l.contains("default/web")),
            "{b} in\n{text}"
        );
    }

    // service NS/NAME
    let service = json(pin, &["service", "default/web"]);
    let frontends = array(&service, "frontends");
    assert_eq!(frontends.len(), 1);
    let slots = array(&frontends[0], "slots");
    assert_eq!(slots.len(), 2, "{service}");
    assert!(
        slots.iter().all(|s| str_of(s, "state") == "live"),
        "{service}"
    );
    let slot_backends: BTreeSet<String> = slots
        .iter()
        .map(|s| format!("{}:{}", str_of(s, "address"), u64_of(s, "port")))
        .collect();
    assert_eq!(slot_backends, backend_set);
    let slot_flows: u64 = slots.iter().map(|s| u64_of(s, "flows")).sum();
    let text = table(pin, &["service", "default/web"]);
    assert!(
        text.starts_with("Service default/web: 1 frontend entry"),
        "{text}"
    );
    for b in &backends {
        assert!(
            text.lines()
                .any(|l| l.contains(&b.to_string()) && l.contains("live")),
            "{b} live in\n{text}"
        );
    }

    // conntrack
    let ct = json(pin, &["conntrack", "--vip", "10.96.0.10:80"]);
    let flows = array(&ct, "flows");
    let matched = u64_of(&ct["counts"], "matched");
    assert_eq!(flows.len() as u64, matched);
    // One flow per connection; a client port the kernel reused would merge two.
    assert!(matched >= REQUESTS as u64 - 2, "{ct}");
    assert_eq!(matched, slot_flows, "inspect service counts the same flows");
    for f in flows {
        assert_eq!(str_of(f, "client_address"), topo.client().ip().to_string());
        assert_eq!(str_of(f, "frontend_address"), VIP.to_string());
        assert_eq!(u64_of(f, "frontend_port"), 80);
        assert_eq!(str_of(f, "protocol"), "TCP");
        assert_eq!(str_of(f, "name"), "web");
        let backend = format!(
            "{}:{}",
            str_of(f, "backend_address"),
            u64_of(f, "backend_port")
        );
        assert!(backend_set.contains(&backend), "{backend}");
    }
    assert_eq!(u64_of(&ct["counts"]["by_protocol"], "TCP"), matched);
    let first = backends[0].to_string();
    let to_first = json(
        pin,
        &["conntrack", "--vip", "10.96.0.10", "--backend", &first],
    );
    assert!(
        array(&to_first, "flows")
            .iter()
            .all(|f| str_of(f, "backend_address") == backends[0].ip().to_string())
    );
    let second = backends[1].to_string();
    let to_second = json(
        pin,
        &["conntrack", "--vip", "10.96.0.10", "--backend", &second],
    );
    assert_eq!(
        u64_of(&to_first["counts"], "matched") + u64_of(&to_second["counts"], "matched"),
        matched
    );
    let udp = json(
        pin,
        &["conntrack", "--client", "10.0.1.2", "--protocol", "udp"],
    );
    assert_eq!(u64_of(&udp["counts"], "matched"), 0);
    assert!(array(&udp, "flows").is_empty());
    let by_service = json(pin, &["conntrack", "--service", "default/web", "--summary"]);
    assert_eq!(u64_of(&by_service["counts"], "matched"), matched);
    assert!(
        array(&by_service, "flows").is_empty(),
        "--summary lists no flows"
    );
    let text = table(pin, &["conntrack", "--vip", "10.96.0.10"]);
    assert!(text.starts_with("PROTO "), "{text}");
    assert!(text.contains(&format!("{matched} flow(s) match")), "{text}");
    assert!(text.lines().filter(|l| l.contains("10.96.0.10:80")).count() as u64 == matched);

    // stats
    let stats = json(pin, &["stats"]);
    let counter = |name: &str| {
        array(&stats, "counters")
            .iter()
            .find(|c| c["counter"] == name)
            .map(|c| u64_of(c, "packets"))
            .unwrap_or_else(|| panic!("no counter {name}: {stats}"))
    };
    assert!(counter("dnat_new_flow") >= REQUESTS as u64);
    assert!(counter("reverse_nat") > 0);
    // sticky's first flow chose a backend; the four after it followed the client's affinity.
    assert!(counter("affinity_hit") >= 4, "{stats}");
    let reasons: BTreeSet<&str> = array(&stats, "drops")
        .iter()
        .map(|d| str_of(d, "reason"))
        .collect();
    for reason in ["drop_no_backend", "reject_tcp", "drop_source_range"] {
        assert!(reasons.contains(reason), "{reason}: {stats}");
    }
    let fe = array(&stats, "frontends")
        .iter()
        .find(|f| f["name"] == "web")
        .unwrap_or_else(|| panic!("no traffic for web: {stats}"));
    assert!(u64_of(fe, "forward_packets") >= REQUESTS as u64);
    assert!(u64_of(fe, "reply_packets") > 0);
    let per_service = array(&stats, "services")
        .iter()
        .find(|s| s["namespace"] == "default" && s["name"] == "web")
        .unwrap_or_else(|| panic!("no Service traffic for web: {stats}"));
    assert_eq!(u64_of(per_service, "frontends"), 1);
    assert_eq!(
        u64_of(per_service, "forward_packets"),
        u64_of(fe, "forward_packets")
    );
    let map = |name: &str| {
        array(&stats, "maps")
            .iter()
            .find(|m| m["map"] == name)
            .unwrap_or_else(|| panic!("no map {name}: {stats}"))
            .clone()
    };
    let svc = map("SLUICE_SVC4");
    assert_eq!(u64_of(&svc, "entries"), 2, "web and sticky");
    assert!(u64_of(&svc, "capacity") >= 1);
    let conntrack = map("SLUICE_CT4");
    assert_eq!(
        u64_of(&conntrack, "entries"),
        u64_of(&ct["counts"], "entries")
    );
    assert!(
        map("SLUICE_STATS")["entries"].is_null(),
        "arrays have no fill"
    );
    let text = table(pin, &["stats"]);
    for line in ["Map fill:", "Drops and refusals by reason"] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("SLUICE_SVC4 ") && l.contains("hash")),
        "{text}"
    );

    // affinity: the client remembered for sticky, and sticky's settings in services.
    let sticky_fe = array(&services_now(pin), "frontends")
        .iter()
        .find(|f| f["name"] == "sticky")
        .cloned()
        .expect("sticky is listed");
    assert_eq!(str_of(&sticky_fe, "algorithm"), "round-robin");
    assert_eq!(u64_of(&sticky_fe, "affinity_timeout_seconds"), 600);
    let affinity = json(pin, &["affinity", "default/sticky"]);
    let entries = array(&affinity, "entries");
    assert_eq!(entries.len(), 1, "{affinity}");
    let entry = &entries[0];
    assert_eq!(
        str_of(entry, "client_address"),
        topo.client().ip().to_string()
    );
    assert_eq!(str_of(entry, "frontend_address"), STICKY_VIP.to_string());
    assert_eq!(str_of(entry, "state"), "active");
    assert_eq!(u64_of(entry, "timeout_seconds"), 600);
    assert!(backend_set.contains(&format!(
        "{}:{}",
        str_of(entry, "backend_address"),
        u64_of(entry, "backend_port")
    )));
    assert_eq!(u64_of(&affinity["counts"], "matched"), 1);
    let none = json(pin, &["affinity", "default/web"]);
    assert!(array(&none, "entries").is_empty(), "web has no affinity");
    let text = table(pin, &["affinity", "--client", "10.0.1.2"]);
    assert!(
        text.lines().any(|l| l.starts_with("10.0.1.2 ")
            && l.contains("default/sticky")
            && l.contains("active")
            && l.contains("600s")),
        "{text}"
    );

    // Maglev: the datapath has no tables yet, and says so in one line.
    let maglev = one_line_error(&inspect(pin, &["maglev", "default/web"]), "maglev");
    assert!(maglev.contains("no Maglev lookup tables yet"), "{maglev}");
    assert!(maglev.contains("algorithm: random"), "{maglev}");
    let unknown = one_line_error(&inspect(pin, &["service", "default/nope"]), "unknown");
    assert!(
        unknown.contains("default/nope has no frontend"),
        "{unknown}"
    );

    // Colour on a terminal only (piped output was checked by every `table` above), and never
    // with NO_COLOR.
    let coloured = on_terminal(pin, &["services"], false);
    assert!(coloured.contains("\x1b[1mSERVICE\x1b[0m"), "{coloured:?}");
    let plain = on_terminal(pin, &["services"], true);
    assert!(plain.starts_with("SERVICE "), "{plain:?}");
    assert!(!plain.contains('\x1b'), "{plain:?}");

    // --watch: tables again and again, each under a header when piped...
    let mut child = Command::new(SLUICE)
        .args(["inspect", "backends", "--watch=200ms"])
        .arg("--pin-path")
        .arg(pin)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut headers = 0;
    while headers < 2 {
        let line = lines.next().expect("a refresh").unwrap();
        assert!(!line.contains('\x1b'), "{line:?}");
        if line.starts_with("Every 200ms: sluice inspect backends") {
            headers += 1;
            assert_eq!(lines.next().unwrap().unwrap(), "");
            assert!(lines.next().unwrap().unwrap().starts_with("ID "));
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();

    // ...and one JSON document per line with --output json.
    let mut child = Command::new(SLUICE)
        .args(["inspect", "services", "--output", "json", "--watch=200ms"])
        .arg("--pin-path")
        .arg(pin)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for _ in 0..2 {
        let line = lines.next().expect("a refresh").unwrap();
        let doc: Value = serde_json::from_str(&line).expect("each refresh is one JSON line");
        assert!(array(&doc, "frontends").iter().any(|f| f["name"] == "web"));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn every_subcommand_fails_in_one_line_when_nothing_is_pinned() {
    ensure_bpffs();
    let pin = format!("/sys/fs/bpf/sluice-e2e-nothing-{}", std::process::id());
    for args in SUBCOMMANDS {
        let err = one_line_error(&inspect(Path::new(&pin), args), &format!("{args:?}"));
        assert!(
            err.contains(&format!("no Sluice maps are pinned at {pin}")),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn every_subcommand_fails_in_one_line_for_a_user_without_privileges() {
    let (_topo, _scratch, sluice, _) = serve_web("clinonroot", 1);
    for args in SUBCOMMANDS {
        let out = Command::new(SLUICE)
            .arg("inspect")
            .args(args)
            .arg("--pin-path")
            .arg(&sluice.pin)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        let err = one_line_error(&out, &format!("{args:?}"));
        assert!(err.contains("permission denied"), "{args:?}: {err}");
        assert!(err.contains("needs root"), "{args:?}: {err}");
    }
}

#[test]
fn completions_cover_the_inspect_subcommands() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(SLUICE)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8(out.stdout).unwrap();
        for word in ["inspect", "conntrack", "pin-path", "cleanup"] {
            assert!(script.contains(word), "{shell} completions lack {word}");
        }
    }
    let help = Command::new(SLUICE)
        .args(["inspect", "conntrack", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    assert!(help.contains("Example: sluice inspect conntrack"), "{help}");
}
