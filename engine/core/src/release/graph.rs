//! The package dependency graph of a release: every dependency and every package a job needs
//! must exist, and dependencies must not form a cycle. The same checks serve a release
//! directory (places in spec files) and an uploaded `release.MF` (places in that file).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use petgraph::algo::tarjan_scc;
use petgraph::graphmap::DiGraphMap;

/// The graph: petgraph without its `std` feature wants the hasher spelled out.
type Graph<'a> = DiGraphMap<&'a str, (), std::hash::RandomState>;

/// A reference to a package, and where it was written (for the diagnostic).
#[derive(Clone, Debug)]
pub struct Reference<P> {
    /// The package named.
    pub package: String,
    /// Where.
    pub place: P,
}

/// A problem with package references.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GraphProblem<P> {
    /// Package `from` depends on `missing`, which the release does not have.
    UnknownDependency {
        /// The dependent package.
        from: String,
        /// The missing package.
        missing: String,
        /// Where the dependency was written.
        place: P,
    },
    /// Job `job` needs `missing`, which the release does not have.
    UnknownJobPackage {
        /// The job.
        job: String,
        /// The missing package.
        missing: String,
        /// Where it was written.
        place: P,
    },
    /// A cycle, starting and ending with the same package (`a -> b -> a`).
    Cycle(Vec<String>),
}

impl<P> GraphProblem<P> {
    /// The message (lowercase, naming the packages and the job).
    pub fn message(&self) -> String {
        match self {
            GraphProblem::UnknownDependency { from, missing, .. } => {
                format!("package '{from}' depends on unknown package '{missing}'")
            }
            GraphProblem::UnknownJobPackage { job, missing, .. } => {
                format!("job '{job}' needs unknown package '{missing}'")
            }
            GraphProblem::Cycle(cycle) => {
                format!("package dependency cycle: {}", cycle.join(" -> "))
            }
        }
    }
}

/// Checks packages (name → dependencies) and jobs (name → packages) and returns the packages
/// in an order where each comes after its dependencies, or every problem found.
pub fn check<P: Clone>(
    packages: &BTreeMap<String, Vec<Reference<P>>>,
    jobs: &BTreeMap<String, Vec<Reference<P>>>,
) -> Result<Vec<String>, Vec<GraphProblem<P>>> {
    let mut problems = Vec::new();
    let mut graph = Graph::default();
    for (name, dependencies) in packages {
        graph.add_node(name.as_str());
        for dependency in dependencies {
            if packages.contains_key(&dependency.package) {
                graph.add_edge(name.as_str(), dependency.package.as_str(), ());
            } else {
                problems.push(GraphProblem::UnknownDependency {
                    from: name.clone(),
                    missing: dependency.package.clone(),
                    place: dependency.place.clone(),
                });
            }
        }
    }
    for (job, needs) in jobs {
        for need in needs {
            if !packages.contains_key(&need.package) {
                problems.push(GraphProblem::UnknownJobPackage {
                    job: job.clone(),
                    missing: need.package.clone(),
                    place: need.place.clone(),
                });
            }
        }
    }
    let mut components: Vec<Vec<&str>> = tarjan_scc(&graph)
        .into_iter()
        .filter(|c| c.len() > 1 || graph.contains_edge(c[0], c[0]))
        .collect();
    for component in &mut components {
        component.sort_unstable();
    }
    components.sort();
    for component in components {
        problems.push(GraphProblem::Cycle(cycle_through(&graph, &component)));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    // Dependencies first: a post-order of a depth-first walk in name order.
    let mut order = Vec::new();
    let mut done = BTreeSet::new();
    for name in packages.keys() {
        visit(&graph, name, &mut done, &mut order);
    }
    Ok(order)
}

fn visit<'a>(
    graph: &Graph<'a>,
    name: &'a str,
    done: &mut BTreeSet<&'a str>,
    order: &mut Vec<String>,
) {
    if !done.insert(name) {
        return;
    }
    let mut next: Vec<&str> = graph.neighbors(name).collect();
    next.sort_unstable();
    for dependency in next {
        visit(graph, dependency, done, order);
    }
    order.push(name.to_string());
}

/// The shortest cycle through the first (smallest) package of a strongly connected
/// component, following dependencies in name order: `a -> b -> a`.
fn cycle_through(graph: &Graph<'_>, component: &[&str]) -> Vec<String> {
    let start = component[0];
    let inside: BTreeSet<&str> = component.iter().copied().collect();
    let mut previous: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(node) = queue.pop_front() {
        let mut next: Vec<&str> = graph
            .neighbors(node)
            .filter(|n| inside.contains(n))
            .collect();
        next.sort_unstable();
        for neighbor in next {
            if neighbor == start {
                let mut walk = vec![node];
                let mut at = node;
                while at != start {
                    at = previous[at];
                    walk.push(at);
                }
                walk.reverse();
                let mut cycle: Vec<String> = walk.iter().map(|s| s.to_string()).collect();
                cycle.push(start.to_string());
                return cycle;
            }
            if !previous.contains_key(neighbor) && neighbor != start {
                previous.insert(neighbor, node);
                queue.push_back(neighbor);
            }
        }
    }
    vec![start.to_string(), start.to_string()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packages(edges: &[(&str, &[&str])]) -> BTreeMap<String, Vec<Reference<()>>> {
        edges
            .iter()
            .map(|(name, deps)| {
                (
                    name.to_string(),
                    deps.iter()
                        .map(|d| Reference {
                            package: d.to_string(),
                            place: (),
                        })
                        .collect(),
                )
            })
            .collect()
    }

    fn messages(problems: Vec<GraphProblem<()>>) -> Vec<String> {
        problems.iter().map(GraphProblem::message).collect()
    }

    #[test]
    fn dependencies_come_first() {
        let order = check(
            &packages(&[
                ("app", &["ruby", "libyaml"]),
                ("ruby", &["libyaml"]),
                ("libyaml", &[]),
            ]),
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(order, ["libyaml", "ruby", "app"]);
    }

    #[test]
    fn cycles_are_named_in_walking_order() {
        let problems = check(
            &packages(&[
                ("a", &["b"]),
                ("b", &["c"]),
                ("c", &["a"]),
                ("d", &["d"]),
                ("e", &[]),
            ]),
            &BTreeMap::new(),
        )
        .unwrap_err();
        assert_eq!(
            messages(problems),
            [
                "package dependency cycle: a -> b -> c -> a",
                "package dependency cycle: d -> d"
            ]
        );
        let two = check(&packages(&[("a", &["b"]), ("b", &["a"])]), &BTreeMap::new());
        assert_eq!(
            messages(two.unwrap_err()),
            ["package dependency cycle: a -> b -> a"]
        );
    }

    #[test]
    fn unknown_packages_name_who_asked() {
        let problems = check(
            &packages(&[("a", &["zlib"])]),
            &packages(&[("web", &["a", "nginx"])]),
        )
        .unwrap_err();
        assert_eq!(
            messages(problems),
            [
                "package 'a' depends on unknown package 'zlib'",
                "job 'web' needs unknown package 'nginx'"
            ]
        );
    }
}
