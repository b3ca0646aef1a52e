//! The blue-green state machine against recording fakes, on paused tokio time.

use std::net::SocketAddr;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use super::*;
use crate::config::Config;
use crate::fakes::*;

const CONFIG: &str = r#"
[proxy]
prefix = "nginx"
[[service]]
name = "web"
listen = "127.0.0.1:8000"
image = "demo-app:{version}"
replicas = 2
"#;

struct World {
    shared: Rc<Shared>,
    runtime: FakeRuntime,
    router: FakeRouter,
    store: MemStore,
    host: FakeHost,
    hooks: FakeHooks,
    spec: ServiceSpec,
}

impl World {
    /// The journal steps written so far (`journal <step>` calls), in order.
    fn journal_steps(&self) -> Vec<String> {
        let calls = self.shared.calls();
        calls
            .into_iter()
            .filter(|c| c.starts_with("journal"))
            .collect()
    }

    /// The 1-based number, counted from journal write `from`, of the first `step` written.
    fn step_number(&self, from: usize, step: &str) -> usize {
        let steps = self.journal_steps();
        let at = steps[from..]
            .iter()
            .position(|c| c == &format!("journal {step}"));
        at.unwrap_or_else(|| panic!("no {step} in {steps:#?}")) + 1
    }

    /// Runs `work` as a process killed right after journal write `n`, then starts a new one.
    async fn killed_during<F: std::future::Future>(&self, n: usize, work: F) {
        self.shared.kill_after_journal(n, true);
        let _ = tokio::time::timeout(Duration::from_secs(3600), work).await;
        assert!(self.shared.is_dead(), "the kill switch fired at step {n}");
        self.shared.revive();
        self.host.restart();
    }

    fn new() -> World {
        let shared = Shared::new();
        let config = Config::parse(CONFIG, Path::new("t.toml")).unwrap();
        World {
            runtime: FakeRuntime::new(&shared),
            router: FakeRouter::new(&shared),
            store: MemStore::new(&shared),
            host: FakeHost::default(),
            hooks: FakeHooks::new(&shared),
            spec: config.services[0].clone(),
            shared,
        }
    }

    fn retained_versions(&self) -> Vec<String> {
        let record = self.store.service(&self.spec.name).unwrap();
        record
            .retained
            .iter()
            .map(|s| s.version.to_string())
            .collect()
    }

    fn deployer(&self) -> Deployer<'_, FakeRuntime, FakeRuntime, FakeRouter, MemStore, FakeHost> {
        Deployer {
            runtime: &self.runtime,
            prober: &self.runtime,
            router: &self.router,
            store: &self.store,
            host: &self.host,
            hooks: &self.hooks,
            observer: &Quiet,
        }
    }

    async fn deploy(&self, version: &str) -> Result<DeployReport, DeployError> {
        self.deployer().deploy(&self.spec, &v(version)).await
    }

    /// Versions nginx sends traffic to, one per backend.
    fn live_versions(&self) -> Vec<String> {
        let backends = self.router.backends("web");
        backends
            .iter()
            .map(|a| {
                self.runtime
                    .version_at(*a)
                    .unwrap_or_else(|| format!("dead {a}"))
            })
            .collect()
    }

    /// Everything a healthy end state satisfies, whatever happened before.
    fn assert_consistent(&self, version: &str) {
        assert_eq!(
            self.live_versions(),
            vec![version.to_owned(); usize::from(self.spec.replicas)],
            "nginx routes to the active version"
        );
        let record = self.store.service(&self.spec.name).unwrap();
        let active = record.active.expect("an active slot");
        assert_eq!(active.version.as_str(), version);
        let active_ids: std::collections::BTreeSet<String> =
            active.instances.iter().map(|i| i.id.clone()).collect();
        assert_eq!(
            self.runtime.running(),
            active_ids,
            "only the active slot runs"
        );
        assert!(
            self.store.unfinished(&self.spec.name).unwrap().is_none(),
            "no deployment left running"
        );
        assert!(
            self.store.lock(&self.spec.name).unwrap().is_none(),
            "lock released"
        );
    }
}

fn v(s: &str) -> Version {
    Version::parse(s).unwrap()
}

fn position(calls: &[String], prefix: &str) -> usize {
    calls
        .iter()
        .position(|c| c.starts_with(prefix))
        .unwrap_or_else(|| panic!("no call {prefix:?} in {calls:#?}"))
}

#[tokio::test(start_paused = true)]
async fn first_deploy_starts_blue_and_routes_to_it() {
    let w = World::new();
    let report = w.deploy("v1").await.unwrap();
    assert_eq!((report.color, report.from.clone()), (Color::Blue, None));
    w.assert_consistent("v1");
    assert!(
        !w.shared
            .calls()
            .iter()
            .any(|c| c.starts_with("runtime.stop")),
        "nothing to stop"
    );
}

#[tokio::test(start_paused = true)]
async fn old_slot_is_stopped_only_after_old_workers_drained() {
    let w = World::new();
    w.deploy("v1").await.unwrap();
    let before = w.shared.calls().len();
    let report = w.deploy("v2").await.unwrap();
    assert_eq!(
        (report.color, report.from.as_ref().map(|v| v.as_str())),
        (Color::Green, Some("v1"))
    );
    let calls = &w.shared.calls()[before..];
    let started = position(calls, "runtime.start sy-web-green");
    let applied = position(calls, "router.apply");
    let drained = position(calls, "router.wait_drained");
    let stopped = position(calls, "runtime.stop sy-web-blue");
    assert!(
        started < applied && applied < drained && drained < stopped,
        "{calls:#?}"
    );
    // Every action is journaled before it happens.
    assert!(position(calls, "journal serve") < applied);
    assert!(position(calls, "journal stop_old") < stopped);
    w.assert_consistent("v2");
    let record = w.store.service(&w.spec.name).unwrap();
    assert_eq!(
        record.retained[0].version.as_str(),
        "v1",
        "v1 kept for rollback"
    );
    assert_eq!(w.runtime.existing().len(), 4, "v1 stopped, not removed");
}

#[tokio::test(start_paused = true)]
async fn unhealthy_version_gets_no_traffic_and_is_removed() {
    let w = World::new();
    w.deploy("v1").await.unwrap();
    w.runtime.unhealthy.borrow_mut().insert("v2".into());
    let started = tokio::time::Instant::now();
    let err = w.deploy("v2").await.unwrap_err();
    assert_eq!(err.exit_code(), 1);
    let msg = err.to_string();
    assert!(msg.contains("traffic stays on v1"), "{msg}");
    assert!(
        msg.contains("did not pass GET /health 2 times in a row within 60s"),
        "{msg}"
    );
    assert!(
        msg.contains("last health response: 503 unhealthy at /health"),
        "{msg}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(60),
        "waited for the deadline"
    );
    assert!(!w
        .shared
        .calls()
        .iter()
        .any(|c| c.starts_with("router.apply") && c.contains("20003")));
    w.assert_consistent("v1");
    assert_eq!(w.runtime.existing().len(), 2, "v2 containers removed");
    let last = &w.store.history(None, 1).unwrap()[0];
    assert_eq!(last.outcome, Outcome::Failed);
}

#[tokio::test(start_paused = true)]
async fn crashing_version_fails_fast_with_its_output() {
    let w = World::new();
    w.deploy("v1").await.unwrap();
    w.runtime.crashing.borrow_mut().insert("v2".into());
    let started = tokio::time::Instant::now();
    let msg = w.deploy("v2").await.unwrap_err().to_string();
    assert!(
        msg.contains("exited (code 1) before it was healthy"),
        "{msg}"
    );
    assert!(msg.contains("log line"), "{msg}");
    assert!(started.elapsed() < Duration::from_secs(1));
    w.assert_consistent("v1");
}

#[tokio::test(start_paused = true)]
async fn start_failure_removes_replicas_already_started() {
    let w = World::new();
    w.deploy("v1").await.unwrap();
    w.runtime.unstartable.borrow_mut().insert("v2".into());
    let err = w.deploy("v2").await.unwrap_err();
    assert!(err.to_string().contains("image not found"), "{err}");
    w.assert_consistent("v1");
}

#[tokio::test(start_paused = true)]
async fn rejected_nginx_config_moves_no_traffic() {
    let w = World::new();
    w.deploy("v1").await.unwrap();
    w.router.reject_next.set(true);
    let err = w.deploy("v2").await.unwrap_err();
    assert_eq!(err.exit_code(), 1);
    assert!(
        err.to_string()
            .contains("nginx rejected the new config for web"),
        "{err}"
    );
    w.assert_consistent("v1");
    assert_eq!(w.runtime.existing().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn rollback_restarts_the_retained_slot() {
    let w = World::new();
    w.deploy("v1").await.unwrap();
    let v1_ids: Vec<String> = w
        .store
        .service(&w.spec.name)
        .unwrap()
        .active
        .unwrap()
        .instances
        .into_iter()
        .map(|i| i.id)
        .collect();
    w.deploy("v2").await.unwrap();
    let report = w.deployer().rollback(&w.spec).await.unwrap();
    assert_eq!(
        (report.kind, report.to.as_str()),
        (DeployKind::Rollback, "v1")
    );
    w.assert_consistent("v1");
    let now: Vec<String> = w
        .store
        .service(&w.spec.name)
        .unwrap()
        .active
        .unwrap()
        .instances
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(now, v1_ids, "the same containers, restarted");
    assert_eq!(
        w.store.service(&w.spec.name).unwrap().retained[0]
            .version
            .as_str(),
        "v2"
    );
}

#[tokio::test(start_paused = true)]
async fn rollback_of_a_retained_slot_that_crashes_keeps_it_retained() {
    let w = World::new();
    w.deploy("v1").await.unwrap();
    w.deploy("v2").await.unwrap();
    w.runtime.crashing.borrow_mut().insert("v1".into());
    let err = w.deployer().rollback(&w.spec).await.unwrap_err();
    assert_eq!(err.exit_code(), 1);
    w.assert_consistent("v2");
    let record = w.store.service(&w.spec.name).unwrap();
    assert_eq!(
        record.retained[0].version.as_str(),
        "v1",
        "still there to try again"
    );
}

#[tokio::test(start_paused = true)]
async fn rollback_without_a_retained_version_is_refused() {
    let w = World::new();
    w.deploy("v1").await.unwrap();
    let err = w.deployer().rollback(&w.spec).await.unwrap_err();
    assert_eq!(err.exit_code(), 2);
    assert!(err.to_string().contains("nothing to roll back to"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn retained_versions_beyond_retain_are_removed() {
    let w = World::new();
    for version in ["v1", "v2", "v3"] {
        w.deploy(version).await.unwrap();
    }
    let record = w.store.service(&w.spec.name).unwrap();
    let retained: Vec<&str> = record.retained.iter().map(|s| s.version.as_str()).collect();
    assert_eq!(retained, ["v2"]);
    assert_eq!(w.runtime.existing().len(), 4, "v1's containers removed");
}

#[tokio::test(start_paused = true)]
async fn a_live_lock_refuses_a_second_deploy() {
    let w = World::new();
    let other = Lock {
        service: w.spec.name.clone(),
        pid: 42,
        host: "testhost".into(),
        deployment: Some(9),
        acquired_ms: w.host.now_ms() - 5_000,
        heartbeat_ms: w.host.now_ms() - 1_000,
    };
    w.host.alive.borrow_mut().insert(42);
    w.store.try_lock(&other, None).unwrap().unwrap();
    let err = w.deploy("v1").await.unwrap_err();
    assert_eq!(err.exit_code(), 2);
    assert_eq!(
        err.to_string(),
        "deploy of web refused: another deploy holds the lock (pid 42 on testhost, deployment #9, started 5s ago, heartbeat 1s ago)"
    );
    assert!(w.shared.calls().is_empty(), "nothing was touched");
}

#[tokio::test(start_paused = true)]
async fn a_lock_left_by_a_dead_process_or_stale_heartbeat_is_taken_over() {
    // A dead pid on this host; a stale heartbeat from another host sharing the database.
    for (host, pid_alive, heartbeat_age_ms) in [("testhost", false, 0), ("elsewhere", true, 61_000)]
    {
        let w = World::new();
        let dead = Lock {
            service: w.spec.name.clone(),
            pid: 42,
            host: host.into(),
            deployment: None,
            acquired_ms: 0,
            heartbeat_ms: w.host.now_ms() - heartbeat_age_ms,
        };
        if pid_alive {
            w.host.alive.borrow_mut().insert(42);
        }
        w.store.try_lock(&dead, None).unwrap().unwrap();
        w.deploy("v1").await.unwrap();
        w.assert_consistent("v1");
    }
}

#[tokio::test(start_paused = true)]
async fn a_docker_healthcheck_still_starting_holds_traffic_back() {
    let w = World::new();
    w.deploy("v1").await.unwrap();
    w.runtime
        .docker_health
        .borrow_mut()
        .insert("v2".into(), RuntimeHealth::Starting);
    let msg = w.deploy("v2").await.unwrap_err().to_string();
    assert!(
        msg.contains("200 ok (Docker HEALTHCHECK still starting)"),
        "{msg}"
    );
    w.assert_consistent("v1");
}

#[tokio::test(start_paused = true)]
async fn a_docker_unhealthy_replica_fails_the_deploy_at_once() {
    let w = World::new();
    w.deploy("v1").await.unwrap();
    w.runtime
        .docker_health
        .borrow_mut()
        .insert("v2".into(), RuntimeHealth::Unhealthy);
    let started = tokio::time::Instant::now();
    let msg = w.deploy("v2").await.unwrap_err().to_string();
    assert!(
        msg.contains("is unhealthy by its Docker HEALTHCHECK"),
        "{msg}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "no waiting for the deadline"
    );
    w.assert_consistent("v1");
}

#[tokio::test(start_paused = true)]
async fn a_docker_healthy_replica_is_routed() {
    let w = World::new();
    w.runtime
        .docker_health
        .borrow_mut()
        .insert("v1".into(), RuntimeHealth::Healthy);
    w.deploy("v1").await.unwrap();
    w.assert_consistent("v1");
}

#[tokio::test(start_paused = true)]
async fn a_live_holder_keeps_its_lock_however_old_its_heartbeat() {
    // Review finding: a drain longer than 60 s made a live deploy's lock look stale.
    let w = World::new();
    let slow = Lock {
        service: w.spec.name.clone(),
        pid: 42,
        host: "testhost".into(),
        deployment: Some(1),
        acquired_ms: 0,
        heartbeat_ms: w.host.now_ms() - 600_000,
    };
    w.host.alive.borrow_mut().insert(42);
    w.store.try_lock(&slow, None).unwrap().unwrap();
    assert_eq!(w.deploy("v1").await.unwrap_err().exit_code(), 2);
}

#[tokio::test(start_paused = true)]
async fn redeploying_the_live_version_keeps_the_real_rollback_target() {
    // Review finding: a second v2 pushed v1 out of retain = 1.
    let w = World::new();
    w.deploy("v1").await.unwrap();
    w.deploy("v2").await.unwrap();
    w.deploy("v2").await.unwrap();
    assert_eq!(w.retained_versions(), ["v1"]);
    w.deployer().rollback(&w.spec).await.unwrap();
    w.assert_consistent("v1");
}

#[tokio::test(start_paused = true)]
async fn a_rollback_whose_second_restart_fails_leaves_the_retained_slot_whole() {
    // Review finding: r0 went back under the rollback's id and r1 under its own: two slots.
    let w = World::new();
    w.deploy("v1").await.unwrap();
    w.deploy("v2").await.unwrap();
    let v1 = w.store.service(&w.spec.name).unwrap().retained[0].clone();
    w.runtime
        .unrestartable
        .borrow_mut()
        .insert(v1.instances[1].id.clone());
    let err = w.deployer().rollback(&w.spec).await.unwrap_err();
    assert!(
        err.to_string().contains("port is already allocated"),
        "{err}"
    );
    w.assert_consistent("v2");
    let retained = w.store.service(&w.spec.name).unwrap().retained;
    assert_eq!(retained.len(), 1, "{retained:#?}");
    assert_eq!(
        (retained[0].deployment, retained[0].instances.len()),
        (v1.deployment, 2)
    );
}

mod adopt;
mod canary;
mod hooks;
mod killed;
mod legacy;
mod prepare;
mod rolling;
mod simulation;
mod watch;

#[tokio::test(start_paused = true)]
async fn remove_takes_the_service_out_of_nginx_before_removing_every_replica() {
    let w = World::new();
    w.deploy("v1").await.unwrap();
    w.deploy("v2").await.unwrap();
    assert_eq!(w.retained_versions(), ["v1"]);
    let before = w.shared.calls().len();
    let drain = Duration::from_secs(30);
    let report = w
        .deployer()
        .remove(&w.spec.name, drain, w.spec.stop_timeout)
        .await
        .unwrap();
    assert_eq!(
        report.removed.len(),
        4,
        "both slots, retained included: {report:?}"
    );
    assert!(w.router.backends("web").is_empty(), "out of nginx");
    assert!(w.runtime.existing().is_empty(), "every replica removed");
    let calls = w.shared.calls()[before..].to_vec();
    assert!(
        position(&calls, "router.remove") < position(&calls, "runtime.stop"),
        "out of nginx and drained before anything stops: {calls:#?}"
    );
    assert!(position(&calls, "router.wait_drained") < position(&calls, "runtime.stop"));
    let record = w.store.service(&w.spec.name).unwrap();
    assert_eq!(
        record,
        ServiceRecord::default(),
        "nothing active or retained"
    );
    assert_eq!(
        w.store.history(Some(&w.spec.name), 10).unwrap().len(),
        2,
        "history kept"
    );
    assert!(
        w.store.lock(&w.spec.name).unwrap().is_none(),
        "lock released"
    );
    // Again: nothing left to do, and no error.
    let again = w
        .deployer()
        .remove(&w.spec.name, drain, w.spec.stop_timeout)
        .await
        .unwrap();
    assert!(again.removed.is_empty());
}

#[tokio::test(start_paused = true)]
async fn remove_is_refused_while_a_deployment_is_unfinished() {
    let w = World::new();
    w.deploy("v1").await.unwrap();
    w.killed_during(2, w.deploy("v2")).await;
    let err = w
        .deployer()
        .remove(&w.spec.name, Duration::from_secs(1), Duration::from_secs(1))
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), 2, "{err}");
    assert!(err.to_string().contains("unfinished"), "{err}");
    assert!(
        !w.router.backends("web").is_empty(),
        "nothing was taken out"
    );
}
