//! Tests of [`Live::open_lazy`]: where the process runtime keeps its files.

use std::path::Path;

use super::*;

fn process_config(state_dir: &Path) -> Config {
    let text = format!(
        "[proxy]\nprefix = \"{prefix}\"\n[state]\npath = \"{db}\"\n[runtime]\nkind = \"process\"\n[[service]]\nname = \"web\"\nlisten = \"127.0.0.1:8000\"\ncommand = [\"sleep\", \"30\"]\n",
        prefix = state_dir.join("nginx").display(),
        db = state_dir.join("switchyard.db").display(),
    );
    Config::parse(&text, Path::new("switchyard.toml")).unwrap()
}

fn process_dir(live: &Live) -> &Path {
    match &live.runtime {
        AnyRuntime::Process(p) => p.dir(),
        AnyRuntime::Docker(_) => panic!("the config chose processes"),
    }
}

// Regression (issue 8): the process runtime wrote to `<state>/processes/processes/`:
// `open` joined "processes" and so did `ProcessRuntime::new`.
#[test]
fn process_files_are_kept_in_the_state_dirs_processes_folder() {
    let state = tempfile::tempdir().unwrap();
    let live = Live::open_lazy(process_config(state.path())).unwrap();
    assert_eq!(process_dir(&live), state.path().join("processes"));
    assert!(state.path().join("processes").is_dir());
    assert!(!state.path().join("processes/processes").exists());
}

#[test]
fn files_from_the_nested_folder_are_moved_up() {
    let state = tempfile::tempdir().unwrap();
    let nested = state.path().join("processes/processes");
    std::fs::create_dir_all(&nested).unwrap();
    std::fs::write(nested.join("sy-web-blue-d1-r0.json"), "{}").unwrap();
    std::fs::write(nested.join("sy-web-blue-d1-r0.log"), "ready\n").unwrap();
    let live = Live::open_lazy(process_config(state.path())).unwrap();
    let dir = process_dir(&live);
    assert_eq!(
        std::fs::read_to_string(dir.join("sy-web-blue-d1-r0.json")).unwrap(),
        "{}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("sy-web-blue-d1-r0.log")).unwrap(),
        "ready\n"
    );
    assert!(!nested.exists(), "the emptied nested folder is removed");
}
