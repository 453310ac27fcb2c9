//! Persistent disks: making `<root>/store` show a disk's directory, and undoing it.
//!
//! The disk's directory is the CPI's hint in `settings.disks.persistent[cid]`
//! (`{"path": "/…"}`). As root in a private mount namespace (how the local CPI runs the
//! agent) the directory is bind-mounted on `<root>/store`; otherwise `<root>/store` becomes
//! a symlink to it. Either way the disk's data is never touched: unmounting removes the
//! mount or the link and leaves an empty `<root>/store` directory. The mounted CID is
//! recorded in `<root>/bosh/mounted_disk` so `list_disk` and a restarted agent know it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::settings::{DiskStrategy, write_atomically};

/// The strategy to use: the forced one, else bind mounts when we are root in a mount
/// namespace of our own, else symlinks.
pub fn strategy(forced: Option<DiskStrategy>) -> DiskStrategy {
    forced.unwrap_or_else(|| {
        if rustix::process::geteuid().is_root() && private_mount_namespace() {
            DiskStrategy::Bind
        } else {
            DiskStrategy::Symlink
        }
    })
}

/// Whether our mount namespace differs from our parent's (whoever started us with
/// `unshare -m`) or from init's. Namespaces we may not read count as the same.
fn private_mount_namespace() -> bool {
    let Ok(ours) = std::fs::read_link("/proc/self/ns/mnt") else {
        return false;
    };
    let parent = rustix::process::getppid().map(|p| p.as_raw_pid());
    [parent, Some(1)]
        .into_iter()
        .flatten()
        .filter_map(|pid| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok())
        .any(|theirs| theirs != ours)
}

/// The directory a disk hint names (`{"path": …}` or a plain string).
pub fn hint_path(cid: &str, hint: &Value) -> Result<PathBuf> {
    let path = match hint {
        Value::String(path) => Some(path.as_str()),
        Value::Object(map) => map.get("path").and_then(Value::as_str),
        _ => None,
    };
    match path {
        Some(path) if Path::new(path).is_absolute() => Ok(PathBuf::from(path)),
        _ => Err(Error::Disk(format!(
            "disk {cid}: the settings' hint {hint} names no absolute path"
        ))),
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    cid: String,
    path: PathBuf,
    bind: bool,
}

fn read_record(layout: &Layout) -> Option<Record> {
    let text = std::fs::read_to_string(layout.mounted_disk_file()).ok()?;
    serde_json::from_str(&text).ok()
}

fn shows(layout: &Layout, record: &Record) -> bool {
    let store = layout.store();
    if record.bind {
        is_mount_point(&store)
    } else {
        std::fs::read_link(&store).is_ok_and(|target| target == record.path)
    }
}

fn is_mount_point(path: &Path) -> bool {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let wanted = path.to_string_lossy();
    mountinfo
        .lines()
        .filter_map(|line| line.split_whitespace().nth(4))
        .any(|mount_point| unescape_mountinfo(mount_point) == wanted)
}

fn unescape_mountinfo(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// The CID of the disk `<root>/store` shows, if any.
pub fn mounted(layout: &Layout) -> Option<String> {
    read_record(layout)
        .filter(|record| shows(layout, record))
        .map(|record| record.cid)
}

/// Makes `<root>/store` show the disk `cid` whose hint is `hint`.
pub async fn mount(layout: &Layout, strategy: DiskStrategy, cid: &str, hint: &Value) -> Result<()> {
    let path = hint_path(cid, hint)?;
    if let Some(current) = read_record(layout).filter(|r| shows(layout, r)) {
        if current.cid == cid {
            return Ok(());
        }
        return Err(Error::Disk(format!(
            "cannot mount disk {cid}: disk {} is mounted at {}; unmount it first",
            current.cid,
            layout.store().display()
        )));
    }
    if !path.is_dir() {
        return Err(Error::Disk(format!(
            "cannot mount disk {cid}: {} is not a directory",
            path.display()
        )));
    }
    let store = layout.store();
    clear_store(&store, cid)?;
    let bind = strategy == DiskStrategy::Bind;
    if bind {
        std::fs::create_dir_all(&store).map_err(Error::io("create", &store))?;
        run(
            "mount",
            &["--bind".as_ref(), path.as_os_str(), store.as_os_str()],
        )
        .await?;
    } else {
        std::os::unix::fs::symlink(&path, &store).map_err(Error::io("create link", &store))?;
    }
    let record = Record {
        cid: cid.to_string(),
        path: path.clone(),
        bind,
    };
    write_atomically(
        &layout.mounted_disk_file(),
        &serde_json::to_vec(&record).expect("records serialize"),
    )?;
    agent_log!(
        "mounted disk {cid} ({}) at {} ({})",
        path.display(),
        store.display(),
        if bind { "bind mount" } else { "symlink" }
    );
    Ok(())
}

/// Makes way for a mount: a link or an empty directory at `store` goes; anything else is
/// data we must not hide.
fn clear_store(store: &Path, cid: &str) -> Result<()> {
    match std::fs::symlink_metadata(store) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("stat", store)(e)),
        Ok(m) if m.file_type().is_symlink() => {
            std::fs::remove_file(store).map_err(Error::io("remove", store))
        }
        Ok(m) if m.is_dir() => {
            let empty = std::fs::read_dir(store)
                .map_err(Error::io("read", store))?
                .next()
                .is_none();
            if empty {
                std::fs::remove_dir(store).map_err(Error::io("remove", store))
            } else {
                Err(Error::Disk(format!(
                    "cannot mount disk {cid}: {} holds files that the disk would hide",
                    store.display()
                )))
            }
        }
        Ok(_) => Err(Error::Disk(format!(
            "cannot mount disk {cid}: {} is not a directory",
            store.display()
        ))),
    }
}

/// Undoes [`mount`] for `cid`; returns whether it was mounted.
pub async fn unmount(layout: &Layout, cid: &str) -> Result<bool> {
    let Some(record) = read_record(layout).filter(|r| r.cid == cid && shows(layout, r)) else {
        return Ok(false);
    };
    let store = layout.store();
    if record.bind {
        run("umount", &[store.as_os_str()]).await?;
    } else {
        std::fs::remove_file(&store).map_err(Error::io("remove", &store))?;
        std::fs::create_dir_all(&store).map_err(Error::io("create", &store))?;
    }
    let _ = std::fs::remove_file(layout.mounted_disk_file());
    agent_log!("unmounted disk {cid} from {}", store.display());
    Ok(true)
}

/// `migrate_disk`: copies everything on the mounted disk `old_cid` to the new, empty disk
/// `new_cid` (BOSH's move to a bigger or different disk), then shows the new disk at
/// `<root>/store` in place of the old one. The old disk's data is only read: when anything
/// fails, the old disk stays mounted and the new one holds at most a partial copy.
pub async fn migrate(
    layout: &Layout,
    strategy: DiskStrategy,
    old_cid: &str,
    new_cid: &str,
    new_hint: &Value,
) -> Result<()> {
    let Some(old) = read_record(layout).filter(|r| r.cid == old_cid && shows(layout, r)) else {
        return Err(Error::Disk(format!(
            "cannot migrate disk {old_cid}: it is not mounted at {}",
            layout.store().display()
        )));
    };
    let target = hint_path(new_cid, new_hint)?;
    let empty = std::fs::read_dir(&target)
        .map_err(Error::io("read", &target))?
        .next()
        .is_none();
    if !empty {
        return Err(Error::Disk(format!(
            "cannot migrate disk {old_cid} to {new_cid}: {} is not empty",
            target.display()
        )));
    }
    let mut source = layout.store().into_os_string();
    source.push("/.");
    // cp -a keeps owners, modes, times, links and holes; `store/.` copies dot files too.
    run(
        "cp",
        &["-a".as_ref(), source.as_os_str(), target.as_os_str()],
    )
    .await?;
    unmount(layout, old_cid).await?;
    if let Err(e) = mount(layout, strategy, new_cid, new_hint).await {
        // Show the old disk again, so the instance is as it was.
        let old_hint = Value::from(old.path.to_string_lossy().into_owned());
        if let Err(again) = mount(layout, strategy, old_cid, &old_hint).await {
            agent_log!("migrate_disk: mounting {old_cid} again failed too: {again}");
        }
        return Err(e);
    }
    agent_log!("migrated disk {old_cid} to {new_cid}");
    Ok(())
}

/// At start-up: shows the recorded disk again when it is still in the settings but
/// `<root>/store` no longer shows it (a bind mount does not outlive its namespace).
pub async fn remount(
    layout: &Layout,
    strategy: DiskStrategy,
    persistent: &std::collections::BTreeMap<String, Value>,
) -> Result<()> {
    let Some(record) = read_record(layout) else {
        return Ok(());
    };
    if shows(layout, &record) {
        return Ok(());
    }
    let _ = std::fs::remove_file(layout.mounted_disk_file());
    match persistent.get(&record.cid) {
        Some(hint) => mount(layout, strategy, &record.cid, hint).await,
        None => Ok(()),
    }
}

async fn run(program: &str, args: &[&std::ffi::OsStr]) -> Result<()> {
    let output = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| Error::Disk(format!("cannot run {program}: {e}")))?;
    if output.status.success() {
        return Ok(());
    }
    let shown: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    Err(Error::Disk(format!(
        "{program} {} {}: {}",
        shown.join(" "),
        crate::state::describe_exit(output.status),
        String::from_utf8_lossy(&output.stderr).trim()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hints_name_absolute_paths() {
        assert_eq!(
            hint_path("d1", &json!({"path": "/disks/d1"})).unwrap(),
            Path::new("/disks/d1")
        );
        assert_eq!(
            hint_path("d1", &json!("/disks/d1")).unwrap(),
            Path::new("/disks/d1")
        );
        assert_eq!(
            hint_path("d1", &json!({"id": "x"}))
                .unwrap_err()
                .to_string(),
            r#"disk d1: the settings' hint {"id":"x"} names no absolute path"#
        );
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert!(is_mount_point(Path::new("/")) || !Path::new("/proc/self/mountinfo").exists());
    }
}
