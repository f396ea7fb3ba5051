//! The embedded source that needs no cluster: a folder of Service and EndpointSlice YAML.
//!
//! The folder is polled rather than watched with inotify: ConfigMap volumes and editors replace
//! files by renaming symlinks and directories, which inotify reports unreliably, and a poll of a
//! small folder costs nothing.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use serde::Deserialize;
use tracing::{error, info, warn};

use super::{Changes, Feed};
use crate::model::{ServiceInput, ServiceName, SliceInput, service_inputs, slice_keys};

/// The objects parsed from one file.
#[derive(Clone, Debug, Default)]
pub struct FileObjects {
    pub services: Vec<Service>,
    pub slices: Vec<EndpointSlice>,
}

/// A document that could not be used, with where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseProblem {
    pub path: PathBuf,
    /// 1-based index of the YAML document within the file.
    pub document: usize,
    pub reason: String,
}

impl std::fmt::Display for ParseProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (document {}): {}",
            self.path.display(),
            self.document,
            self.reason
        )
    }
}

/// Parses one file's text. Good documents are kept even when others in the file are bad.
pub fn parse_file(path: &Path, text: &str) -> (FileObjects, Vec<ParseProblem>) {
    let mut objects = FileObjects::default();
    let mut problems = Vec::new();
    for (index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let problem = |reason: String| ParseProblem {
            path: path.to_path_buf(),
            document: index + 1,
            reason,
        };
        let value = match serde_yaml::Value::deserialize(doc) {
            Ok(serde_yaml::Value::Null) => continue,
            Ok(v) => v,
            Err(e) => {
                problems.push(problem(format!("invalid YAML: {e}")));
                // After a syntax error the document stream cannot be trusted.
                break;
            }
        };
        if let Err(reason) = add_object(value, &mut objects) {
            problems.push(problem(reason));
        }
    }
    (objects, problems)
}

fn add_object(value: serde_yaml::Value, into: &mut FileObjects) -> Result<(), String> {
    let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
    let api_version = value
        .get("apiVersion")
        .and_then(|k| k.as_str())
        .unwrap_or("");
    match (kind, api_version) {
        ("Service", "v1") => {
            let svc: Service =
                serde_yaml::from_value(value).map_err(|e| format!("Service: {e}"))?;
            if svc.metadata.name.is_none() {
                return Err("Service without metadata.name".into());
            }
            into.services.push(svc);
        }
        ("EndpointSlice", "discovery.k8s.io/v1") => {
            let slice: EndpointSlice =
                serde_yaml::from_value(value).map_err(|e| format!("EndpointSlice: {e}"))?;
            into.slices.push(slice);
        }
        ("List", "v1") => {
            let items = value
                .get("items")
                .and_then(|i| i.as_sequence())
                .cloned()
                .unwrap_or_default();
            for item in items {
                add_object(item, into)?;
            }
        }
        ("", _) => return Err("no `kind`".into()),
        (kind, api_version) => {
            return Err(format!(
                "{api_version} {kind} is not a v1 Service or discovery.k8s.io/v1 EndpointSlice"
            ));
        }
    }
    Ok(())
}

/// Fingerprint of a file, to notice changes without reading it.
type Stamp = (SystemTime, u64);

/// Reads a manifests folder and remembers what each file last parsed to.
#[derive(Debug)]
pub struct ManifestFolder {
    dir: PathBuf,
    files: BTreeMap<PathBuf, (Stamp, FileObjects)>,
}

impl ManifestFolder {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            files: BTreeMap::new(),
        }
    }

    /// Re-reads changed files. Returns `Ok(true)` when anything changed. A file that turns
    /// malformed keeps its last good objects, so a bad edit never takes a working Service
    /// away; its problems are logged.
    pub fn refresh(&mut self) -> std::io::Result<(bool, Vec<ParseProblem>)> {
        let mut changed = false;
        let mut problems = Vec::new();
        let mut present = Vec::new();
        let mut entries: Vec<PathBuf> = fs::read_dir(&self.dir)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("yaml" | "yml" | "json")
                )
            })
            .collect();
        entries.sort();
        for path in entries {
            // Follows symlinks, as ConfigMap volumes need.
            let Ok(meta) = fs::metadata(&path) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            present.push(path.clone());
            let stamp = (
                meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                meta.len(),
            );
            if self.files.get(&path).is_some_and(|(s, _)| *s == stamp) {
                continue;
            }
            let text = match fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => {
                    problems.push(ParseProblem {
                        path: path.clone(),
                        document: 0,
                        reason: e.to_string(),
                    });
                    continue;
                }
            };
            let (objects, file_problems) = parse_file(&path, &text);
            if file_problems.is_empty() || !self.files.contains_key(&path) {
                self.files.insert(path.clone(), (stamp, objects));
            } else {
                // Remember the stamp so the same bad content is reported once, not every poll.
                if let Some(entry) = self.files.get_mut(&path) {
                    entry.0 = stamp;
                }
            }
            problems.extend(file_problems);
            changed = true;
        }
        let before = self.files.len();
        self.files.retain(|p, _| present.contains(p));
        changed |= self.files.len() != before;
        Ok((changed, problems))
    }

    /// What the folder holds, as the model reads it. Services sharing a namespace/name are
    /// kept once, the same one whatever the file order, with the others counted as
    /// duplicates; slices sharing one are all kept.
    pub fn contents(&self) -> Contents {
        let mut services = Vec::new();
        let mut slices = Vec::new();
        for (_, objects) in self.files.values() {
            services.extend(objects.services.iter().cloned());
            slices.extend(objects.slices.iter().cloned());
        }
        Contents {
            services: service_inputs(&services)
                .into_iter()
                .map(|s| (s.name.clone(), Arc::new(s)))
                .collect(),
            slices: slice_keys(&slices)
                .into_iter()
                .map(|(name, slice)| (name, Arc::new(SliceInput::from_slice(slice))))
                .collect(),
        }
    }
}

/// A folder's objects, by namespace/name.
#[derive(Debug, Default, PartialEq)]
pub struct Contents {
    pub services: BTreeMap<ServiceName, Arc<ServiceInput>>,
    pub slices: BTreeMap<ServiceName, Arc<SliceInput>>,
}

impl Contents {
    /// Records in `changes` what turns `self` into `next`.
    fn diff(&self, next: &Contents, changes: &mut Changes) {
        for (name, service) in &next.services {
            if self.services.get(name) != Some(service) {
                changes.upsert_service(service.clone());
            }
        }
        for name in self.services.keys() {
            if !next.services.contains_key(name) {
                changes.delete_service(name.clone());
            }
        }
        for (name, slice) in &next.slices {
            if self.slices.get(name) != Some(slice) {
                changes.upsert_slice(name.clone(), slice.clone());
            }
        }
        for name in self.slices.keys() {
            if !next.slices.contains_key(name) {
                changes.delete_slice(name.clone());
            }
        }
    }
}

/// Polls `dir` every `interval` and records in `feed` what changed whenever a file does.
/// The first poll publishes even an empty folder: it is the whole truth.
pub async fn watch(
    dir: PathBuf,
    interval: Duration,
    feed: Arc<Feed>,
    problems_total: impl Fn(usize) + Send + 'static,
) {
    let mut folder = ManifestFolder::new(&dir);
    let mut published = Contents::default();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut first = true;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = feed.closed() => return,
        }
        match folder.refresh() {
            Ok((changed, problems)) => {
                for p in &problems {
                    error!(problem = %p, "skipping malformed manifest; other manifests keep working");
                }
                problems_total(problems.len());
                if changed || first {
                    let contents = folder.contents();
                    for service in contents.services.values().filter(|s| s.duplicates > 0) {
                        warn!(
                            service = %service.name,
                            duplicates = service.duplicates,
                            "several manifests define this Service; one is used"
                        );
                    }
                    info!(
                        dir = %dir.display(),
                        services = contents.services.len(),
                        endpoint_slices = contents.slices.len(),
                        "manifests loaded"
                    );
                    feed.update(|changes| published.diff(&contents, changes));
                    published = contents;
                    first = false;
                }
            }
            Err(e) => warn!(dir = %dir.display(), error = %e, "cannot read manifests folder"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec:\n  clusterIP: 10.96.0.10\n  ports: [{port: 80}]\n";
    const SLICE: &str = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  labels: {kubernetes.io/service-name: web}\naddressType: IPv4\nendpoints: [{addresses: [10.0.0.1]}]\n";

    #[test]
    fn parses_services_and_slices_from_a_multi_document_file() {
        let (objects, problems) =
            parse_file(Path::new("a.yaml"), &format!("{SERVICE}---\n{SLICE}"));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(objects.services.len(), 1);
        assert_eq!(objects.slices.len(), 1);
    }

    #[test]
    fn a_bad_document_is_reported_with_path_and_index_and_the_others_are_kept() {
        let text = format!(
            "{SERVICE}---\napiVersion: v1\nkind: Service\nmetadata: {{name: broken}}\nspec: {{ports: 7}}\n---\napiVersion: apps/v1\nkind: Deployment\n---\n{SLICE}"
        );
        let (objects, problems) = parse_file(Path::new("/m/web.yaml"), &text);
        assert_eq!(objects.services.len(), 1);
        assert_eq!(objects.slices.len(), 1);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(problems[0].document, 2);
        assert!(
            problems[0].reason.starts_with("Service:"),
            "{}",
            problems[0].reason
        );
        assert_eq!(problems[1].document, 3);
        assert!(
            problems[1].to_string().contains("/m/web.yaml (document 3)"),
            "{}",
            problems[1]
        );
        assert!(problems[1].reason.contains("Deployment"));
    }

    #[test]
    fn invalid_yaml_is_reported() {
        let (objects, problems) =
            parse_file(Path::new("x.yaml"), "kind: Service\n  bad: [indent\n");
        assert!(objects.services.is_empty());
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].reason.starts_with("invalid YAML"),
            "{}",
            problems[0].reason
        );
    }

    #[test]
    fn a_file_that_turns_malformed_keeps_its_last_good_objects_and_others_still_load() {
        let dir = std::env::temp_dir().join(format!("sluice-manifests-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("web.yaml"), format!("{SERVICE}---\n{SLICE}")).unwrap();
        let mut folder = ManifestFolder::new(&dir);
        let (changed, problems) = folder.refresh().unwrap();
        assert!(changed && problems.is_empty());
        assert_eq!(folder.contents().services.len(), 1);

        // A bad edit of web.yaml and a new good file in the same poll.
        fs::write(
            dir.join("web.yaml"),
            "apiVersion: v1\nkind: Service\nspec: [\n",
        )
        .unwrap();
        fs::write(
            dir.join("other.yml"),
            SERVICE.replace("name: web", "name: other"),
        )
        .unwrap();
        let (changed, problems) = folder.refresh().unwrap();
        assert!(changed);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].path, dir.join("web.yaml"));
        let names: Vec<_> = folder
            .contents()
            .services
            .keys()
            .map(|s| s.name.to_string())
            .collect();
        assert_eq!(names, ["other", "web"], "web keeps its last good content");
        // The same bad content is reported once, not on every poll.
        assert_eq!(folder.refresh().unwrap(), (false, vec![]));

        fs::remove_file(dir.join("web.yaml")).unwrap();
        let (changed, _) = folder.refresh().unwrap();
        assert!(changed);
        assert_eq!(
            folder.contents().services.len(),
            1,
            "a deleted file's objects go away"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_folder_is_published_as_the_changes_since_the_last_publication() {
        let dir =
            std::env::temp_dir().join(format!("sluice-manifests-diff-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("a.yaml"), format!("{SERVICE}---\n{SLICE}")).unwrap();
        // The same Service again in another file, with another address.
        fs::write(
            dir.join("b.yaml"),
            SERVICE.replace("10.96.0.10", "10.96.0.11"),
        )
        .unwrap();
        let mut folder = ManifestFolder::new(&dir);
        folder.refresh().unwrap();
        let first = folder.contents();
        assert_eq!(first.services.len(), 1);
        let web = &first.services[&ServiceName::new("default", "web")];
        assert_eq!(web.duplicates, 1, "the other one is reported");
        let mut changes = Changes::default();
        Contents::default().diff(&first, &mut changes);
        assert_eq!((changes.services.len(), changes.slices.len()), (1, 1));

        // Only the slice changes: only the slice is published.
        fs::write(
            dir.join("a.yaml"),
            format!("{SERVICE}---\n{}", SLICE.replace("10.0.0.1", "10.0.0.2")),
        )
        .unwrap();
        folder.refresh().unwrap();
        let second = folder.contents();
        let mut changes = Changes::default();
        first.diff(&second, &mut changes);
        assert!(changes.services.is_empty(), "{changes:?}");
        assert_eq!(changes.slices.len(), 1);

        // A deleted file's objects are published as deletions.
        fs::remove_file(dir.join("a.yaml")).unwrap();
        folder.refresh().unwrap();
        let third = folder.contents();
        let mut changes = Changes::default();
        second.diff(&third, &mut changes);
        assert_eq!(changes.slices.values().collect::<Vec<_>>(), [&None]);
        assert_eq!(third.services.len(), 1, "b.yaml still defines web");
        assert_eq!(
            third.services[&ServiceName::new("default", "web")].duplicates,
            0
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
