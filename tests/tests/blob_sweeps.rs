//! Blob sweeps never delete in-flight blobs, through the real binaries: `director clean-up`
//! runs in a loop while a deploy compiles packages and renders templates (blobs stored but
//! not yet recorded) and while `director logs` fetches tarballs nothing records; both
//! succeed, because upload slots and holds keep those blobs until their records land or the
//! CLI has downloaded them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tests::User;
use tests::hello::{deploy, quickstart_on_own_network};

/// Runs `clean-up` back to back until `stop` is set; answers how many ran.
fn clean_up_loop(user: &User, stop: &AtomicBool) -> usize {
    let mut runs = 0;
    while !stop.load(Ordering::SeqCst) {
        let out = user.run(&["clean-up", "-n"]);
        assert_eq!(out.code, 0, "clean-up failed: {}", out.stderr);
        runs += 1;
    }
    runs
}

#[test]
fn clean_up_in_a_loop_during_a_deploy_and_a_logs_fetch_takes_nothing_in_flight() {
    let user = User::new();
    // The dev director starts before the loop, on a network of the test's own.
    let manifest = quickstart_on_own_network(&user, 48);

    let stop = Arc::new(AtomicBool::new(false));
    let sweeps = AtomicUsize::new(0);
    let (code, stderr) = std::thread::scope(|scope| {
        let sweeper =
            scope.spawn(|| sweeps.fetch_add(clean_up_loop(&user, &stop), Ordering::SeqCst));
        let (code, _events, stderr) = deploy(&user, &manifest, &[]);
        stop.store(true, Ordering::SeqCst);
        sweeper.join().unwrap();
        (code, stderr)
    });
    assert_eq!(code, 0, "the deploy failed while clean-up ran: {stderr}");
    assert!(
        sweeps.load(Ordering::SeqCst) > 0,
        "clean-up ran during the deploy"
    );

    stop.store(false, Ordering::SeqCst);
    let logs = tempfile::tempdir().unwrap();
    let dir = logs.path().to_str().unwrap().to_string();
    let out = std::thread::scope(|scope| {
        let sweeper = scope.spawn(|| clean_up_loop(&user, &stop));
        let out = user.run(&["-d", "quickstart", "logs", "--dir", &dir]);
        stop.store(true, Ordering::SeqCst);
        sweeper.join().unwrap();
        out
    });
    assert_eq!(
        out.code, 0,
        "logs failed while clean-up ran: {}",
        out.stderr
    );
    assert_eq!(
        std::fs::read_dir(logs.path()).unwrap().count(),
        3,
        "one tarball per instance"
    );

    // Nothing the deploy recorded lost its content: a second deploy changes nothing, and
    // every recorded blob is in the blobstore.
    let (code, _events, stderr) = deploy(&user, &manifest, &[]);
    assert_eq!(code, 0, "{stderr}");
}
