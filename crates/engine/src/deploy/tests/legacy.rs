//! Journals written before every strategy ran one loop (blue-green's `route`/`routed`, a
//! canary's `shift`/`shifted`, by address) still resume after an upgrade.

use super::*;

/// Starts v2 beside a live v1 as the old code did and journals, by address, a blue-green
/// `route`/`routed` (or, with `shift`, a canary's `shift`/`shifted`), leaving nginx there,
/// then dies.
async fn legacy_v2(w: &World, strategy: &str, shift: Option<u32>) -> DeploymentId {
    let old = w.store.service(&w.spec.name).unwrap().active.unwrap();
    let id = w
        .store
        .begin(&NewDeployment {
            service: w.spec.name.clone(),
            kind: DeployKind::Deploy,
            strategy: strategy.into(),
            from_version: Some(old.version.clone()),
            to_version: v("v2"),
            color: Color::Green,
            who: "me".into(),
            started_ms: 0,
        })
        .unwrap();
    let new = start_v2(w, id).await;
    let backends: Vec<SocketAddr> = new.iter().map(Instance::addr).collect();
    let (intent, set) = match shift {
        Some(weight_bp) => {
            let set = UpstreamSet {
                service: w.spec.name.clone(),
                listen: w.spec.listen,
                backends: old.instances.iter().map(Instance::addr).collect(),
                canary: Some(CanaryRoute {
                    backends: backends.clone(),
                    weight_bp,
                    sticky: None,
                    route: None,
                }),
            };
            (
                Step::Shift {
                    weight_bp,
                    backends,
                },
                set,
            )
        }
        None => (Step::Route { backends }, upstream_set(&w.spec, &new)),
    };
    w.store.journal(id, 0, &intent).unwrap();
    let reload = w.router.apply(&set).await.unwrap();
    let confirmed = match shift {
        Some(weight_bp) => Step::Shifted {
            weight_bp,
            generation: reload.generation,
            drain: reload.drain,
        },
        None => Step::Routed {
            generation: reload.generation,
            drain: reload.drain,
        },
    };
    w.store.journal(id, 0, &confirmed).unwrap();
    id
}

/// v2's replicas of deployment `id`, started and journaled as the old code did.
async fn start_v2(w: &World, id: DeploymentId) -> Vec<Instance> {
    let mut new = Vec::new();
    for replica in 0..w.spec.replicas {
        let spec = InstanceSpec {
            service: w.spec.name.clone(),
            version: v("v2"),
            color: Color::Green,
            deployment: id,
            replica,
            source: w.spec.source_for(&v("v2")),
            port: w.spec.port,
            env: w.spec.env.clone(),
            host_port: None,
            container: Default::default(),
            secrets: Default::default(),
        };
        let instance = w.runtime.start(&spec).await.unwrap();
        w.store
            .journal(
                id,
                0,
                &Step::InstanceStarted {
                    instance: instance.clone(),
                },
            )
            .unwrap();
        w.store
            .put_instance(&instance, InstanceState::Starting)
            .unwrap();
        new.push(instance);
    }
    new
}

#[tokio::test(start_paused = true)]
async fn a_legacy_blue_green_journal_killed_after_routed_is_finished_by_deploy() {
    let w = World::new();
    w.deploy("v1").await.unwrap();
    let id = legacy_v2(&w, "blue-green", None).await;
    w.deploy("v2").await.unwrap();
    w.assert_consistent("v2");
    let (record, _) = w.store.deployment(id).unwrap().unwrap();
    assert_eq!(record.outcome, Outcome::Succeeded, "{}", record.message);
    assert_eq!(w.retained_versions(), ["v1"]);
}

#[tokio::test(start_paused = true)]
async fn a_legacy_canary_journal_killed_after_shifted_is_routed_back_not_promoted() {
    let w = World::new();
    w.deploy("v1").await.unwrap();
    let id = legacy_v2(&w, "canary", Some(500)).await;
    w.deploy("v3").await.unwrap();
    w.assert_consistent("v3");
    let (record, journal) = w.store.deployment(id).unwrap().unwrap();
    assert_eq!(record.outcome, Outcome::Failed);
    assert!(
        journal.iter().any(|e| matches!(
            e.step,
            Step::Failing {
                cause: Cause::Interrupted,
                ..
            }
        )),
        "{journal:#?}"
    );
}

#[test]
fn steps_journaled_before_the_drain_handle_still_read() {
    // Routed named nginx worker PIDs, and Drained the PIDs that lingered.
    let routed: Step =
        serde_json::from_str(r#"{"step":"routed","generation":4,"old_workers":[41,42]}"#).unwrap();
    let Step::Routed { generation, drain } = routed else {
        panic!("{routed:?}")
    };
    assert_eq!(
        (generation, drain.token::<Vec<u32>>()),
        (4, Some(vec![41, 42]))
    );
    let drained: Step =
        serde_json::from_str(r#"{"step":"drained","waited_ms":9,"lingering":[42]}"#).unwrap();
    assert_eq!(
        drained,
        Step::Drained {
            waited_ms: 9,
            left: None
        }
    );
}
