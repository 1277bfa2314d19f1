//! The command lines of `walrelay restore-point create`, `walrelay restore-points` and the
//! `--group` form of `walrelay feed pause|resume|advance`.
//!
//! Owns: their arguments and output. Must not: hold logic beyond reading the configuration
//! and calling [`super::restore_point`] or the control endpoint.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{restore_point, Fleet};

/// `walrelay restore-point …`.
#[derive(Args)]
pub struct RestorePointArgs {
    #[command(subcommand)]
    pub action: RestorePointAction,
}

#[derive(Subcommand)]
pub enum RestorePointAction {
    /// Create a restore point on every cluster of a group at one consistent point (inside
    /// the group's fence, or with citus_create_restore_point) and record it in the archive.
    Create {
        /// Restore point name (1-63 letters, digits, '_', '-', '.'); refused if the group
        /// already recorded it.
        name: String,
        /// The [[group]] of the configuration.
        #[arg(long)]
        group: String,
        /// walrelay's configuration file (clusters and groups).
        #[arg(short = 'c', long)]
        config: PathBuf,
        /// Print the record as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `walrelay restore-points`: the recorded cluster-wide restore points.
#[derive(Args)]
pub struct RestorePointsArgs {
    /// Only this group.
    #[arg(long)]
    pub group: Option<String>,
    /// walrelay's configuration file (clusters and groups).
    #[arg(short = 'c', long)]
    pub config: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// `walrelay restore-point …`.
pub async fn restore_point_main(a: RestorePointArgs) -> Result<(), String> {
    match a.action {
        RestorePointAction::Create {
            name,
            group,
            config,
            json,
        } => {
            let fleet = Fleet::load(&config).map_err(|e| e.to_string())?;
            let rec = restore_point::create(&fleet, &group, &name)
                .await
                .map_err(|e| e.to_string())?;
            if json {
                println!("{}", to_json(&rec));
            } else {
                print!("{}", restore_point::format_list(std::slice::from_ref(&rec)));
            }
            Ok(())
        }
    }
}

/// `walrelay restore-points`.
pub async fn restore_points_main(a: RestorePointsArgs) -> Result<(), String> {
    let fleet = Fleet::load(&a.config).map_err(|e| e.to_string())?;
    let list = restore_point::list(&fleet, a.group.as_deref())
        .await
        .map_err(|e| e.to_string())?;
    if a.json {
        println!(
            "{}",
            to_json(&serde_json::json!({ "restore_points": list }))
        );
    } else {
        print!("{}", restore_point::format_list(&list));
    }
    Ok(())
}

/// `walrelay feed pause|resume|advance --group G`: every delayed feed of every cluster of
/// the group, all or nothing, through the control endpoint.
pub async fn feed_group(
    target: Result<crate::admin::Target, String>,
    config: Option<PathBuf>,
    group: String,
    action: &'static str,
    params: Vec<(&'static str, String)>,
    as_json: bool,
) -> Result<(), String> {
    let target = target?;
    let group = group.as_str();
    let Some(config) = config else {
        return Err(
            "--group needs the configuration file (-c/--config) that defines the group".into(),
        );
    };
    let fleet = Fleet::load(&config).map_err(|e| e.to_string())?;
    let g = fleet.group(group).map_err(|e| e.to_string())?;
    let members = fleet.members(g).map_err(|e| e.to_string())?;
    let feeds: Vec<(String, String)> = members
        .iter()
        .flat_map(|c| c.feeds.iter().map(|f| (c.name.clone(), f.clone())))
        .collect();
    if feeds.is_empty() {
        return Err(format!("group \"{group}\" has no delayed feeds"));
    }
    let out = crate::delay::api::group_command(&target, action, &feeds, &params, as_json).await?;
    print!("{out}");
    Ok(())
}
