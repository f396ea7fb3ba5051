//! Ready-made topologies built on [`Lab`].

use crate::{Host, Lab};
use anyhow::{Result, ensure};

/// client — node — backend0..n-1, the node routing between them:
///
/// ```text
/// client eth0 10.0.1.2/24  <->  node eclient 10.0.1.1/24
/// node eb{i} 10.0.{10+i}.1/24  <->  backend{i} eth0 10.0.{10+i}.2/24
/// ```
pub struct Topology {
    lab: Lab,
    client: Host,
    node: Host,
    backends: Vec<Host>,
}

impl Topology {
    pub fn star(test_name: &str, n_backends: usize) -> Result<Topology> {
        ensure!(
            n_backends <= 245,
            "at most 245 backends fit in 10.0.10-254.0/24"
        );
        // On failure part-way, dropping `lab` removes what was built.
        let lab = Lab::new(test_name);
        let client = lab.add_host("client")?;
        let node = lab.add_host("node")?;
        node.sysctl("net.ipv4.ip_forward", "1")?;
        // Strict reverse-path filtering drops packets whose source was
        // translated to an address not routed back via the arrival interface.
        for scope in ["all", "default"] {
            node.sysctl(&format!("net.ipv4.conf.{scope}.rp_filter"), "0")?;
        }

        lab.link_named(
            &client,
            "eth0",
            "10.0.1.2/24",
            &node,
            "eclient",
            "10.0.1.1/24",
        )?;
        client.add_route("default", "10.0.1.1")?;

        let mut backends = Vec::with_capacity(n_backends);
        for i in 0..n_backends {
            let backend = lab.add_host(&format!("backend{i}"))?;
            let net = format!("10.0.{}", 10 + i);
            lab.link_named(
                &node,
                &format!("eb{i}"),
                &format!("{net}.1/24"),
                &backend,
                "eth0",
                &format!("{net}.2/24"),
            )?;
            backend.add_route("default", &format!("{net}.1"))?;
            backends.push(backend);
        }
        for ifname in node.interfaces() {
            node.sysctl(&format!("net.ipv4.conf.{ifname}.rp_filter"), "0")?;
        }
        Ok(Topology {
            lab,
            client,
            node,
            backends,
        })
    }

    /// The underlying lab, to add hosts or links to this topology.
    pub fn lab(&self) -> &Lab {
        &self.lab
    }

    pub fn client(&self) -> &Host {
        &self.client
    }

    pub fn node(&self) -> &Host {
        &self.node
    }

    pub fn backends(&self) -> &[Host] {
        &self.backends
    }

    /// Node-side interfaces: `eclient`, then `eb0..`.
    pub fn node_interfaces(&self) -> Vec<String> {
        self.node.interfaces()
    }
}
