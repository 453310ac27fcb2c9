//! The recipe of the stemcell we build, Debian bookworm: the files of
//! `stemcells/debian-bookworm/`, compiled into the builder so that one binary is all a
//! build needs.
//!
//! - `packages.list`: what is installed on top of debootstrap's minbase variant, each
//!   package with the reason it is there;
//! - `dev-tools.list`: the packages whose files make `dev_tools_file_list.txt`;
//! - `post-install.sh`: run inside the root filesystem after the packages (the `vcap` user,
//!   the `/var/vcap` tree, clean-up);
//! - `agent.json`: the agent's start-up configuration (where its settings come from).

/// What a stemcell is made of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recipe {
    /// `stemcell.MF`'s `operating_system`.
    pub operating_system: &'static str,
    /// The Debian suite debootstrap installs.
    pub suite: &'static str,
    /// Packages installed on top of minbase.
    pub packages: Vec<String>,
    /// Packages whose files are listed in `dev_tools_file_list.txt`.
    pub dev_tools: Vec<String>,
    /// The post-install script (POSIX shell).
    pub post_install: &'static str,
    /// `/var/vcap/bosh/agent.json`.
    pub agent_config: &'static str,
}

/// The Debian bookworm recipe.
pub fn debian_bookworm() -> Recipe {
    Recipe {
        operating_system: "debian-bookworm",
        suite: "bookworm",
        packages: list(include_str!("../debian-bookworm/packages.list")),
        dev_tools: list(include_str!("../debian-bookworm/dev-tools.list")),
        post_install: include_str!("../debian-bookworm/post-install.sh"),
        agent_config: include_str!("../debian-bookworm/agent.json"),
    }
}

/// The names of a list file: one a line, `#` starts a comment, blank lines ignored.
pub fn list(text: &str) -> Vec<String> {
    text.lines()
        .map(|line| line.split('#').next().unwrap_or_default().trim())
        .filter(|name| !name.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_skip_comments_and_blank_lines() {
        assert_eq!(list("# a\n\nb\n  c  # why\n"), ["b", "c"]);
    }

    #[test]
    fn the_bookworm_recipe_is_complete() {
        let recipe = debian_bookworm();
        for package in [
            "build-essential",
            "ca-certificates",
            "curl",
            "procps",
            "iproute2",
            "iptables",
            "rsync",
        ] {
            assert!(recipe.packages.iter().any(|p| p == package), "{package}");
        }
        assert!(recipe.dev_tools.iter().any(|p| p == "gcc"));
        let config: serde_json::Value = serde_json::from_str(recipe.agent_config).unwrap();
        assert_eq!(
            config["Infrastructure"]["Settings"]["Sources"][0]["SettingsPath"],
            "/var/vcap/bosh/settings.json"
        );
        for directory in ["/var/vcap/sys/log", "/var/vcap/sys/run", "/var/vcap/store"] {
            assert!(recipe.post_install.contains(directory), "{directory}");
        }
    }
}
