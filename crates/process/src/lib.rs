//! switchyard's process runtime: [`ProcessRuntime`] implements the engine's `Runtime` for
//! hosts without a Docker engine, running each replica as one local process.
//!
//! A replica is an argument vector (`command` in the config) spawned in its own process group,
//! serving on a 127.0.0.1 port: the one its spec names (freed by the replica it replaces), or
//! else one the runtime picks. Its output is appended to
//! `<state_dir>/processes/<name>.log`; its [`label`] file next to it is the runtime's record
//! (instance, pid, argv, environment), so any later `switchyard` process can find, stop and
//! restart it. The instance id is the instance name, stable across restarts.
//!
//! Linux only: liveness comes from `/proc/<pid>/stat`.

mod follow;
mod label;
mod proc_table;
mod spawn;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use switchyard_engine::config::Source;
use switchyard_engine::{
    Instance, InstanceSpec, InstanceStatus, Name, Runtime, RuntimeError, RuntimeHealth,
};

use crate::label::Label;

/// How long `remove` lets a running replica shut down before SIGKILL.
const REMOVE_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// How long `start` waits for a requested host port (`InstanceSpec::host_port`) to be free:
/// the replica that held it has just been stopped, and its socket may linger a moment.
const PORT_WAIT: Duration = Duration::from_secs(5);

/// How often that port is checked meanwhile.
const PORT_POLL: Duration = Duration::from_millis(50);

/// The engine's `Runtime` as local processes, recorded under `<state_dir>/processes/`.
#[derive(Debug, Clone)]
pub struct ProcessRuntime {
    dir: PathBuf,
    /// [`PORT_WAIT`], shorter in tests.
    port_wait: Duration,
    /// Ports handed out by this runtime. A port found free is not bound until the process
    /// starts listening, so replicas started concurrently must not be handed the same one.
    handed_out: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<u16>>>,
}

impl ProcessRuntime {
    /// Creates `<state_dir>/processes/` if needed.
    pub fn new(state_dir: PathBuf) -> Result<ProcessRuntime, RuntimeError> {
        let dir = state_dir.join("processes");
        std::fs::create_dir_all(&dir).map_err(|e| {
            RuntimeError::Unavailable(format!(
                "creating {}: {}",
                dir.display(),
                spawn::io_message(&e)
            ))
        })?;
        Ok(ProcessRuntime {
            dir,
            port_wait: PORT_WAIT,
            handed_out: Default::default(),
        })
    }

    /// The directory holding the label and log files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The host port for `spec`: the one it asks for once that is free (waiting up to
    /// `port_wait`), else a free one.
    async fn host_port(&self, name: &str, spec: &InstanceSpec) -> Result<u16, RuntimeError> {
        let Some(port) = spec.host_port else {
            return self.fresh_port().map_err(|e| {
                failed(
                    name,
                    format!(
                        "finding a free port on 127.0.0.1: {}",
                        spawn::io_message(&e)
                    ),
                )
            });
        };
        let deadline = tokio::time::Instant::now() + self.port_wait;
        while !spawn::port_is_free(port) {
            if tokio::time::Instant::now() >= deadline {
                return Err(failed(
                    name,
                    format!(
                        "port 127.0.0.1:{port} is still taken by another process after {:?}",
                        self.port_wait
                    ),
                ));
            }
            tokio::time::sleep(PORT_POLL).await;
        }
        Ok(port)
    }

    /// A free port this runtime has not handed out before.
    fn fresh_port(&self) -> std::io::Result<u16> {
        let mut handed_out = self.handed_out.lock().expect("port set lock");
        loop {
            let port = spawn::free_port()?;
            if handed_out.insert(port) {
                return Ok(port);
            }
        }
    }

    /// Spawns `argv` and records it. If the record cannot be written the process is killed:
    /// an unrecorded process could never be stopped.
    async fn launch(
        &self,
        instance: Instance,
        argv: Vec<String>,
        env: BTreeMap<String, String>,
        workdir: Option<PathBuf>,
    ) -> Result<Instance, RuntimeError> {
        let name = instance.name.clone();
        let log = label::path(&self.dir, &name, "log")?;
        let spawned = match spawn::spawn(&argv, &env, workdir.as_deref(), &log) {
            Ok(spawned) => spawned,
            Err(message) => {
                // Don't leave an empty log behind a program that never ran.
                if std::fs::metadata(&log).is_ok_and(|m| m.len() == 0) {
                    let _ = std::fs::remove_file(&log);
                }
                return Err(failed(&name, message));
            }
        };
        let label = Label {
            instance,
            pid: spawned.pid,
            start_time: spawned.start_time,
            argv,
            env,
            workdir,
        };
        if let Err(e) = label::write(&self.dir, &label).await {
            // Best effort: the write error is the one worth reporting.
            let _ = proc_table::stop_process(spawned.pid, spawned.start_time, Duration::ZERO).await;
            return Err(e);
        }
        Ok(label.instance)
    }
}

impl Runtime for ProcessRuntime {
    /// Nothing to fetch: the program is on this host.
    async fn prepare(&self, _spec: &InstanceSpec) -> Result<(), RuntimeError> {
        Ok(())
    }

    async fn start(&self, spec: &InstanceSpec) -> Result<Instance, RuntimeError> {
        let name = spec.instance_name();
        let Source::Command(argv) = &spec.source else {
            return Err(failed(
                &name,
                "the process runtime needs `command`, not `image`",
            ));
        };
        if let Some(old) = label::read(&self.dir, &name).await? {
            if proc_table::is_ours(old.pid, old.start_time) {
                return Err(failed(&name, format!("already running as pid {}", old.pid)));
            }
        }
        let port = self.host_port(&name, spec).await?;
        let port_text = port.to_string();
        let argv = argv
            .iter()
            .map(|a| a.replace("{port}", &port_text))
            .collect();
        let mut env = spec.env.clone();
        env.extend(
            spec.secrets
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned())),
        );
        env.extend(
            [
                ("PORT", port_text),
                ("BIND_ADDR", "127.0.0.1".to_owned()),
                ("APP_VERSION", spec.version.to_string()),
                ("SWITCHYARD_SERVICE", spec.service.to_string()),
                ("SWITCHYARD_DEPLOYMENT", spec.deployment.to_string()),
            ]
            .map(|(k, v)| (k.to_owned(), v)),
        );
        let instance = spec.instance(name.clone(), name, port);
        let workdir = spec.container.workdir.as_ref().map(PathBuf::from);
        self.launch(instance, argv, env, workdir).await
    }

    async fn restart(&self, instance: &Instance) -> Result<Instance, RuntimeError> {
        let name = &instance.name;
        let Some(label) = label::read(&self.dir, name).await? else {
            return Err(failed(
                name,
                format!(
                    "no record of it in {}",
                    label::path(&self.dir, name, "json")?.display()
                ),
            ));
        };
        // Like `docker start` on a running container: nothing to do.
        if proc_table::is_ours(label.pid, label.start_time) {
            return Ok(label.instance);
        }
        let port = label.instance.host_port;
        if !spawn::port_is_free(port) {
            return Err(failed(
                name,
                format!("port 127.0.0.1:{port} is taken by another process"),
            ));
        }
        self.launch(label.instance, label.argv, label.env, label.workdir)
            .await
    }

    async fn status(&self, instance: &Instance) -> Result<InstanceStatus, RuntimeError> {
        Ok(match label::read(&self.dir, &instance.name).await? {
            None => InstanceStatus::Missing,
            Some(l) if proc_table::is_ours(l.pid, l.start_time) => InstanceStatus::Running {
                health: RuntimeHealth::None,
            },
            // The exit code went with the child handle; the parent may be long gone.
            Some(_) => InstanceStatus::Exited { code: None },
        })
    }

    async fn stop(&self, instance: &Instance, timeout: Duration) -> Result<(), RuntimeError> {
        match label::read(&self.dir, &instance.name).await? {
            None => Ok(()),
            Some(l) => proc_table::stop_process(l.pid, l.start_time, timeout)
                .await
                .map_err(|m| failed(&instance.name, m)),
        }
    }

    async fn remove(&self, instance: &Instance) -> Result<(), RuntimeError> {
        self.stop(instance, REMOVE_STOP_TIMEOUT).await?;
        label::remove_files(&self.dir, &instance.name).await
    }

    async fn logs(&self, instance: &Instance, lines: usize) -> String {
        match label::path(&self.dir, &instance.name, "log") {
            Ok(log) => label::tail(&log, lines).await,
            Err(_) => String::new(),
        }
    }

    async fn list(&self, service: &Name) -> Result<Vec<Instance>, RuntimeError> {
        Ok(label::list(&self.dir)
            .await?
            .into_iter()
            .filter(|l| &l.instance.service == service)
            .map(|l| l.instance)
            .collect())
    }
}

fn failed(what: &str, message: impl Into<String>) -> RuntimeError {
    RuntimeError::Failed {
        what: what.to_owned(),
        message: message.into(),
    }
}
