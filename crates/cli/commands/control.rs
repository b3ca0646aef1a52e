//! `switchyard promote`, `abort` and `pause`: a request to the running canary (or watched
//! deploy) of a service, left in the store, where the deploy picks it up at its next check.

use switchyard_app::{settings, AppError};
use switchyard_engine::deploy::{lock_is_stale, refuses_control};
use switchyard_engine::{Control, Host, Store};
use switchyard_store::SqliteStore;

use crate::Cli;

pub fn run(cli: &Cli, service: &str, control: Control) -> Result<(), AppError> {
    let config = settings::load(&cli.config)?;
    let spec = config
        .service(service)
        .ok_or_else(|| AppError::input(format!("no service {service:?} in the config")))?;
    let env = |e: switchyard_engine::StoreError| AppError::environment(e.to_string());
    let store = SqliteStore::open(&config.state_path).map_err(env)?;
    let Some((deployment, journal)) = store.unfinished(&spec.name).map_err(env)? else {
        return Err(AppError::input(format!(
            "no deployment of {service} is running: nothing to {}",
            control.as_str()
        )));
    };
    if let Some(refused) = refuses_control(&deployment, &journal, service, control) {
        return Err(AppError::input(refused));
    }
    let host = switchyard_app::live::SystemHost;
    let lock = store.lock(&spec.name).map_err(env)?;
    if lock
        .as_ref()
        .is_none_or(|l| lock_is_stale(l, &host, host.now_ms()))
    {
        return Err(AppError::input(format!(
            "deployment #{} of {service} was interrupted: the next `switchyard deploy` or `switchyard rollback` settles it",
            deployment.id
        )));
    }
    store
        .put_control(deployment.id, control, host.now_ms())
        .map_err(env)?;
    let at = journal.last().map_or("begin", |e| e.step.name());
    println!(
        "asked deployment #{} ({service} -> {}, at step `{at}`) to {}; it acts at its next check",
        deployment.id,
        deployment.to_version,
        control.as_str()
    );
    Ok(())
}
