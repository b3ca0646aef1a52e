//! The three ways the bench deploys ([`Flow`]), the strategies it deploys by ([`Strategy`]),
//! which client sends which method ([`Pairing`]), and the naive order itself ([`Naive`]):
//! the engine runs the other two flows.

use std::time::Instant;

use anyhow::Context;
use serde::Serialize;
use switchyard_app::sandbox::Sandbox;
use switchyard_engine::config::StrategyKind;
use switchyard_engine::deploy::upstream_set;
use switchyard_engine::{CanaryRoute, Event, Instance, UpstreamSet, Version};

use crate::common::{naive_route, naive_start, naive_stop_at_once, wait_healthy, Timeline};
use crate::{NAIVE_HOLD, REPLICAS};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Flow {
    Naive,
    Reload,
    Dynamic,
}

pub const FLOWS: [Flow; 3] = [Flow::Naive, Flow::Reload, Flow::Dynamic];

impl Flow {
    pub fn name(self) -> &'static str {
        match self {
            Flow::Naive => "naive",
            Flow::Reload => "reload",
            Flow::Dynamic => "dynamic",
        }
    }

    /// `[proxy] routing`: the naive order rewrites a reload router's upstream file.
    pub fn routing(self) -> &'static str {
        match self {
            Flow::Dynamic => "dynamic",
            Flow::Naive | Flow::Reload => "reload",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    BlueGreen,
    Canary,
    Rolling,
}

pub const STRATEGIES: [Strategy; 3] = [Strategy::BlueGreen, Strategy::Canary, Strategy::Rolling];

impl Strategy {
    pub fn kind(self) -> StrategyKind {
        match self {
            Strategy::BlueGreen => StrategyKind::BlueGreen,
            Strategy::Canary => StrategyKind::Canary,
            Strategy::Rolling => StrategyKind::Rolling,
        }
    }
}

/// Which method wrk sends; the generator sends the other one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pairing {
    WrkGet,
    WrkPost,
}

pub const PAIRINGS: [Pairing; 2] = [Pairing::WrkGet, Pairing::WrkPost];

impl Pairing {
    pub fn wrk_method(self) -> &'static str {
        match self {
            Pairing::WrkGet => "GET",
            Pairing::WrkPost => "POST",
        }
    }

    pub fn own_method(self) -> &'static str {
        match self {
            Pairing::WrkGet => "POST",
            Pairing::WrkPost => "GET",
        }
    }
}

/// The naive order for each strategy, built from `common`'s pieces. It marks on the
/// timeline the points the engine reports: `Healthy` after its health wait, `Reloaded` or
/// `Shifted` at each SIGHUP, `Drained` at once after it (it does not wait for anything to be
/// idle), `Stopped` when the stop calls returned.
pub struct Naive<'a> {
    pub sandbox: &'a Sandbox,
    pub timeline: &'a Timeline,
    pub version: &'a Version,
    /// Numbers this deploy's instances apart from every other's.
    pub n: usize,
}

impl Naive<'_> {
    fn mark(&self, at: Instant, event: Event) {
        let mut events = self.timeline.0.lock().expect("timeline lock");
        events.push((at, event));
    }

    async fn start_healthy(
        &self,
        live_now: &[Instance],
        replicas: std::ops::Range<u16>,
    ) -> anyhow::Result<Vec<Instance>> {
        let color = live_now
            .first()
            .context("nothing is serving")?
            .color
            .other();
        let spec = self.sandbox.spec();
        let (new, _) = naive_start(self.sandbox, self.version, color, self.n, replicas).await?;
        let since = Instant::now();
        wait_healthy(self.sandbox, spec, &new).await?;
        let waited_ms = since.elapsed().as_millis() as u64;
        self.mark(Instant::now(), Event::Healthy { waited_ms });
        Ok(new)
    }

    /// Rewrites the upstream to `set`, SIGHUPs, and marks it.
    async fn route(&self, set: &UpstreamSet) -> anyhow::Result<()> {
        naive_route(self.sandbox, set).await?;
        let at = Instant::now();
        self.mark(
            at,
            match &set.canary {
                Some(c) => Event::Shifted {
                    weight_bp: c.weight_bp,
                    generation: 0,
                    confirm_ms: 0,
                },
                None => Event::Reloaded {
                    generation: 0,
                    confirm_ms: 0,
                },
            },
        );
        self.mark(
            at,
            Event::Drained {
                waited_ms: 0,
                lingering: None,
            },
        );
        Ok(())
    }

    async fn stop_at_once(&self, old: &[Instance]) -> anyhow::Result<()> {
        let stopped = naive_stop_at_once(self.sandbox, old).await?;
        for o in old {
            let instance = o.name.clone();
            self.mark(stopped, Event::Stopped { instance });
        }
        Ok(())
    }

    pub async fn blue_green(&self, live_now: &mut Vec<Instance>) -> anyhow::Result<()> {
        let new = self.start_healthy(live_now, 0..REPLICAS).await?;
        self.route(&upstream_set(self.sandbox.spec(), &new)).await?;
        self.stop_at_once(live_now).await?;
        *live_now = new;
        Ok(())
    }

    /// 25 % and 50 % for [`NAIVE_HOLD`] each, then all new.
    pub async fn canary(&self, live_now: &mut Vec<Instance>) -> anyhow::Result<()> {
        let spec = self.sandbox.spec();
        let new = self.start_healthy(live_now, 0..REPLICAS).await?;
        for weight_bp in [2500, 5000] {
            let canary = CanaryRoute {
                backends: new.iter().map(Instance::addr).collect(),
                weight_bp,
                sticky: None,
                route: None,
            };
            let set = UpstreamSet {
                canary: Some(canary),
                ..upstream_set(spec, live_now)
            };
            self.route(&set).await?;
            tokio::time::sleep(NAIVE_HOLD).await;
        }
        self.route(&upstream_set(spec, &new)).await?;
        self.stop_at_once(live_now).await?;
        *live_now = new;
        Ok(())
    }

    /// One replica at a time: start it, route to it and the old ones left, stop one old.
    pub async fn rolling(&self, live_now: &mut Vec<Instance>) -> anyhow::Result<()> {
        let spec = self.sandbox.spec();
        let old = std::mem::take(live_now);
        let mut new: Vec<Instance> = Vec::new();
        for (b, retiring) in old.iter().enumerate() {
            let b = b as u16;
            new.extend(self.start_healthy(&old, b..b + 1).await?);
            let serving: Vec<Instance> =
                old[b as usize + 1..].iter().chain(&new).cloned().collect();
            self.route(&upstream_set(spec, &serving)).await?;
            self.stop_at_once(std::slice::from_ref(retiring)).await?;
        }
        *live_now = new;
        Ok(())
    }
}
