//! Periodic restore points in `walrelay run` (`[[group]] every = "10m"`).
//!
//! Owns: one tracked task per group with `every`, its metrics
//! (`walrelay_restore_point_last_success_timestamp_seconds{group}`,
//! `walrelay_restore_point_failures_total{group}`) and its log lines. A failure is logged with
//! the cluster and the cause and retried at the next tick; nothing here touches the WAL path,
//! so it never blocks WAL flow. Must not: decide anything about feeds.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::Fleet;

/// Metric: time of the last restore point recorded for a group.
pub const LAST_SUCCESS: &str = "walrelay_restore_point_last_success_timestamp_seconds";
/// Metric: failed periodic restore points of a group.
pub const FAILURES: &str = "walrelay_restore_point_failures_total";

fn describe() {
    metrics::describe_gauge!(
        LAST_SUCCESS,
        metrics::Unit::Seconds,
        "Unix time of the last cluster-wide restore point recorded for the group."
    );
    metrics::describe_counter!(
        FAILURES,
        "Periodic cluster-wide restore points of the group that failed."
    );
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(0))
        .unwrap_or(0)
}

/// Starts one task per group with `every`; they end when `shutdown` turns true. The caller
/// joins the handles on shutdown.
pub fn spawn(fleet: Fleet, shutdown: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
    describe();
    let mut out = Vec::new();
    for g in fleet.groups.iter().filter(|g| g.every.is_some()) {
        let every = g.every.unwrap_or(Duration::from_secs(600));
        let name = g.name.clone();
        let fleet = fleet.clone();
        let mut stop = shutdown.clone();
        metrics::counter!(FAILURES, "group" => name.clone()).absolute(0);
        out.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await; // the first tick is immediate: wait one period first
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                let g = match fleet.group(&name) {
                    Ok(g) => g,
                    Err(_) => return,
                };
                let rp = match g.periodic_name(unix_now()) {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::error!("periodic restore point of group \"{name}\": {e}");
                        metrics::counter!(FAILURES, "group" => name.clone()).increment(1);
                        continue;
                    }
                };
                let run = super::restore_point::create(&fleet, &name, &rp);
                let r = tokio::select! {
                    r = run => r,
                    _ = stop.wait_for(|s| *s) => return,
                };
                match r {
                    Ok(rec) => {
                        metrics::gauge!(LAST_SUCCESS, "group" => name.clone())
                            .set(unix_now() as f64);
                        tracing::info!(
                            "restore point \"{}\" of group \"{name}\" recorded: {}",
                            rec.name,
                            rec.clusters
                                .iter()
                                .map(|c| format!("{}={}", c.name, c.lsn.as_deref().unwrap_or("-")))
                                .collect::<Vec<_>>()
                                .join(" ")
                        );
                    }
                    Err(e) => {
                        metrics::counter!(FAILURES, "group" => name.clone()).increment(1);
                        tracing::error!(
                            "periodic restore point \"{rp}\" of group \"{name}\" failed: {e}"
                        );
                    }
                }
            }
        }));
    }
    out
}
