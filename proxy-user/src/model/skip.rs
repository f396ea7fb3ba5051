//! Services the model leaves out, and why.

use std::fmt;

use super::types::ServiceName;

/// Why a Service was left out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SkipReason {
    InvalidIp,
    InvalidIpFamily,
    InvalidPort,
    UnknownProtocol,
    UnknownType,
    DuplicatePort,
    InvalidTrafficPolicy,
    InvalidSessionAffinity,
    InvalidAnnotation,
    FrontendConflict,
    DuplicateService,
}

impl SkipReason {
    /// Every reason, so metrics can publish each series from zero.
    pub const ALL: [SkipReason; 11] = [
        Self::InvalidIp,
        Self::InvalidIpFamily,
        Self::InvalidPort,
        Self::UnknownProtocol,
        Self::UnknownType,
        Self::DuplicatePort,
        Self::InvalidTrafficPolicy,
        Self::InvalidSessionAffinity,
        Self::InvalidAnnotation,
        Self::FrontendConflict,
        Self::DuplicateService,
    ];

    /// Stable label value for metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InvalidIp => "invalid_ip",
            Self::InvalidIpFamily => "invalid_ip_family",
            Self::InvalidPort => "invalid_port",
            Self::UnknownProtocol => "unknown_protocol",
            Self::UnknownType => "unknown_type",
            Self::DuplicatePort => "duplicate_port",
            Self::InvalidTrafficPolicy => "invalid_traffic_policy",
            Self::InvalidSessionAffinity => "invalid_session_affinity",
            Self::InvalidAnnotation => "invalid_annotation",
            Self::FrontendConflict => "frontend_conflict",
            Self::DuplicateService => "duplicate_service",
        }
    }
}

/// A Service that could not be translated, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub service: ServiceName,
    pub reason: SkipReason,
    pub detail: String,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "service {} skipped ({}): {}",
            self.service,
            self.reason.as_str(),
            self.detail
        )
    }
}

/// A reason and its detail, before the Service's name is attached.
pub(super) type Invalid = (SkipReason, String);
