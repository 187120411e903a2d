//! Warnings about objects the model could not (fully) use.

use std::fmt;

use crate::{ObjectKey, ValidationError};

/// Kind of a Kubernetes object the model reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKind {
    /// `v1 Service`.
    Service,
    /// `discovery.k8s.io/v1 EndpointSlice`.
    EndpointSlice,
    /// `v1 Node`.
    Node,
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Service => "Service",
            Self::EndpointSlice => "EndpointSlice",
            Self::Node => "Node",
        })
    }
}

/// What the model did about the problem, so an operator knows what is (not) served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WarningEffect {
    /// The whole object was left out; everything else is served.
    ObjectIgnored,
    /// One value was left out; the rest of the object is served.
    ValueIgnored,
}

/// One problem with one object, found while building the model. Display gives one log
/// line naming the object and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelWarning {
    /// Kind of the object.
    pub kind: ObjectKind,
    /// The object.
    pub object: ObjectKey,
    /// What was left out.
    pub effect: WarningEffect,
    /// Why.
    pub reason: ValidationError,
}

impl ModelWarning {
    pub(crate) fn object_ignored(
        kind: ObjectKind,
        object: &ObjectKey,
        reason: ValidationError,
    ) -> Self {
        Self {
            kind,
            object: object.clone(),
            effect: WarningEffect::ObjectIgnored,
            reason,
        }
    }

    pub(crate) fn value_ignored(
        kind: ObjectKind,
        object: &ObjectKey,
        reason: ValidationError,
    ) -> Self {
        Self {
            kind,
            object: object.clone(),
            effect: WarningEffect::ValueIgnored,
            reason,
        }
    }
}

impl fmt::Display for ModelWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.effect {
            WarningEffect::ObjectIgnored => {
                write!(f, "ignoring {} {}: {}", self.kind, self.object, self.reason)
            }
            WarningEffect::ValueIgnored => {
                write!(
                    f,
                    "{} {}: ignoring a value: {}",
                    self.kind, self.object, self.reason
                )
            }
        }
    }
}
