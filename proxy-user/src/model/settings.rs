//! The per-Service knobs that apply to all of its frontends, validated.

use k8s_openapi::api::core::v1::{Service, ServiceSpec};

use crate::config::{Cidr, Scheduler};

use super::skip::{Invalid, SkipReason};

/// Overrides the configured scheduler for one Service.
pub const SCHEDULER_ANNOTATION: &str = "sluice.dev/scheduler";

/// kube-proxy's (and the API server's) default `sessionAffinityConfig.clientIP.timeoutSeconds`.
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;
/// The API server rejects longer timeouts; one day.
pub const MAX_AFFINITY_TIMEOUT: u32 = 86_400;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ServiceType {
    ClusterIp,
    NodePort,
    LoadBalancer,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Settings {
    pub service_type: ServiceType,
    pub internal_local: bool,
    pub external_local: bool,
    pub publish_not_ready: bool,
    pub affinity_timeout: Option<u32>,
    pub scheduler: Option<Scheduler>,
}

impl Settings {
    /// `None` for ExternalName Services, which have nothing to proxy.
    pub fn parse(svc: &Service, spec: &ServiceSpec) -> Result<Option<Self>, Invalid> {
        let service_type = match spec.type_.as_deref().unwrap_or("ClusterIP") {
            "ClusterIP" => ServiceType::ClusterIp,
            "NodePort" => ServiceType::NodePort,
            "LoadBalancer" => ServiceType::LoadBalancer,
            "ExternalName" => return Ok(None),
            other => return Err((SkipReason::UnknownType, format!("type {other:?}"))),
        };
        Ok(Some(Self {
            service_type,
            internal_local: is_local_policy(
                "internalTrafficPolicy",
                spec.internal_traffic_policy.as_deref(),
            )?,
            external_local: is_local_policy(
                "externalTrafficPolicy",
                spec.external_traffic_policy.as_deref(),
            )?,
            publish_not_ready: spec.publish_not_ready_addresses == Some(true),
            affinity_timeout: affinity_timeout(spec)?,
            scheduler: scheduler(svc)?,
        }))
    }

    pub fn serves_node_ports(&self) -> bool {
        matches!(
            self.service_type,
            ServiceType::NodePort | ServiceType::LoadBalancer
        )
    }
}

/// `loadBalancerSourceRanges`: the clients a LoadBalancer frontend admits (empty: all). An
/// invalid entry fails the whole Service: leaving it out could widen the firewall to everyone.
pub(super) fn source_ranges(spec: &ServiceSpec) -> Result<Vec<Cidr>, Invalid> {
    spec.load_balancer_source_ranges
        .iter()
        .flatten()
        .map(|range| {
            range.trim().parse::<Cidr>().map_err(|e| {
                (
                    SkipReason::InvalidIp,
                    format!("loadBalancerSourceRanges: {e}"),
                )
            })
        })
        .collect()
}

fn is_local_policy(field: &str, value: Option<&str>) -> Result<bool, Invalid> {
    match value {
        None | Some("Cluster") => Ok(false),
        Some("Local") => Ok(true),
        Some(other) => Err((
            SkipReason::InvalidTrafficPolicy,
            format!("{field} {other:?} (want Cluster or Local)"),
        )),
    }
}

fn affinity_timeout(spec: &ServiceSpec) -> Result<Option<u32>, Invalid> {
    match spec.session_affinity.as_deref() {
        None | Some("None") => Ok(None),
        Some("ClientIP") => {
            let configured = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            match configured {
                None => Ok(Some(DEFAULT_AFFINITY_TIMEOUT)),
                Some(t) => u32::try_from(t)
                    .ok()
                    .filter(|t| (1..=MAX_AFFINITY_TIMEOUT).contains(t))
                    .map(Some)
                    .ok_or_else(|| {
                        (
                            SkipReason::InvalidSessionAffinity,
                            format!(
                                "sessionAffinityConfig.clientIP.timeoutSeconds {t} \
                                 (want 1-{MAX_AFFINITY_TIMEOUT})"
                            ),
                        )
                    }),
            }
        }
        Some(other) => Err((
            SkipReason::InvalidSessionAffinity,
            format!("sessionAffinity {other:?} (want None or ClientIP)"),
        )),
    }
}

/// Only the four names are accepted: `Scheduler`'s parser also takes IPVS's empty default,
/// which in an annotation is more likely a mistake than a request for round robin.
fn scheduler(svc: &Service) -> Result<Option<Scheduler>, Invalid> {
    let Some(value) = svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(SCHEDULER_ANNOTATION))
    else {
        return Ok(None);
    };
    let invalid = |why: String| {
        (
            SkipReason::InvalidAnnotation,
            format!("{SCHEDULER_ANNOTATION}: {why}"),
        )
    };
    if value.is_empty() {
        return Err(invalid("empty; want random, rr, sh or mh".into()));
    }
    value.parse().map(Some).map_err(invalid)
}
