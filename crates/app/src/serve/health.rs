//! Health checks of the active instances: [`HealthBoard`] probes each active instance's
//! health path every few seconds (with the same prober a deploy uses) and keeps
//! `switchyard_health_check_duration_seconds{service}` (a histogram of probe latency,
//! failed probes included), `switchyard_instance_healthy{service,instance}` (1 or 0 by the
//! last probe; an instance's series goes when it stops being active) and the last probe
//! of each instance for `/api/status`. These are live measurements, kept in the
//! `prometheus` crate's own metric types.

use std::collections::BTreeMap;
use std::sync::Mutex;

use prometheus::proto::MetricFamily;
use prometheus::{HistogramOpts, HistogramVec, IntGaugeVec, Opts, Registry};
use serde::Serialize;
use switchyard_engine::{Host, Instance, Probe, Prober, ServiceSpec};

use crate::live::{HttpProber, SystemHost};

/// Seconds; a local health endpoint answers in about a millisecond.
pub const HEALTH_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The last probe of one instance, as `/api/status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LastProbe {
    pub ok: bool,
    /// `200 ok`, `503 unhealthy: …`, or the connection error.
    pub summary: String,
    pub latency_ms: f64,
    pub at_ms: i64,
}

pub struct HealthBoard {
    registry: Registry,
    duration: HistogramVec,
    healthy: IntGaugeVec,
    /// service → instance name → last probe.
    last: Mutex<BTreeMap<String, BTreeMap<String, LastProbe>>>,
}

impl HealthBoard {
    /// With the latency series of every one of `services` at 0.
    pub fn new(services: &[String]) -> HealthBoard {
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "switchyard_health_check_duration_seconds",
                "Latency of switchyard serve's health probes of active instances, in seconds.",
            )
            .buckets(HEALTH_BUCKETS.to_vec()),
            &["service"],
        )
        .expect("valid histogram options");
        let healthy = IntGaugeVec::new(
            Opts::new(
                "switchyard_instance_healthy",
                "Whether an active instance passed its last health probe (1) or not (0).",
            ),
            &["service", "instance"],
        )
        .expect("valid gauge options");
        let registry = Registry::new();
        registry
            .register(Box::new(duration.clone()))
            .expect("registered once");
        registry
            .register(Box::new(healthy.clone()))
            .expect("registered once");
        for service in services {
            duration.with_label_values(&[service.as_str()]);
        }
        HealthBoard {
            registry,
            duration,
            healthy,
            last: Mutex::new(BTreeMap::new()),
        }
    }

    /// Probes each of `instances` (the active slot of `spec`) once, in turn.
    pub async fn probe(&self, prober: &HttpProber, spec: &ServiceSpec, instances: &[Instance]) {
        let service = spec.name.as_str();
        let mut probes = BTreeMap::new();
        for instance in instances {
            let probe = prober
                .probe(instance.addr(), &spec.health.path, spec.health.timeout)
                .await;
            probes.insert(instance.name.clone(), last_probe(&probe));
        }
        self.record(service, probes);
    }

    /// Records one round of probes of `service`; instances not in it are forgotten.
    pub fn record(&self, service: &str, probes: BTreeMap<String, LastProbe>) {
        let mut last = self.last.lock().expect("health board lock");
        let before = last.remove(service).unwrap_or_default();
        for name in before.keys().filter(|name| !probes.contains_key(*name)) {
            let _ = self.healthy.remove_label_values(&[service, name.as_str()]);
        }
        for (name, probe) in &probes {
            self.duration
                .with_label_values(&[service])
                .observe(probe.latency_ms / 1000.0);
            self.healthy
                .with_label_values(&[service, name.as_str()])
                .set(i64::from(probe.ok));
        }
        last.insert(service.to_owned(), probes);
    }

    /// The last probe of `service`'s `instance`, if it has been probed.
    pub fn last(&self, service: &str, instance: &str) -> Option<LastProbe> {
        let last = self.last.lock().expect("health board lock");
        last.get(service).and_then(|s| s.get(instance)).cloned()
    }

    pub fn families(&self) -> Vec<MetricFamily> {
        self.registry.gather()
    }
}

fn last_probe(probe: &Probe) -> LastProbe {
    LastProbe {
        ok: probe.ok,
        summary: probe.summary.clone(),
        latency_ms: probe.latency.as_secs_f64() * 1000.0,
        at_ms: SystemHost.now_ms(),
    }
}
