//! The incremental model against a build from scratch: any sequence of changes, applied one
//! object at a time, ends in the state a fresh build of the final objects gives, and
//! `settle` names every Service whose result changed.

use std::collections::BTreeMap;

use proptest::{collection::vec, prelude::*};

use super::{
    props::{node_context, service, slice},
    *,
};

type Outputs = BTreeMap<ServiceName, (Option<Vec<Frontend>>, Vec<Skipped>, Option<HealthCheck>)>;

fn outputs(model: &Model) -> Outputs {
    model
        .service_names()
        .filter_map(|name| {
            let view = model.service(name)?;
            Some((
                name.clone(),
                (
                    view.frontends().map(|f| f.cloned().collect()),
                    view.skipped(),
                    view.health_check(),
                ),
            ))
        })
        .collect()
}

/// One step: the objects that exist afterwards, the node, and whether the node changes.
type Step = (Vec<Service>, Vec<EndpointSlice>, NodeContext, bool);

fn step() -> impl Strategy<Value = Step> {
    (
        vec(service(), 0..6),
        vec(slice(), 0..24),
        node_context(),
        prop::bool::weighted(0.3),
    )
        .prop_map(|(services, slices, node, node_changes)| {
            (
                services
                    .into_iter()
                    .map(|v| serde_json::from_value(v).unwrap())
                    .collect(),
                slices
                    .into_iter()
                    .map(|v| serde_json::from_value(v).unwrap())
                    .collect(),
                node,
                node_changes,
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn changes_applied_one_by_one_give_the_state_built_from_scratch(
        first_node in node_context(),
        steps in vec(step(), 1..6),
    ) {
        let mut model = Model::new(first_node.clone());
        let mut node = first_node;
        let mut services: BTreeMap<ServiceName, Arc<ServiceInput>> = BTreeMap::new();
        let mut slices: BTreeMap<ServiceName, Arc<SliceInput>> = BTreeMap::new();
        for (step_services, step_slices, step_node, node_changes) in steps {
            let before = outputs(&model);
            let next_services: BTreeMap<_, _> = service_inputs(&step_services)
                .into_iter()
                .map(|s| (s.name.clone(), Arc::new(s)))
                .collect();
            let next_slices: BTreeMap<_, _> = slice_keys(&step_slices)
                .into_iter()
                .map(|(name, s)| (name, Arc::new(SliceInput::from_slice(s))))
                .collect();
            for name in services.keys().filter(|n| !next_services.contains_key(*n)) {
                model.delete_service(name);
            }
            for service in next_services.values() {
                model.upsert_service(service.clone());
            }
            for name in slices.keys().filter(|n| !next_slices.contains_key(*n)) {
                model.delete_slice(name);
            }
            for (name, slice) in &next_slices {
                model.upsert_slice(name.clone(), slice.clone());
            }
            if node_changes {
                node = step_node;
                model.set_node(node.clone());
            }
            (services, slices) = (next_services, next_slices);

            let affected = model.settle();
            let after = outputs(&model);
            for name in before.keys().chain(after.keys()) {
                if before.get(name) != after.get(name) {
                    prop_assert!(affected.contains(name), "{name} changed unannounced");
                }
            }
            prop_assert_eq!(
                model.state(),
                DesiredState::build(&step_services, &step_slices, &node)
            );
        }
    }
}
