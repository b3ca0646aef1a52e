//! Helpers both benchmarks share: a timestamped event log ([`Timeline`]), medians and
//! spreads ([`spread`], [`Spread`]), number formatting, image clean-up, and running a command
//! for the machine description ([`output`]).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use switchyard_app::sandbox::IMAGE;
use switchyard_engine::{Event, Observer};

/// Records every engine event with the instant it arrived.
#[derive(Default)]
pub struct Timeline(pub Mutex<Vec<(Instant, Event)>>);

impl Observer for Timeline {
    fn event(&self, event: &Event) {
        let mut events = self.0.lock().expect("timeline lock");
        events.push((Instant::now(), event.clone()));
    }
}

/// Untags the bench's images; they share one layer with the demo's, so only tags go.
pub async fn remove_images(versions: &[String]) {
    let tags = versions.iter().map(|v| format!("{IMAGE}:{v}"));
    let removed = tokio::process::Command::new("docker")
        .args(["image", "rm", "--no-prune"])
        .args(tags)
        .output()
        .await;
    match removed {
        Ok(out) if out.status.success() => {}
        Ok(out) => eprintln!(
            "removing the bench images: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => eprintln!("removing the bench images: running docker: {e}"),
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Median, quartiles and range of some values (linear interpolation between ranks).
pub struct Spread {
    pub min: f64,
    pub p25: f64,
    pub median: f64,
    pub p75: f64,
    pub max: f64,
}

pub fn spread(mut values: Vec<f64>) -> Option<Spread> {
    values.sort_by(f64::total_cmp);
    let quantile = |q: f64| {
        let h = q * (values.len() - 1) as f64;
        let (lo, hi) = (h.floor() as usize, h.ceil() as usize);
        values[lo] + (h - h.floor()) * (values[hi] - values[lo])
    };
    Some(Spread {
        min: *values.first()?,
        p25: quantile(0.25),
        median: quantile(0.5),
        p75: quantile(0.75),
        max: *values.last()?,
    })
}

pub fn num(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// A command's stdout, or its stderr when stdout is empty (`nginx -v`); "unknown" on error.
pub async fn output(program: &str, args: &[&str]) -> String {
    match tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
    {
        Ok(out) => {
            let text = if out.stdout.is_empty() {
                out.stderr
            } else {
                out.stdout
            };
            String::from_utf8_lossy(&text).trim().to_owned()
        }
        Err(e) => format!("unknown ({program}: {e})"),
    }
}
