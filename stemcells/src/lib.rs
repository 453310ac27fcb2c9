//! Building stemcells: a Debian root filesystem made with debootstrap, the packages a job
//! host needs (compilers included), the `vcap` user and `/var/vcap` tree, and the agent,
//! packed as BOSH stemcell tarballs for the docker and local CPIs.
//!
//! The pure parts are modules of their own and unit-tested: [`sources`] (which Debian
//! mirror the host's APT sources name), [`version`] (`12.8.20261126` from the point release
//! and the date), [`manifest`] (`stemcell.MF` per format, through the engine's
//! [`director_core::stemcell::StemcellManifest`], so the engine reads what is written here),
//! [`image`] (the sorted rootfs tar) and [`recipe`] (the files of
//! `stemcells/debian-bookworm/`). [`build`] is the effectful edge: it runs debootstrap,
//! chroot and mount as root and writes the tarballs; `build-stemcell` is its command line.

pub mod build;
pub mod image;
pub mod manifest;
pub mod recipe;
pub mod sources;
pub mod version;

pub use build::{BuildError, BuildOptions, BuildReport, build};
pub use manifest::Format;
