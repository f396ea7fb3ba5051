//! Traffic policies: which endpoint set each kind of traffic to a frontend gets, and what
//! happens when that set is empty. See [`Scope`] for the rules.

use super::{
    endpoints::{Selection, Sets},
    types::{EmptyAction, FrontendKind, Scope},
};

/// One scope of a frontend with its endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Scoped {
    pub scope: Scope,
    pub selection: Selection,
    pub on_empty: EmptyAction,
}

/// The scopes a frontend of `kind` is emitted with.
pub(super) fn scopes(
    kind: FrontendKind,
    internal_local: bool,
    external_local: bool,
    sets: &Sets,
) -> Vec<Scoped> {
    let pick = |local: bool| {
        let selection = if local { &sets.local } else { &sets.cluster };
        (
            selection.clone(),
            on_empty(selection, local, sets.any_usable),
        )
    };
    if !kind.is_external() {
        let (selection, on_empty) = pick(internal_local);
        return vec![Scoped {
            scope: Scope::Both,
            selection,
            on_empty,
        }];
    }
    let internal = pick(false);
    let external = pick(external_local);
    if internal == external {
        let (selection, on_empty) = internal;
        return vec![Scoped {
            scope: Scope::Both,
            selection,
            on_empty,
        }];
    }
    [(Scope::Internal, internal), (Scope::External, external)]
        .into_iter()
        .map(|(scope, (selection, on_empty))| Scoped {
            scope,
            selection,
            on_empty,
        })
        .collect()
}

/// kube-proxy REJECTs when a Service has no usable endpoint anywhere, and DROPs when a
/// `Local` policy leaves this node without one although other nodes have some.
fn on_empty(selection: &Selection, local_policy: bool, any_usable: bool) -> EmptyAction {
    if selection.endpoints.is_empty() && local_policy && any_usable {
        EmptyAction::Drop
    } else {
        EmptyAction::Reject
    }
}
